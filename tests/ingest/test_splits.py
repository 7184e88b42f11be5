"""Splits that say what they are (no server): PNG/JPEG without patients stop the ingest with the ways
out, --split-unit image (and its alias --patient-from file), split files read as given, the manifest's
split_unit and what `dataset inspect` shows of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radimagenet.cli import main
from radimagenet.dataset.format import split_unit, split_unit_of, validate_manifest
from radimagenet.dataset.inspect import split_unit_warnings, summary
from radimagenet.errors import ConfigError
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.ingest.decode import REJECT_REASONS
from radimagenet.ingest.run import fingerprint_of
from radimagenet.ingest.sources import InputRow, read_inputs
from radimagenet.ingest.splits import assign_splits, check_patient_identity, normalise, read_split_files

SECRET = b"test-secret-0123456789abcdef"


def png_tree(root: Path, n: int = 3) -> Path:
    """``root/radiology_ai/{CT/lung/nodule,US/gb}/<i>.png``: RadImageNet's released layout (no patients)."""
    from PIL import Image

    src = root / "radiology_ai"
    for label in ("CT/lung/nodule", "US/gb"):
        (src / label).mkdir(parents=True)
        for i in range(n):
            pixels = np.random.default_rng([len(label), i]).integers(0, 255, (32, 32), dtype=np.uint8)
            Image.fromarray(pixels).save(src / label / f"{i}.png")
    return src


def split_file(path: Path, files: list[str], column: str = "filename") -> str:
    """A split file; its labels are deliberately wrong: the ingest must not use them."""
    path.write_text(f"{column},label\n" + "".join(f"{f},MR/not/used\n" for f in files))
    return str(path)


def test_a_png_tree_without_patients_is_refused_before_anything_is_written(tmp_path):
    src = png_tree(tmp_path)
    cfg = IngestConfig(source=str(src), out="s3://no-such-bucket-for-this-test/x")  # never reached
    with pytest.raises(ConfigError, match=r"6 of 6 inputs are PNG/JPEG") as exc:
        ingest(cfg, SECRET, progress=False)
    message = str(exc.value)
    assert "--split-unit image" in message and "patient_id" in message and "--split-csv train=FILE" in message
    assert "\n" not in message


def test_the_cli_prints_the_refusal_as_one_line_naming_split_unit_image(tmp_path, capsys, monkeypatch):
    # the secret from the environment: no default secret file may be created in the user's (or make's) home
    monkeypatch.setenv("RADIMAGENET_DEID_SECRET", SECRET.decode())
    src = png_tree(tmp_path)
    assert main(["ingest", str(src), "--out", "s3://no-such-bucket-for-this-test/x", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("radimagenet ingest: error: ") and "--split-unit image" in err and "\n" not in err


def test_what_lets_images_without_patients_through():
    png = [InputRow(index=i, source=f"CT/a/{i}.png", path=f"/x/{i}.png", label="CT/a") for i in range(2)]
    check_patient_identity(png, "image", "file", "src")  # --split-unit image
    check_patient_identity([png[0], InputRow(1, "CT/a/1.png", "/x/1.png", "CT/a", patient_id="P1")],
                           "patient", "auto", "src")  # a patient_id column
    check_patient_identity([InputRow(0, "a.png", "/x/a.png", "CT/a", split="train")], "patient", "auto", "src")
    check_patient_identity([InputRow(0, "a.dcm", "/x/a.dcm", "CT/a")], "patient", "auto", "src")  # DICOM: per file
    with pytest.raises(ConfigError, match="1 of 2 inputs"):
        check_patient_identity([png[0], InputRow(1, "b.dcm", "/x/b.dcm", "CT/a")], "patient", "auto", "src")


def test_split_unit_image_and_its_alias_patient_from_file():
    base = {"source": "s", "out": "s3://b/p"}
    image = IngestConfig(**base, split_unit="image")
    alias = IngestConfig(**base, patient_from="file")
    assert (image.split_unit, image.patient_from) == (alias.split_unit, alias.patient_from) == ("image", "file")
    assert image.fingerprint_fields() == alias.fingerprint_fields() != IngestConfig(**base).fingerprint_fields()
    with pytest.raises(ConfigError, match="drop --patient-from column"):
        IngestConfig(**base, split_unit="image", patient_from="column")
    with pytest.raises(ConfigError, match="--split-unit must be patient or image"):
        IngestConfig(**base, split_unit="study")
    with pytest.raises(ConfigError, match="SPLIT train, val or test"):
        IngestConfig(**base, split_csv={"holdout": "x.csv"})


def test_a_dicom_without_patient_id_is_rejected_with_the_ways_out(tmp_path):
    from pydicom.data import get_testdata_file

    from radimagenet.ingest import decode
    from radimagenet.ingest.process import Context, Processed, Reject, process_row

    ct = get_testdata_file("CT_small.dcm")
    ctx = Context(class_ids={"CT/a": 0}, decode_cfg=decode.DecodeConfig(), image_size=32, encoding="npy",
                  secret=SECRET, fractions=(0.8, 0.1, 0.1), patient_from="auto")
    import pydicom

    ds = pydicom.dcmread(ct)
    del ds.PatientID
    path = tmp_path / "anon.dcm"
    ds.save_as(path)
    rejected = process_row(InputRow(0, "anon.dcm", str(path), "CT/a"), ctx)
    assert isinstance(rejected, Reject) and rejected.reason == "missing_patient_id"
    assert "--split-unit image" in rejected.detail and "--split-csv" in rejected.detail
    given = process_row(InputRow(0, "anon.dcm", str(path), "CT/a", split="val"), ctx)  # a split file lists it
    assert isinstance(given, Processed) and given.patient_source == "file" and given.split == "val"
    named = process_row(InputRow(0, "ct.dcm", ct, "CT/a", split="val"), ctx)
    assert isinstance(named, Processed) and named.patient_source == "dicom"


def test_split_files_assign_splits_as_given(tmp_path):
    src = png_tree(tmp_path)
    files = read_split_files({
        "train": split_file(tmp_path / "train.csv", ["radiology_ai/CT/lung/nodule/0.png", "./US/gb/0.png",
                                                     "radiology_ai/US/gb/1.png"]),
        "val": split_file(tmp_path / "val.csv", ["CT/lung/nodule/1.png"], column="path"),
        "test": split_file(tmp_path / "test.csv", ["radiology_ai\\CT\\lung\\nodule\\2.png"]),
    }, str(src), SECRET)
    rows = assign_splits(read_inputs(str(src), None), files)
    got = {r.source: (r.split, r.problem and r.problem[0]) for r in rows}
    assert got == {
        "CT/lung/nodule/0.png": ("train", None), "CT/lung/nodule/1.png": ("val", None),
        "CT/lung/nodule/2.png": ("test", None), "US/gb/0.png": ("train", None), "US/gb/1.png": ("train", None),
        "US/gb/2.png": (None, "not_in_split_files"),
    }
    assert "not_in_split_files" in REJECT_REASONS
    assert set(files.digests) == {"train", "val", "test"} and all(len(d) == 32 for d in files.digests.values())
    check_patient_identity(rows, "patient", "auto", str(src))  # splits given: no refusal


def test_split_files_errors(tmp_path):
    src = png_tree(tmp_path)
    a = split_file(tmp_path / "a.csv", ["CT/lung/nodule/0.png", "CT/lung/nodule/1.png"])
    b = split_file(tmp_path / "b.csv", ["./CT/lung/nodule/1.png"])
    with pytest.raises(ConfigError, match=r"'CT/lung/nodule/1.png' is also listed in train=.*a\.csv"):
        read_split_files({"train": a, "test": b}, str(src), SECRET)
    (tmp_path / "bad.csv").write_text("image,class\nx.png,CT\n")
    with pytest.raises(ConfigError, match="no filename .or path. and label columns"):
        read_split_files({"train": str(tmp_path / "bad.csv")}, str(src), SECRET)
    elsewhere = split_file(tmp_path / "other.csv", ["other/CT/lung/nodule/0.png"])
    with pytest.raises(ConfigError, match="none of the 6 inputs is listed"):
        assign_splits(read_inputs(str(src), None), read_split_files({"train": elsewhere}, str(src), SECRET))
    with pytest.raises(ConfigError, match="cannot read split file"):
        read_split_files({"train": str(tmp_path / "missing.csv")}, str(src), SECRET)


def test_split_files_go_into_the_resume_fingerprint_by_content_not_path(tmp_path):
    src = png_tree(tmp_path)
    cfg = IngestConfig(source=str(src), out="s3://b/p", split_csv={"train": str(tmp_path / "t.csv")})
    rows = read_inputs(str(src), None)
    one = fingerprint_of(cfg, rows, ["CT/lung/nodule"], SECRET,
                         read_split_files({"train": split_file(tmp_path / "t.csv", ["US/gb/0.png"])}, str(src),
                                          SECRET).digests)
    two = fingerprint_of(cfg, rows, ["CT/lung/nodule"], SECRET,
                         read_split_files({"train": split_file(tmp_path / "t.csv", ["US/gb/1.png"])}, str(src),
                                          SECRET).digests)
    assert one["split_csv"] != two["split_csv"] and one["split_unit"] == "patient"
    assert str(tmp_path) not in repr(one) and "t.csv" not in repr(one)


def test_normalise():
    assert normalise("./CT//a.png") == normalise(".\\CT\\a.png") == "CT/a.png"
    assert normalise(" ./ ") == ""


def test_split_unit_in_the_manifest_and_in_inspect():
    assert split_unit_of(["column", "dicom"]) == "patient" and split_unit_of(["dicom", "file"]) == "image"
    manifest = {"format": "radimagenet-dataset/1", "uri": "s3://b/d", "created": "2026-01-01T00:00:00Z",
                "digest": "sha256:0", "classes": ["CT/a"], "image_size": 32, "encoding": "npy",
                "splits": {"train": {"samples": 0, "classes": {"CT/a": 0}, "shards": []}},
                "counts": {"inputs": 0, "written": 0, "rejected": 0, "duplicates": 0}}
    old = dict(manifest, ingest={"patient_from": "auto"})
    assert split_unit(old) == "unknown" and split_unit_warnings(old) == []
    assert "split by  unknown" in summary(old)
    assert split_unit(dict(manifest, ingest={"patient_from": "file"})) == "image"
    image = dict(manifest, split_unit="image")
    text = summary(image)
    assert "split by  image" in text and "warning: dataset is split image by image" in text
    assert "split by  patient" in summary(dict(manifest, split_unit="patient"))
    given = dict(image, ingest={"split_csv": {"train": "src-0123456789abcdef"}})
    assert "--split-csv files as given" in split_unit_warnings(given)[0]
    with pytest.raises(ConfigError, match="split_unit 'study'"):
        validate_manifest(dict(manifest, split_unit="study"))
