"""Which loader worker of which rank reads which shards in an epoch, and how many batches (pure functions).

Training (:func:`plan_train`)
    The shard list is permuted by an rng seeded with ``(seed, epoch)`` - identical on every rank -
    then *dealt* to ranks and, within a rank, to loader workers (:func:`deal_balanced`). Every rank
    yields exactly ``(total_samples // world_size) // batch_size`` full batches, split evenly over
    its workers, so DDP never hangs at an epoch end.

Evaluation (:func:`plan_eval`)
    Shards in manifest order, split by rank (``shards[rank::world_size]``) then by worker; every
    sample is read exactly once across ranks.

No torch, no I/O: the loader (:mod:`radimagenet.data.loader`) turns a plan into batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from radimagenet.dataset.format import ShardRef
from radimagenet.errors import ConfigError


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker of one rank reads in one epoch."""

    shards: tuple[ShardRef, ...]
    batches: int | None  # train: exact number of full batches to yield; eval: None (read everything)
    seed: tuple[int, ...]  # rng seed material (seed, epoch, rank, worker)

    @property
    def samples(self) -> int:
        """Samples held by this worker's shards (per the manifest)."""
        return sum(s.samples for s in self.shards)


@dataclass(frozen=True)
class RankPlan:
    """One rank's epoch: a plan per loader worker and the number of batches the rank yields."""

    workers: tuple[WorkerPlan, ...]
    num_batches: int
    batch_size: int


def rng_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers (order matters), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0])


def deal_balanced(shards: Iterable[ShardRef], n: int) -> list[list[ShardRef]]:
    """Deal shards in order to ``n`` bins, each to the bin with the fewest samples (ties: lowest index).

    With equal shards this is plain striding (``shards[i::n]``); with uneven ones it balances the
    sample counts.
    """
    bins: list[list[ShardRef]] = [[] for _ in range(n)]
    loads = [0] * n
    for shard in shards:
        i = min(range(n), key=lambda b: (loads[b], len(bins[b]), b))
        bins[i].append(shard)
        loads[i] += shard.samples
    return bins


def plan_train(
    shards: list[ShardRef], *, batch_size: int, rank: int, world_size: int, num_workers: int,
    epoch: int, seed: int, split: str = "train",
) -> RankPlan:
    """Plan a training epoch for ``rank``: equal batch counts on every rank (see the module doc).

    Raises :class:`ConfigError` when there are fewer (non-empty) shards than readers, or when the
    split leaves no full batch per rank.
    """
    shards = [s for s in shards if s.samples > 0]
    workers = max(num_workers, 1)
    if len(shards) < world_size * workers:
        raise ConfigError(
            f"dataset has {len(shards)} {split} shards but {world_size} ranks x {workers} loader workers "
            f"need at least {world_size * workers}; re-ingest with a smaller --shard-size or use fewer workers"
        )
    total = sum(s.samples for s in shards)
    num_batches = total // world_size // batch_size
    if num_batches == 0:
        raise ConfigError(
            f"{split} split has {total} samples: {world_size} ranks x batch size {batch_size} leaves "
            f"0 full batches per rank; use a smaller batch size or fewer ranks"
        )
    order = random.Random(rng_seed(seed, epoch)).sample(shards, len(shards))
    mine = deal_balanced(order, world_size)[rank]
    per_worker = deal_balanced(mine, workers)
    plans = tuple(
        WorkerPlan(tuple(per_worker[w]), num_batches // workers + (w < num_batches % workers),
                   (seed, epoch, rank, w))
        for w in range(workers)
    )
    return RankPlan(plans, num_batches, batch_size)


def plan_eval(
    shards: list[ShardRef], *, batch_size: int, rank: int, world_size: int, num_workers: int
) -> RankPlan:
    """Plan an evaluation pass: manifest order, split by rank then worker, every sample once.

    A rank or worker may get no shard (allowed here, unlike training); the last batch of a worker
    may be short, so ``num_batches`` counts each worker's partial batch.
    """
    workers = max(num_workers, 1)
    mine = shards[rank::world_size]
    plans = tuple(WorkerPlan(tuple(mine[w::workers]), None, (0, 0, rank, w)) for w in range(workers))
    num_batches = sum(math.ceil(p.samples / batch_size) for p in plans)
    return RankPlan(plans, num_batches, batch_size)
