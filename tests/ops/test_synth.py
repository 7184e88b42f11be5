"""radimagenet.ops.synth: valid DICOM with planted PHI, decodable, learnable, deterministic."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from radimagenet.cli import main
from radimagenet.ingest.decode import Rejected, decode_file, decode_mask, resize
from radimagenet.ops.synth import DOWNSTREAM_CLASSES, PRETRAIN_CLASSES, synthesize

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain")
    return out, synthesize(out, 60, seed=0)


@pytest.fixture(scope="module")
def downstream(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("downstream")
    return out, synthesize(out, 24, seed=5, task="downstream")


def labels(out: Path) -> list[dict[str, str]]:
    with (out / "labels.csv").open() as f:
        return list(csv.DictReader(f))


def as_text(value) -> str:
    """A private value read as UN (bytes) or as a string."""
    return value.decode("latin-1").strip("\x00 ") if isinstance(value, bytes) else str(value)


def all_strings(ds) -> list[str]:
    """Every string value in a dataset, recursing into sequences and private tags."""
    found = []
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        found += [as_text(v) for v in values if isinstance(v, str | bytes | pydicom.valuerep.PersonName)]
    return found


def test_summary_and_labels(corpus):
    out, info = corpus
    assert json.loads((out / "synth.json").read_text()) == info
    rows = labels(out)
    assert len(rows) == info["images"] == 60 and list(rows[0]) == ["path", "label", "patient_id"]
    assert set(info["classes"]) <= set(PRETRAIN_CLASSES) and len(info["classes"]) >= 8
    assert sum(info["classes"].values()) == 60
    assert 60 / 6 <= info["patients"] <= 60 / 2 + 1
    per_patient = {}
    for row in rows:
        per_patient.setdefault(row["patient_id"], []).append(row)
    assert max(len(v) for v in per_patient.values()) <= 6


def test_files_are_valid_part10_with_phi_in_headers(corpus):
    out, info = corpus
    phi = set(info["phi"])
    seen: set[str] = set()
    for row in labels(out):
        path = out / row["path"]
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == SOP_CLASS[ds.Modality]
        assert row["label"].split("/")[0] == ds.Modality
        assert str(ds.PatientName).startswith("PHI^") and ds.PatientID == row["patient_id"]
        for keyword in ("PatientBirthDate", "PatientAddress", "InstitutionName", "AccessionNumber",
                        "ReferringPhysicianName", "OtherPatientIDs", "StudyInstanceUID"):  # fmt: skip
            assert str(ds.data_element(keyword).value) in phi, keyword
        block = ds.private_block(0x0011, "RADIMAGENET SYNTH PHI")
        assert as_text(block[0x01].value) in phi  # UN (bytes) in implicit VR files
        seen.update(all_strings(ds))
        for text in phi:
            assert text not in row["path"]
    assert phi <= seen  # every planted PHI string really is in some header
    assert any(s.startswith("MRN-PHI-") for s in phi) and any("PHI General Hospital" in s for s in phi)


def test_every_file_decodes_except_planted(corpus):
    out, info = corpus
    planted = info["planted"]
    assert len(planted["duplicates"]) == 2 and len(planted["blank"]) == 1 and len(planted["truncated"]) == 1
    images = {}
    for row in labels(out):
        if row["path"] in planted["truncated"] + planted["blank"]:
            continue
        d = decode_file(out / row["path"])
        assert d.image.dtype == np.uint8 and d.image.std() > 5, row
        assert d.patient_id == row["patient_id"]
        images[row["path"]] = d
    with pytest.raises(Rejected) as info_t:
        decode_file(out / planted["truncated"][0])
    assert info_t.value.reason == "truncated"
    with pytest.raises(Rejected) as info_b:
        decode_file(out / planted["blank"][0])
    assert info_b.value.reason == "blank"
    originals = ["images/00000.dcm", "images/00001.dcm"]
    for dup, original in zip(planted["duplicates"], originals, strict=True):
        np.testing.assert_array_equal(images[dup].image, images[original].image)
        a, b = (pydicom.dcmread(out / p, stop_before_pixels=True) for p in (dup, original))
        assert a.SOPInstanceUID != b.SOPInstanceUID
    modalities = {d.meta["modality"] for d in images.values()}
    photometric = {d.meta["photometric"] for d in images.values()}
    assert modalities == {"CT", "MR", "US"} and "RGB" in photometric
    syntaxes = {d.meta["transfer_syntax"] for d in images.values()}
    assert "RLE Lossless" in syntaxes and len(syntaxes) >= 3
    assert {d.image.shape for d in images.values()} >= {(512, 512), (480, 640)}


def test_clean_corpus_has_no_planted_problems(tmp_path):
    info = synthesize(tmp_path, 6, seed=2, clean=True)
    assert info["planted"] == {"duplicates": [], "blank": [], "truncated": []}
    for row in labels(tmp_path):
        decode_file(tmp_path / row["path"])


def test_classes_differ_enough_to_learn(corpus):
    out, info = corpus
    skip = set(sum(info["planted"].values(), []))
    xs, ys = [], []
    for row in labels(out):
        if row["path"] not in skip:
            xs.append(resize(decode_file(out / row["path"]).image, 24).astype(np.float32).ravel() / 255)
            ys.append(row["label"])
    x, y = np.stack(xs), np.array(ys)
    classes = sorted(set(ys))
    centroids = np.stack([x[y == c].mean(0) for c in classes])
    predicted = np.array(classes)[((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)]
    modality = np.array([c.split("/")[0] for c in predicted]) == np.array([c.split("/")[0] for c in y])
    assert modality.mean() > 0.95  # modalities look different
    assert (predicted == y).mean() > 2.0 / len(classes)  # and classes carry signal beyond chance


def test_deterministic_from_seed(tmp_path):
    a, b, c = (synthesize(tmp_path / n, 10, seed=s) for n, s in (("a", 7), ("b", 7), ("c", 8)))
    assert a == b and a != c
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file():
            twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
            assert path.read_bytes() == twin.read_bytes(), path.name


def test_downstream_masks_align_with_lesions(downstream):
    out, info = downstream
    rows = labels(out)
    assert list(rows[0]) == ["path", "label", "patient_id", "mask"]
    assert set(info["classes"]) == set(DOWNSTREAM_CLASSES) and info["planted"]["truncated"] == []
    lesions = 0
    for row in rows:
        ds = pydicom.dcmread(out / row["path"])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mask = decode_mask(out / row["mask"])
        assert mask.shape == hu.shape == decode_file(out / row["path"]).image.shape
        if row["label"].endswith("normal"):
            assert mask.sum() == 0
            continue
        lesions += 1
        assert mask.sum() > 20 and set(np.unique(mask)) == {0, 1}
        grown = mask.astype(bool)
        for axis in (0, 1):
            for shift in (-4, 4):
                grown |= np.roll(mask.astype(bool), shift, axis=axis)
        ring = grown & ~mask.astype(bool) & (hu > 40) & (hu < 110)  # surrounding liver
        inside = hu[mask.astype(bool)].mean()
        assert inside < hu[ring].mean() - 8, row  # hypodense, low contrast
        assert inside > -45  # still soft tissue (liver ~60 HU, lesion 45-80 HU darker), not fat or air
    assert lesions >= 4


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthesize(tmp_path, 10, task="segmentation")
    with pytest.raises(ValueError):
        synthesize(tmp_path, 0)
    with pytest.raises(ValueError):
        synthesize(tmp_path, 4)  # too few to hold the planted problems unless clean


def test_an_unlabeled_corpus_has_no_labels_csv(tmp_path):
    info = synthesize(tmp_path / "u", 10, seed=7, unlabeled=True)
    assert info["unlabeled"] is True and not (tmp_path / "u" / "labels.csv").exists()
    assert sorted(p.name for p in (tmp_path / "u" / "images").iterdir()) == [f"{i:05d}.dcm" for i in range(10)]
    labelled = synthesize(tmp_path / "l", 10, seed=7)  # the same images: only labels.csv differs
    assert (tmp_path / "u/images/00003.dcm").read_bytes() == (tmp_path / "l/images/00003.dcm").read_bytes()
    assert info == labelled | {"unlabeled": True}
    with pytest.raises(ValueError, match="task='pretrain'"):
        synthesize(tmp_path / "d", 10, task="downstream", unlabeled=True)
    assert main(["synth", "--out", str(tmp_path / "c"), "--images", "9", "--unlabeled"]) == 0
    assert not (tmp_path / "c" / "labels.csv").exists() and (tmp_path / "c" / "images" / "00008.dcm").exists()


def test_cli(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--images", "9", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 9 and (tmp_path / "labels.csv").exists()
    assert "phi" not in summary
    assert main(["synth", "--out", str(tmp_path / "x"), "--images", "3"]) == 2
