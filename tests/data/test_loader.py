"""The training input pipeline against the local stack's S3: sharding, balance, determinism, transforms."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers_shards import ensure_bucket, write_test_dataset  # noqa: E402
from radimagenet.data import loader as data
from radimagenet.data.plan import plan_train
from radimagenet.data.transforms import preprocess
from radimagenet.dataset.format import split_shards
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
    """One big shard and five 1-sample shards: a rank holding the small ones must cycle them."""
    uri = _prefix("lopsided")
    ensure_bucket(uri)
    return write_test_dataset(uri, {"train": 35}, 4, shard_sizes={"train": [30, 1, 1, 1, 1, 1]})


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


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_equal_batches_per_rank_with_uneven_shards(uneven: dict, world_size: int, num_workers: int) -> None:
    batch_size = 4
    expected = 44 // world_size // batch_size
    all_keys = {k for split in ["train"] for k in sample_labels(uneven, split)}
    for epoch in (0, 1):
        for rank in range(world_size):
            n, keys, images = _epoch(uneven, "train", batch_size=batch_size, rank=rank, world_size=world_size,
                                     epoch=epoch, num_workers=num_workers, shuffle_buffer=8)
            assert n == expected and len(keys) == expected, (rank, epoch, n, len(keys))
            assert all(len(b) == batch_size for b in keys)
            assert all(img.shape == (batch_size, 3, 32, 32) for img in images)
            assert {k for b in keys for k in b} <= all_keys


def test_train_rank_with_few_samples_cycles_its_shards(lopsided: dict) -> None:
    """Policy: a rank (worker) that runs out of samples reads its own shards again until its quota."""
    shards, cycled = split_shards(lopsided, "train"), 0
    for rank in (0, 1):
        n, keys, _ = _epoch(lopsided, "train", batch_size=4, rank=rank, world_size=2, num_workers=0)
        flat = [k for b in keys for k in b]
        assert n == len(keys) == 35 // 2 // 4 and len(flat) == 16
        plan = plan_train(shards, batch_size=4, rank=rank, world_size=2, num_workers=0, epoch=0, seed=0)
        held = plan.workers[0].samples
        if held < 16:  # the rank without the big shard: all its samples, read again and again
            assert len(set(flat)) == held and held <= 5
            cycled += 1
        else:  # the rank with the 30-sample shard: no repeats; the rest is skipped this epoch
            assert held >= 30 and len(set(flat)) == 16
    assert cycled == 1


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


def test_too_few_shards_and_zero_batches_are_clear_errors(stack_env: dict[str, str]) -> None:
    uri = _prefix("three")
    ensure_bucket(uri)
    manifest = write_test_dataset(uri, {"train": 9}, 3)
    with pytest.raises(ConfigError, match=r"3 train shards but 2 ranks x 2 loader workers need at least 4"):
        data.make_loader(manifest, "train", batch_size=2, world_size=2, num_workers=2)
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

