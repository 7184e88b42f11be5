"""Which worker of which rank reads which samples, and with which ranged reads (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radimagenet.data.order import EpochOrder, epoch_order, shard_samples
from radimagenet.data.plan import MAX_GAP, TrainPlan, plan_eval, plan_runs, plan_train, rng_seed, run_length
from radimagenet.dataset.format import ShardRef
from radimagenet.errors import ConfigError

ONE_SHARD = [1200]
UNEVEN = [9, 2, 7, 5, 11, 3, 6, 1]  # 44 samples in 8 deliberately uneven shards


def order_of(sizes: list[int], epoch: int = 0, seed: int = 0) -> EpochOrder:
    return epoch_order(shard_samples(sizes), seed=seed, epoch=epoch)


def plans(order: EpochOrder, world_size: int, num_workers: int, batch_size: int = 16, **kw) -> list[TrainPlan]:
    return [plan_train(order, batch_size=batch_size, rank=r, world_size=world_size, num_workers=num_workers, **kw)
            for r in range(world_size)]


def rank_batches(plan: TrainPlan) -> list[np.ndarray]:
    """The rank's batches as the loader yields them: each step, its workers' parts in worker order."""
    parts = [np.split(r.ids, np.cumsum(r.counts)[:-1]) for r in plan.readers]
    return [np.concatenate([p[s] for p in parts]) for s in range(plan.num_batches)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
def test_one_shard_any_ranks_and_workers(world_size: int, num_workers: int) -> None:
    order = order_of(ONE_SHARD)
    ps = plans(order, world_size, num_workers)
    steps = 1200 // (16 * world_size)
    assert {p.num_batches for p in ps} == {steps}  # every rank the same number of batches
    batches = [rank_batches(p) for p in ps]
    assert all(len(b) == 16 for rb in batches for b in rb)
    for s in range(steps):  # step s consumes the next world_size x 16 positions of the order
        step = np.concatenate([rb[s] for rb in batches])
        assert sorted(step.tolist()) == sorted(order.ids[s * 16 * world_size : (s + 1) * 16 * world_size].tolist())
    seen = np.concatenate([b for rb in batches for b in rb])
    assert len(np.unique(seen)) == len(seen) == steps * 16 * world_size  # no repeats; the rest: drop_last
    assert all(len(r.counts) == steps for p in ps for r in p.readers)
    assert ps[0].position(steps) == steps * 16 * world_size and ps[0].position(0) == 0


def test_a_ranks_batches_do_not_depend_on_its_loader_workers() -> None:
    order = order_of(UNEVEN * 10)
    for rank in range(3):
        ref = rank_batches(plan_train(order, batch_size=8, rank=rank, world_size=3, num_workers=0))
        for workers in (1, 2, 3, 5, 8, 11):
            got = rank_batches(plan_train(order, batch_size=8, rank=rank, world_size=3, num_workers=workers))
            assert all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))


def test_resuming_at_a_position_with_other_world_sizes_sees_every_sample_once() -> None:
    """2 ranks for 5 steps, then 1 rank, then 4 ranks: the epoch continues at the global position."""
    order = order_of([700, 500])
    first = plans(order, 2, 2)
    done = [np.concatenate(rank_batches(p)[:5]) for p in first]
    position = first[0].position(5)
    assert position == 5 * 2 * 16
    second = plans(order, 1, 0, start=position)
    done += [np.concatenate(rank_batches(second[0])[:7])]
    position = second[0].position(7)
    third = plans(order, 4, 3, start=position, drop_last=False)
    done += [np.concatenate(rank_batches(p)) for p in third]
    seen = np.concatenate(done)
    assert len(seen) == len(np.unique(seen)) == 1200  # every sample exactly once across the three runs
    for rank in range(2):  # resumed with the same world size: the very batches of the uninterrupted run
        whole = rank_batches(first[rank])
        resumed = rank_batches(plan_train(order, batch_size=16, rank=rank, world_size=2, num_workers=3, start=5 * 32))
        assert all(np.array_equal(a, b) for a, b in zip(whole[5:], resumed, strict=True))
    assert np.array_equal(np.sort(seen[: position]), np.sort(order.ids[: position]))


def test_drop_last_false_shares_the_remainder() -> None:
    order = order_of(UNEVEN)  # 44 samples, 3 ranks x 4: 3 full steps + 8 left
    ps = plans(order, 3, 2, batch_size=4, drop_last=False)
    assert {p.num_batches for p in ps} == {4}
    last = [len(rank_batches(p)[-1]) for p in ps]
    assert last == [3, 3, 2] and all(p.position(4) == 44 for p in ps)
    seen = np.concatenate([b for p in ps for b in rank_batches(p)])
    assert sorted(seen.tolist()) == list(range(44))
    assert [p.num_batches for p in plans(order, 3, 0, batch_size=4)] == [3, 3, 3]  # drop_last: 8 left out
    few = plans(order_of([5]), 4, 2, batch_size=1, drop_last=False)  # 1 left for 4 ranks: three get none
    assert [len(rank_batches(p)[-1]) for p in few] == [1, 0, 0, 0]


def test_errors_and_an_epoch_already_done() -> None:
    with pytest.raises(ConfigError, match="val split has 9 samples: .*0 full batches per rank"):
        plan_train(order_of([3, 3, 3]), batch_size=8, rank=0, world_size=2, num_workers=0, split="val")
    with pytest.raises(ConfigError, match="start position 50 is outside the train epoch of 44 samples"):
        plan_train(order_of(UNEVEN), batch_size=4, rank=0, world_size=1, num_workers=0, start=50)
    done = plan_train(order_of(UNEVEN), batch_size=4, rank=0, world_size=1, num_workers=2, start=44)
    assert done.num_batches == 0 and done.samples == 0 and done.position(0) == 44


def runs_of(plan: TrainPlan, sizes: list[int], read_ahead: int) -> list[list]:
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    return [plan_runs(r, starts, read_ahead) for r in plan.readers]


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (1, 2), (2, 4), (3, 2), (8, 8)])
def test_runs_cover_each_readers_samples_in_contiguous_reads(world_size: int, num_workers: int) -> None:
    sizes = [3000, 2500, 4000]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    order = order_of(sizes)
    plan = plan_train(order, batch_size=64, rank=world_size - 1, world_size=world_size, num_workers=num_workers)
    for reader, runs in zip(plan.readers, runs_of(plan, sizes, 64), strict=True):
        assert sorted(np.concatenate([r.ids for r in runs]).tolist()) == sorted(reader.ids.tolist())
        due = {int(g): t for t, g in enumerate(reader.ids)}
        firsts = [min(due[int(g)] for g in r.ids) for r in runs]
        assert firsts == sorted(firsts)  # fetched in the order they are needed
        for r in runs:
            local = r.ids - starts[r.shard]
            assert r.first == local[0] and r.last == local[-1] and len(r.ids) <= 64
            assert np.all(np.diff(local) >= 1) and np.all(np.diff(local) <= MAX_GAP + 1)
        # most runs are long: world_size x 64 is a multiple of the 64 lanes, so each reader keeps its lanes
        assert len(runs) <= len(reader.ids) / 64 * 1.5 + len(np.unique(reader.lanes)) + 2 * len(sizes) * 3, len(runs)


def test_run_length_fits_the_read_budget() -> None:
    assert run_length(64, 53_248) == 78  # 256 MiB over 64 lanes of 52 KiB samples
    assert run_length(1, 53_248) == 78  # 4 MiB per GET
    assert run_length(1, 1_000) == 256 and run_length(64, 2_000_000) == 16


def test_eval_reads_every_shard_once_in_manifest_order() -> None:
    refs = [ShardRef(f"s3://b/val-{i:06d}.tar", n) for i, n in enumerate([5, 3, 4, 1])]
    for world_size in (1, 2, 3, 5):
        for num_workers in (0, 2):
            ps = [plan_eval(refs, batch_size=2, rank=r, world_size=world_size, num_workers=num_workers)
                  for r in range(world_size)]
            assert sorted(s.url for p in ps for w in p.workers for s in w.shards) == [s.url for s in refs]
            for r, p in enumerate(ps):
                mine, workers = refs[r::world_size], max(num_workers, 1)  # by rank, then by worker, in order
                assert [w.shards for w in p.workers] == [tuple(mine[w::workers]) for w in range(workers)]
                assert p.num_batches == sum(math.ceil(w.samples / 2) for w in p.workers)


def test_rng_seed_is_stable_and_order_sensitive() -> None:
    assert rng_seed(1, 2, 3) == rng_seed(1, 2, 3)
    assert rng_seed(1, 2, 3) != rng_seed(3, 2, 1)
    assert 0 <= rng_seed(-1, 2**40) < 2**64
