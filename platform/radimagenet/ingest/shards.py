"""Shards written by the workers, planned by the driver: the small record of each processed input that
the driver sees (:class:`Entry`), the samples' bytes kept where they were made (one part per split of
each chunk, in Ray's object store), the shard plan, and the task that writes one planned shard.

    entries, *parts = process_chunk(pickle_rows(rows), ctx)         # phase 1 (a Ray task)
    tally, staged = write_shard(out, "train", 3, "npy", picks, *parts)  # phase 2 (a Ray task)
    commit_shard(held, tallies, tally, staged)                          # the driver, under the lease

The driver decides every shard's members from the entries alone (their tar sizes: a shard closes after
the sample that takes it to ``--shard-size``), in input order, so a shard's contents depend neither on
the number of workers nor on the order tasks finish in. Workers upload; only the driver, holding the
prefix's lease, completes an upload (makes a shard visible). A shard is journaled before its upload
completes: its journal record counts only once the shard exists (``target.load_journal``). The driver
sees a shard's tally (``ingest/manifest.py``), never its members. ``LocalShards`` runs the same plan
in-process (``--workers 1``), ``RayShards`` with Ray tasks.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
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
from radimagenet.ingest.manifest import ShardTally, tally
from radimagenet.ingest.process import Context, Reject, process_rows
from radimagenet.ingest.sources import InputRow
from radimagenet.ingest.target import journal_body, journal_shard
from radimagenet.io import cluster, lease, storage, upload
from radimagenet.io.storage import S3Uri
from radimagenet.io.upload import Staged

NEVER = sys.maxsize  # a ShardWriter's own target: the plan, not the writer, closes shards
SPLIT_POS = {s: i for i, s in enumerate(SPLITS)}
Commit = Callable[[ShardTally, Staged], None]  # the driver's: complete a journaled shard's upload


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
                *parts: list[Sample]) -> tuple[ShardTally, Staged]:
    """Phase 2: write shard ``index`` of ``split`` from ``(part, slot)`` picks (rows), in order, upload it
    without completing the upload (the driver does, under the lease) and journal it; return its tally
    and the staged upload. On error nothing is left but, at most, the shard's sample index (``_index/``)
    and journal record, which count for nothing without the shard."""
    uri = storage.parse_uri(out)
    writer = ShardWriter(uri, split, encoding, NEVER, index, stage=True)
    dropped: dict[int, tuple[str, ...]] = {}
    try:
        with writer:
            for part, slot in picks.tolist():
                sample = parts[part][slot]
                writer.write(sample)
                if getattr(sample, "dropped", ()):
                    dropped[sample.index] = sample.dropped
        record = writer.records[0]
        journal_shard(uri, record, journal_body(record, dropped))
    except BaseException:
        for staged in writer.staged.values():
            upload.abort_upload(staged)
        raise
    return tally(record, dropped), writer.staged[index]


class LocalShards:
    """Shards written by this process (``--workers 1``): each sample streams into its split's writer,
    which closes a shard when the plan says so; ``commit`` runs on the writer's thread."""

    def __init__(self, out: S3Uri, encoding: str, target: int, first: dict[str, int], commit: Commit,
                 dropped: dict[int, tuple[str, ...]]):
        self.out, self.encoding, self.target, self.commit = out, encoding, target, commit
        self.dropped = dropped  # input index -> dropped fields (the driver's, filled before each write)
        self.size = dict.fromkeys(SPLITS, 0)
        self.writers = {s: ShardWriter(out, s, encoding, NEVER, first[s], self._staged, stage=True) for s in SPLITS}

    def _staged(self, record: ShardRecord) -> None:
        staged = self.writers[record.split].staged.pop(record.index)
        try:
            journal_shard(self.out, record, journal_body(record, self.dropped))
        except BaseException:
            upload.abort_upload(staged)
            raise
        self.commit(tally(record, self.dropped), staged)

    def add(self, samples: list[Sample], parts: Any = None) -> None:
        """Write ``samples`` (in input order) into their splits' open shards (``parts``: unused here)."""
        for sample in samples:
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
        self.picks: dict[str, list[tuple[int, list[int]]]] = {s: [] for s in SPLITS}  # (part, its slots), in order
        self.size = dict.fromkeys(SPLITS, 0)
        self.next_index = dict(first)
        self.pending: list[Any] = []  # refs of the shard tasks not yet committed
        self.max_pending = max(2, max_pending)

    def add(self, entries: list[Entry], parts: Sequence[Any]) -> None:
        """Plan a chunk's written entries (in input order) into their splits' open shards, submitting each
        shard as it fills: it closes after the entry that takes it to the target size."""
        by_split: dict[str, list[Entry]] = {s: [] for s in SPLITS}
        for entry in entries:
            by_split[entry.split].append(entry)
        for split, mine in by_split.items():
            if mine:
                self._plan(split, mine, parts[SPLIT_POS[split]])

    def _plan(self, split: str, mine: list[Entry], part: Any) -> None:
        """One split's entries of one chunk: a search in their running sizes per shard, not a step per entry."""
        ends = list(itertools.accumulate([e.size for e in mine], initial=self.size[split]))  # after each entry
        slots = [e.slot for e in mine]
        start, base = 0, 0  # the first entry not planned; the running size where the open shard began
        while start < len(mine):
            cut = bisect.bisect_left(ends, base + self.target, lo=start + 1)  # the open shard is full after cut - 1
            refs = self.refs[split]
            refs.append(part)  # a chunk's part reaches its split's plan once, and a submit empties refs
            self.picks[split].append((len(refs) - 1, slots[start:cut]))
            if cut > len(mine):
                self.size[split] = ends[-1] - base
                return
            self._submit(split)
            start, base = cut, ends[cut]

    def _submit(self, split: str) -> None:
        import ray

        refs, segments = self.refs[split], self.picks[split]
        if not segments:
            return
        self.refs[split], self.picks[split], self.size[split] = [], [], 0
        picks = np.empty((sum(len(slots) for _, slots in segments), 2), dtype=np.int64)  # one buffer for Ray
        picks[:, 0] = np.repeat([p for p, _ in segments], [len(slots) for _, slots in segments])
        picks[:, 1] = list(itertools.chain.from_iterable(slots for _, slots in segments))
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


def commit_shard(held: lease.Lease, tallies: list[ShardTally], shard: ShardTally, staged: Staged) -> None:
    """Make a journaled shard visible, only while this process holds the lease (checked just before): a
    worker, or a writer thread, that outlives the lease leaves at most an invisible upload (and its journal
    record, which counts for nothing without the shard: ``target.load_journal``)."""
    try:
        held.check()
        upload.complete_upload(staged)
    except BaseException:
        upload.abort_upload(staged)
        raise
    tallies.append(shard)


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
