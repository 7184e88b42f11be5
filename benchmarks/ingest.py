"""Ingest benchmark: per-file cost of the full ingest against dcmread + pixel decode alone (the limit).

    python benchmarks/ingest.py [--files 300] [--inputs uncompressed,rle|none] [--driver-files 4000]
                                [--no-scaling] [--keep-stack]

Measured in one run, the ingest pinned to one core (S3 runs on the other): for uncompressed 512x512
CT (a minimal ~25-element header, and a real CT's 258-element header) and for compressed inputs (RLE,
JPEG-LS, JPEG 2000), and for the released RadImageNet layout (224x224 8-bit grey PNG, whose limit is
PIL's decode alone; no goal is set for it), the decode-alone rate, the full ingest rate (decode, window, resize, hash, encode,
tar, multipart upload to the local S3), their ratio (goal: >= 0.6) by wall clock, by the ingest's
own CPU time and per added file (N files against N/2), and a per-stage breakdown. Then --workers 2
against --workers 1 on all cores (goal: ~2x), and the driver's own CPU per file when Ray workers do
the work (its whole process, every thread: ``time.process_time``; per file of the whole ingest and per
file added, N files against N/2; on the RLE inputs and on ``--driver-files`` released-layout PNGs),
which caps one ingest whatever the number of workers; and that figure without the driver's cost per wall
second (Ray's threads, measured idle), which a faster ingest spreads over more files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from radimagenet.ingest import IngestConfig, decode, ingest
from radimagenet.ingest.process import encode_image, pixel_key

SECRET = b"benchmark-secret-0123456789"


def ct_image(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A CT-like slice in stored values (HU + 1024): air, a body ellipse, organs, noise."""
    y, x = np.mgrid[:size, :size] / size - 0.5
    body = (x / 0.42) ** 2 + (y / 0.33) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0)
    for _ in range(4):
        cx, cy, r = rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.15), rng.uniform(0.03, 0.1)
        hu[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(-900, 300)
    hu += rng.normal(0, 12, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.int16)


def real_ct_header() -> Dataset:
    """The 258-element header of a real GE CT slice (pydicom's CT_small.dcm), pixel data removed.

    The synthetic header above has ~25 elements; clinical CT headers carry 150-300 (private groups,
    sequences), and dcmread's cost grows with them, the limit's and the ingest's alike."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    return ds


def write_ct(path: Path, pixels: np.ndarray, syntax, patient: int, header: Dataset | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = copy.deepcopy(header) if header is not None else Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "CT", f"BENCH{patient:05d}", f"Bench^{patient}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, pixels)
    ds.save_as(path, enforce_file_format=True)


def write_png(path: Path, pixels: np.ndarray, size: int = 224) -> None:
    """A key image as RadImageNet released them: 8-bit grey PNG, already windowed and ~224 x 224."""
    from PIL import Image

    grey = np.clip((pixels.astype(np.float32) - 1024 - (40 - 200)) * (255 / 400), 0, 255).astype(np.uint8)
    Image.fromarray(decode.resize(grey, size)).save(path, format="PNG")  # the ingest's own resize


def make_inputs(root: Path, kind: str, syntax, n: int, rng: np.random.Generator,
                header: Dataset | None = None) -> Path:
    """``n`` CT slices in the folder layout (label = CT/abd/normal), 3 per patient; PNG if no ``syntax``."""
    folder = root / kind
    (folder / "CT/abd/normal").mkdir(parents=True)
    for i in range(n):
        if syntax is None:
            write_png(folder / "CT/abd/normal" / f"{i:05d}.png", ct_image(rng))
        else:
            write_ct(folder / "CT/abd/normal" / f"{i:05d}.dcm", ct_image(rng), syntax, i // 3, header)
    return folder


def input_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".dcm", ".png"))


def half_of(folder: Path, dest: Path) -> Path:
    """A folder holding (hard links to) the first half of ``folder``'s files, same layout."""
    files = input_files(folder)
    for f in files[: len(files) // 2]:
        target = dest / f.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, target)
    return dest


def decode_alone(files: list[Path]) -> float:
    """Seconds per file for dcmread + pixel decode (the limit), by the plugin the ingest tries first
    (CharLS for JPEG-LS, 3.7x faster here than pydicom's default libjpeg), else pydicom's default."""
    from PIL import Image

    t = time.perf_counter()
    for f in files:
        if f.suffix == ".png":  # the released PNG layout: PIL decode alone
            with Image.open(f) as im:
                _ = np.asarray(im)
            continue
        ds = pydicom.dcmread(f)
        _ = pixel_array(ds, decoding_plugin=decode.preferred_plugin(ds.file_meta.TransferSyntaxUID))
    return (time.perf_counter() - t) / len(files)


def stages(files: list[Path], size: int) -> dict[str, float]:
    """Seconds per file for each stage of the per-file work."""
    cfg = decode.DecodeConfig()
    times = dict.fromkeys(("decode+window", "resize", "hash", "encode"), 0.0)
    for f in files:
        t0 = time.perf_counter()
        d = decode.decode_file(f, cfg)
        t1 = time.perf_counter()
        small = decode.resize(d.image, size)
        t2 = time.perf_counter()
        pixel_key(d.image)
        t3 = time.perf_counter()
        encode_image(small, "npy")
        t4 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[k] += dt
    return {k: v / len(files) for k, v in times.items()}


def full_ingest(folder: Path, workers: int, size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per file for the whole ingest of ``folder``
    (folder layout) into a fresh S3 prefix. CPU counts every thread of the process (the part
    uploads too), not the S3 server or Ray workers."""
    out = f"s3://radimagenet/bench/{uuid.uuid4().hex[:8]}"
    n = len(input_files(folder))
    png = any(p.suffix == ".png" for p in input_files(folder))  # PNGs carry no patient: split by image
    cfg = IngestConfig(source=str(folder), out=out, image_size=size, workers=workers,
                       split_unit="image" if png else "patient", shard_size=64 * 1024 * 1024)
    t, c = time.perf_counter(), time.process_time()
    manifest = ingest(cfg, SECRET, progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert manifest["counts"]["written"] + manifest["counts"]["duplicates"] == n, manifest["counts"]
    return wall / n, cpu / n


def driver(size: int, n: int = 3000) -> None:
    """The serial part of every ingest: the driver's thread writing ready samples into a shard
    (tar members, SHA-256, handing parts to the upload thread). Its CPU per sample caps one ingest."""
    from radimagenet.dataset.format import Sample
    from radimagenet.dataset.writer import ShardWriter
    from radimagenet.io import storage

    image = encode_image(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8), "npy")
    meta = json.dumps({"label": "CT/abd/normal", "label_id": 0, "modality": "CT", "patient": "0" * 24,
                       "rows": 512, "columns": 512, "split": "train"}).encode()
    samples = [Sample(index=i, source=f"CT/abd/normal/{i:05d}.dcm", key=f"{i:032x}", split="train",
                      patient="0" * 24, label_id=0, image=image, meta=meta) for i in range(n)]
    with ShardWriter(storage.parse_uri(f"s3://radimagenet/bench/{uuid.uuid4().hex[:8]}"), "train", "npy",
                     64 * 1024 * 1024) as writer:  # warm-up: first allocations, upload thread, connection
        for sample in samples[:300]:
            writer.write(sample)
    out = storage.parse_uri(f"s3://radimagenet/bench/{uuid.uuid4().hex[:8]}")
    t, cpu = time.perf_counter(), time.thread_time()
    with ShardWriter(out, "train", "npy", 64 * 1024 * 1024) as writer:
        for sample in samples:
            writer.write(sample)
        cpu = time.thread_time() - cpu
    wall = time.perf_counter() - t
    print(f"driver thread, writing shards alone: {cpu / n * 1e3:.3f} ms CPU per sample (at most {n / cpu:,.0f} "
          f"files/s); with uploads to this S3 server: {n / wall:,.0f} samples/s ({n * len(image) / wall / 1e6:.0f} MB/s)")


def busy_seconds() -> float:
    """CPU seconds spent by the whole machine (every process, the S3 server and Ray included)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def driver_process_cpu(folder: Path, half: Path, workers: int, size: int) -> tuple[float, float, float]:
    """The driver process's CPU seconds per file (every thread: ``time.process_time``) with Ray workers:
    over the whole ingest of ``folder``, per file added (``folder`` against its first ``half``), and the
    wall seconds per file added."""
    n, n_half = len(input_files(folder)), len(input_files(half))
    wall, whole = full_ingest(folder, workers, size)
    wall_half, cpu_half = full_ingest(half, workers, size)
    added = (whole * n - cpu_half * n_half) / (n - n_half)
    return whole, added, (wall * n - wall_half * n_half) / (n - n_half)


def idle_cpu_rate(seconds: float = 5.0) -> float:
    """CPU seconds per second the driver process spends connected to Ray and doing nothing (Ray's own
    threads: heartbeats, metrics, the GCS and raylet clients)."""
    t, c = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    return (time.process_time() - c) / (time.perf_counter() - t)


@contextlib.contextmanager
def two_worker_ray(warmup: Path, size: int) -> Iterator[None]:
    """One local Ray of exactly 2 CPUs (not the stack's head that RAY_ADDRESS names) for every run
    inside: each ingest finds it connected; its 2 workers are started and warmed (imports, S3 client)
    outside the timed runs, with chunks of 2 files."""
    from unittest import mock

    from radimagenet.io import cluster

    no_cluster = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with mock.patch.dict(os.environ, no_cluster, clear=True), \
            cluster.connect(num_cpus=2, log_to_driver=False, include_dashboard=False):
        cfg = IngestConfig(source=str(warmup), out=f"s3://radimagenet/bench/{uuid.uuid4().hex[:8]}",
                           image_size=size, workers=2, chunk_size=2, patient_from="dicom")
        ingest(cfg, SECRET, progress=False)
        yield


def scaling(folder: Path, half: Path, size: int, cores: int) -> None:
    """--workers 2 against --workers 1, the most the machine's cores allow for 2, and the driver
    process's CPU per file with 2 workers (``half``: the first half of ``folder``, for the marginal cost)."""
    n = len(input_files(folder))
    rate, cpu, driver_cpu, process_cpu = {}, {}, {}, {}
    for workers in (1, 2):
        b0, t0 = busy_seconds(), time.thread_time()
        wall, process_cpu[workers] = full_ingest(folder, workers, size)
        rate[workers], cpu[workers] = 1 / wall, (busy_seconds() - b0) / n
        driver_cpu[workers] = (time.thread_time() - t0) / n  # the driver's main thread
    n_half = len(input_files(half))
    marginal = driver_process_cpu(folder, half, 2, size)[1]
    bound = cores / cpu[2]  # files/s if every core did nothing but this ingest's work
    print(f"workers: 1 -> {rate[1]:.0f} files/s, 2 -> {rate[2]:.0f} files/s, speed-up {rate[2] / rate[1]:.2f}x "
          f"(goal: close to 2x)\n"
          f"  machine CPU per file (ingest, Ray, S3 server): 1 worker {cpu[1] * 1e3:.2f} ms, 2 workers "
          f"{cpu[2] * 1e3:.2f} ms; on {cores} cores 2 workers can reach at most {bound:.0f} files/s "
          f"({bound / rate[1]:.2f}x): measured {rate[2] / bound:.0%} of that bound\n"
          f"  the driver's main thread with 2 Ray workers: {driver_cpu[2] * 1e3:.3f} ms CPU per file\n"
          f"  the driver's process (every thread) with 2 Ray workers: {process_cpu[2] * 1e3:.3f} ms CPU per file "
          f"of the whole ingest ({n} files), {marginal * 1e3:.3f} ms per file added ({n_half} -> {n} files)")


def driver_load(folder: Path, half: Path, size: int, repeats: int) -> None:
    """The driver process's CPU per file with 2 Ray workers on released-layout PNGs, ``repeats`` times
    (median and range: the figure that caps one ingest whatever the number of workers). Part of it is a
    cost per wall second (Ray's threads, measured idle before each run), which a faster ingest spreads
    over more files: the room is (1 - idle rate) / (CPU per file added - idle rate x wall per file added)."""
    runs = []
    for _ in range(repeats):
        idle = idle_cpu_rate()
        whole, added, wall_added = driver_process_cpu(folder, half, 2, size)
        runs.append((whole, added, added - idle * wall_added, idle))
    whole, added, work, idle = (sorted(r[i] for r in runs) for i in range(4))
    mid = len(runs) // 2
    room = f"{(1 - idle[mid]) / work[mid]:,.0f} files/s" if work[mid] > 0 else "unmeasurable (noise: rerun)"
    print(f"driver process CPU per file, 2 Ray workers, {len(input_files(folder))} released-layout PNGs "
          f"({repeats} runs, median [min-max]): whole ingest {whole[mid] * 1e3:.3f} [{whole[0] * 1e3:.3f}-"
          f"{whole[-1] * 1e3:.3f}] ms, per file added {added[mid] * 1e3:.3f} [{added[0] * 1e3:.3f}-"
          f"{added[-1] * 1e3:.3f}] ms: at this rate one ingest tops out near {1 / max(added[mid], 1e-9):,.0f} files/s\n"
          f"  idle, connected to Ray: {idle[mid] * 1e3:.1f} [{idle[0] * 1e3:.1f}-{idle[-1] * 1e3:.1f}] ms of CPU per "
          f"second; per file added without it {work[mid] * 1e3:.3f} [{work[0] * 1e3:.3f}-{work[-1] * 1e3:.3f}] ms: "
          f"one ingest's driver has room for {room}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300, help="uncompressed / RLE files (others fewer)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--keep-stack", action="store_true", help="leave the local stack running")
    ap.add_argument("--inputs", default="all",
                    help="comma-separated input kinds to measure per core (default: all; none: only the driver)")
    ap.add_argument("--no-scaling", action="store_true", help="skip --workers 2 against --workers 1")
    ap.add_argument("--driver-files", type=int, default=4000,
                    help="PNG inputs for the driver's CPU per file with Ray workers (0: skip; default 4000)")
    ap.add_argument("--driver-repeats", type=int, default=3, help="runs of that measurement (default 3)")
    args = ap.parse_args()
    started = False
    if not os.environ.get("AWS_ENDPOINT_URL"):
        from radimagenet.ops import stack

        os.environ.update(stack.up())
        started = True
    rng = np.random.default_rng(0)
    kinds = [("uncompressed", ExplicitVRLittleEndian, args.files, None),
             ("unc+ct-header", ExplicitVRLittleEndian, args.files, real_ct_header()),
             ("rle", RLELossless, args.files, None),
             ("jpeg-ls", JPEGLSLossless, max(60, args.files // 3), None),
             ("jpeg2000", JPEG2000Lossless, max(30, args.files // 10), None),
             ("png-224", None, args.files, None)]
    if args.inputs != "all":
        chosen = [] if args.inputs == "none" else args.inputs.split(",")
        if unknown := set(chosen) - {k[0] for k in kinds}:
            ap.error(f"unknown --inputs {sorted(unknown)}; choose from {[k[0] for k in kinds]}")
        kinds = [k for k in kinds if k[0] in chosen]
    all_cores = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'input':<13} {'files':>5} {'decode/s':>9} {'ingest/s':>9} {'ratio':>6} {'cpu ratio':>9} "
              f"{'marginal':>8}  per-file ms: decode+window resize hash encode rest(tar, upload, driver)")
        results = {}
        # one small ingest first: S3 client, connection pool and imports are one-time costs
        full_ingest(make_inputs(root, "warmup-serial", ExplicitVRLittleEndian, 8, rng), 1, args.size)
        for kind, syntax, n, header in kinds:
            try:
                folder = make_inputs(root, kind, syntax, n, rng, header)
            except Exception as exc:  # noqa: BLE001 - an encoder may be missing
                print(f"{kind:<13} skipped: cannot encode ({exc})")
                continue
            files = input_files(folder)
            os.sched_setaffinity(0, {min(all_cores)})
            decode_alone(files[:10])  # warm up
            limit = decode_alone(files)
            st = stages(files, args.size)
            full, cpu = full_ingest(folder, 1, args.size)
            half = half_of(folder, root / f"{kind}-half")
            marginal = (full * n - full_ingest(half, 1, args.size)[0] * (n // 2)) / (n - n // 2)
            os.sched_setaffinity(0, all_cores)
            rest = max(0.0, full - sum(st.values()))
            results[kind] = (folder, half)
            print(f"{kind:<13} {n:>5} {1 / limit:>9.0f} {1 / full:>9.0f} {limit / full:>6.2f} {limit / cpu:>9.2f} "
                  f"{limit / marginal:>8.2f}  "
                  + " ".join(f"{v * 1e3:.2f}" for v in st.values()) + f" {rest * 1e3:.2f}")
        print("ratio: ingest rate / decode-alone rate, wall clock of the whole run (goal >= 0.60, one core);\n"
              "cpu ratio: the same with the ingest's CPU time per file (leaves out waiting for the S3 server,\n"
              "i.e. the last uploads and fixed per-run requests, which a larger dataset amortises);\n"
              "marginal: the same with the wall clock per file added (N files against N/2: leaves out the\n"
              "fixed per-run cost, the last part uploads and the manifest, which a large dataset amortises)")
        os.sched_setaffinity(0, {min(all_cores)})
        driver(args.size)
        os.sched_setaffinity(0, all_cores)
        if len(all_cores) >= 2 and not args.no_scaling:
            with two_worker_ray(make_inputs(root, "warmup-ray", RLELossless, 32, rng), args.size):
                if "rle" in results:
                    scaling(*results["rle"], args.size, len(all_cores))
                if args.driver_files:
                    png_folder = make_inputs(root, "png-driver", None, args.driver_files, rng)
                    driver_load(png_folder, half_of(png_folder, root / "png-driver-half"), args.size,
                                args.driver_repeats)
    if started and not args.keep_stack:
        from radimagenet.ops import stack

        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
