"""No part of a source path reaches shared storage or the command's output: a corpus under a folder
named after a patient, a record number and a date is ingested (interrupted, refused under another
secret, resumed by the CLI); every object under the dataset prefix is read back and searched."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from helpers_assets import crash_ingest_at_chunk
from radimagenet.dataset.inspect import load_report
from radimagenet.errors import ConfigError
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.ingest.deid import source_map_path, source_pseudonym
from radimagenet.io import storage
from radimagenet.ops.synth import synthesize

pytestmark = pytest.mark.integration

IDENTIFYING = ("SMITH", "MRN0012345", "2019-03-02", "IMG0001")


def _leaks(blob: bytes, *extra: str) -> list[str]:
    return [s for s in IDENTIFYING + extra if s.encode() in blob]


def _everything_under(prefix: str) -> bytes:
    return b"".join(storage.read_bytes(u) for u in storage.list_keys(prefix))


def test_no_part_of_a_source_path_reaches_shared_storage(stack_env, s3_prefix, tmp_path, monkeypatch):

    source = tmp_path / "SMITH^JOHN_MRN0012345" / "2019-03-02_CT"
    synthesize(source, images=24, seed=5)
    labels = source / "labels.csv"
    header, *rows = labels.read_text().splitlines()
    first, label, patient = rows[0].split(",")
    (source / "images" / "IMG0001_SMITH.dcm").write_bytes((source / first).read_bytes())  # a duplicate
    rows += [f"images/IMG0001_SMITH.dcm,{label},{patient}",
             f"images/MRN0012345_2019-03-02.dcm,{label},{patient}"]  # a missing file
    labels.write_text("\n".join([header, *rows]) + "\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "deid-secret").write_text("site-secret-for-the-privacy-test-0123\n")
    secret = b"site-secret-for-the-privacy-test-0123"
    map_path = source_map_path(s3_prefix, str(keys / "deid-secret"))
    cfg = IngestConfig(source=str(source), labels=str(labels), out=s3_prefix, image_size=32, shard_size=2048,
                       chunk_size=4)

    # 1. an interrupted ingest: its journal on S3 is path-free too
    crash_ingest_at_chunk(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(cfg, secret, progress=False, source_map=map_path)
    monkeypatch.undo()
    journal = [u for u in storage.list_keys(s3_prefix + "/_journal") if not u.endswith("config.json")]
    assert journal, "some shards should be journaled before the crash"
    assert _leaks(_everything_under(s3_prefix), str(tmp_path), "images/") == []

    # 2. another secret may not finish it
    with pytest.raises(ConfigError, match="another de-identification secret"):
        ingest(cfg, b"another-secret-0123456789abcdef", progress=False, source_map=map_path)

    # 3. the CLI finishes it; neither its output nor anything on S3 names a path
    r = subprocess.run([sys.executable, "-m", "radimagenet", "ingest", str(source), "--labels", str(labels),
                        "--out", s3_prefix, "--image-size", "32", "--shard-size", "2KB", "--chunk-size", "4",
                        "--secret-file", str(keys / "deid-secret")],
                       capture_output=True, text=True, timeout=300, env=os.environ | {"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert _leaks((r.stdout + r.stderr).encode(), str(tmp_path), "images/") == [], r.stdout + r.stderr
    blob = _everything_under(s3_prefix)
    assert storage.exists(s3_prefix + "/manifest.json")
    assert _leaks(blob, str(tmp_path), "images/", "labels.csv") == []

    # 4. the report names inputs by pseudonym; the local map (0600) names them back
    report = load_report(s3_prefix)
    assert len(report) == len(rows)
    assert {line["status"] for line in report} == {"written", "rejected", "duplicate"}
    missing = report[-1]
    assert missing["status"] == "rejected" and missing["reason"].startswith("missing_file")
    assert missing["source"] == source_pseudonym(secret, "images/MRN0012345_2019-03-02.dcm")
    assert report[-2]["status"] == "duplicate" and report[-2]["duplicate_of"] == report[0]["source"]
    assert stat.S_IMODE(map_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(map_path.parent.stat().st_mode) == 0o700 and map_path.parent.parent == keys
    entries = [json.loads(line) for line in map_path.read_text().splitlines()]
    back = {e["pseudonym"]: e["path"] for e in entries}
    assert len(entries) == len(back) == len(rows) + 2  # each input once (run twice), SOURCE, labels file
    assert all(e["dataset"] == s3_prefix and source_pseudonym(secret, e["path"]) == e["pseudonym"] for e in entries)
    assert [back[line["source"]] for line in report] == [row.split(",")[0] for row in rows]
    manifest = storage.read_json(s3_prefix + "/manifest.json")
    assert back[manifest["ingest"]["source"]] == str(source.resolve())
    assert back[manifest["ingest"]["labels"]] == str(labels.resolve())
    assert manifest["counts"]["dropped_fields"] == {}

    # 5. a finished dataset is not re-ingested (and the refusal names no path of the source)
    r = subprocess.run([sys.executable, "-m", "radimagenet", "ingest", str(source), "--labels", str(labels),
                        "--out", s3_prefix, "--secret-file", str(keys / "deid-secret")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already exists" in r.stderr and _leaks(r.stderr.encode()) == []
