"""One writer per dataset prefix, through the ingest users run: a second ingest is refused while the
first holds the lease and never aborts its uploads; two CLI ingests started together leave one complete
dataset; a killed ingest is finished by a re-run at once; --take-over takes a live lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from radimagenet.dataset.format import load_manifest
from radimagenet.dataset.verify import verify
from radimagenet.errors import ConfigError
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.io import lease, storage, upload
from radimagenet.ops.synth import synthesize

pytestmark = pytest.mark.integration

SECRET = b"test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, images=60, seed=5)
    return out


def _cfg(source: Path, out: str, **kw) -> IngestConfig:
    return IngestConfig(source=str(source), labels=str(source / "labels.csv"), out=out,
                        shard_size=kw.pop("shard_size", 32 * 1024), **kw)


def _uploads(out: str) -> set[str]:
    u = storage.parse_uri(out)
    resp = storage.client().list_multipart_uploads(Bucket=u.bucket, Prefix=u.key + "/")
    return {up["UploadId"] for up in resp.get("Uploads", []) or []}


def test_a_second_ingest_is_refused_and_leaves_the_holders_uploads(stack_env, corpus):
    out = f"s3://radimagenet/tests/lease-ingest-{uuid.uuid4().hex[:8]}"
    other = lease.acquire(lease.lease_uri(out), purpose="ingest")  # another live ingest ...
    writer = upload.S3Writer(f"{out}/train-000000.tar", part_size=5 * 1024 * 1024)
    writer.write(b"\0" * (5 * 1024 * 1024 + 1))  # ... with a multipart upload in flight
    writer.write(b"\0")
    upload_id = writer._upload_id  # noqa: SLF001 - the upload the other holder owns
    assert upload_id in _uploads(out)

    with pytest.raises(ConfigError, match=r"another ingest is writing .* held by .*pid") as err:
        ingest(_cfg(corpus, out), SECRET, progress=False)
    assert other.body["holder"] in str(err.value)
    assert upload_id in _uploads(out)  # never aborted by the refused ingest
    assert storage.read_json(lease.lease_uri(out))["lease_id"] == other.body["lease_id"]

    manifest = ingest(_cfg(corpus, out, take_over=True), SECRET, progress=False)
    assert manifest["counts"]["inputs"] == 60
    assert upload_id in _uploads(out)  # a live holder taken over by the flag aborts its own uploads
    other.renew()
    with pytest.raises(lease.LeaseLost):
        other.check()
    writer.abort()
    assert upload_id not in _uploads(out)
    assert not storage.exists(lease.lease_uri(out))  # released at the end
    assert verify(load_manifest(out)) == []


def _cli(corpus: Path, out: str, home: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, RADIMAGENET_HOME=str(home))
    return subprocess.Popen(
        [sys.executable, "-m", "radimagenet", "ingest", str(corpus), "--labels", str(corpus / "labels.csv"),
         "--out", out, "--shard-size", "16KB", "--no-progress", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_cli_ingests_started_together_leave_one_dataset(stack_env, corpus, tmp_path):
    out = f"s3://radimagenet/tests/lease-race-{uuid.uuid4().hex[:8]}"
    procs = [_cli(corpus, out, tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(r for r in results if r[0] != 0)
    # refused by the lease, or (when it started after the winner finished) by the finished dataset
    assert "held by" in loser[2] or "a dataset already exists" in loser[2], loser[2]
    assert verify(load_manifest(out)) == []


def test_a_killed_ingest_is_finished_by_a_rerun_without_waiting(stack_env, corpus, tmp_path):
    out = f"s3://radimagenet/tests/lease-kill-{uuid.uuid4().hex[:8]}"
    proc = _cli(corpus, out, tmp_path, "--shard-size", "4KB")
    journal = storage.parse_uri(out).join("_journal")
    deadline = time.monotonic() + 120
    while len(storage.list_keys(journal)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"the ingest finished before it could be killed: {proc.stderr.read()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert storage.read_json(lease.lease_uri(out))["pid"] == proc.pid  # left behind, not yet expired

    again = _cli(corpus, out, tmp_path, "--shard-size", "4KB")
    code, _, err = again.wait(timeout=300), again.stdout.read(), again.stderr.read()
    assert code == 0, err
    assert verify(load_manifest(out)) == []
    assert not storage.exists(lease.lease_uri(out))
