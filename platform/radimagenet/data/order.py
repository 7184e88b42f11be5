"""The epoch's order of a split's samples, and each sample's augmentation randomness (pure functions).

    order = epoch_order(shard_samples([600, 600]), seed=0, epoch=3)  # 1,200 positions
    order.ids[:64]            # the first 64 samples the epoch consumes (global sample ids)

A *global sample id* numbers a split's samples in manifest order (shard 0's first). The order is a
pure function of ``(seed, epoch)`` and the split (its shard sizes; with ``keep``, the kept samples),
never of the number of ranks or loader workers: whoever trains, the epoch consumes ``ids[0]``,
``ids[1]``, ... and a run that consumed ``k`` samples resumes at position ``k`` with any world size.

Construction (Mosaic Streaming's block shuffles, arranged so that readers fetch runs of samples):

1. *spans*: each shard is cut into spans of at most :data:`SPAN` contiguous samples;
2. the spans are permuted by an rng seeded with ``(seed, epoch)``, each rotated by a random offset,
   and concatenated (``Q``);
3. ``Q`` is cut into :data:`LANES` *lanes* of equal length (±1; fewer for a split of less than
   ``LANES x MIN_LANE`` = 512 samples); within each lane, windows of :data:`MIX` consecutive samples
   are shuffled;
4. the order takes the lanes in turn: position ``p`` is sample ``p // L`` of lane ``p % L``.

So any ``G`` consecutive positions hold ``G / L`` samples of every lane (when ``L`` divides ``G``): a
batch mixes 64 places of the split, which matters because ingest writes shards in input order
(folder-sorted, i.e. label-sorted); and each lane walks through contiguous runs of a shard, which is
what readers fetch (:mod:`radimagenet.data.plan`). A 1-shard dataset is mixed as well as a 1,000-shard one.

Augmentation randomness (:func:`sample_rngs`) is drawn per sample from ``(seed, epoch, global sample
id)``, so a sample is cropped and flipped the same way whichever rank or worker reads it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LANES = 64  # lanes of the round-robin: places of the split one batch mixes
MIN_LANE = 8  # samples a lane holds at least (a split under 512 samples gets fewer lanes)
SPAN = 1024  # samples per span: the unit the epoch permutes
MIX = 16  # samples per window shuffled within a lane
DRAWS = 8  # augmentation draws precomputed per sample (a crop and a flip take 5; more come one by one)
_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def rng_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers (order matters), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0])


@dataclass(frozen=True)
class EpochOrder:
    """An epoch's positions: the sample at each, its lane, and its place in ``Q`` (see the module doc)."""

    ids: np.ndarray  # int64: global sample id at each position
    lanes: np.ndarray  # int32: lane of each position
    qpos: np.ndarray  # int64: index in Q (consecutive within a lane = contiguous in a shard's span)

    def __len__(self) -> int:
        return len(self.ids)


def shard_samples(sizes: Sequence[int]) -> list[np.ndarray]:
    """The global sample ids of each shard of a split whose shards hold ``sizes`` samples."""
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    return [np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in range(len(sizes))]


def epoch_order(shards: Sequence[np.ndarray], seed: int, epoch: int, *, lanes: int = LANES,
                span: int = SPAN, mix: int = MIX) -> EpochOrder:
    """The order of ``shards``' samples (each: its global sample ids, ascending) in ``epoch``."""
    rng = np.random.Generator(np.random.PCG64(rng_seed(seed, epoch, 0x0D3E)))
    spans = [piece for ids in shards if len(ids) for piece in np.array_split(ids, -(-len(ids) // span))]
    total = sum(len(s) for s in spans)
    if total == 0:
        empty = np.zeros(0, np.int64)
        return EpochOrder(empty, empty.astype(np.int32), empty)
    perm = rng.permutation(len(spans))
    shifts = rng.integers(0, [len(spans[i]) for i in perm])
    q = np.concatenate([np.roll(spans[i], -int(s)) for i, s in zip(perm, shifts, strict=True)])
    n_lanes = max(1, min(lanes, total // MIN_LANE))
    bounds = np.arange(n_lanes + 1, dtype=np.int64) * total // n_lanes
    lane = np.repeat(np.arange(n_lanes, dtype=np.int32), np.diff(bounds))
    time = np.arange(total, dtype=np.int64) - bounds[lane]
    window = lane.astype(np.int64) * (total // max(mix, 1) + 1) + time // max(mix, 1)  # ascending in Q
    shuffled = np.argsort((window << 32) | rng.integers(0, 1 << 32, total), kind="stable")  # within windows
    rounds = np.argsort(time, kind="stable")  # time-major, lanes ascending: the lanes in turn
    return EpochOrder(q[shuffled][rounds], lane[rounds], shuffled[rounds])


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class SampleRandom(random.Random):
    """One sample's augmentation draws: a :class:`random.Random` whose stream is fixed by (seed, epoch, id).

    The first :data:`DRAWS` values are computed for many samples at once (:func:`sample_rngs`); later
    ones continue the same SplitMix64 stream one by one. ``uniform`` and ``randint`` are short cuts
    over ``random()`` (``randint``: ``a + floor(u * (b - a + 1))``, biased by at most 2^-40 for the
    ranges of a crop box). Seeding a Mersenne Twister per sample would cost 8 us of the loader's
    ~190 us per image; this costs about 2, drawing a crop box and a flip included.
    """

    def __init__(self, first: list[float], state: int):  # noqa: D107 - no Mersenne Twister seeding
        self._first, self._next, self._state = first, 0, state

    def random(self) -> float:
        """The next draw in [0, 1)."""
        i = self._next
        self._next = i + 1
        if i < DRAWS:
            return self._first[i]
        s = (self._state + (i + 1) * _GOLDEN) & _M64
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return ((z ^ (z >> 31)) >> 11) / (1 << 53)

    def uniform(self, a: float, b: float) -> float:
        """A draw in [a, b)."""
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:
        """An integer in [a, b]."""
        return a + min(int(self.random() * (b - a + 1)), b - a)

    def getrandbits(self, k: int) -> int:
        """``k`` random bits (from as many draws as needed; 53 per draw)."""
        out, have = 0, 0
        while have < k:
            out = (out << 53) | int(self.random() * (1 << 53))
            have += 53
        return out >> (have - k)

    def seed(self, *args: object, **kwargs: object) -> None:
        """Fixed by construction (``random.Random.__init__`` is not called)."""


@functools.lru_cache(maxsize=64)
def _epoch_key(seed: int, epoch: int) -> int:
    return rng_seed(seed, epoch, 0xA06)


def sample_rngs(seed: int, epoch: int, ids: np.ndarray) -> list[SampleRandom]:
    """The augmentation rng of each sample ``ids`` (global sample ids) in ``epoch`` (best called with
    hundreds of ids at a time: the numpy work is per call)."""
    with np.errstate(over="ignore"):
        state = _mix64(np.asarray(ids, dtype=np.uint64) * np.uint64(_GOLDEN) ^ np.uint64(_epoch_key(seed, epoch)))
        draws = _mix64(state[:, None] + _STEPS)
    uniforms = ((draws >> np.uint64(11)) * (1.0 / (1 << 53))).tolist()
    return [SampleRandom(u, s) for u, s in zip(uniforms, state.tolist(), strict=True)]


_STEPS = (np.arange(1, DRAWS + 1, dtype=np.uint64) * np.uint64(_GOLDEN))[None, :]
