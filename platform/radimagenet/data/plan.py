"""Which loader worker of which rank reads which samples in an epoch, and how (pure functions).

    order = epoch_order(shard_samples(sizes), seed, epoch)               # radimagenet.data.order
    plan = plan_train(order, batch_size=64, rank=r, world_size=w, num_workers=4)
    plan.readers[2].ids, plan.readers[2].counts                          # worker 2's samples, per batch

Training (:func:`plan_train`): partition by sample
    Step ``s`` of the epoch consumes the next ``world_size * batch_size`` positions of the epoch order
    (from ``start``, the global offset a resumed run continues at). Within a step the positions are
    sorted by lane and cut into ranks, then each rank's share into its loader workers (*readers*):
    worker ``w`` of rank ``r`` contributes ``counts[s]`` samples to the rank's batch ``s``, and the
    loader joins its workers' parts in worker order. Sorting by lane gives each reader the same lanes
    step after step, so it reads contiguous runs of a shard (:func:`plan_runs`). Every rank yields the
    same number of batches; all are full (``drop_last``: the last ``n % (world_size * batch_size)``
    positions are not visited this epoch; the epoch order changes which) or, without ``drop_last``,
    a last step shares the remainder as evenly as it goes (ranks may get one sample less, or none).
    A rank's batches, their order and their pixels do not depend on its number of loader workers.

Reads (:func:`plan_runs`)
    A reader's samples, sorted by (lane, place in the lane), are cut into *runs*: samples of one
    shard whose ids advance by 1 to ``max_gap + 1`` (samples between them are fetched and dropped),
    at most ``read_ahead`` of them (each lane's cuts shifted by a share of it, so that a reader's
    lanes need their next runs at different times). Each run is one ranged GET, fetched ahead in the
    order the runs' first samples are due; a reader holds about ``lanes it reads x read_ahead``
    samples at a time.

Evaluation (:func:`plan_eval`)
    Shards in manifest order, split by rank (``shards[rank::world_size]``) then by worker; every
    sample is read exactly once across ranks, streamed shard by shard.

No torch, no I/O: the loader (:mod:`radimagenet.data.loader`) turns a plan into batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from radimagenet.data.order import EpochOrder, rng_seed
from radimagenet.dataset.format import ShardRef
from radimagenet.errors import ConfigError

__all__ = ["ReaderPlan", "RankPlan", "Run", "TrainPlan", "WorkerPlan", "plan_eval", "plan_runs", "plan_train",
           "rng_seed", "run_length"]

MAX_GAP = 8  # samples a run reads past and drops rather than sending another GET
RUN_BYTES = 4 << 20  # bytes a run aims at: a GET costs ~0.25 ms of CPU plus ~0.35 ms per MiB
MIN_RUN, MAX_RUN = 16, 256  # samples per run, whatever the sample size
READ_BUDGET = 256 << 20  # bytes of fetched, not yet used samples a reader may hold (runs shrink to fit)


@dataclass(frozen=True)
class ReaderPlan:
    """One loader worker's share of a training epoch: its samples in the order it yields them."""

    ids: np.ndarray  # int64: global sample ids
    lanes: np.ndarray  # int32: their lanes in the epoch order
    qpos: np.ndarray  # int64: their places in the order's Q (see radimagenet.data.order)
    counts: np.ndarray  # int64 per step: how many of ``ids`` go into the rank's batch of that step (may be 0)


@dataclass(frozen=True)
class TrainPlan:
    """One rank's training epoch: a plan per loader worker and the global position after each step."""

    readers: tuple[ReaderPlan, ...]
    num_batches: int
    batch_size: int
    start: int  # global position (samples of the epoch order consumed by all ranks) the plan starts at
    step_ends: np.ndarray  # int64 per step: the global position after it (what a checkpoint records)
    samples: int  # samples this rank yields

    def position(self, batches: int) -> int:
        """The global position once every rank has yielded ``batches`` batches of this plan."""
        return int(self.step_ends[batches - 1]) if batches > 0 else self.start


def plan_train(
    order: EpochOrder, *, batch_size: int, rank: int, world_size: int, num_workers: int,
    start: int = 0, drop_last: bool = True, split: str = "train",
) -> TrainPlan:
    """Plan ``rank``'s share of the epoch ``order`` from global position ``start`` (see the module doc).

    Raises :class:`ConfigError` when a fresh epoch (``start=0``) leaves no batch per rank.
    """
    total, per_step = len(order), world_size * batch_size
    if not 0 <= start <= total:
        raise ConfigError(f"start position {start} is outside the {split} epoch of {total} samples")
    full, rest = divmod(total - start, per_step)
    partial = rest if not drop_last and rest else 0
    if full == 0 and not partial and start == 0:
        raise ConfigError(
            f"{split} split has {total} samples: {world_size} ranks x batch size {batch_size} leaves "
            f"0 full batches per rank; use a smaller batch size or fewer ranks"
        )
    pos = start + np.arange(full * per_step, dtype=np.int64).reshape(full, per_step)
    by_lane = np.argsort(order.lanes[pos], axis=1, kind="stable")[:, rank * batch_size : (rank + 1) * batch_size]
    mine = np.take_along_axis(pos, by_lane, axis=1)  # [full, batch_size]: this rank's positions, lane-sorted
    tail = np.zeros(0, np.int64)
    if partial:
        last = start + full * per_step + np.arange(partial, dtype=np.int64)
        last = last[np.argsort(order.lanes[last], kind="stable")]
        lo, size = split_evenly(partial, world_size, rank)
        tail = last[lo : lo + size]
    workers = max(num_workers, 1)
    readers = []
    for w in range(workers):
        c0, width = split_evenly(batch_size, workers, w)
        t0, t_width = split_evenly(len(tail), workers, w)
        positions = np.concatenate([mine[:, c0 : c0 + width].ravel(), tail[t0 : t0 + t_width]])
        counts = np.array([width] * full + ([t_width] if partial else []), dtype=np.int64)
        readers.append(ReaderPlan(order.ids[positions], order.lanes[positions], order.qpos[positions], counts))
    ends = start + per_step * np.arange(1, full + 1, dtype=np.int64)
    if partial:
        ends = np.append(ends, total)
    return TrainPlan(tuple(readers), full + bool(partial), batch_size, start, ends,
                     full * batch_size + len(tail))


def split_evenly(n: int, parts: int, i: int) -> tuple[int, int]:
    """``(offset, size)`` of part ``i`` when ``n`` items are cut into ``parts`` consecutive parts whose
    sizes differ by at most one (the first ones larger)."""
    size = n // parts + (i < n % parts)
    return i * (n // parts) + min(i, n % parts), size


@dataclass(frozen=True)
class Run:
    """Samples ``first..last`` (inclusive) of shard ``shard``: one ranged GET; ``ids`` are those kept."""

    shard: int
    first: int
    last: int
    ids: np.ndarray  # int64: the reader's samples among them (global sample ids)


def run_length(lanes: int, sample_bytes: float, budget: int = READ_BUDGET) -> int:
    """Samples per run for a reader of ``lanes`` lanes: :data:`RUN_BYTES` worth, within its ``budget``."""
    want = RUN_BYTES / max(sample_bytes, 1.0)
    fits = budget / max(sample_bytes, 1.0) / max(lanes, 1)
    return int(min(MAX_RUN, max(MIN_RUN, min(want, fits))))


def plan_runs(reader: ReaderPlan, shard_starts: np.ndarray, read_ahead: int,
              max_gap: int = MAX_GAP) -> list[Run]:
    """A reader's ranged reads, in the order their first samples are due (see the module doc).

    ``shard_starts``: the global sample id of each shard's first sample (ascending).
    """
    n = len(reader.ids)
    if n == 0:
        return []
    by_lane = np.lexsort((reader.qpos, reader.lanes))  # each lane in order; values: consumption indices
    ids = reader.ids[by_lane]
    shard = np.searchsorted(shard_starts, ids, side="right") - 1
    local = ids - shard_starts[shard]
    step = np.diff(local)
    cut = np.ones(n, dtype=bool)
    cut[1:] = (np.diff(reader.lanes[by_lane]) != 0) | (np.diff(shard) != 0) | (step < 1) | (step > max_gap + 1)
    segment = np.cumsum(cut) - 1
    within = np.arange(n) - np.flatnonzero(cut)[segment]
    phase = reader.lanes[by_lane].astype(np.int64) * read_ahead // max(int(reader.lanes.max()) + 1, 1)
    cut |= (within + phase) % max(read_ahead, 1) == 0  # lanes' runs end at staggered times, not all at once
    starts = np.flatnonzero(cut)
    ends = np.append(starts[1:], n)
    due = np.minimum.reduceat(by_lane, starts)
    return [Run(int(shard[s]), int(local[s]), int(local[e - 1]), ids[s:e])
            for s, e in ((starts[i], ends[i]) for i in np.argsort(due, kind="stable"))]


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker of one rank reads in an evaluation pass."""

    shards: tuple[ShardRef, ...]
    batches: int | None  # None: read everything
    seed: tuple[int, ...]  # rng seed material (seed, epoch, rank, worker)

    @property
    def samples(self) -> int:
        """Samples held by this worker's shards (per the manifest)."""
        return sum(s.samples for s in self.shards)


@dataclass(frozen=True)
class RankPlan:
    """One rank's evaluation pass: a plan per loader worker and the number of batches the rank yields."""

    workers: tuple[WorkerPlan, ...]
    num_batches: int
    batch_size: int


def plan_eval(
    shards: list[ShardRef], *, batch_size: int, rank: int, world_size: int, num_workers: int
) -> RankPlan:
    """Plan an evaluation pass: manifest order, split by rank then worker, every sample once.

    A rank or worker may get no shard; the last batch of a worker may be short, so ``num_batches``
    counts each worker's partial batch.
    """
    workers = max(num_workers, 1)
    mine = shards[rank::world_size]
    plans = tuple(WorkerPlan(tuple(mine[w::workers]), None, (0, 0, rank, w)) for w in range(workers))
    num_batches = sum(math.ceil(p.samples / batch_size) for p in plans)
    return RankPlan(plans, num_batches, batch_size)
