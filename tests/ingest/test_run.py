"""The ingest against the real local S3 (SeaweedFS): accounting, de-identification, splits,
duplicates, rejection reasons, resume, serial == parallel, folder layout, pydicom's own test files."""

from __future__ import annotations

import collections
import io
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers_assets import crash_ingest_at_chunk
from radimagenet.dataset.format import load_manifest
from radimagenet.dataset.inspect import load_report, summary
from radimagenet.dataset.verify import verify
from radimagenet.errors import ConfigError, StorageError
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.ingest.deid import source_pseudonym
from radimagenet.io import storage
from radimagenet.ops.synth import synthesize

pytestmark = pytest.mark.integration


SECRET = b"test-secret-0123456789abcdef"


def pseudo(path: str) -> str:
    """The report's name for an input (its path as given)."""
    return source_pseudonym(SECRET, path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    info = synthesize(out, images=80, seed=3)
    return out, info


def new_prefix(name: str) -> str:
    return f"s3://radimagenet/tests/{name}-{uuid.uuid4().hex[:8]}"


def run_ingest(source: Path, out: str, **kw) -> dict:
    labels = kw.pop("labels", source / "labels.csv")
    cfg = IngestConfig(source=str(source), labels=str(labels) if labels else None, out=out,
                       shard_size=kw.pop("shard_size", 64 * 1024), **kw)
    return ingest(cfg, SECRET, progress=False)


def all_bytes_under(prefix: str) -> bytes:
    return b"".join(storage.read_bytes(u) for u in storage.list_keys(prefix))


def shard_samples(manifest: dict) -> list[dict]:
    """Every sample's metadata, read back from the shards."""
    out = []
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard["url"]))) as tar:
                for m in tar:
                    if m.name.endswith(".json"):
                        out.append(json.loads(tar.extractfile(m).read()) | {"key": m.name.split(".")[0]})
    return out


@pytest.fixture(scope="module")
def ingested(stack_env, corpus) -> tuple[dict, list[dict], str]:
    source, _ = corpus
    out = new_prefix("synth")
    manifest = run_ingest(source, out)
    return manifest, load_report(out), out


def test_every_input_is_accounted_for(ingested, corpus):
    manifest, report, _ = ingested
    source, info = corpus
    n_rows = len((source / "labels.csv").read_text().splitlines()) - 1
    c = manifest["counts"]
    assert c["inputs"] == n_rows == len(report)
    assert c["written"] + c["rejected"] + c["duplicates"] == c["inputs"]
    assert c["written"] == sum(s["samples"] for s in manifest["splits"].values())
    by_source = {line["source"]: line for line in report}
    for path in info["planted"]["blank"]:
        assert by_source[pseudo(path)]["status"] == "rejected" and by_source[pseudo(path)]["reason"].startswith("blank")
    for path in info["planted"]["truncated"]:
        assert by_source[pseudo(path)]["status"] == "rejected"
        assert by_source[pseudo(path)]["reason"].split(":")[0] in ("truncated", "decode_failed")
    for path in info["planted"]["duplicates"]:
        assert by_source[pseudo(path)]["status"] == "duplicate"
        original = by_source[by_source[pseudo(path)]["duplicate_of"]]
        assert original["status"] == "written" and original["key"] == by_source[pseudo(path)]["key"]
    assert all(line["status"] == "written" for line in report if line["reason"] is None and not line["duplicate_of"])


def test_dataset_verifies_and_inspects(ingested):
    manifest, _, out = ingested
    assert verify(manifest) == []
    text = summary(load_manifest(out))
    assert "train" in text and "blank" in text and manifest["classes"][0] in text
    assert manifest["split_unit"] == "patient" and "split by  patient" in text  # every patient a real one
    assert manifest["classes"] == sorted(manifest["classes"]) and len(manifest["classes"]) >= 8
    assert manifest["digest"].startswith("sha256:") and manifest["versions"]["pydicom"]


def test_no_phi_anywhere_in_the_outputs(ingested, corpus):
    _, _, out = ingested
    source, info = corpus
    blob = all_bytes_under(out)
    planted = set(info["phi"])
    for path in source.rglob("*.dcm"):  # UIDs and dates of every source file too
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the planted truncated file
            continue
        planted |= {str(ds.get(t, "")) for t in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                   "PatientID", "StudyDate", "PatientBirthDate")}
    planted = {p for p in planted if len(p) >= 6}
    assert len(planted) > 20
    leaks = [p for p in planted if p.encode() in blob or p.upper().encode() in blob]
    assert leaks == []
    assert b"images/" not in blob and str(source).encode() not in blob  # no source path either


def test_no_patient_in_two_splits_and_metadata_is_clean(ingested):
    manifest, _, _ = ingested
    samples = shard_samples(manifest)
    assert len(samples) == manifest["counts"]["written"]
    splits_of = collections.defaultdict(set)
    for s in samples:
        splits_of[s["patient"]].add(s["split"])
        assert set(s) <= {"key", "label", "label_id", "split", "patient", "patient_source", "modality",
                          "body_part", "rows", "columns", "pixel_spacing", "photometric", "bits_stored",
                          "frames", "transfer_syntax", "window", "source_format", "dropped_fields"}
    assert all(len(v) == 1 for v in splits_of.values())
    assert {s["split"] for s in samples} == {"train", "val", "test"}
    assert len(splits_of) > 10


def test_serial_and_parallel_ingests_write_the_same_samples(stack_env, corpus, ingested):
    source, _ = corpus
    manifest, _, _ = ingested
    parallel = run_ingest(source, new_prefix("parallel"), workers=2, chunk_size=8)
    assert parallel["digest"] == manifest["digest"]
    sha = lambda m: [sh["sha256"] for s in m["splits"].values() for sh in s["shards"]]  # noqa: E731
    assert sha(parallel) == sha(manifest)


def test_interrupted_ingest_resumes_without_loss_or_duplicates(stack_env, corpus, ingested, monkeypatch):
    source, _ = corpus
    manifest, _, _ = ingested
    out = new_prefix("resume")
    crash_ingest_at_chunk(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ingest(source, out, chunk_size=8, shard_size=16 * 1024)
    assert not storage.exists(out + "/manifest.json")
    journaled = [u for u in storage.list_keys(out + "/_journal") if not u.endswith("config.json")]
    assert journaled, "the first run should have finished some shards before the crash"
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="different settings"):
        run_ingest(source, out, chunk_size=8, shard_size=16 * 1024, image_size=128)
    resumed = run_ingest(source, out, chunk_size=8, shard_size=16 * 1024)
    assert resumed["digest"] == manifest["digest"]
    assert resumed["counts"] == manifest["counts"]
    assert verify(resumed) == []
    assert storage.list_keys(out + "/_journal") == []


def test_misconfiguration_fails_fast_and_writes_nothing(stack_env, corpus, ingested, monkeypatch):
    source, _ = corpus
    _, _, existing = ingested
    with pytest.raises(ConfigError, match="already exists"):
        run_ingest(source, existing)
    with pytest.raises(StorageError, match="does not exist"):
        run_ingest(source, "s3://no-such-bucket-xyz/data")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    out = new_prefix("badcreds")
    with pytest.raises(StorageError, match="refused"):
        run_ingest(source, out)
    monkeypatch.undo()
    assert storage.list_keys(out) == []


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_layout_with_png_and_jpeg(stack_env, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        _png(tmp_path / "CT/lung/nodule" / f"{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
        _png(tmp_path / "US/gb" / f"{i}.png", rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "US/gb/j.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "CT/lung/nodule/readme.txt").write_text("not an image either")
    out = new_prefix("folder")
    with pytest.raises(ConfigError, match="--split-unit image"):  # PNG/JPEG carry no patient identity
        run_ingest(tmp_path, out, labels=None, image_size=32)
    assert storage.list_keys(out) == []
    m = run_ingest(tmp_path, out, labels=None, image_size=32, split_unit="image")
    assert m["classes"] == ["CT/lung/nodule", "US/gb"]
    assert m["split_unit"] == "image" and m["ingest"]["patient_from"] == "file"
    text = summary(load_manifest(out))
    assert "split by  image" in text and "warning: dataset is split image by image" in text
    report = {line["source"]: line for line in load_report(out)}
    assert report[pseudo("notes.txt")]["reason"].startswith("missing_label")
    assert report[pseudo("CT/lung/nodule/readme.txt")]["reason"].startswith("unsupported_format")
    assert report[pseudo("US/gb/j.jpg")]["status"] == "written"
    assert m["counts"]["written"] == 9 and m["counts"]["inputs"] == 11
    samples = shard_samples(m)
    assert {s["source_format"] for s in samples} == {"png", "jpeg"}


def _split_files(folder: Path, assign: dict[str, str]) -> dict[str, str]:
    """One ``filename,label`` file per split (labels deliberately wrong: they are not used)."""
    files = {}
    for split in ("train", "val", "test"):
        path = folder / f"RadiologyAI_{split}.csv"
        path.write_text("filename,label\n" + "".join(f"{p},XX/unused\n" for p, s in assign.items() if s == split))
        files[split] = str(path)
    return files


def test_split_files_assign_splits_exactly_as_given(stack_env, corpus, tmp_path):
    # PNGs without patients: the split files are a way out; the unlisted file is not_in_split_files
    src = tmp_path / "radiology_ai"
    for i in range(6):
        _png(src / "CT/lung/nodule" / f"{i}.png", np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8))
    given = {f"radiology_ai/CT/lung/nodule/{i}.png": ("train", "val", "test", "test", "train")[i] for i in range(5)}
    out = new_prefix("splitcsv")
    m = run_ingest(src, out, labels=None, image_size=32, split_csv=_split_files(tmp_path, given))
    report = {line["source"]: line for line in load_report(out)}
    assert {p: report[pseudo(p.split("/", 1)[1])]["split"] for p in given} == given
    assert report[pseudo("CT/lung/nodule/5.png")]["reason"].startswith("not_in_split_files")
    assert m["counts"]["rejected_by_reason"] == {"not_in_split_files": 1}
    assert m["split_unit"] == "image"  # no patient identity: each file its own unit, splits as given
    assert set(m["ingest"]["split_csv"]) == {"train", "val", "test"}
    assert m["ingest"]["split_csv"]["val"] == pseudo(str((tmp_path / "RadiologyAI_val.csv").resolve()))
    assert str(tmp_path).encode() not in all_bytes_under(out) and b"RadiologyAI" not in all_bytes_under(out)

    # DICOMs with patient IDs, split by patient in the files: the dataset is split by patient
    source, _ = corpus
    rows = [line.split(",") for line in (source / "labels.csv").read_text().splitlines()[1:]]
    patients = sorted({r[2] for r in rows})
    by_patient = {p: ("train", "val", "test")[i % 3] for i, p in enumerate(patients)}
    given = {r[0]: by_patient[r[2]] for r in rows}
    out = new_prefix("splitcsv-dicom")
    m = run_ingest(source, out, split_csv=_split_files(tmp_path, given))
    got = {line["source"]: line["split"] for line in load_report(out) if line["status"] == "written"}
    assert got and got == {pseudo(p): s for p, s in given.items() if pseudo(p) in got}
    assert m["split_unit"] == "patient"
    assert {s: v["samples"] > 0 for s, v in m["splits"].items()} == {"train": True, "val": True, "test": True}


def test_pydicom_test_files_are_decoded_or_rejected_with_a_reason(stack_env, tmp_path):
    from pydicom.data import get_testdata_files

    files = sorted(set(get_testdata_files("*.dcm")))
    assert len(files) > 30
    folder = tmp_path / "MR/misc"
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"{i:03d}_{Path(f).name}")
    out = new_prefix("pydicom")
    m = run_ingest(tmp_path, out, labels=None, image_size=64, split_unit="image")
    report = load_report(out)
    assert len(report) == len(files) == m["counts"]["inputs"]
    names = {pseudo(f"MR/misc/{i:03d}_{Path(f).name}"): Path(f).name for i, f in enumerate(files)}
    by_name = {names[line["source"]]: line for line in report}
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb.dcm"):
        if name in by_name:
            assert by_name[name]["status"] in ("written", "duplicate"), by_name[name]
    if "rtplan.dcm" in by_name:
        assert by_name["rtplan.dcm"]["reason"].startswith("no_pixel_data")
    # lossless variants of MR_small decode to identical pixels: they are duplicates of one sample
    variants = [n for n in by_name if n.startswith("MR_small") and n in (
        "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
        "MR_small_jpeg_ls_lossless.dcm")]
    assert len({by_name[n]["key"] for n in variants}) == 1, {n: by_name[n] for n in variants}
    reasons = collections.Counter(line["reason"].split(":")[0] for line in report if line["status"] == "rejected")
    assert reasons, "pydicom ships malformed files: some must be rejected"
    assert m["counts"]["written"] > 20


def test_every_rejection_reason(stack_env, corpus, tmp_path):
    from pydicom.data import get_testdata_file

    src, _ = corpus
    good = [line.split(",")[0] for line in (src / "labels.csv").read_text().splitlines()[1:3]]
    for g in good:
        (tmp_path / g).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / g, tmp_path / g)
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "rtplan.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.PixelData = ct.PixelData[: len(ct.PixelData) // 3]
    ct.save_as(tmp_path / "truncated.dcm")
    blank = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    blank.PixelData = np.full((blank.Rows, blank.Columns), 100, dtype=np.int16).tobytes()
    blank.save_as(tmp_path / "blank.dcm")
    tiny = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    tiny.Rows = tiny.Columns = 4
    tiny.PixelData = (np.arange(16, dtype=np.int16) * 50).tobytes()
    tiny.save_as(tmp_path / "tiny.dcm")
    _png(tmp_path / "mask_small.png", np.zeros((8, 8), np.uint8))
    rows = [
        f"{good[0]},CT/lung/nodule,P1,,",
        f"{good[1]},CT/lung/nodule,P1,test,",  # P1's first image gets a hashed split; conflict unless equal
        "missing.dcm,CT/lung/nodule,P2,,",
        ",CT/lung/nodule,P3,,",
        "rtplan.dcm,CT/lung/nodule,P4,,",
        "text.dcm,CT/lung/nodule,P5,,",
        "truncated.dcm,CT/lung/nodule,P6,,",
        "blank.dcm,CT/lung/nodule,P7,,",
        "tiny.dcm,CT/lung/nodule,P8,,",
        "rtplan.dcm,,P9,,",
        "rtplan.dcm,CT/lung/nodule,P10,holdout,",
        f"{good[0]},CT/lung/nodule,P11,,mask_small.png",
    ]
    (tmp_path / "labels.csv").write_text("path,label,patient_id,split,mask\n" + "\n".join(rows) + "\n")
    out = new_prefix("reasons")
    run_ingest(tmp_path, out, split_fractions=(1.0, 0.0, 0.0))
    report = load_report(out)
    code = [(line["status"], (line["reason"] or "").split(":")[0]) for line in report]
    assert code[0] == ("written", "")
    assert code[1] == ("rejected", "split_conflict")
    assert code[2] == ("rejected", "missing_file")
    assert code[3] == ("rejected", "bad_row")
    assert code[4] == ("rejected", "no_pixel_data")
    assert code[5] == ("rejected", "unsupported_format")
    assert code[6][1] in ("truncated", "decode_failed")
    assert code[7] == ("rejected", "blank")
    assert code[8] == ("rejected", "too_small")
    assert code[9] == ("rejected", "missing_label")
    assert code[10] == ("rejected", "bad_split")
    assert code[11] == ("rejected", "mask_size_mismatch")


def test_cli_ingest_inspect_verify(stack_env, corpus):
    source, _ = corpus
    out = new_prefix("cli")
    cli = [sys.executable, "-m", "radimagenet"]
    r = subprocess.run(cli + ["ingest", str(source), "--labels", str(source / "labels.csv"), "--out", out,
                              "--image-size", "64", "--shard-size", "32KB", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "written" in r.stdout and "digest" in r.stdout
    r = subprocess.run(cli + ["dataset", "inspect", out], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "rejected blank" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cli + ["dataset", "verify", out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    r = subprocess.run(cli + ["ingest", str(source), "--labels", str(source / "labels.csv"), "--out", out],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
