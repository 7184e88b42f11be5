"""Input-pipeline benchmark: images/s per core of ``radimagenet.data.loader`` against a naive DICOM loader.

    .venv/bin/python benchmarks/loader.py [--images 2000] [--dicoms 300]

Uses the S3 named by the AWS_* variables, else starts the local stack (``radimagenet.ops.stack.up()``).
Writes its own synthetic shards (grey 224x224 "CT-like" images: body ellipse, smooth organs, noise)
in both encodings once (reused by later runs), then measures, in this one process pinned to one
core with one torch thread (``num_workers=0``, i.e. what one DataLoader worker does):

  (a) tar parsing alone, streamed from S3 (the upper limit), and the parser itself from memory
      next to ``tarfile`` in stream mode and webdataset's tar expander;
  (b) the full training pipeline (S3 -> tar -> decode -> random resized crop + flip -> normalised
      float batch), for ``npy`` and ``png``, with bytes/image;
  (c) a naive loader: pydicom reads 512x512 int16 CT files one by one, windows, resizes, and
      applies the same augmentation with torchvision;
  (d) the sample-level reads: CPU per ranged GET (read_range against boto3), the pipeline at
      other run lengths, and samples per GET / bytes read per byte used for some world sizes and
      loader workers (from the plan alone, on a 300k-sample split).

"images/s (cpu)" divides by this process's CPU time: the per-core figure, independent of other
load on the machine (the local S3 server runs on the same machine); "images/s (wall)" is end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the shard writer shared with the tests

from helpers_shards import ensure_bucket, write_test_dataset  # noqa: E402
from radimagenet.data import loader as data  # noqa: E402
from radimagenet.data.order import epoch_order, shard_samples  # noqa: E402
from radimagenet.data.plan import plan_runs, plan_train, run_length  # noqa: E402
from radimagenet.dataset.format import ENCODINGS, load_manifest, manifest_uri, split_shards  # noqa: E402
from radimagenet.dataset.index import split_indexes  # noqa: E402
from radimagenet.dataset.reader import read_shard  # noqa: E402
from radimagenet.dataset.tar import group_samples, iter_tar  # noqa: E402
from radimagenet.io import storage  # noqa: E402
from radimagenet.io.ranged import read_range  # noqa: E402

SIZE = 224
BATCH = 64
TARGET = 3000  # images/s per core


def ensure_s3() -> str:
    """Use the AWS_* environment, else start the local stack; return a description."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return f"S3 from the environment ({os.environ.get('AWS_ENDPOINT_URL') or 'AWS'})"
    from radimagenet.ops import stack

    os.environ.update(stack.up())
    return f"local stack ({os.environ.get('AWS_ENDPOINT_URL')})"


def ct_slice(index: int, size: int, hu: bool = False) -> np.ndarray:
    """A CT-like slice: air, a body ellipse, a few smooth organs, quantum noise.

    uint8 (a soft-tissue window already applied) or, with ``hu``, int16 Hounsfield-unit-like values.
    """
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = ((x / rng.uniform(0.38, 0.46)) ** 2 + (y / rng.uniform(0.28, 0.36)) ** 2) < 1
    img = np.where(body, 40.0, -1000.0)
    for _ in range(rng.integers(3, 7)):
        cx, cy, r = rng.uniform(-0.25, 0.25), rng.uniform(-0.18, 0.18), rng.uniform(0.03, 0.12)
        img += body * rng.uniform(-80, 300) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    img += body * rng.normal(0, 12, (size, size))  # noise in HU
    if hu:
        return img.astype(np.int16)
    return np.clip((img + 160) / 400 * 255, 0, 255).astype(np.uint8)  # window L40 W400


def synthetic_image(split: str, index: int, size: int) -> np.ndarray:
    return ct_slice(index, size)


def datasets(n: int) -> dict[str, dict]:
    """The benchmark datasets (written once per size, then reused)."""
    out = {}
    for encoding in ENCODINGS:
        uri = f"s3://radimagenet/benchmarks/loader-v1-{n}-{SIZE}/{encoding}"
        if storage.exists(manifest_uri(uri)):
            out[encoding] = load_manifest(uri)
            continue
        ensure_bucket(uri)
        t = time.perf_counter()
        out[encoding] = write_test_dataset(uri, {"train": n}, max(n // 4, 1), image_size=SIZE,
                                           encoding=encoding, image_fn=synthetic_image)
        print(f"  wrote {n} {encoding} images to {uri} in {time.perf_counter() - t:.1f}s")
    for encoding, manifest in out.items():  # shard indexes (tests/helpers_shards writes none): built once
        t = time.perf_counter()
        split_indexes(manifest, "train")
        if time.perf_counter() - t > 0.5:
            print(f"  shard indexes of the {encoding} shards: {time.perf_counter() - t:.1f}s")
    return out


def measure(fn: Callable[[], int], repeat: int = 1) -> tuple[int, float, float]:
    """(items, wall s, cpu s) of the fastest of ``repeat`` runs (by CPU time)."""
    best = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        n = fn()
        result = (n, time.perf_counter() - wall, time.process_time() - cpu)
        if best is None or result[2] < best[2]:
            best = result
    return best


def report(name: str, result: tuple[int, float, float]) -> float:
    n, wall, cpu = result
    print(f"  {name:<44} {n / cpu:>9,.0f} /s (cpu)  {n / wall:>9,.0f} /s (wall)")
    return n / cpu


def parse_from_s3(manifest: dict) -> int:
    return sum(1 for s in split_shards(manifest, "train") for _ in read_shard(s.url))


def parse_from_memory(blobs: list[bytes], how: str) -> int:
    n = 0
    for blob in blobs:
        if how == "radimagenet":
            n += sum(1 for _ in group_samples(iter_tar(io.BytesIO(blob))))
        elif how == "tarfile":
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
                keys = set()
                for info in tar:
                    tar.extractfile(info).read()
                    keys.add(info.name.split(".", 1)[0])
                n += len(keys)
        else:
            from webdataset.tariterators import group_by_keys, tar_file_expander

            n += sum(1 for _ in group_by_keys(tar_file_expander([{"url": "m", "stream": io.BytesIO(blob)}])))
    return n


def pipeline(manifest: dict, train: bool = True, read_ahead: int | None = None) -> int:
    loader = data.make_loader(manifest, "train", batch_size=BATCH, num_workers=0, train=train,
                              image_size=SIZE, channels=3)
    if read_ahead is not None:
        loader = data.Loader(dataclasses.replace(loader.spec, read_ahead=read_ahead), 0)
    n = 0
    for batch in loader:
        assert batch.images.shape[1:] == (3, SIZE, SIZE)
        n += len(batch.labels)
    return n


def get_cost(manifest: dict, n: int = 100) -> dict[str, float]:
    """ms of CPU per GET of one 4 MiB run, through read_range and through boto3's get_object."""
    url = split_shards(manifest, "train")[0].url
    u, size = storage.parse_uri(url), 4 << 20
    out = {}
    for name, fn in [("read_range (presigned, http.client)", lambda a: read_range(url, a, a + size)),
                     ("boto3 get_object", lambda a: storage.client().get_object(
                         Bucket=u.bucket, Key=u.key, Range=f"bytes={a}-{a + size - 1}")["Body"].read())]:
        fn(0)
        cpu = time.process_time()
        for i in range(n):
            fn((i * 7919 * 512) % (16 << 20))
        out[name] = (time.process_time() - cpu) / n * 1e3
    return out


def read_stats(sample_bytes: float) -> list[tuple[str, int, float, float]]:
    """(setup, run length, samples per GET, bytes read / bytes used) from the plan of a 300k-sample split."""
    sizes = [5000] * 60
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    order = epoch_order(shard_samples(sizes), 0, 0)
    out = []
    for world, workers, batch in [(1, 0, 64), (1, 8, 256), (8, 8, 256), (3, 2, 48), (64, 8, 256)]:
        plan = plan_train(order, batch_size=batch, rank=0, world_size=world, num_workers=workers)
        lanes = max(len(np.unique(r.lanes)) for r in plan.readers)
        length = run_length(lanes, sample_bytes)
        runs = [run for r in plan.readers for run in plan_runs(r, starts, length)]
        used = sum(len(r.ids) for r in plan.readers)
        out.append((f"{world} ranks x {workers} workers, batch {batch}", length, used / len(runs),
                    sum(r.last - r.first + 1 for r in runs) / used))
    return out


def write_dicoms(folder: Path, count: int) -> list[Path]:
    """``count`` uncompressed 512x512 int16 CT files (what a user's PACS export looks like)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    paths = []
    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", f"bench{i:04d}"
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (ct_slice(i, 512, hu=True) + 1024).astype(np.int16).tobytes()
        path = folder / f"slice{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def naive_loader(paths: list[Path]) -> int:
    """What users write without the platform: one DICOM at a time, torchvision transforms per image."""
    import pydicom
    from PIL import Image
    from torchvision import transforms as T

    augment = T.Compose([
        T.RandomResizedCrop(SIZE, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize((0.5,), (0.25,)),
    ])
    n, batch = 0, []
    for path in paths:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        grey = np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8)
        img = Image.fromarray(grey).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        batch.append(augment(img).expand(3, SIZE, SIZE))
        if len(batch) == BATCH:
            torch.stack(batch)
            n, batch = n + len(batch), []
    if batch:
        torch.stack(batch)
        n += len(batch)
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images per encoding")
    parser.add_argument("--dicoms", type=int, default=300, help="DICOM files for the naive loader")
    args = parser.parse_args(argv)

    print(f"S3: {ensure_s3()}")
    manifests = datasets(args.images)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # after the stack: only us on it
    torch.set_num_threads(1)
    print(f"one core, torch threads 1, num_workers=0, batch {BATCH}, {SIZE}x{SIZE}, 3 channels\n")

    print("(a) tar parsing alone")
    limit = report("streamed from S3 (npy shards)", measure(lambda: parse_from_s3(manifests["npy"]), 2))
    blobs = [storage.read_bytes(s.url) for s in split_shards(manifests["npy"], "train")]
    mem = {how: report(f"from memory: {how}", measure(lambda h=how: parse_from_memory(blobs, h), 2))
           for how in ("radimagenet", "tarfile", "webdataset")}
    print(f"  radimagenet parser vs tarfile r|: {mem['radimagenet'] / mem['tarfile']:.1f}x, "
          f"vs webdataset: {mem['radimagenet'] / mem['webdataset']:.1f}x\n")

    print("(b) full training pipeline (S3 -> batch), per loader worker")
    rates, sizes = {}, {}
    for encoding, manifest in manifests.items():
        shards = manifest["splits"]["train"]["shards"]
        sizes[encoding] = sum(s["bytes"] for s in shards) / sum(s["samples"] for s in shards)
        rates[encoding] = report(f"train, {encoding} ({sizes[encoding] / 1024:.1f} KiB/image)",
                                 measure(lambda m=manifest: pipeline(m), 2))
    report("eval (no crop), npy", measure(lambda: pipeline(manifests["npy"], train=False)))
    print()

    print("(c) naive loader: pydicom + resize + torchvision augment, one file at a time")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_dicoms(Path(tmp), args.dicoms)
        dicom_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        naive = report(f"naive, local DICOM files ({dicom_kib:.0f} KiB/file)", measure(lambda: naive_loader(paths), 2))
    print()

    print("(d) sample-level reads (ranged GETs of runs of samples)")
    for name, ms in get_cost(manifests["npy"]).items():
        print(f"  CPU per 4 MiB ranged GET, {name:<34} {ms:6.2f} ms")
    for length in (16, 32, 128):
        report(f"train, npy, runs of {length} samples", measure(lambda n=length: pipeline(manifests["npy"],
                                                                                         read_ahead=n), 2))
    for setup, length, per_get, amplification in read_stats(sizes["npy"]):
        print(f"  plan of 300k samples, {setup:<32} runs of <= {length}: {per_get:5.1f} samples/GET, "
              f"{amplification:.2f}x the bytes used")
    print()

    best = max(rates, key=rates.get)
    print("summary (per core)")
    for encoding, rate in rates.items():
        print(f"  {encoding}: {rate:,.0f} images/s = {rate / TARGET:.2f}x the {TARGET:,}/s goal, "
              f"{rate / naive:.1f}x the naive loader, {rate / limit:.2f} of tar parsing alone; "
              f"{rate * sizes[encoding] / 1e6:.0f} MB/s of S3 reads per core")
    print(f"  npy vs png: {rates['npy'] / rates['png']:.2f}x the speed for "
          f"{sizes['npy'] / sizes['png']:.2f}x the bytes")
    print(f"  recommended default encoding: {best} (the loader is CPU-bound; choose png only where S3 "
          f"bandwidth per training node, not CPU, is the limit)")


if __name__ == "__main__":
    main()
