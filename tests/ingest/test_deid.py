"""De-identification without a server: field validators against hostile header values, the per-user
secret (the same whatever the current folder), source pseudonyms and the private local source map."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from radimagenet.errors import ConfigError
from radimagenet.ingest.deid import (
    META_WHITELIST,
    append_sources,
    clean_meta,
    count_dropped,
    default_home,
    load_secret,
    read_source_map,
    record_sources,
    source_map_path,
    source_pseudonym,
)
from radimagenet.ingest.fields import VALIDATORS, check_field

GOOD = {
    "modality": "CT", "body_part": "CHEST", "rows": 512, "columns": 512, "pixel_spacing": [0.7, 0.7],
    "photometric": "MONOCHROME2", "bits_stored": 12, "frames": 1, "transfer_syntax": "Explicit VR Little Endian",
    "window": {"center": 40.0, "width": 400.0, "source": "file"}, "source_format": "dicom",
}

HOSTILE = [
    ("modality", "CT\nJOHN"), ("modality", "SMITH^JOHN"), ("modality", "ct"), ("modality", 7),
    ("body_part", "SMITH^JOHN"), ("body_part", "SMITH JOHN"), ("body_part", "CHEST\\SMITH"),
    ("body_part", "MRN0012345"), ("body_part", "CHEST " * 10), ("body_part", None),
    ("rows", 10**12), ("rows", 0), ("rows", -5), ("rows", 512.0), ("rows", "512"), ("rows", True),
    ("columns", float("nan")), ("frames", 10**9), ("bits_stored", 99),
    ("pixel_spacing", [float("nan"), 1.0]), ("pixel_spacing", [0.5, 0.5, 0.5]), ("pixel_spacing", [1e6, 1.0]),
    ("pixel_spacing", [-0.5, 0.5]), ("pixel_spacing", "0.5\\0.5 JOHN"), ("pixel_spacing", []),
    ("photometric", "MONOCHROME2 SMITH"), ("photometric", ""),
    ("transfer_syntax", "1.2.840.10008.1.2.1 JOHN"), ("transfer_syntax", "SMITH^JOHN"), ("transfer_syntax", "9" * 65),
    ("window", {"center": float("nan"), "width": 400.0, "source": "file"}),
    ("window", {"center": 40.0, "width": 1e300, "source": "file"}),
    ("window", {"center": 40.0, "width": 400.0, "source": "SMITH"}),
    ("window", {"center": 40.0, "width": 400.0, "source": "file", "note": "JOHN"}),
    ("window", "40\\400"), ("source_format", "dicom SMITH"), ("source_format", ""),
]


def test_every_whitelisted_field_has_a_validator_that_accepts_real_values():
    assert set(META_WHITELIST) == set(VALIDATORS) == set(GOOD)
    assert all(check_field(k, v) for k, v in GOOD.items())
    assert clean_meta(dict(GOOD)) == GOOD
    png = {"modality": "", "body_part": "", "pixel_spacing": None, "transfer_syntax": None, "photometric": "I;16",
           "source_format": "png", "window": {"center": 127.5, "width": 255.0, "source": "full_range"}}
    assert all(check_field(k, v) for k, v in png.items())
    assert check_field("transfer_syntax", "1.2.840.10008.1.2.4.90") and check_field("pixel_spacing", [0.3])
    assert not check_field("PatientName", "X")


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_hostile_values_are_dropped_and_counted(field, value):
    dropped: list[str] = []
    meta = clean_meta(GOOD | {field: value, "PatientName": "SMITH^JOHN"}, dropped)
    assert field not in meta and dropped == [field]
    assert set(meta) == set(GOOD) - {field}
    assert "SMITH" not in json.dumps(meta) and "JOHN" not in json.dumps(meta)


def test_dropped_fields_are_counted_per_field():
    assert count_dropped([("body_part",), (), ("body_part", "modality")]) == {"body_part": 2, "modality": 1}
    assert count_dropped([]) == {}


@pytest.fixture
def user(tmp_path, monkeypatch) -> Path:
    """A fresh user: HOME in tmp, no RADIMAGENET_HOME, XDG_CONFIG_HOME or secret in the environment."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("RADIMAGENET_HOME", "XDG_CONFIG_HOME", "RADIMAGENET_DEID_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_default_secret_is_per_user_not_per_folder(user, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    first = load_secret()
    monkeypatch.chdir(b)
    assert load_secret() == first and len(first) >= 32
    path = user / ".config" / "radimagenet" / "deid-secret"
    assert default_home() == path.parent and path.read_bytes().strip() == first
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert not (a / ".radimagenet").exists() and not (b / ".radimagenet").exists()
    assert [p.name for p in path.parent.iterdir()] == ["deid-secret"]  # no temporary file left


def test_xdg_config_home_and_radimagenet_home_move_the_default(user, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    xdg = load_secret()
    assert (tmp_path / "xdg" / "radimagenet" / "deid-secret").is_file()
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # the XDG spec: relative paths are ignored
    assert default_home() == user / ".config" / "radimagenet"
    monkeypatch.setenv("RADIMAGENET_HOME", str(tmp_path / "site"))
    site = load_secret()
    assert site != xdg and (tmp_path / "site" / "deid-secret").is_file()
    assert _mode(tmp_path / "site") == 0o700 and _mode(tmp_path / "site" / "deid-secret") == 0o600


def test_secret_file_and_environment_win(user, tmp_path, monkeypatch):
    f = tmp_path / "keys" / "site-secret"
    f.parent.mkdir()
    f.write_text("a-site-secret-of-some-length\n")
    monkeypatch.setenv("RADIMAGENET_DEID_SECRET", "an-environment-secret-0123")
    assert load_secret(str(f)) == b"a-site-secret-of-some-length"
    assert load_secret() == b"an-environment-secret-0123"
    assert not (user / ".config").exists()
    f.write_text("short")
    with pytest.raises(ConfigError, match="fewer than 16 bytes"):
        load_secret(str(f))


def test_an_old_per_folder_secret_is_not_silently_replaced(user, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / ".radimagenet").mkdir(parents=True)
    (work / ".radimagenet" / "deid-secret").write_text("the-old-secret-0123456789")
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError, match="old per-folder default.*--secret-file"):
        load_secret()
    assert not (user / ".config" / "radimagenet" / "deid-secret").exists()
    assert load_secret(".radimagenet/deid-secret") == b"the-old-secret-0123456789"


def test_source_pseudonyms_are_keyed_and_path_free():
    a, b = b"secret-one-0123456789", b"secret-two-0123456789"
    path = "SMITH^JOHN_MRN0012345/2019-03-02_CT/IMG0001.dcm"
    p = source_pseudonym(a, path)
    assert p == source_pseudonym(a, path) != source_pseudonym(b, path)
    assert p.startswith("src-") and len(p) == 20 and int(p[4:], 16) >= 0
    assert source_pseudonym(a, "x\udcffy.dcm").startswith("src-")  # names that are not UTF-8


def test_the_source_map_is_private_and_appended_once(tmp_path):
    secret = b"secret-one-0123456789"
    secret_file = tmp_path / "keys" / "deid-secret"
    path = source_map_path("s3://bucket/datasets/x/", str(secret_file))
    assert path == source_map_path("s3://bucket/datasets/x", str(secret_file))
    assert path.parent == tmp_path / "keys" / "source-map" and path.suffix == ".jsonl"
    assert "datasets" not in path.name
    items = [("input", "SMITH^JOHN/1.dcm", "/data/SMITH^JOHN/1.dcm"), ("input", "SMITH^JOHN/2.dcm", "/d/2.dcm")]
    assert record_sources(path, "s3://bucket/datasets/x", secret, items) == 2
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    with path.open("a") as f:
        f.write('{"pseudonym": "src-torn')  # a crash mid-line: ignored and repaired
    assert record_sources(path, "s3://bucket/datasets/x", secret, items + [("labels", "/l.csv", "/l.csv")]) == 1
    lines = [json.loads(line) for line in path.read_text().splitlines() if not line.startswith('{"pseudonym": "src-torn')]
    assert [e["path"] for e in lines] == ["SMITH^JOHN/1.dcm", "SMITH^JOHN/2.dcm", "/l.csv"]
    assert all(e["pseudonym"] == source_pseudonym(secret, e["path"]) for e in lines)
    assert {e["dataset"] for e in lines} == {"s3://bucket/datasets/x"}
    assert _mode(path) == 0o600 and sorted(os.listdir(path.parent)) == [path.name]


def test_the_map_is_appended_a_chunk_at_a_time_and_a_torn_line_is_ended_first(tmp_path):
    """An ingest appends each chunk's inputs with the pseudonyms its workers computed; a crash mid-write
    leaves a torn last line, which neither hides the next chunk's entries nor is read as an entry."""
    secret, path = b"secret-one-0123456789", tmp_path / "map" / "m.jsonl"
    known = read_source_map(path)
    assert known == set()
    chunk = [("input", source_pseudonym(secret, p), p, "/abs/" + p) for p in ("a/1.png", "a/2.png")]
    assert append_sources(path, "s3://b/x", known, chunk) == 2
    assert append_sources(path, "s3://b/x", known, chunk) == 0  # the same chunk again (a retried task)
    with path.open("a") as f:
        f.write('{"pseudonym": "src-torn", "pa')  # the process died mid-write
    known = read_source_map(path)  # a re-run
    assert known == {(pseudonym, p) for _, pseudonym, p, _ in chunk}
    assert append_sources(path, "s3://b/x", known, [("input", source_pseudonym(secret, "a/3.png"), "a/3.png", "/abs/a/3.png")]) == 1
    entries = [json.loads(line) for line in path.read_text().splitlines() if "src-torn" not in line]
    assert [e["path"] for e in entries] == ["a/1.png", "a/2.png", "a/3.png"]
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700


def test_source_map_lines_are_the_json_of_their_entry(tmp_path):
    """The map's lines are built by hand (driver CPU per file): the same text json.dumps writes."""
    secret = b"secret-one-0123456789"
    path = tmp_path / "map.jsonl"
    odd = ["x\udcffy.dcm", 'quote"back\\slash\ttab.dcm', "é/中文/\u2028.png", "plain/1.png"]
    items = [("input", p, "/abs/" + p) for p in odd]
    assert record_sources(path, 's3://b/"x"', secret, items) == len(odd)
    expected = "".join(json.dumps({"pseudonym": source_pseudonym(secret, p), "path": p, "file": f, "kind": k,
                                   "dataset": 's3://b/"x"'}) + "\n" for k, p, f in items)
    assert path.read_bytes() == expected.encode()
