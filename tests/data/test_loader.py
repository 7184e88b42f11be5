"""The training input pipeline against the local stack's S3: partition by sample, balance, determinism, transforms."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers_shards import ensure_bucket, write_test_dataset  # noqa: E402
from radimagenet.data import loader as data
from radimagenet.data.transforms import preprocess
from radimagenet.dataset.reader import iterate_samples, sample_labels
from radimagenet.errors import ConfigError

pytestmark = pytest.mark.integration


UNEVEN_TRAIN = [9, 2, 7, 5, 11, 3, 6, 1]  # 44 samples in 8 deliberately uneven shards


def _prefix(name: str) -> str:
    return f"s3://radimagenet/tests/data-{uuid.uuid4().hex[:8]}/{name}"


@pytest.fixture(scope="module")
def uneven(stack_env: dict[str, str]) -> dict:
    uri = _prefix("uneven")
    ensure_bucket(uri)
    return write_test_dataset(
        uri, {"train": 44, "val": 13}, 4, shard_sizes={"train": UNEVEN_TRAIN, "val": [5, 3, 4, 1]}
    )


@pytest.fixture(scope="module")
def lopsided(stack_env: dict[str, str]) -> dict:
    """One big shard and five 1-sample shards."""
    uri = _prefix("lopsided")
    ensure_bucket(uri)
    return write_test_dataset(uri, {"train": 35}, 4, shard_sizes={"train": [30, 1, 1, 1, 1, 1]})


@pytest.fixture(scope="module")
def one_shard(stack_env: dict[str, str]) -> dict:
    """What a new user's small ingest makes: a single shard per split."""
    uri = _prefix("one")
    ensure_bucket(uri)
    return write_test_dataset(uri, {"train": 50, "val": 7}, 1000)  # 32 px: distinct keys


@pytest.fixture(scope="module")
def twins(stack_env: dict[str, str]) -> tuple[dict, dict]:
    """The same pixels written as npy and as png, with masks."""
    base = _prefix("twins")
    ensure_bucket(base)
    sizes = {"train": 24, "val": 10}
    npy = write_test_dataset(base + "/npy", sizes, 6, encoding="npy", masks=True)
    png = write_test_dataset(base + "/png", sizes, 6, encoding="png", masks=True)
    return npy, png


def _epoch(manifest: dict, split: str, **kw) -> tuple[int, list[list[str]], list[torch.Tensor]]:
    """(len(loader), keys per batch, images per batch) of one pass."""
    loader = data.make_loader(manifest, split, with_meta=True, **kw)
    keys, images = [], []
    for batch in loader:
        assert isinstance(batch, data.Batch) and batch.masks is None
        assert [m["key"] for m in batch.meta] == batch.keys and len(batch) == len(batch.labels)
        images.append(batch.images)
        keys.append(batch.keys)
    return len(loader), keys, images


# ---------------------------------------------------------------------------------------------
# training: equal batches per rank, whatever the shards


def _rank_epochs(manifest: dict, world_size: int, **kw) -> list[list[data.Batch]]:
    """Every rank's batches of one epoch."""
    out = []
    for rank in range(world_size):
        loader = data.make_loader(manifest, "train", rank=rank, world_size=world_size, **kw)
        batches = list(loader)
        assert len(batches) == len(loader)
        out.append(batches)
    return out


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_one_shard_trains_on_any_ranks_and_workers(one_shard: dict) -> None:
    """1, 2 or 3 ranks x 0, 1, 2 or 4 loader workers on a 1-shard split: equal batch counts, no sample
    twice, the same samples first whatever the world size, a rank's batches whatever its workers."""
    everything = set(sample_labels(one_shard, "train"))
    kw = dict(batch_size=4, epoch=1, seed=5, image_size=16)
    consumed: dict[int, list[str]] = {}  # world size -> keys in the order the steps consume them
    pixels: dict[str, torch.Tensor] = {}
    for world_size in (1, 2, 3):
        steps = 50 // (world_size * 4)
        reference = None
        for num_workers in (0, 1, 2, 4):
            ranks = _rank_epochs(one_shard, world_size, num_workers=num_workers, **kw)
            assert [len(r) for r in ranks] == [steps] * world_size  # every rank the same number of batches
            assert all(len(b) == 4 and b.images.shape == (4, 3, 16, 16) for r in ranks for b in r)
            keys = [k for r in ranks for b in r for k in b.keys]
            assert len(set(keys)) == len(keys) == steps * world_size * 4 and set(keys) <= everything
            if reference is None:
                reference = ranks
                consumed[world_size] = [k for s in range(steps) for r in ranks for k in sorted(r[s].keys)]
            for mine, ref in zip(ranks, reference, strict=True):  # independent of the loader workers
                assert all(a.keys == b.keys and torch.equal(a.images, b.images) for a, b in zip(mine, ref, strict=True))
            for b in (b for r in ranks for b in r):  # a sample's crop and flip: (seed, epoch, sample) alone
                for key, image in zip(b.keys, b.images, strict=True):
                    assert torch.equal(pixels.setdefault(key, image), image)
    # the epoch order does not depend on the world size: any prefix of whole steps is the same samples
    assert set(consumed[1][:12]) == set(consumed[3][:12]) and set(consumed[1][:24]) == set(consumed[2][:24])
    assert set(consumed[2][:48]) == set(consumed[3][:48]) == set(consumed[1][:48])


def test_without_drop_last_every_sample_is_seen_and_ranks_stay_in_step(one_shard: dict) -> None:
    two = _rank_epochs(one_shard, 2, batch_size=4, num_workers=2, drop_last=False, image_size=16)
    assert [len(r) for r in two] == [7, 7] and [len(r[-1]) for r in two] == [1, 1]  # 50 = 6 x 8 + 2
    assert sorted(k for r in two for b in r for k in b.keys) == sorted(sample_labels(one_shard, "train"))
    three = _rank_epochs(one_shard, 3, batch_size=4, num_workers=0, drop_last=False, image_size=16)
    assert [len(r[-1]) for r in three] == [1, 1, 0]  # 50 = 4 x 12 + 2: the third rank gets an empty batch
    assert three[2][-1].images.shape == (0, 3, 16, 16) and three[2][-1].keys == []


def test_resuming_at_a_position_with_another_world_size(one_shard: dict) -> None:
    kw = dict(batch_size=4, epoch=2, seed=1, image_size=16, num_workers=1)
    loader = data.make_loader(one_shard, "train", rank=0, world_size=2, **kw)
    position = loader.position(3)  # 3 steps of 2 ranks x 4
    assert position == 24 and loader.num_samples == 24
    before = [k for r in _rank_epochs(one_shard, 2, **kw) for b in r[:3] for k in b.keys]
    after = [k for r in _rank_epochs(one_shard, 3, start=position, drop_last=False, **kw) for b in r for k in b.keys]
    assert len(before) + len(after) == 50 and set(before) | set(after) == set(sample_labels(one_shard, "train"))


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_equal_batches_per_rank_with_uneven_shards(uneven: dict, world_size: int, num_workers: int) -> None:
    batch_size = 4
    expected = 44 // (world_size * batch_size)
    all_keys = set(sample_labels(uneven, "train"))
    for epoch in (0, 1):
        ranks = _rank_epochs(uneven, world_size, batch_size=batch_size, epoch=epoch, num_workers=num_workers)
        assert [len(r) for r in ranks] == [expected] * world_size
        assert all(len(b) == batch_size and b.images.shape == (batch_size, 3, 32, 32) for r in ranks for b in r)
        keys = [k for r in ranks for b in r for k in b.keys]
        assert len(set(keys)) == len(keys) and set(keys) <= all_keys


def test_a_rank_never_rereads_samples_whatever_the_shard_sizes(lopsided: dict) -> None:
    """Partitioned by sample: the rank that used to hold only 1-sample shards no longer cycles them."""
    ranks = _rank_epochs(lopsided, 2, batch_size=4, num_workers=0)
    keys = [k for r in ranks for b in r for k in b.keys]
    assert [len(r) for r in ranks] == [35 // 8] * 2 and len(set(keys)) == len(keys) == 32


def test_epoch_reshuffles_and_seed_reproduces(uneven: dict) -> None:
    kw = dict(batch_size=4, world_size=2, rank=0, num_workers=2, shuffle_buffer=16)
    _, e0, img0 = _epoch(uneven, "train", epoch=0, seed=7, **kw)
    _, e0_again, img0_again = _epoch(uneven, "train", epoch=0, seed=7, **kw)
    _, e1, _ = _epoch(uneven, "train", epoch=1, seed=7, **kw)
    _, other_seed, _ = _epoch(uneven, "train", epoch=0, seed=8, **kw)
    assert e0 == e0_again
    assert all(torch.equal(a, b) for a, b in zip(img0, img0_again, strict=True))  # same crops and flips
    assert e1 != e0
    assert other_seed != e0


# ---------------------------------------------------------------------------------------------
# evaluation: every sample once, fixed order


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_counts_every_sample_exactly_once(uneven: dict, world_size: int, num_workers: int) -> None:
    expected = set(sample_labels(uneven, "val"))
    seen: list[str] = []
    for rank in range(world_size):
        n, keys, _ = _epoch(uneven, "val", batch_size=2, rank=rank, world_size=world_size,
                            num_workers=num_workers, train=False)
        assert n == len(keys)
        _, again, _ = _epoch(uneven, "val", batch_size=2, rank=rank, world_size=world_size,
                             num_workers=num_workers, train=False)
        assert again == keys  # fixed order
        seen += [k for b in keys for k in b]
    assert len(seen) == 13 and set(seen) == expected


# ---------------------------------------------------------------------------------------------
# clear errors


def test_few_shards_train_and_zero_batches_are_clear_errors(stack_env: dict[str, str]) -> None:
    uri = _prefix("three")
    ensure_bucket(uri)
    manifest = write_test_dataset(uri, {"train": 9}, 3)
    assert len(list(data.make_loader(manifest, "train", batch_size=2, world_size=2, num_workers=2))) == 2
    with pytest.raises(ConfigError, match="0 full batches per rank"):
        data.make_loader(manifest, "train", batch_size=8, world_size=2, num_workers=0)
    with pytest.raises(ConfigError, match="no 'test' split"):
        data.make_loader(manifest, "test", batch_size=2)
    with pytest.raises(ConfigError, match="mean must have 1 or 3 values"):
        data.make_loader(manifest, "train", batch_size=2, num_workers=0, mean=(0.1, 0.2))
    with pytest.raises(ConfigError, match="has no masks"):
        data.make_loader(manifest, "train", batch_size=2, num_workers=0, with_masks=True)


# ---------------------------------------------------------------------------------------------
# tensors


def test_normalisation_shapes_and_labels(twins: tuple[dict, dict]) -> None:
    npy, _ = twins
    raw = {s["key"]: s for s in iterate_samples(npy, "val")}
    assert len(raw) == 10 and all(s["image"].dtype == np.uint8 and s["mask"] is not None for s in raw.values())

    loader = data.make_loader(npy, "val", batch_size=4, train=False, num_workers=0, with_meta=True)
    batch = next(iter(loader))
    images, labels, meta = batch.images, batch.labels, batch.meta
    assert batch.keys == [m["key"] for m in meta] and batch.masks is None
    assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (4,)
    for i, m in enumerate(meta):
        want = (torch.from_numpy(raw[m["key"]]["image"]).float() / 255 - 0.5) / 0.25
        for c in range(3):
            torch.testing.assert_close(images[i, c], want, atol=1e-5, rtol=0)
        assert labels[i].item() == raw[m["key"]]["label_id"] == m["label_id"]

    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    loader = data.make_loader(npy, "val", batch_size=4, train=False, num_workers=0, with_meta=True,
                              mean=mean, std=std)
    batch = next(iter(loader))
    images, meta = batch.images, batch.meta
    img = torch.from_numpy(raw[meta[0]["key"]]["image"]).float() / 255
    for c in range(3):
        torch.testing.assert_close(images[0, c], (img - mean[c]) / std[c], atol=1e-5, rtol=0)

    one = data.make_loader(npy, "val", batch_size=4, train=False, num_workers=0, channels=1, image_size=24)
    batch = next(iter(one))
    assert batch.images.shape == (4, 1, 24, 24) and batch.meta is None and len(batch.keys) == 4
    train = data.make_loader(npy, "train", batch_size=4, num_workers=2, image_size=16)
    batches = list(train)
    assert len(batches) == len(train) == 6 and all(b.images.shape == (4, 3, 16, 16) for b in batches)
    assert all(torch.isfinite(b.images).all() for b in batches)


def test_masks_follow_crop_and_flip(twins: tuple[dict, dict]) -> None:
    """Images are 0/255 blocks and mask = (image >= 128): after the random crop + flip they must agree."""
    npy, _ = twins
    loader = data.make_loader(npy, "train", batch_size=4, num_workers=2, with_masks=True, channels=1,
                              mean=(0.0,), std=(1.0,), image_size=48)
    agree, total, flipped_differs = 0, 0, 0
    for batch in loader:
        images, masks, labels = batch.images, batch.masks, batch.labels
        assert masks.shape == (4, 1, 48, 48) and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= {0, 1} and labels.shape == (4,)
        sure = (images < 0.1) | (images > 0.9)  # away from block edges, where bilinear blends
        agree += ((images > 0.5) == (masks == 1))[sure].sum().item()
        flipped_differs += ((images > 0.5) == (masks.flip(-1) == 1))[sure].float().mean().item() < 0.9
        total += sure.sum().item()
    assert agree / total > 0.99
    assert flipped_differs > 0  # the check above would notice a mask that missed a flip


def _by_key(manifest: dict, **kw) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    out = {}
    for batch in data.make_loader(manifest, "val", batch_size=4, train=False, with_masks=True, with_meta=True, **kw):
        for i, m in enumerate(batch.meta):
            assert m["key"] == batch.keys[i]
            out[m["key"]] = (batch.images[i], batch.masks[i], batch.labels[i].item())
    return out


def test_png_and_npy_give_identical_tensors_in_eval(twins: tuple[dict, dict]) -> None:
    npy, png = twins
    for size in (None, 24, 40):
        a = _by_key(npy, num_workers=0, image_size=size)
        b = _by_key(png, num_workers=2, image_size=size)
        assert len(a) == 10 and a.keys() == b.keys()
        for key, (ia, ma, la) in a.items():
            ib, mb, lb = b[key]
            assert torch.equal(ia, ib) and torch.equal(ma, mb) and la == lb


def test_train_npy_and_png_match_for_same_seed(twins: tuple[dict, dict]) -> None:
    npy, png = twins
    a = list(data.make_loader(npy, "train", batch_size=4, num_workers=0, seed=3))
    b = list(data.make_loader(png, "train", batch_size=4, num_workers=0, seed=3))
    assert all(torch.equal(x.images, y.images) and x.keys == y.keys for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("image_size", [None, 24, 40])
def test_preprocess_is_what_the_eval_loader_yields(twins: tuple[dict, dict], image_size: int | None) -> None:
    """Inference preprocessing of the stored pixels == the evaluation batches (through loader workers)."""
    npy, _ = twins
    raw = {s["key"]: s["image"] for s in iterate_samples(npy, "val")}
    size = image_size or npy["image_size"]
    for mean, std in [((0.5,) * 3, (0.25,) * 3), ((0.1, 0.2, 0.3), (0.5, 0.25, 0.125))]:
        rec = SimpleNamespace(in_chans=3, input_size=(3, size, size), mean=mean, std=std)
        seen = 0
        for batch in data.make_loader(npy, "val", batch_size=4, train=False, num_workers=2, image_size=image_size,
                                      mean=mean, std=std):
            assert torch.equal(preprocess(np.stack([raw[k] for k in batch.keys]), rec), batch.images)
            seen += len(batch)
        assert seen == len(raw)

