"""Ingest beyond one driver: Ray workers write and upload the shards, the driver sees small entries only;
the same input gives byte-identical shards and the same report with 1 or 3 workers; an interrupted
parallel ingest resumes on another number of workers; a shard written by a worker that outlives the
lease never becomes visible."""

from __future__ import annotations

import collections
import json
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest

from radimagenet.dataset.format import Sample
from radimagenet.dataset.inspect import load_report
from radimagenet.dataset.tar import encode_sample, encoded_size
from radimagenet.dataset.verify import verify
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.ingest import shards as shards_mod
from radimagenet.ingest.process import Processed, Reject
from radimagenet.ingest.shards import Entry, RayShards, commit_shard, split_chunk, write_shard
from radimagenet.ingest.target import load_journal
from radimagenet.io import lease, storage, upload
from radimagenet.ops.synth import synthesize

SECRET = b"test-secret-0123456789abcdef"


def _sample(i: int, split: str, **kw) -> Processed:
    return Processed(index=i, source=f"src-{i:016x}", key=f"{i:032x}", split=split, patient=f"{i % 5:024x}",
                     label_id=i % 3, image=bytes([i % 251]) * (700 + 37 * i), meta=b'{"label_id": %d}' % (i % 3), **kw)


def test_entries_carry_no_bytes_and_plan_by_the_exact_tar_size():
    results = [_sample(0, "train"), Reject(1, "src-1", "blank", "all pixels equal"),
               _sample(2, "test", dropped=("body_part",)), _sample(3, "train", mask=b"\x89PNG" * 90),
               _sample(4, "val", label_ids=(0, 2))]
    for encoding in ("npy", "png"):
        entries, parts = split_chunk(results, encoding)
        assert [type(e) for e in entries] == [Entry, Reject, Entry, Entry, Entry]
        assert [[s.index for s in part] for part in parts] == [[0, 3], [4], [2]]  # train, val, test
        for entry in entries:
            if isinstance(entry, Entry):
                sample = next(r for r in results if r.index == entry.index)
                part = parts[("train", "val", "test").index(entry.split)]
                assert part[entry.slot] is sample
                assert entry.size == len(encode_sample(sample, encoding)) == encoded_size(sample, encoding)
                assert not any(isinstance(v, bytes) for v in entry)
        assert entries[2].dropped == ("body_part",)


def test_the_plan_closes_each_shard_after_the_entry_that_fills_it_whatever_the_chunks():
    """RayShards plans a chunk per split at once; each shard must still close after the first entry that
    takes it to the target size, as a step per entry would, with the same (part, slot) picks."""
    import random

    rng = random.Random(0)
    entries = [Entry(i, f"src-{i}", f"{i:032x}", rng.choice(["train", "train", "val", "test"]), "p", 0,
                     rng.choice([0, 1, 300, 700, 1000, 2500])) for i in range(400)]
    for target in (1, 1000, 2500, 7000, 10**9):
        expected: dict[str, list[list[tuple[int, int]]]] = {s: [[]] for s in ("train", "val", "test")}
        size = dict.fromkeys(expected, 0)
        submitted: list[tuple[str, int, list[tuple[int, int]]]] = []

        class Task:  # stands in for the Ray task: records what would be submitted
            def __init__(self, into: list):
                self.into = into

            def remote(self, out, split, index, encoding, picks, *refs):
                self.into.append((split, index, [(refs[p], slot) for p, slot in picks.tolist()]))

        shards = RayShards(storage.parse_uri("s3://b/d"), "npy", target, {"train": 0, "val": 5, "test": 0},
                           lambda *a: None, 10**6, {})
        shards.task = Task(submitted)
        start = 0
        for chunk_no, size_of_chunk in enumerate(rng.choices([1, 3, 17, 60], k=100)):
            chunk = entries[start : start + size_of_chunk]
            start += size_of_chunk
            slots = collections.Counter()
            planned = []
            for e in chunk:  # slots count every entry of the chunk; the driver drops some (duplicates)
                e = e._replace(slot=slots[e.split])
                slots[e.split] += 1
                if e.index % 7:
                    planned.append(e)
            for e in planned:  # the reference: a step per entry
                expected[e.split][-1].append((f"{chunk_no}-{e.split}", e.slot))
                size[e.split] += e.size
                if size[e.split] >= target:
                    size[e.split] = 0
                    expected[e.split].append([])
            shards.add(planned, [f"{chunk_no}-{s}" for s in ("train", "val", "test")])
        for split in ("train", "val", "test"):
            shards._submit(split)
            first = 5 if split == "val" else 0
            mine = [(index, picks) for s, index, picks in submitted if s == split]
            assert mine == [(first + i, picks) for i, picks in enumerate(p for p in expected[split] if p)], target


def test_rows_and_entries_cross_to_and_from_tasks_as_columns_and_come_back_whole():
    from radimagenet.ingest.shards import pickle_entries, pickle_rows, unpickle_entries, unpickle_rows
    from radimagenet.ingest.sources import InputRow

    rows = [InputRow(0, "a.png", "/s/a.png", "CT/lung"), InputRow(1, "b", "", "", "p1", "train", None, ("x", "y"))]
    assert unpickle_rows(pickle_rows(rows)) == rows and type(unpickle_rows(pickle_rows(rows))[1]) is InputRow
    assert unpickle_rows(pickle_rows([])) == []
    entries, _ = split_chunk([_sample(0, "train"), Reject(1, "src-1", "blank", "all pixels equal"),
                              _sample(2, "test", dropped=("body_part",)), Reject(3, "src-3", "truncated", "cut")], "npy")
    back = unpickle_entries(pickle_entries(entries))
    assert back == entries and [type(e) for e in back] == [Entry, Reject, Entry, Reject]  # input order
    assert back[2].dropped == ("body_part",) and back[2].key == entries[2].key
    assert unpickle_entries(pickle_entries(entries[1::2])) == entries[1::2]  # only rejects
    assert unpickle_entries(pickle_entries([])) == []
    with pytest.raises(ValueError, match="InputRow: 3 columns crossed from a task, 8 expected"):
        unpickle_rows(pickle.dumps((("a",), ("b",), ("c",))))  # a worker on another version: not a short row


def test_the_heap_is_frozen_during_an_ingest_only_and_a_callers_freeze_is_kept():
    import gc

    from radimagenet.ingest.shards import frozen_heap

    gc.unfreeze()
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0  # what existed before is never walked by the driver's collections
        made = [[i] for i in range(1000)]
        shards_mod.freeze_more()  # e.g. Ray's connection, made after the ingest began
        assert gc.get_freeze_count() >= frozen + len(made)
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a caller that froze its heap itself: left as it is, nothing more frozen
    try:
        before = gc.get_freeze_count()
        with frozen_heap():
            kept = [[i] for i in range(1000)]
            shards_mod.freeze_more()
            assert gc.get_freeze_count() == before and gc.is_tracked(kept[0])
        assert gc.get_freeze_count() == before
    finally:
        gc.unfreeze()


def test_an_ingest_runs_with_the_heap_frozen_and_leaves_it_as_it_was(monkeypatch):
    import gc

    from radimagenet.errors import ConfigError
    from radimagenet.ingest import run as run_mod

    seen = {}

    def read_inputs(*args, **kwargs):  # the ingest's first step
        seen["frozen"] = gc.get_freeze_count()
        raise ConfigError("stop here")

    gc.unfreeze()
    monkeypatch.setattr(run_mod, "read_inputs", read_inputs)
    with pytest.raises(ConfigError, match="stop here"):
        ingest(IngestConfig(source="s", out="s3://b/p"), SECRET)
    assert seen["frozen"] > 0 and gc.get_freeze_count() == 0


def test_ray_tasks_get_larger_chunks_while_every_worker_has_four():
    cfg = lambda **kw: IngestConfig(source="s", out="s3://b/p", **kw)  # noqa: E731
    assert shards_mod.chunk_size(cfg(), 100_000) == 64  # in-process: as given
    assert shards_mod.chunk_size(cfg(workers=2), 300) == 64  # few inputs: as given
    assert shards_mod.chunk_size(cfg(workers=2), 4000) == 500
    assert shards_mod.chunk_size(cfg(workers=64), 1_350_000) == shards_mod.max_chunk(224) == 1337
    assert shards_mod.chunk_size(cfg(workers=64, image_size=512), 1_350_000) == 256  # 64 MiB of samples
    assert shards_mod.chunk_size(cfg(workers=64, image_size=4096), 1_350_000) == 64  # never below 64
    assert shards_mod.chunk_size(cfg(workers=64, image_size=64), 1_350_000) == 2048  # nor above 2,048


# --- against the stack -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, images=72, seed=11)  # duplicates, blank and truncated files planted
    return out


def _ingest(source: Path, out: str, source_map: Path | None = None, **kw) -> dict:
    cfg = IngestConfig(source=str(source), labels=str(source / "labels.csv"), out=out, image_size=64,
                       shard_size=kw.pop("shard_size", 20 * 1024), **kw)  # about 4 samples a shard
    return ingest(cfg, SECRET, progress=False, source_map=source_map)


def _prefix(name: str) -> str:
    return f"s3://radimagenet/tests/{name}-{uuid.uuid4().hex[:8]}"


def _shards(manifest: dict) -> list[tuple[str, str, int]]:
    return [(sh["url"].rsplit("/", 1)[-1], sh["sha256"], sh["samples"])
            for s in manifest["splits"].values() for sh in s["shards"]]


@pytest.fixture(scope="module")
def serial(stack_env, corpus) -> tuple[dict, str]:
    out = _prefix("workers-1")
    return _ingest(corpus, out, chunk_size=5), out


@pytest.mark.integration
def test_one_or_three_workers_write_identical_shards(stack_env, corpus, serial, monkeypatch):
    manifest, out = serial
    added: list[tuple[type, type]] = []
    real_add = RayShards.add

    def add(self, entries, parts):  # what the driver handles: entries and object refs, never a sample
        added.extend((type(entry), type(parts[0])) for entry in entries)
        real_add(self, entries, parts)

    monkeypatch.setattr(RayShards, "add", add)
    assert manifest["counts"]["duplicates"] >= 2 and manifest["counts"]["rejected"] >= 2
    assert len(_shards(manifest)) >= 10 and all(len(s["shards"]) >= 2 for s in manifest["splits"].values())
    other_out = _prefix("workers-3")  # 2 workers: tests/ingest/test_run.py and the resume test below
    other = _ingest(corpus, other_out, workers=3, chunk_size=3)
    assert other["digest"] == manifest["digest"]
    assert _shards(other) == _shards(manifest)  # same members, same order, same bytes
    assert other["counts"] == manifest["counts"]
    assert load_report(other_out) == load_report(out)  # duplicates, patients, splits: the same decisions
    assert verify(other) == []
    import ray

    assert added and {t for t, _ in added} == {Entry} and {r for _, r in added} == {ray.ObjectRef}


@pytest.mark.integration
def test_an_interrupted_parallel_ingest_resumes_on_another_worker_count(stack_env, corpus, serial, monkeypatch, tmp_path):
    manifest, serial_out = serial
    out = _prefix("workers-resume")
    real, calls = upload.complete_upload, {"n": 0}

    def crash_on_third(staged):  # the third shard is journaled (by its task) but never made visible
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        real(staged)

    monkeypatch.setattr(upload, "complete_upload", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _ingest(corpus, out, workers=2, chunk_size=4)
    monkeypatch.undo()
    journaled = [u for u in storage.list_keys(out + "/_journal") if not u.endswith("config.json")]
    assert journaled and not storage.exists(out + "/manifest.json")
    present = set(storage.list_keys(out))
    stale = [u for u in journaled if storage.read_json(u)["url"] not in present]
    assert stale  # a journal record of a shard that never became visible: left out when resuming
    assert len(load_journal(storage.parse_uri(out))[1]) == len(journaled) - len(stale)
    fresh_map = tmp_path / "another-machine" / "map.jsonl"  # a resume elsewhere: its map names every input too
    resumed = _ingest(corpus, out, source_map=fresh_map, workers=3, chunk_size=6)
    mapped = {json.loads(line)["pseudonym"] for line in fresh_map.read_text().splitlines()}
    assert {line["source"] for line in load_report(out)} <= mapped
    assert resumed["digest"] == manifest["digest"] and resumed["counts"] == manifest["counts"]
    report = storage.read_bytes(out + "/report.jsonl")  # the journaled inputs' lines too, byte for byte
    assert report == storage.read_bytes(serial_out + "/report.jsonl")
    assert verify(resumed) == []
    listed = {sh["url"] for s in resumed["splits"].values() for sh in s["shards"]}
    assert {u for u in storage.list_keys(out) if u.endswith(".tar")} == listed  # the unjournaled one is gone
    assert storage.list_keys(out + "/_journal") == []


def _uploads(out: str) -> set[str]:
    u = storage.parse_uri(out)
    resp = storage.client().list_multipart_uploads(Bucket=u.bucket, Prefix=u.key + "/")
    return {up["UploadId"] for up in resp.get("Uploads", []) or []}


@pytest.mark.integration
def test_a_shard_written_after_the_lease_is_lost_never_becomes_visible(stack_env):
    out = _prefix("workers-lease")
    uri = storage.parse_uri(out)
    samples: list[Sample] = [_sample(i, "train", dropped=("body_part",) if i == 1 else ()) for i in range(4)]
    held = lease.acquire(lease.lease_uri(out), purpose="ingest")
    tallies: list = []

    # a worker writes and journals shard 0 while the lease is held: invisible until the driver completes it
    shard, staged = write_shard(out, "train", 0, "npy", np.array([[0, 0], [0, 1]]), samples)
    assert not storage.exists(shard.url) and staged.upload_id in _uploads(out)
    body = storage.read_json(out + "/_journal/train-000000.json")  # journaled by the task, before completion,
    assert body["dropped_fields"] == {"1": ["body_part"]} and body["url"] == shard.url  # with dropped fields
    assert (shard.entry["samples"], shard.dropped, sorted(shard.patients)) == (2, {"body_part": 1}, [_sample(0, "train").patient, _sample(1, "train").patient])
    assert load_journal(uri)[1] == []  # a journal record counts only once its shard exists
    commit_shard(held, tallies, shard, staged)
    assert storage.exists(shard.url) and tallies == [shard]
    assert [r.url for r in load_journal(uri)[1]] == [shard.url]
    other = dict(body, bytes=body["bytes"] + 512)  # another attempt's record of that name (another shard)
    storage.write_bytes(out + "/_journal/train-000000.json", json.dumps(other).encode())
    assert load_journal(uri)[1] == []  # not counted against this object: the shard is made again
    storage.write_bytes(out + "/_journal/train-000000.json", json.dumps(body).encode())

    # another ingest takes the prefix over; a worker of the first one still finishes shard 1
    lease.acquire(lease.lease_uri(out), purpose="ingest", take_over=True)
    shard, staged = write_shard(out, "train", 1, "npy", np.array([[0, 2], [0, 3]]), samples)
    held.renew()  # the first driver learns of the loss at its next heartbeat ...
    with pytest.raises(lease.LeaseLost):
        commit_shard(held, tallies, shard, staged)  # ... and completes nothing more
    assert not storage.exists(shard.url) and staged.upload_id not in _uploads(out)
    assert len(tallies) == 1 and len(load_journal(uri)[1]) == 1  # its journal record counts for nothing
