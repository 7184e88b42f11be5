"""Ingest pieces that need no server: inputs, de-identification, splits, settings."""

import collections
import json

import numpy as np
import pytest

from radimagenet.dataset.inspect import split_warnings, summary
from radimagenet.errors import ConfigError
from radimagenet.ingest.config import IngestConfig, parse_size
from radimagenet.ingest.deid import clean_meta, load_secret, patient_key, split_of
from radimagenet.ingest.process import encode_image, pixel_key
from radimagenet.ingest.sources import class_list, read_inputs


def test_labels_csv_rows_and_problems(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,patient_id,split\na.dcm,CT/lung/nodule,P1,train\n,CT/lung/normal,P2,\n"
                   "b.dcm,,P3,\nc.dcm,CT/lung/normal,P4,holdout\n")
    rows = read_inputs(str(tmp_path), str(csv))
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].label == "CT/lung/nodule" and rows[0].patient_id == "P1" and rows[0].problem is None
    assert rows[1].problem[0] == "bad_row"
    assert rows[2].problem[0] == "missing_label"
    assert rows[3].problem[0] == "bad_split"
    assert class_list(rows) == ["CT/lung/nodule"]


def test_labels_csv_missing_columns_fails_fast(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class\na.dcm,x\n")
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['path', 'label'\]"):
        read_inputs(str(tmp_path), str(csv))


def test_patient_in_two_splits_in_the_csv_fails_fast(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,patient_id,split\na.dcm,x,P1,train\nb.dcm,x,P1,test\n")
    with pytest.raises(ConfigError, match="same patient"):
        read_inputs(str(tmp_path), str(csv))


def test_folder_layout_labels(tmp_path):
    for rel in ["CT/lung/nodule/1.png", "US/gb/2.png", "stray.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    rows = read_inputs(str(tmp_path), None)
    by_source = {r.source: r for r in rows}
    assert by_source["CT/lung/nodule/1.png"].label == "CT/lung/nodule"
    assert by_source["US/gb/2.png"].label == "US/gb"
    assert by_source["stray.png"].problem[0] == "missing_label"


def test_patient_key_is_keyed_and_stable():
    a, b = b"secret-one-0123456789", b"secret-two-0123456789"
    assert patient_key(a, "MRN1") == patient_key(a, "MRN1")
    assert patient_key(a, "MRN1") != patient_key(b, "MRN1")
    assert "MRN1" not in patient_key(a, "MRN1") and len(patient_key(a, "MRN1")) == 16


def test_split_fractions_are_respected():
    secret = b"0123456789abcdef0123"
    counts = collections.Counter(split_of(patient_key(secret, f"P{i}"), (0.8, 0.1, 0.1)) for i in range(5000))
    assert 0.77 < counts["train"] / 5000 < 0.83
    assert 0.08 < counts["val"] / 5000 < 0.12
    assert split_of("0" * 16, (0.0, 0.0, 1.0)) == "test"


def _manifest(samples: dict[str, int], fractions) -> dict:
    splits = {s: {"samples": n, "patients": n, "shards": [], "classes": {"a": n}} for s, n in samples.items()}
    counts = {"inputs": 30, "written": 30, "rejected": 0, "duplicates": 0}
    return {"uri": "s3://b/d", "digest": "sha256:0", "created": "now", "image_size": 64, "encoding": "npy",
            "classes": ["a"], "splits": splits, "counts": counts, "ingest": {"split_fractions": fractions}}


def test_a_split_that_drew_no_patient_is_warned_about():
    # 30 patients at 0.1 leave val empty for about 4% of secrets: ingest and inspect say so and how to fix it
    empty_val = _manifest({"train": 26, "val": 0, "test": 4}, [0.8, 0.1, 0.1])
    (warning,) = split_warnings(empty_val)
    assert "'val' is empty" in warning and "30 patient(s)" in warning and "'split' column" in warning
    assert summary(empty_val).endswith(f"warning: {warning}")
    assert split_warnings(_manifest({"train": 26, "val": 0, "test": 4}, [0.9, 0.0, 0.1])) == []  # asked for none
    assert split_warnings(_manifest({"train": 24, "val": 3, "test": 3}, [0.8, 0.1, 0.1])) == []


def test_meta_whitelist_drops_everything_else():
    meta = {"modality": "CT", "rows": 512, "PatientName": "X", "StudyDate": "2020", "uid": "1.2.3"}
    assert clean_meta(meta) == {"modality": "CT", "rows": 512}


def test_secret_from_home_is_created_once(tmp_path, monkeypatch):
    monkeypatch.delenv("RADIMAGENET_DEID_SECRET", raising=False)
    first = load_secret(home=tmp_path)
    assert load_secret(home=tmp_path) == first and len(first) >= 32
    assert (tmp_path / "deid-secret").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("RADIMAGENET_DEID_SECRET", "short")
    with pytest.raises(ConfigError):
        load_secret(home=tmp_path)


def test_config_validation_and_sizes():
    assert parse_size("256MB") == 256 * 1024**2 and parse_size("64KiB") == 65536 and parse_size("1000") == 1000
    with pytest.raises(ConfigError):
        parse_size("lots")
    with pytest.raises(ConfigError, match="summing to 1"):
        IngestConfig(source=".", out="s3://b/p", split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ConfigError, match="encoding"):
        IngestConfig(source=".", out="s3://b/p", encoding="jpeg")


def test_pixel_key_and_encodings_are_lossless():
    img = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(64, 48)
    assert pixel_key(img) == pixel_key(img.copy()) != pixel_key(img.T.copy())
    assert pixel_key(img) != pixel_key(img.reshape(48, 64))  # same bytes, other shape: another image
    assert pixel_key(img[:, ::2]) == pixel_key(np.ascontiguousarray(img[:, ::2]))  # views hash their pixels
    assert len(pixel_key(img)) == 32 and int(pixel_key(img), 16) >= 0  # 128 bits, hex
    import io

    from PIL import Image

    assert np.array_equal(np.load(io.BytesIO(encode_image(img, "npy")), allow_pickle=False), img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(img, "png")))), img)
    for image in (img, img[:, ::2], np.zeros((224, 224), np.uint8), np.zeros((7, 300), np.uint8)):
        written = io.BytesIO()  # the cached header gives the bytes numpy itself writes
        np.lib.format.write_array(written, np.ascontiguousarray(image), allow_pickle=False)
        assert encode_image(image, "npy") == written.getvalue()


def test_driver_state_counts_rejects_as_it_goes():
    """The progress bar's reject count is kept incrementally (not recounted over every line per chunk,
    which is quadratic in the number of inputs), and agrees with the report lines."""
    from radimagenet.ingest.process import Reject, Sample
    from radimagenet.ingest.run import _State

    class Collect(list):
        write = list.append

    writers = {s: Collect() for s in ("train", "val", "test")}
    state = _State(first_of_key={}, split_of_patient={}, lines={})

    def sample(i, key, patient, split):
        return Sample(index=i, source=f"{i}.dcm", key=key, split=split, patient=patient, label_id=0,
                      image=b"", meta=b"{}")

    results = [sample(0, "k0", "p1", "train"), Reject(1, "1.dcm", "blank", "every pixel is 0"),
               sample(2, "k0", "p2", "val"),  # duplicate of 0
               sample(3, "k3", "p1", "test"),  # split conflict: p1 is in train
               sample(4, "k4", "p2", "val"), Reject(5, "5.dcm", "truncated", "cut")]
    for res in state.accept(results[:3]) + state.accept(results[3:]):  # to be written: the driver plans them
        writers[res.split].write(res)
    statuses = collections.Counter(json.loads(line)["status"] for line in state.lines.values())
    assert state.rejected == statuses["rejected"] == 3
    assert statuses == state.status == {"written": 2, "duplicate": 1, "rejected": 3}
    assert state.reasons == {"blank": 1, "split_conflict": 1, "truncated": 1}
    assert [s.index for s in writers["train"]] == [0] and [s.index for s in writers["val"]] == [4]


# --- pseudonyms, path-free details, dropped fields --------------------------------------------------

PHI_DIR = "SMITH^JOHN_MRN0012345/2019-03-02_CT"
PHI = ("SMITH", "JOHN", "MRN0012345", "2019-03-02", "IMG0001")


def _ctx(secret: bytes = b"test-secret-0123456789abcdef", patient_from: str = "auto"):
    from radimagenet.ingest import decode
    from radimagenet.ingest.process import Context

    return Context(class_ids={"CT/lung": 0}, decode_cfg=decode.DecodeConfig(), image_size=32, encoding="npy",
                   secret=secret, fractions=(0.8, 0.1, 0.1), patient_from=patient_from)


def _phi_free(text: str, *extra: str) -> bool:
    return not any(p in text for p in PHI + extra)


def test_results_are_named_by_pseudonym_and_details_are_path_free(tmp_path, monkeypatch):
    from PIL import Image

    from radimagenet.ingest import decode
    from radimagenet.ingest.deid import source_pseudonym
    from radimagenet.ingest.process import Processed, Reject, process_row
    from radimagenet.ingest.sources import InputRow

    root = tmp_path / PHI_DIR
    (root / "CT/lung").mkdir(parents=True)
    good = root / "CT/lung/IMG0001.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    ctx = _ctx(patient_from="file")  # PNGs carry no patient: --split-unit image

    def row(i, rel, problem=None):
        return InputRow(index=i, source=rel, path=str(root / rel), label="CT/lung", problem=problem)

    sample = process_row(row(0, "CT/lung/IMG0001.png"), ctx)
    assert isinstance(sample, Processed) and sample.dropped == ()
    assert sample.source == source_pseudonym(ctx.secret, "CT/lung/IMG0001.png")
    assert _phi_free(sample.meta.decode(), str(tmp_path)) and b"dropped_fields" not in sample.meta
    missing = process_row(row(1, "CT/lung/SMITH_MRN0012345.png"), ctx)
    assert isinstance(missing, Reject) and missing.reason == "missing_file" and _phi_free(missing.detail)
    assert missing.source == source_pseudonym(ctx.secret, "CT/lung/SMITH_MRN0012345.png")
    stray = process_row(row(2, "IMG0001.png", ("missing_label", "IMG0001.png is not inside a label folder")), ctx)
    assert stray.reason == "missing_label" and stray.detail == "<path> is not inside a label folder"

    def raising(exc):
        def decode_file(path, cfg):
            raise exc
        return decode_file

    for exc in (OSError(f"[Errno 5] Input/output error: '{good}'"),
                decode.Rejected("decode_failed", f"png: cannot identify image file {good.name!r}"),
                ValueError(f"bad data in {good.parent} (file /mnt/archive/SMITH/2019-03-02/x.png)")):
        monkeypatch.setattr(decode, "decode_file", raising(exc))
        rejected = process_row(row(3, "CT/lung/IMG0001.png"), ctx)
        assert isinstance(rejected, Reject) and rejected.reason == "decode_failed"
        assert _phi_free(rejected.detail, str(tmp_path), "/mnt") and "<path>" in rejected.detail, rejected.detail


def test_hostile_header_values_are_dropped_from_the_sample_and_counted(tmp_path, monkeypatch):
    import json

    from radimagenet.ingest import decode
    from radimagenet.ingest.process import process_row
    from radimagenet.ingest.sources import InputRow

    (tmp_path / "a.dcm").write_bytes(b"x")
    meta = {"modality": "CT\nJOHN", "body_part": "SMITH^JOHN", "rows": 64, "columns": 10**12,
            "pixel_spacing": [float("nan"), 0.5], "photometric": "MONOCHROME2", "bits_stored": 12, "frames": 1,
            "transfer_syntax": "Explicit VR Little Endian", "window": {"center": 40.0, "width": 400.0,
                                                                       "source": "default"},
            "source_format": "dicom", "PatientName": "SMITH^JOHN"}
    image = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    monkeypatch.setattr(decode, "decode_file", lambda path, cfg: decode.Decoded(image, dict(meta), "MRN0012345"))
    sample = process_row(InputRow(index=0, source="a.dcm", path=str(tmp_path / "a.dcm"), label="CT/lung"), _ctx())
    got = json.loads(sample.meta)
    assert sample.dropped == ("modality", "body_part", "columns", "pixel_spacing")
    assert got["dropped_fields"] == list(sample.dropped)
    assert got["photometric"] == "MONOCHROME2" and got["rows"] == 64 and got["patient_source"] == "dicom"
    assert not set(sample.dropped) & set(got) and _phi_free(sample.meta.decode())


def test_path_free_keeps_ordinary_details():
    from radimagenet.ingest.process import path_free
    from radimagenet.ingest.sources import InputRow

    row = InputRow(index=0, source="SMITH/IMG0001.dcm", path="/data/SMITH/IMG0001.dcm", label="x")
    for detail in ("BitsAllocated 16 / BitsStored 12", "a 0/1, 0/255 mask", "mask decoded to shape (8, 8, 3), "
                   "expected HxW", "JPEG 2000 Image Compression (Lossless Only): ValueError: bad"):
        assert path_free(detail, row) == detail
    assert path_free("cannot open /other/place/x.dcm", row) == "cannot open <path>"
    assert path_free("C:\\scans\\SMITH\\x.dcm: bad", row) == "<path>: bad"
    assert path_free("IMG0001.dcm: unexpected end", row) == "<path>: unexpected end"


def test_driver_state_keeps_dropped_fields_of_written_samples():
    from radimagenet.ingest.deid import count_dropped
    from radimagenet.ingest.process import Processed
    from radimagenet.ingest.run import _State

    state = _State(first_of_key={}, split_of_patient={}, lines={})

    def sample(i, key, dropped=()):
        return Processed(index=i, source=f"src-{i}", key=key, split="train", patient="p", label_id=0, image=b"",
                         meta=b"{}", dropped=dropped)

    state.accept([sample(0, "k0", ("body_part",)), sample(1, "k0", ("body_part",)), sample(2, "k2"),
                  sample(3, "k3", ("modality", "body_part"))])
    assert state.dropped == {0: ("body_part",), 3: ("modality", "body_part")}  # not the duplicate's
    assert json.loads(state.lines[1])["duplicate_of"] == "src-0"
    assert count_dropped(state.dropped.values()) == {"body_part": 2, "modality": 1}


def test_a_node_that_cannot_see_source_stops_the_ingest(tmp_path):
    import dataclasses

    from radimagenet.errors import ConfigError
    from radimagenet.ingest.process import process_rows
    from radimagenet.ingest.sources import InputRow

    ctx = dataclasses.replace(_ctx(b"s" * 32), source_root=str(tmp_path / "not-mounted-here"))
    row = InputRow(index=0, source="a.png", path=str(tmp_path / "not-mounted-here" / "a.png"), label="CT/lung")
    with pytest.raises(ConfigError, match="not visible on node .* every node mounts"):
        process_rows([row], ctx)
    assert process_rows([row], dataclasses.replace(ctx, source_root=str(tmp_path)))[0].reason == "missing_file"


def test_report_lines_are_the_json_of_their_line():
    """Report lines are built by hand (driver CPU per file): the same text json.dumps writes."""
    import json

    from radimagenet.ingest.run import _line, _State, report_line

    lines = [_line("src-0", "written", key="ab" * 16, split="train"),
             _line('src-"1"\\', "rejected", reason="decode_failed: x\udcffy é 中 \u2028 \x00"),
             _line("src-2", "duplicate", key="k", split="val", duplicate_of="src-0")]
    assert [report_line(line) for line in lines] == [json.dumps(line) + "\n" for line in lines]
    state = _State(first_of_key={}, split_of_patient={}, lines={})
    state.written(0, 'src-"0"\u2028', "ab" * 16, "train")  # a written input's line, made without the dict
    assert state.lines[0] == json.dumps(_line('src-"0"\u2028', "written", key="ab" * 16, split="train")) + "\n"
