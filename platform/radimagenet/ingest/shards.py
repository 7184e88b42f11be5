"""Shards written by the workers, planned by the driver: the small record of each processed input that
the driver sees (:class:`Entry`), the samples' bytes kept where they were made (one part per split of
each chunk, in Ray's object store), the shard plan, and the task that writes one planned shard.

    entries, *parts = process_chunk(pickle_rows(rows), ctx)              # phase 1 (a Ray task)
    record, staged, body = write_shard(out, "train", 3, "npy", picks, *parts)  # phase 2 (a Ray task)
    commit_shard(held, out, dropped, records, record, staged, body)           # the driver, under the lease

The driver decides every shard's members from the entries alone (their tar sizes: a shard closes after
the sample that takes it to ``--shard-size``), in input order, so a shard's contents depend neither on
the number of workers nor on the order tasks finish in. Workers upload; only the driver, holding the
prefix's lease, completes an upload (makes a shard visible), then journals it. ``LocalShards`` runs the
same plan in-process (``--workers 1``), ``RayShards`` with Ray tasks.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import operator
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from radimagenet.dataset.format import SPLITS, Sample
from radimagenet.dataset.tar import encoded_size
from radimagenet.dataset.writer import ShardRecord, ShardWriter
from radimagenet.ingest.config import IngestConfig
from radimagenet.ingest.process import Context, Reject, process_rows
from radimagenet.ingest.sources import InputRow
from radimagenet.ingest.target import journal_body, journal_shard
from radimagenet.io import cluster, lease, storage
from radimagenet.io.storage import S3Uri, Staged

NEVER = sys.maxsize  # a ShardWriter's own target: the plan, not the writer, closes shards
SPLIT_POS = {s: i for i, s in enumerate(SPLITS)}
Commit = Callable[[ShardRecord, Staged, bytes | None], None]  # the driver's: complete the upload, journal
# the shard (bytes: its journal record, made by the shard's task; None: the driver makes it)


class Entry(NamedTuple):
    """A processed input as the driver sees it: what duplicates, splits and the plan need; no bytes."""

    index: int
    source: str
    key: str
    split: str
    patient: str
    slot: int  # position in its chunk's part of its split
    size: int  # bytes of its tar entries (dataset.tar.encoded_size)
    dropped: tuple[str, ...] = ()


def split_chunk(results: list[Sample | Reject], encoding: str) -> tuple[list[Entry | Reject], list[list[Sample]]]:
    """A chunk's results as entries (rejects stay as they are) and one list of samples per split."""
    parts: list[list[Sample]] = [[] for _ in SPLITS]
    entries: list[Entry | Reject] = []
    for res in results:
        if isinstance(res, Reject):
            entries.append(res)
            continue
        part = parts[SPLIT_POS[res.split]]
        entries.append(Entry(res.index, res.source, res.key, res.split, res.patient, len(part),
                             encoded_size(res, encoding), getattr(res, "dropped", ())))
        part.append(res)
    return entries, parts


def process_chunk(rows: bytes, ctx: Context) -> tuple[Any, ...]:
    """Phase 1, a Ray task with ``1 + len(SPLITS)`` returns: the entries (fetched by the driver), then
    the samples of each split (left in the object store for the shard tasks). Rows and entries cross as
    one pickle of columns each (``pickle_rows``, ``pickle_entries``): Ray's serializer pickles a list's
    objects one by one, and a named tuple unpickles through its Python ``__new__``."""
    entries, parts = split_chunk(process_rows(unpickle_rows(rows), ctx), ctx.encoding)
    return (pickle_entries(entries), *parts)


def _columns(items: list[tuple]) -> tuple[tuple, ...]:
    return tuple(zip(*items, strict=True))


def _rebuild(cls: Any, columns: tuple[tuple, ...]) -> list:
    """``cls`` named tuples from ``_columns``, made without their Python ``__new__`` (3x faster)."""
    if columns and len(columns) != len(cls._fields):  # e.g. a worker on another version of the package
        raise ValueError(f"{cls.__name__}: {len(columns)} columns crossed from a task, {len(cls._fields)} expected")
    return list(map(functools.partial(tuple.__new__, cls), zip(*columns, strict=True)))


def pickle_rows(rows: list[InputRow]) -> bytes:
    """A chunk of rows as :func:`process_chunk` takes it: one pickle of their columns (0.3 against
    2.3 us per row, on the driver)."""
    return pickle.dumps(_columns(rows), protocol=5)


def unpickle_rows(data: bytes) -> list[InputRow]:
    return _rebuild(InputRow, pickle.loads(data))


def pickle_entries(entries: list[Entry | Reject]) -> bytes:
    """A chunk's entries as the driver fetches them: the columns of its entries, and its rejects."""
    rejects = [e for e in entries if isinstance(e, Reject)]
    return pickle.dumps((_columns([e for e in entries if not isinstance(e, Reject)]), rejects), protocol=5)


def unpickle_entries(data: bytes) -> list[Entry | Reject]:
    """The entries and rejects of ``pickle_entries``, in input order (0.4 against 1.1 us per entry):
    sorted by row index, which ascends in input order (every row source numbers rows as it reads them)."""
    columns, rejects = pickle.loads(data)
    entries = _rebuild(Entry, columns)
    return sorted(entries + rejects, key=operator.attrgetter("index")) if rejects else entries


def write_shard(out: str, split: str, index: int, encoding: str, picks: np.ndarray,
                *parts: list[Sample]) -> tuple[ShardRecord, Staged, bytes]:
    """Phase 2: write shard ``index`` of ``split`` from ``(part, slot)`` picks (rows), in order, and upload
    it without completing the upload (the driver does, under the lease); return its record, the staged
    upload and its journal record (``target.journal_body``). On error nothing is left."""
    writer = ShardWriter(storage.parse_uri(out), split, encoding, NEVER, index, stage=True)
    dropped: dict[int, tuple[str, ...]] = {}
    try:
        with writer:
            for part, slot in picks.tolist():
                sample = parts[part][slot]
                writer.write(sample)
                if getattr(sample, "dropped", ()):
                    dropped[sample.index] = sample.dropped
    except BaseException:
        for staged in writer.staged.values():
            storage.abort_upload(staged)
        raise
    record = writer.records[0]
    return record, writer.staged[index], journal_body(record, dropped)


class LocalShards:
    """Shards written by this process (``--workers 1``): each sample streams into its split's writer,
    which closes a shard when the plan says so; ``commit`` runs on the writer's thread."""

    def __init__(self, out: S3Uri, encoding: str, target: int, first: dict[str, int], commit: Commit):
        self.encoding, self.target, self.commit = encoding, target, commit
        self.size = dict.fromkeys(SPLITS, 0)
        self.writers = {s: ShardWriter(out, s, encoding, NEVER, first[s], self._staged, stage=True) for s in SPLITS}

    def _staged(self, record: ShardRecord) -> None:
        self.commit(record, self.writers[record.split].staged.pop(record.index), None)

    def add(self, sample: Sample, parts: Any = None) -> None:
        """Write ``sample`` into its split's open shard (``parts``: unused here)."""
        self.writers[sample.split].write(sample)
        self.size[sample.split] += encoded_size(sample, self.encoding)
        if self.size[sample.split] >= self.target:
            self.size[sample.split] = 0
            self.writers[sample.split].finish_shard()

    def poll(self) -> None:
        """Nothing to collect: the writers' threads commit."""

    def finish(self) -> None:
        for w in self.writers.values():  # every split's last shard uploads at the same time
            w.finish_shard()
        for w in self.writers.values():
            w.close()

    def abort(self) -> None:
        """Drop the open shards after the finished ones are committed (a re-run does not redo them)."""
        for w in self.writers.values():
            w.abort()


class RayShards:
    """Shards written by Ray tasks from the parts phase 1 left in the object store. A part stays there
    while an open or unwritten shard picks from it: at most about one shard per split plus
    ``max_pending`` shards being written. ``commit`` runs on the driver's thread as shards finish."""

    def __init__(self, out: S3Uri, encoding: str, target: int, first: dict[str, int], commit: Commit,
                 max_pending: int, options: dict[str, Any]):
        import ray

        self.out, self.encoding, self.target, self.commit = str(out), encoding, target, commit
        self.task = ray.remote(write_shard).options(num_cpus=1, max_retries=3, **options)
        self.refs: dict[str, list[Any]] = {s: [] for s in SPLITS}  # the parts the open shard picks from
        self.picks: dict[str, list[int]] = {s: [] for s in SPLITS}  # flat (part, slot) pairs, in order
        self.size = dict.fromkeys(SPLITS, 0)
        self.next_index = dict(first)
        self.pending: list[Any] = []  # refs of the shard tasks not yet committed
        self.max_pending = max(2, max_pending)

    def add(self, entry: Entry, parts: Sequence[Any]) -> None:
        """Plan ``entry`` into its split's open shard; submit the shard when it is full."""
        split = entry.split
        part, refs = parts[SPLIT_POS[split]], self.refs[split]
        if not refs or refs[-1] is not part:  # a chunk's entries arrive together: its part once
            refs.append(part)
        self.picks[split] += (len(refs) - 1, entry.slot)
        self.size[split] += entry.size
        if self.size[split] >= self.target:
            self._submit(split)

    def _submit(self, split: str) -> None:
        import ray

        refs, picks = self.refs[split], self.picks[split]
        if not picks:
            return
        self.refs[split], self.picks[split], self.size[split] = [], [], 0
        picks = np.array(picks, dtype=np.int64).reshape(-1, 2)  # one buffer for Ray, not a tuple per sample
        index, self.next_index[split] = self.next_index[split], self.next_index[split] + 1
        self.pending.append(self.task.remote(self.out, split, index, self.encoding, picks, *refs))
        while len(self.pending) > self.max_pending:  # back-pressure: bounded parts in the object store
            self._collect(ray.wait(self.pending, num_returns=1)[0])

    def _collect(self, ready: list[Any]) -> None:
        for ref in ready:
            self.pending.remove(ref)
            self.commit(*get_result(ref))

    def poll(self) -> None:
        """Commit the shards whose tasks have finished."""
        import ray

        if self.pending:
            self._collect(ray.wait(self.pending, num_returns=len(self.pending), timeout=0)[0])

    def finish(self) -> None:
        import ray

        for split in SPLITS:
            self._submit(split)
        while self.pending:
            self._collect(ray.wait(self.pending, num_returns=1)[0])

    def abort(self) -> None:
        """Commit the shards already written (a re-run does not redo them); cancel the others (their
        tasks abort their uploads)."""
        import ray

        try:
            self.poll()
        except BaseException:  # noqa: BLE001 - the error that stopped the run is the one to report
            pass
        for ref in self.pending:
            ray.cancel(ref)
        self.pending = []


# --- the driver's side -----------------------------------------------------------------------------

MAX_CHUNK_BYTES = 64 * 1024 * 1024  # image bytes per Ray task at most: its samples wait in the object store


def max_chunk(image_size: int) -> int:
    """Files per Ray task at most: ``MAX_CHUNK_BYTES`` of 8-bit images of ``image_size`` (npy, the
    largest encoding; 1,337 files at 224 px, 256 at 512 px), at least 64 and at most 2,048 (a task's
    time grows with its files, whatever their output size)."""
    return min(2048, max(64, MAX_CHUNK_BYTES // (image_size * image_size)))


def chunk_size(cfg: IngestConfig, pending: int) -> int:
    """Files per task: ``--chunk-size``; with Ray workers, larger (up to :func:`max_chunk`) while each
    worker still gets 4: a Ray task costs the driver's process ~1.4 ms of CPU (Ray's threads included),
    22 us per file in 64-file chunks, 1 us in 1,337-file ones."""
    if cfg.workers == 1:
        return cfg.chunk_size
    return max(cfg.chunk_size, min(max_chunk(cfg.image_size), pending // (4 * cfg.workers)))


def commit_shard(held: lease.Lease, out: S3Uri, dropped: dict[int, tuple[str, ...]], records: list[ShardRecord],
                 record: ShardRecord, staged: Staged, body: bytes | None = None) -> None:
    """Make a shard visible and journal it (``body``: its journal record; None: made here from
    ``dropped``), only while this process holds the lease (checked just before): a worker, or a writer
    thread, that outlives the lease leaves at most an invisible upload."""
    try:
        held.check()
        storage.complete_upload(staged)
    except BaseException:
        storage.abort_upload(staged)
        raise
    journal_shard(out, record, journal_body(record, dropped) if body is None else body)
    records.append(record)


_FROZE = {"heap": False}  # whether a frozen_heap() in effect froze the heap itself


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects that exist now (imports; with :func:`freeze_more`, Ray's and the S3 client's too:
    ~100,000) left out of garbage collection until the end: a full collection walks them all (30-85 ms
    of the driver's CPU here), and the records an ingest makes trigger full collections. Objects made
    inside are collected as usual. A heap frozen before (by the caller) is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    _FROZE["heap"] = True
    try:
        yield
    finally:
        _FROZE["heap"] = False
        gc.unfreeze()


def freeze_more() -> None:
    """Inside a :func:`frozen_heap` that froze the heap: the objects made since join it."""
    if _FROZE["heap"]:
        gc.freeze()


def connected(workers: int) -> Any:
    """Connected to Ray for more than one worker (a local Ray of ``workers`` CPUs unless a cluster is named)."""
    if workers == 1:
        return contextlib.nullcontext()
    return cluster.connect(num_cpus=workers, log_to_driver=False, include_dashboard=False, stack_head=False)


def get_result(ref: Any) -> Any:
    """A task's result; its error as the task raised it (a ``StorageError`` stays one line for the CLI)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise


def task_options() -> dict[str, Any]:
    """Ray options of the ingest's tasks: the driver's settings (``cluster.worker_env``, never credentials)."""
    env = cluster.worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}
