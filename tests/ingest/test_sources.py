"""Hostile inputs to the ingest's sources: paths that leave SOURCE, links out, file names that are not
UTF-8, labels CSVs that are not UTF-8, labels with control characters, classes with no image."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from radimagenet.dataset.inspect import class_warnings, load_report, summary
from radimagenet.errors import ConfigError
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.ingest.decode import REJECT_REASONS
from radimagenet.ingest.run import fingerprint_of
from radimagenet.ingest.sources import InputRow, class_list, read_inputs

SECRET = b"test-secret-0123456789abcdef"
NEW_REASONS = ("outside_source", "bad_filename", "bad_label")


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_csv(path: Path, rows: list[list[str]], header=("path", "label", "patient_id", "split", "mask")) -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([list(header), *rows])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    """SOURCE with a good file, and a folder beside it (outside SOURCE) holding a secret file."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    _touch(src / "good.png")
    _touch(outside / "PHI^Doe^John.png", b"secret")
    return src, outside


def _assert_not_readable(row, reason: str = "outside_source") -> None:
    assert row.problem[0] == reason, row
    assert row.path == "" and row.mask is None
    assert "outside" not in row.problem[1] and "Doe" not in row.problem[1]  # the detail never holds the path


def test_new_reasons_are_documented():
    assert all(reason in REJECT_REASONS for reason in NEW_REASONS)


def test_csv_rows_that_leave_source_are_rejected_and_never_read(tree):
    src, outside = tree
    secret = outside / "PHI^Doe^John.png"
    (src / "link.png").symlink_to(secret)
    (src / "linkdir").symlink_to(outside, target_is_directory=True)
    (src / "inside_link.png").symlink_to(src / "good.png")
    labels = _write_csv(src / "labels.csv", [
        [str(secret), "CT/a", "", "", ""],                      # absolute, outside
        ["../outside/PHI^Doe^John.png", "CT/a", "", "", ""],     # .. escape
        ["link.png", "CT/a", "", "", ""],                        # a file link out
        ["linkdir/PHI^Doe^John.png", "CT/a", "", "", ""],        # through a folder link out
        ["good.png", "CT/a", "", "", "../outside/PHI^Doe^John.png"],  # mask outside
        ["good.png", "CT/a", "", "", str(secret)],               # absolute mask outside
        ["sub/../good.png", "CT/b", "", "", ""],                 # .. that stays inside
        [str(src / "good.png"), "CT/b", "", "", "inside_link.png"],  # absolute inside, mask link inside
        ["../outside/PHI^Doe^John.png", "MR/only_outside", "", "", ""],
    ])
    rows = read_inputs(str(src), str(labels))
    for row in rows[:6]:
        _assert_not_readable(row)
    assert "mask" in rows[4].problem[1] and "mask" in rows[5].problem[1]
    assert rows[6].problem is None and rows[6].path == str((src / "good.png").resolve())
    assert rows[7].problem is None and rows[7].mask == str((src / "good.png").resolve())
    _assert_not_readable(rows[8])
    assert class_list(rows) == ["CT/b"]  # CT/a and MR/only_outside have no usable row: no class


def test_folder_scan_does_not_follow_links_out(tree):
    src, outside = tree
    _touch(src / "CT/a/1.png")
    _touch(src / "US/b/2.png")
    (src / "CT/a/out.png").symlink_to(outside / "PHI^Doe^John.png")
    (src / "CT/a/outdir").symlink_to(outside, target_is_directory=True)
    (src / "CT/a/indir").symlink_to(src / "US/b", target_is_directory=True)
    (src / "CT/a/in.png").symlink_to(src / "US/b/2.png")
    (src / "CT/a/broken.png").symlink_to(outside / "missing.png")
    rows = {r.source: r for r in read_inputs(str(src), None)}
    assert set(rows) == {"good.png", "CT/a/1.png", "CT/a/broken.png", "CT/a/in.png", "CT/a/out.png",
                         "CT/a/outdir", "US/b/2.png"}  # the folder link inside is skipped, not followed
    for name in ("CT/a/out.png", "CT/a/outdir", "CT/a/broken.png"):
        _assert_not_readable(rows[name])
    assert "not followed" in rows["CT/a/outdir"].problem[1]
    assert rows["CT/a/in.png"].problem is None and rows["CT/a/in.png"].path == str((src / "US/b/2.png").resolve())
    assert rows["CT/a/1.png"].problem is None and rows["US/b/2.png"].label == "US/b"
    assert [r.index for r in read_inputs(str(src), None)] == list(range(7))
    plain = rows["CT/a/1.png"]  # the scan's fast path: a whole InputRow, the same as one made by name
    assert type(plain) is InputRow and plain == InputRow(plain.index, "CT/a/1.png", plain.path, "CT/a")


def test_a_folder_that_cannot_be_listed_is_a_row(tmp_path, monkeypatch):
    _touch(tmp_path / "CT/a/1.png")
    _touch(tmp_path / "CT/locked/2.png")
    real = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rows = {r.source: r for r in read_inputs(str(tmp_path), None)}
    assert set(rows) == {"CT/a/1.png", "CT/locked"}
    assert rows["CT/locked"].problem[0] == "unreadable" and rows["CT/locked"].path == ""


def test_a_file_name_that_is_not_utf8_is_rejected_by_itself(tmp_path):
    _touch(tmp_path / "CT/a/1.png")
    _touch(tmp_path / "CT/a/3.png")
    os.close(os.open(os.fsencode(tmp_path / "CT/a") + b"/2\xff\xfe.png", os.O_CREAT | os.O_WRONLY, 0o600))
    os.makedirs(os.fsencode(tmp_path) + b"/MR\xe9")
    os.close(os.open(os.fsencode(tmp_path) + b"/MR\xe9/4.png", os.O_CREAT | os.O_WRONLY, 0o600))
    rows = read_inputs(str(tmp_path), None)
    by_source = {r.source: r for r in rows}
    assert set(by_source) == {"CT/a/1.png", "CT/a/2\\xff\\xfe.png", "CT/a/3.png", "MR\\xe9/4.png"}
    for name in ("CT/a/2\\xff\\xfe.png", "MR\\xe9/4.png"):
        assert by_source[name].problem[0] == "bad_filename" and by_source[name].path == ""
        assert "\\x" in by_source[name].problem[1]
    assert by_source["CT/a/1.png"].problem is None and by_source["CT/a/3.png"].problem is None
    classes = class_list(rows)
    assert classes == ["CT/a"]
    # nothing downstream chokes on the name: the fingerprint, the report line and its JSON encode
    cfg = IngestConfig(source=str(tmp_path), out="s3://bucket/prefix")
    assert fingerprint_of(cfg, rows, classes, SECRET)["inputs"] == 4
    for row in (r for r in rows if r.problem):
        line = {"source": row.source, "status": "rejected", "reason": f"{row.problem[0]}: {row.problem[1]}"}
        assert json.loads(json.dumps(line, ensure_ascii=False).encode("utf-8")) == line


def test_a_labels_csv_that_is_not_utf8_stops_with_the_byte_offset(tmp_path):
    head = b"path,label\na.png,CT/a\nb.png,CT/"
    labels = tmp_path / "labels.csv"
    labels.write_bytes(head + b"caf\xe9\nc.png,CT/a\n")
    with pytest.raises(ConfigError, match=rf"labels\.csv: not valid UTF-8 at byte offset {len(head) + 3} \(line 3"):
        read_inputs(str(tmp_path), str(labels))
    labels.write_bytes(b"\xef\xbb\xbf" + head + b"\x80\n")  # a BOM counts: offsets are in the file's bytes
    with pytest.raises(ConfigError, match=f"byte offset {len(head) + 3} "):
        read_inputs(str(tmp_path), str(labels))
    labels.write_bytes(b"\xef\xbb\xbf" + head + b"b\n")  # a BOM alone is fine
    assert [r.label for r in read_inputs(str(tmp_path), str(labels))] == ["CT/a", "CT/b"]


def test_labels_with_control_characters_are_rejected(tmp_path):
    labels = _write_csv(tmp_path / "labels.csv", [
        ["a.png", "CT/lung\nnodule", "", "", ""],  # a quoted cell spanning two lines
        ["b.png", "CT/lung\tnodule", "", "", ""],
        ["c.png", "CT/lung\x00nodule", "", "", ""],
        ["d.png", "CT/lung\u2028nodule", "", "", ""],
        ["e.png", "CT/lung\u202enodule", "", "", ""],  # a right-to-left override
        ["f.png", "CT/lung/nodule", "", "", ""],
        ["g.png", "CT/lung/nodule", "", "", "", "extra"],
    ])
    rows = read_inputs(str(tmp_path), str(labels))
    assert [r.problem[0] if r.problem else None for r in rows] == ["bad_label"] * 5 + [None, "bad_row"]
    assert "U+000A" in rows[0].problem[1] and "U+0009" in rows[1].problem[1] and "U+0000" in rows[2].problem[1]
    # line numbers are the file's own, past the cell that spans two lines
    assert rows[0].problem[1].startswith("labels.csv line 2:") and rows[1].problem[1].startswith("labels.csv line 4:")
    assert rows[6].problem[1].startswith("labels.csv line 9:")
    assert class_list(rows) == ["CT/lung/nodule"]


def test_folder_names_with_control_characters_are_bad_labels(tmp_path):
    _touch(tmp_path / "CT\nlung/1.png")
    _touch(tmp_path / "CT/lung/2.png")
    rows = {r.source: r for r in read_inputs(str(tmp_path), None)}
    assert rows["CT\nlung/1.png"].problem[0] == "bad_label"
    assert class_list(list(rows.values())) == ["CT/lung"]


def test_a_class_with_no_written_image_is_warned_about():
    splits = {s: {"samples": n, "patients": n, "shards": [], "classes": {"a": n, "b": 0}}
              for s, n in {"train": 8, "val": 1, "test": 1}.items()}
    manifest = {"uri": "s3://b/d", "digest": "sha256:0", "created": "now", "image_size": 64, "encoding": "npy",
                "classes": ["a", "b"], "splits": splits, "ingest": {"split_fractions": [0.8, 0.1, 0.1]},
                "counts": {"inputs": 12, "written": 10, "rejected": 2, "duplicates": 0}}
    (warning,) = class_warnings(manifest)
    assert "class 'b' (label id 1) has no written image" in warning
    assert summary(manifest).endswith(f"warning: {warning}")
    splits["val"]["classes"]["b"] = 1
    assert class_warnings(manifest) == []


# --- the whole ingest ------------------------------------------------------------------------------

def _png(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)


@pytest.mark.integration
def test_ingest_with_hostile_rows_accounts_for_every_input(stack_env, s3_prefix, tmp_path):
    from radimagenet.ops.synth import synthesize

    src, outside = tmp_path / "src", tmp_path / "outside"
    synthesize(src, images=12, seed=5, clean=True)
    _png(outside / "PHI^Doe^John.png", 1)
    _png(src / "good.png", 2)
    (src / "link.png").symlink_to(outside / "PHI^Doe^John.png")
    (src / "text.png").write_text("not an image")
    with (src / "labels.csv").open(newline="", encoding="utf-8") as f:
        synth_rows = list(csv.DictReader(f))
    hostile = [
        ([str(outside / "PHI^Doe^John.png"), "CT/a", "", "", ""], "outside_source"),
        (["../outside/PHI^Doe^John.png", "CT/a", "", "", ""], "outside_source"),
        (["link.png", "CT/a", "", "", ""], "outside_source"),
        (["good.png", "CT/a", "", "", "../outside/PHI^Doe^John.png"], "outside_source"),
        (["good.png", "CT/lung\nnodule", "", "", ""], "bad_label"),
        (["good.png", "CT/tab\there", "", "", ""], "bad_label"),
        (["text.png", "ZZ/never_written", "", "", ""], "unsupported_format"),
    ]
    rows = [[r["path"], r["label"], r["patient_id"], "", ""] for r in synth_rows] + [h[0] for h in hostile]
    labels = _write_csv(src / "labels.csv", rows)
    m = ingest(IngestConfig(source=str(src), labels=str(labels), out=s3_prefix, image_size=32), SECRET,
               progress=False)
    report = load_report(s3_prefix)
    assert len(report) == len(rows) == m["counts"]["inputs"]
    c = m["counts"]
    assert c["written"] + c["rejected"] + c["duplicates"] == c["inputs"]
    assert [line["status"] for line in report[: len(synth_rows)]] == ["written"] * len(synth_rows)
    got = [(line["status"], line["reason"].split(":")[0]) for line in report[len(synth_rows):]]
    assert got == [("rejected", reason) for _, reason in hostile]
    assert all("Doe" not in line["reason"] for line in report if line["reason"])
    assert c["rejected_by_reason"]["outside_source"] == 4 and c["rejected_by_reason"]["bad_label"] == 2
    assert "CT/a" not in m["classes"] and "CT/lung\nnodule" not in m["classes"]
    assert c["classes_without_images"] == ["ZZ/never_written"]
    assert any("'ZZ/never_written'" in w for w in class_warnings(m))


@pytest.mark.integration
def test_folder_ingest_with_links_out_and_a_non_utf8_name(stack_env, s3_prefix, tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    for i in range(3):
        _png(src / "CT/a" / f"{i}.png", i)
        _png(src / "US/b" / f"{i}.png", 10 + i)
    _png(outside / "PHI^Doe^John.png", 20)
    shutil.copy(src / "CT/a/0.png", outside / "copy.png")
    (src / "CT/a/out.png").symlink_to(outside / "PHI^Doe^John.png")
    (src / "CT/a/outdir").symlink_to(outside, target_is_directory=True)
    with open(os.fsencode(src / "US/b") + b"/bad\xff.png", "wb") as f:
        f.write((src / "US/b/0.png").read_bytes())
    m = ingest(IngestConfig(source=str(src), out=s3_prefix, image_size=32, split_unit="image"), SECRET,
               progress=False)  # PNGs without patients: split image by image, said explicitly
    report = load_report(s3_prefix)  # input order: CT/a/0..2, out.png, outdir, US/b/0..2, bad\xff.png
    assert len(report) == m["counts"]["inputs"] == 9
    got = [(line["status"], (line["reason"] or "").split(":")[0]) for line in report]
    written = [("written", "")] * 3
    assert got == written + [("rejected", "outside_source")] * 2 + written + [("rejected", "bad_filename")]
    report[-1]["source"].encode("utf-8")  # valid text: the name's bytes come back escaped (\\xff)
    assert m["counts"]["written"] == 6 and m["classes"] == ["CT/a", "US/b"]
    assert m["counts"]["classes_without_images"] == []


def test_multi_label_cells_list_several_classes(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _touch(tmp_path / name)
    labels = _write_csv(tmp_path / "labels.csv", [["a.png", "nodule | effusion", "p1", "", ""],
                                                 ["b.png", "effusion", "p2", "", ""],
                                                 ["c.png", "effusion||nodule", "p3", "", ""],
                                                 ["d.png", "a|b", "p4", "", ""]])
    rows = read_inputs(str(tmp_path), str(labels), multi_label=True)
    assert [r.label for r in rows[:2]] == ["effusion|nodule", "effusion"]
    assert rows[2].problem[0] == "bad_label" and "empty name" in rows[2].problem[1]
    assert class_list(rows, multi_label=True) == ["a", "b", "effusion", "nodule"]
    single = read_inputs(str(tmp_path), str(labels))  # without --multi-label a cell is one class name
    assert class_list(single) == ["a|b", "effusion", "effusion||nodule", "nodule | effusion"]
    with pytest.raises(ConfigError, match="--multi-label needs a labels CSV"):
        read_inputs(str(tmp_path), None, multi_label=True)
