"""The pixel text check (``--text-check``): which images it sees, that a planted burned-in name is
rejected ``burned_in_text`` by the per-file ingest path (and by a whole ingest on the local S3) while a
clean image is kept, that nothing is downloaded at first use, and that a missing extra stops the
ingest before it starts."""

from __future__ import annotations

import glob
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from radimagenet.errors import ConfigError
from radimagenet.ingest import decode
from radimagenet.ingest.config import IngestConfig
from radimagenet.ingest.process import Context, Processed, Reject, process_row
from radimagenet.ingest.sources import InputRow
from radimagenet.ingest.textcheck import TEXT_CHECK_MODES, checks, require_detector

SECRET = b"test-secret-0123456789abcdef"
NAME, DATE = "SMITH^JOHN", "2019-03-02"
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
needs_detector = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                                    reason="the textcheck extra (rapidocr-onnxruntime) is not installed")


def _font(size: int):
    from PIL import ImageFont

    fonts = sorted(glob.glob("/usr/share/fonts/**/DejaVuSans.ttf", recursive=True))
    return ImageFont.truetype(fonts[0], size) if fonts else ImageFont.load_default(size=size)


def scan(seed: int, text: bool, size: int = 256) -> np.ndarray:
    """A speckled disc on black; with ``text``, a name and a date burned into the top-left corner."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    disc = np.hypot(x, y) < 0.4
    image = np.where(disc, np.clip(rng.rayleigh(40.0, (size, size)), 0, 255), 0).astype(np.uint8)
    if text:
        im = Image.fromarray(image)
        draw = ImageDraw.Draw(im)
        draw.text((6, 4), NAME, font=_font(14), fill=230)
        draw.text((6, 22), DATE, font=_font(14), fill=230)
        image = np.asarray(im)
    return image


def write_dicom(path: Path, image: np.ndarray, sop_class: str, modality: str) -> Path:
    """An 8-bit MONOCHROME2 Part 10 file of ``image`` with this SOP class and modality."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.Modality, ds.PatientID = modality, f"P-{path.stem}"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(image).tobytes()
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def run_row(path: Path, mode: str) -> Processed | Reject:
    """The ingest's per-file path (decode, text check, de-identify, encode) on one file."""
    ctx = Context(class_ids={"US/x": 0}, decode_cfg=decode.DecodeConfig(), image_size=64, encoding="npy",
                  secret=SECRET, fractions=(0.8, 0.1, 0.1), patient_from="auto", text_check=mode)
    row = InputRow(index=0, source=path.name, path=str(path), label="US/x")
    return process_row(row, ctx)


def test_which_images_each_mode_checks():
    sc, sc_multiframe, ct_class = uid.SecondaryCaptureImageStorage, "1.2.840.10008.5.1.4.1.1.7.2", uid.CTImageStorage
    assert TEXT_CHECK_MODES == ("off", "sc-us", "all")
    assert checks("sc-us", "dicom", sc, "OT") and checks("sc-us", "dicom", sc_multiframe, "CT")
    assert checks("sc-us", "dicom", US_CLASS, "") and checks("sc-us", "dicom", ct_class, "us")
    assert checks("sc-us", "png", "", "") and checks("sc-us", "jpeg", "", "")
    assert not checks("sc-us", "dicom", ct_class, "CT")
    assert not checks("sc-us", "dicom", "1.2.840.10008.5.1.4.1.1.77.1.4", "XC")  # VL photograph: not .7
    assert checks("all", "dicom", ct_class, "CT")
    assert not any(checks("off", fmt, sc, "US") for fmt in ("dicom", "png"))


def test_the_mode_is_validated_and_part_of_the_fingerprint():
    with pytest.raises(ConfigError, match="--text-check must be one of off, sc-us, all"):
        IngestConfig(source="s", out="s3://b/p", text_check="on")
    off = IngestConfig(source="s", out="s3://b/p")
    assert off.text_check == "off" and off.fingerprint_fields()["text_check"] == "off"
    assert IngestConfig(source="s", out="s3://b/p", text_check="sc-us").fingerprint_fields() != off.fingerprint_fields()


def test_without_the_extra_the_ingest_stops_at_startup_naming_it(tmp_path, monkeypatch, capsys):
    from radimagenet.cli import main

    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if not installed: import fails
    with pytest.raises(ConfigError, match=r"pip install 'radimagenet\[textcheck\]'"):
        require_detector("sc-us")
    require_detector("off")  # needs nothing
    monkeypatch.setenv("RADIMAGENET_HOME", str(tmp_path / "home"))
    (tmp_path / "src" / "US").mkdir(parents=True)
    code = main(["ingest", str(tmp_path / "src"), "--out", "s3://no-such-bucket/x", "--text-check", "all"])
    err = capsys.readouterr().err
    assert code == 2 and "--text-check all needs the text detector" in err and "radimagenet[textcheck]" in err


@needs_detector
def test_secondary_capture_with_a_burned_in_name_is_rejected_and_a_clean_one_kept(tmp_path):
    marked = write_dicom(tmp_path / "sc_text.dcm", scan(1, text=True), uid.SecondaryCaptureImageStorage, "OT")
    clean = write_dicom(tmp_path / "sc_clean.dcm", scan(2, text=False), uid.SecondaryCaptureImageStorage, "OT")
    rejected = run_row(marked, "sc-us")
    assert isinstance(rejected, Reject) and rejected.reason == "burned_in_text"
    assert "text region" in rejected.detail and "% of the image" in rejected.detail
    assert not any(part in rejected.detail for part in ("SMITH", "JOHN", "2019", "03-02"))  # never the text
    assert isinstance(run_row(clean, "sc-us"), Processed)
    assert isinstance(run_row(marked, "off"), Processed) and isinstance(run_row(clean, "off"), Processed)


@needs_detector
def test_sc_us_checks_ultrasound_and_png_but_not_ct(tmp_path):
    from PIL import Image

    image = scan(3, text=True)
    us = write_dicom(tmp_path / "us.dcm", image, US_CLASS, "US")
    ct = write_dicom(tmp_path / "ct.dcm", image, uid.CTImageStorage, "CT")
    png = tmp_path / "export.png"
    Image.fromarray(image).save(png)
    assert run_row(us, "sc-us").reason == "burned_in_text"
    assert run_row(png, "sc-us").reason == "burned_in_text"
    assert isinstance(run_row(ct, "sc-us"), Processed)  # a CT is not checked under sc-us ...
    assert run_row(ct, "all").reason == "burned_in_text"  # ... and is under all


@needs_detector
def test_boxes_are_in_the_image_coordinates_of_a_large_non_square_image():
    from PIL import Image, ImageDraw

    from radimagenet.ingest.textcheck import detect_text

    im = Image.new("L", (3000, 2000), 0)
    ImageDraw.Draw(im).text((2300, 1850), f"{NAME} {DATE}", font=_font(48), fill=255)
    boxes = detect_text(np.asarray(im))
    assert boxes and all(0 <= x0 < x1 <= 3000 and 0 <= y0 < y1 <= 2000 for x0, y0, x1, y1 in boxes)
    assert any(x0 < 2400 and x1 > 2600 and y0 < 1900 < y1 for x0, y0, x1, y1 in boxes)
    assert detect_text(np.zeros((2000, 3000), np.uint8)) == []


@needs_detector
def test_the_detector_loads_from_the_wheel_without_network_or_cache(tmp_path):
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise OSError('network access')\n"
        "socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse\n"
        "import numpy as np\n"
        "from radimagenet.ingest.textcheck import detect_text\n"
        "print(detect_text(np.zeros((64, 64), np.uint8)))\n"
    )
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_submit_passes_the_flag_to_the_ingest(tmp_path, monkeypatch):
    from radimagenet.commands.submit import parse_command
    from radimagenet.ops import jobs

    monkeypatch.chdir(tmp_path)
    args = ["src", "--out", "s3://b/datasets/d", "--text-check", "sc-us"]
    name, planned = jobs.job_name("ingest", args, parse=parse_command)
    assert name == "b-datasets-d" and planned == args
    assert parse_command("ingest", planned).text_check == "sc-us"
    assert jobs.rewrite_paths(planned, local=True)[0][-2:] == ["--text-check", "sc-us"]
    with pytest.raises(ConfigError, match="not valid for `radimagenet ingest`"):
        jobs.job_name("ingest", ["src", "--out", "s3://b/d", "--text-check", "on"], parse=parse_command)


@pytest.mark.integration
@needs_detector
def test_a_whole_ingest_rejects_burned_in_text_and_keeps_the_rest(tmp_path, s3_prefix):
    from radimagenet.dataset.inspect import load_report
    from radimagenet.ingest import ingest
    from radimagenet.ingest.deid import source_pseudonym

    src = tmp_path / "src"
    for i in range(3):
        write_dicom(src / "US" / f"clean{i}.dcm", scan(10 + i, text=False), US_CLASS, "US")
    write_dicom(src / "US" / "marked.dcm", scan(20, text=True), US_CLASS, "US")
    cfg = IngestConfig(source=str(src), out=s3_prefix, text_check="sc-us", split_fractions=(1.0, 0.0, 0.0))
    manifest = ingest(cfg, SECRET, progress=False, source_map=tmp_path / "map.jsonl")
    assert manifest["counts"]["written"] == 3 and manifest["counts"]["rejected_by_reason"] == {"burned_in_text": 1}
    assert manifest["ingest"]["text_check"] == "sc-us"
    lines = {line["source"]: line for line in load_report(s3_prefix)}
    line = lines[source_pseudonym(SECRET, "US/marked.dcm")]
    assert line["status"] == "rejected" and line["reason"].startswith("burned_in_text")
    assert NAME not in json.dumps(line) and DATE not in json.dumps(line)
