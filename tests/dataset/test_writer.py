"""ShardWriter against the real local S3: shards complete in the background, every finished shard is
reported once it is uploaded, errors surface at ``close``, ``abort`` keeps the finished ones."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid

import pytest

from radimagenet.dataset.format import Sample
from radimagenet.dataset.writer import ShardRecord, ShardWriter
from radimagenet.errors import StorageError
from radimagenet.io import storage, upload

pytestmark = pytest.mark.integration



def sample(i: int, size: int = 3000) -> Sample:
    return Sample(index=i, source=f"img/{i}.dcm", key=f"{i:032x}", split="train", patient="p", label_id=i % 3,
                  image=bytes([i % 251]) * size, meta=b'{"label_id": %d}' % (i % 3))


def prefix() -> storage.S3Uri:
    return storage.parse_uri(f"s3://radimagenet/tests/shardwriter-{uuid.uuid4().hex[:8]}")


def test_every_shard_is_uploaded_checksummed_and_reported(stack_env):
    reported: list[ShardRecord] = []

    def on_shard(record: ShardRecord) -> None:  # the journal hook: the object must already exist
        assert storage.exists(record.url), record.url
        reported.append(record)

    with ShardWriter(prefix(), "train", "npy", target_bytes=10_000, on_shard=on_shard) as writer:
        for i in range(20):
            writer.write(sample(i))
    assert sorted(r.index for r in reported) == list(range(len(reported))) and len(reported) >= 5
    assert sorted(writer.records, key=lambda r: r.index) == sorted(reported, key=lambda r: r.index)
    seen = []
    for record in sorted(reported, key=lambda r: r.index):
        body = storage.read_bytes(record.url)
        assert (len(body), hashlib.sha256(body).hexdigest()) == (record.bytes, record.sha256)
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = tar.getnames()
        assert len(names) == 3 * record.samples
        seen += [m["index"] for m in record.members]
    assert seen == list(range(20))  # in order, each sample once


def test_an_upload_error_surfaces_at_close_and_leaves_no_object(stack_env, monkeypatch):
    out = prefix()
    writer = ShardWriter(out, "train", "npy", target_bytes=5_000)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")  # requests are refused from here on
    writer.write(sample(0))
    writer.write(sample(1))  # passes the target: the shard completes in the background and fails there
    with pytest.raises(StorageError, match=out.bucket):
        writer.close()
    assert writer.records == []
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack_env["AWS_SECRET_ACCESS_KEY"])
    assert storage.list_keys(out) == []


def test_abort_drops_the_open_shard_and_keeps_the_finished_ones(stack_env):
    out = prefix()
    reported: list[ShardRecord] = []
    writer = ShardWriter(out, "train", "npy", target_bytes=10_000, on_shard=reported.append)
    for i in range(5):  # ~5.6 kB a sample: 2 samples fill a shard; the 5th opens shard 2
        writer.write(sample(i))
    writer.abort()
    assert sorted(r.index for r in reported) == [0, 1]
    assert [u for u in storage.list_keys(out) if u.endswith(".tar")] == sorted(r.url for r in reported)
    uploads = storage.client().list_multipart_uploads(Bucket=out.bucket, Prefix=out.key).get("Uploads", [])
    assert uploads == []


def test_s3_writer_multipart_keeps_every_byte_in_order(stack_env):
    """Several 5 MiB parts (the S3 minimum) and a short last one, written as bytes, bytearray and
    memoryview chunks; a buffer the caller reuses after ``write`` must not change what was sent."""
    uri = prefix().join("big.bin")
    chunks = [bytes([i % 256]) * (700_000 + i) for i in range(20)]  # ~14 MB: 2 full parts + a tail
    reused = bytearray(b"x" * 1000)
    with upload.S3Writer(uri, part_size=5 * 1024 * 1024) as out:
        for i, chunk in enumerate(chunks):
            out.write(chunk if i % 3 == 0 else bytearray(chunk) if i % 3 == 1 else memoryview(chunk))
            out.write(reused)
            reused[:] = b"y" * 1000  # the writer holds a copy, not the caller's buffer
    expected = b"".join(c + (b"x" * 1000 if i == 0 else b"y" * 1000) for i, c in enumerate(chunks))
    assert storage.read_bytes(uri) == expected
