"""Which worker of which rank reads which shards (pure functions: no server, no torch)."""

from __future__ import annotations

import math

import pytest

from radimagenet.data.plan import deal_balanced, plan_eval, plan_train, rng_seed
from radimagenet.dataset.format import ShardRef
from radimagenet.errors import ConfigError

UNEVEN_TRAIN = [9, 2, 7, 5, 11, 3, 6, 1]  # 44 samples in 8 deliberately uneven shards


def shards(sizes: list[int], split: str = "train") -> list[ShardRef]:
    return [ShardRef(f"s3://b/{split}-{i:06d}.tar", n) for i, n in enumerate(sizes)]


def test_shard_order_is_shared_by_ranks_and_split_before_ranks() -> None:
    refs = shards(UNEVEN_TRAIN)
    plans = [plan_train(refs, batch_size=4, rank=r, world_size=2, num_workers=2, epoch=3, seed=1) for r in range(2)]
    urls = [s.url for p in plans for w in p.workers for s in w.shards]
    assert sorted(urls) == sorted(s.url for s in refs)  # a partition: every shard to exactly one worker
    loads = [sum(w.samples for w in p.workers) for p in plans]
    assert abs(loads[0] - loads[1]) <= max(UNEVEN_TRAIN)  # dealt to balance sample counts
    assert plans[0].num_batches == plans[1].num_batches == 44 // 2 // 4
    assert sum(w.batches for w in plans[0].workers) == plans[0].num_batches
    assert [w.seed for w in plans[1].workers] == [(1, 3, 1, 0), (1, 3, 1, 1)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_train_batches_are_equal_on_every_rank(world_size: int, num_workers: int) -> None:
    refs = shards(UNEVEN_TRAIN)
    for epoch in range(3):
        plans = [plan_train(refs, batch_size=4, rank=r, world_size=world_size, num_workers=num_workers,
                            epoch=epoch, seed=0) for r in range(world_size)]
        assert {p.num_batches for p in plans} == {44 // world_size // 4}
        for p in plans:
            assert len(p.workers) == max(num_workers, 1) and p.batch_size == 4
            quotas = [w.batches for w in p.workers]
            assert sum(quotas) == p.num_batches and max(quotas) - min(quotas) <= 1


def test_epochs_permute_the_shards_the_same_way_on_every_rank() -> None:
    refs = shards([5] * 12)

    def owners(epoch: int, seed: int = 0) -> list[list[str]]:
        return [[s.url for s in plan_train(refs, batch_size=2, rank=r, world_size=3, num_workers=0, epoch=epoch,
                                           seed=seed).workers[0].shards] for r in range(3)]

    assert owners(0) == owners(0)
    assert owners(0) != owners(1) and owners(0) != owners(0, seed=1)
    assert all(len(o) == 4 for o in owners(2))  # equal shards: plain striding


def test_deal_balanced() -> None:
    equal = shards([4] * 6)
    assert deal_balanced(equal, 3) == [equal[0::3], equal[1::3], equal[2::3]]
    dealt = deal_balanced(shards([10, 1, 1, 1, 1]), 2)
    assert [[s.samples for s in b] for b in dealt] == [[10], [1, 1, 1, 1]]
    assert deal_balanced([], 2) == [[], []]


def test_empty_shards_are_dropped_and_errors_are_clear() -> None:
    plan = plan_train(shards([4, 0, 4]), batch_size=2, rank=0, world_size=2, num_workers=0, epoch=0, seed=0)
    assert all(s.samples for w in plan.workers for s in w.shards)
    with pytest.raises(ConfigError, match=r"3 train shards but 2 ranks x 2 loader workers need at least 4"):
        plan_train(shards([3, 3, 3]), batch_size=2, rank=0, world_size=2, num_workers=2, epoch=0, seed=0)
    with pytest.raises(ConfigError, match="val split has 9 samples: .*0 full batches per rank"):
        plan_train(shards([3, 3, 3]), batch_size=8, rank=0, world_size=2, num_workers=0, epoch=0, seed=0,
                   split="val")


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_reads_every_shard_once_in_manifest_order(world_size: int, num_workers: int) -> None:
    refs = shards([5, 3, 4, 1], "val")
    plans = [plan_eval(refs, batch_size=2, rank=r, world_size=world_size, num_workers=num_workers)
             for r in range(world_size)]
    urls = [s.url for p in plans for w in p.workers for s in w.shards]
    assert sorted(urls) == [s.url for s in refs]
    for r, p in enumerate(plans):
        mine, workers = refs[r::world_size], max(num_workers, 1)  # by rank, then by worker, in order
        assert [w.shards for w in p.workers] == [tuple(mine[w::workers]) for w in range(workers)]
        assert all(w.batches is None for w in p.workers)
        assert p.num_batches == sum(math.ceil(w.samples / 2) for w in p.workers)


def test_rng_seed_is_stable_and_order_sensitive() -> None:
    assert rng_seed(1, 2, 3) == rng_seed(1, 2, 3)
    assert rng_seed(1, 2, 3) != rng_seed(3, 2, 1)
    assert 0 <= rng_seed(-1, 2**40) < 2**64
