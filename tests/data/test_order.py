"""The epoch order and the per-sample augmentation randomness (pure functions: no server, no torch)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from radimagenet.data.order import LANES, SampleRandom, epoch_order, sample_rngs, shard_samples


def test_an_epoch_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    shards = shard_samples([500, 300, 0, 1, 399])
    a, again = epoch_order(shards, seed=3, epoch=2), epoch_order(shards, seed=3, epoch=2)
    assert np.array_equal(np.sort(a.ids), np.arange(1200))
    assert np.array_equal(a.ids, again.ids) and np.array_equal(a.lanes, again.lanes)
    assert not np.array_equal(a.ids, epoch_order(shards, seed=3, epoch=3).ids)
    assert not np.array_equal(a.ids, epoch_order(shards, seed=4, epoch=2).ids)
    assert len(epoch_order(shard_samples([0, 0]), 0, 0)) == 0
    for n, lanes in [(5, 1), (200, 25), (511, 63), (1200, 64), (100_000, 64)]:  # lanes of >= 8 samples
        assert len(np.unique(epoch_order(shard_samples([n]), 0, 0).lanes)) == lanes


def test_consecutive_positions_take_every_lane_in_turn() -> None:
    order = epoch_order(shard_samples([5000]), seed=0, epoch=0)
    for start in (0, 640, 1000):  # any 64 consecutive positions (while every lane has samples left)
        assert sorted(order.lanes[start : start + LANES].tolist()) == list(range(LANES))
    for lane in (0, 17, 63):  # a lane, in Q order, is contiguous samples of a span (but for a wrap)
        ids = order.ids[order.lanes == lane][np.argsort(order.qpos[order.lanes == lane])]
        assert np.count_nonzero(np.diff(ids) != 1) <= 2


def test_label_sorted_single_shard_gives_mixed_batches() -> None:
    """Ingest writes shards in input order (folder-sorted = label-sorted): every batch must still mix."""
    classes, per_class, batch = 8, 150, 64
    label = np.arange(classes * per_class) // per_class  # one shard, sorted by label
    order = epoch_order(shard_samples([classes * per_class]), seed=0, epoch=0)
    for b in range(len(order) // batch):
        counts = np.bincount(label[order.ids[b * batch : (b + 1) * batch]], minlength=classes)
        assert counts.min() >= 1 and counts.max() <= 2 * batch // classes, counts  # 8 each expected


def test_epochs_batch_samples_together_differently() -> None:
    order0, order1 = (epoch_order(shard_samples([1024]), seed=0, epoch=e) for e in (0, 1))

    def pairs(order) -> set[tuple[int, int]]:
        return {p for b in range(16) for p in itertools.combinations(sorted(order.ids[b * 64 : (b + 1) * 64]), 2)}

    shared = len(pairs(order0) & pairs(order1)) / len(pairs(order0))
    assert shared < 0.25, shared  # the same 1,024 samples, grouped anew


def test_sample_rngs_depend_on_seed_epoch_and_sample_only() -> None:
    ids = np.array([5, 9, 123456789], dtype=np.int64)
    draws = [[r.random() for _ in range(12)] for r in sample_rngs(1, 2, ids)]  # past the precomputed 8
    assert draws == [[r.random() for _ in range(12)] for r in sample_rngs(1, 2, ids)]
    alone = sample_rngs(1, 2, ids[2:])[0]
    assert [alone.random() for _ in range(12)] == draws[2]  # whatever else is in the batch
    assert draws[0] != draws[1]
    assert [r.random() for r in sample_rngs(1, 3, ids)] != [d[0] for d in draws]
    assert [r.random() for r in sample_rngs(0, 2, ids)] != [d[0] for d in draws]
    values = np.array([r.random() for r in sample_rngs(0, 0, np.arange(20000))])
    assert 0 <= values.min() and values.max() < 1 and abs(values.mean() - 0.5) < 0.01


def test_sample_random_is_a_random_random() -> None:
    rng = sample_rngs(7, 0, np.array([3]))[0]
    assert isinstance(rng, random.Random) and isinstance(rng, SampleRandom)
    ints = [rng.randint(0, 10) for _ in range(2000)]
    assert set(ints) == set(range(11))
    assert 0.35 <= rng.uniform(0.35, 1.0) <= 1.0
    assert rng.getrandbits(100) < 2**100 and rng.choice("abc") in "abc"


@pytest.mark.parametrize("sizes", [[1200], [7, 300, 5, 900], [1] * 70])
def test_orders_of_shapes(sizes: list[int]) -> None:
    order = epoch_order(shard_samples(sizes), seed=1, epoch=0)
    assert np.array_equal(np.sort(order.ids), np.arange(sum(sizes)))
    assert np.array_equal(np.sort(order.qpos), np.arange(sum(sizes)))
