"""Shard sample indexes and ranged reads against the local S3: the writer's index, one built for a
dataset written before indexes existed, stale indexes, and byte ranges checked against whole shards."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import numpy as np
import pytest

from helpers_shards import ensure_bucket, write_test_dataset
from radimagenet.dataset import index as shard_index
from radimagenet.dataset.format import INDEX_FORMAT, Sample, index_uri
from radimagenet.dataset.reader import parse_samples, read_runs, read_shard
from radimagenet.dataset.tar import iter_tar
from radimagenet.dataset.writer import ShardWriter
from radimagenet.errors import StorageError
from radimagenet.io import storage
from radimagenet.io.ranged import open_range, read_range


def test_iter_tar_spans_match_tarfile_offsets() -> None:
    """Spans start at a member's first header (long-name or pax headers included) and end after its padding."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, size in [("a.npy", 700), ("d" * 120 + "/b.cls", 1), ("c.json", 512), ("é.json", 3)]:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    for chunk in (512, 1 << 20):  # spans survive the reader's buffer refills
        spans = list(iter_tar(io.BytesIO(data), "t", chunk=chunk, spans=True))
        assert [s[0] for s in spans] == [i.name for i in infos]
        assert [s[2] for s in spans] == [i.offset for i in infos]
        assert [s[3] for s in spans] == [i.offset_data + -(-i.size // 512) * 512 for i in infos]


def _prefix(name: str) -> str:
    return f"s3://radimagenet/tests/index-{uuid.uuid4().hex[:8]}/{name}"


def _check_ranges(url: str, index: shard_index.ShardIndex) -> None:
    """Every sample's byte range, and runs of them, parse to exactly what streaming the shard yields."""
    whole = list(read_shard(url))
    assert [s["__key__"].encode() for s in whole] == index.keys.tolist()
    n = len(whole)
    for i in range(n):
        start, end = int(index.offsets[i]), int(index.offsets[i + 1])
        assert parse_samples(read_range(url, start, end)) == [whole[i]]
        body, pieces = open_range(url, start, end), []
        while piece := body.read(1000):  # streamed in pieces
            pieces.append(piece)
        assert b"".join(pieces) == read_range(url, start, end) == storage.read_bytes(url)[start:end]
    cuts = [(0, n), (1, n), (n - 1, n), (0, 1)]
    runs = [(url, int(index.offsets[a]), int(index.offsets[b])) for a, b in cuts]
    assert [parse_samples(data) for data in read_runs(runs, prefetch=2)] == [whole[a:b] for a, b in cuts]
    tail = storage.read_bytes(url)[int(index.offsets[n]) :]
    assert len(tail) >= 1024 and tail.count(0) == len(tail)  # only the end-of-archive blocks follow


@pytest.mark.integration
def test_the_writer_stores_each_shards_index(stack_env) -> None:
    out = storage.parse_uri(_prefix("written"))
    with ShardWriter(out, "train", "npy", target_bytes=20_000) as writer:
        for i in range(9):
            mask = b"m" * 40 if i % 2 else None
            writer.write(Sample(index=i, source=f"s{i}", key=f"{i:032x}", split="train", patient="p",
                                label_id=i % 3, image=bytes([i]) * (3000 + 300 * i), meta=b"{}", mask=mask))
    assert len(writer.records) >= 2
    for record in writer.records:
        assert len(record.offsets) == record.samples + 1 and record.offsets[-1] == record.bytes - 1024
        doc = json.loads(storage.read_bytes(index_uri(record.url)))
        assert doc == {"format": INDEX_FORMAT, "shard": record.url.rsplit("/", 1)[-1], "sha256": record.sha256,
                       "samples": record.samples, "keys": [m["key"] for m in record.members],
                       "offsets": record.offsets}
        entry = record.manifest_entry()
        index = shard_index.shard_index(entry, cache=False)
        assert index.offsets.tolist() == record.offsets
        _check_ranges(record.url, index)


@pytest.mark.integration
def test_a_dataset_without_indexes_gets_them_built_cached_and_checked(stack_env) -> None:
    uri = _prefix("legacy")
    ensure_bucket(uri)
    manifest = write_test_dataset(uri, {"train": 11}, 4, masks=True)  # tarfile-written, no _index/
    shards = manifest["splits"]["train"]["shards"]
    assert not storage.exists(index_uri(shards[0]["url"]))
    indexes = shard_index.split_indexes(manifest, "train")
    assert [len(ix) for ix in indexes] == [4, 4, 3]
    for shard, index in zip(shards, indexes, strict=True):
        assert storage.exists(index_uri(shard["url"]))  # cached for the next reader
        _check_ranges(shard["url"], index)

    # a stale index (another shard's checksum) or a damaged one is rebuilt, not trusted
    first = shards[0]
    doc = json.loads(storage.read_bytes(index_uri(first["url"])))
    storage.write_bytes(index_uri(first["url"]), json.dumps({**doc, "sha256": "0" * 64,
                                                              "offsets": doc["offsets"][::-1]}).encode())
    rebuilt = shard_index.shard_index(first)
    assert rebuilt.offsets.tolist() == doc["offsets"]
    assert json.loads(storage.read_bytes(index_uri(first["url"])))["sha256"] == first["sha256"]

    # a shard holding other than what its manifest entry says is an error naming it
    with pytest.raises(StorageError, match=r"train-000000.tar holds 4 samples but the manifest says 5"):
        shard_index.shard_index({**first, "samples": 5, "sha256": ""})


@pytest.mark.integration
def test_ranged_read_errors_are_one_line(stack_env) -> None:
    uri = _prefix("errors")
    ensure_bucket(uri)
    storage.write_bytes(uri + "/blob", bytes(range(256)) * 4)
    assert read_range(uri + "/blob", 10, 20) == bytes(range(10, 20))
    assert read_range(uri + "/blob", 5, 5) == b""
    with pytest.raises(StorageError, match="does not exist"):
        read_range(uri + "/missing", 0, 10)
    with pytest.raises(StorageError, match="shorter than byte 5000"):
        read_range(uri + "/blob", 4000, 5000)
    assert np.frombuffer(read_range(uri + "/blob", 1020, 1024), np.uint8).tolist() == [252, 253, 254, 255]
