"""The one preprocessing: inference (``transforms.preprocess``) is the evaluation loader's code path.

In-memory raw samples go through the loader's batch builder (:func:`radimagenet.data.loader.make_batch`,
what every DataLoader worker runs); no server is needed.
"""

from __future__ import annotations

import io
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from radimagenet.data import loader, transforms
from radimagenet.data.plan import plan_eval
from radimagenet.data.transforms import Transform, check_normalise, preprocess
from radimagenet.dataset.format import ShardRef
from radimagenet.errors import ConfigError, StorageError


def grey_image(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth structure plus noise: resizing it exercises every interpolation weight."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    smooth = 127 + 100 * np.sin(7 * x + 3 * seed) * np.cos(5 * y)
    return np.clip(smooth + rng.normal(0, 20, (height, width)), 0, 255).astype(np.uint8)


def block_image(seed: int, size: int) -> np.ndarray:
    """0/255 blocks (as the test datasets): the mask is ``image >= 128``."""
    pattern = np.random.default_rng(seed).integers(0, 2, (size // 8, size // 8), dtype=np.uint8)
    return np.kron(pattern, np.ones((8, 8), np.uint8)) * 255


def encode(image: np.ndarray, encoding: str) -> bytearray:
    buf = io.BytesIO()
    if encoding == "npy":
        np.save(buf, image, allow_pickle=False)
    else:
        Image.fromarray(image, mode="L").save(buf, format="PNG")
    return bytearray(buf.getvalue())  # as the tar reader yields members


def raw_sample(key: str, image: np.ndarray, label: int, encoding: str = "npy",
               mask: np.ndarray | None = None) -> dict:
    sample = {"__key__": key, encoding: encode(image, encoding), "cls": str(label).encode(),
              "json": json.dumps({"index": label, "modality": "CT"}).encode()}
    if mask is not None:
        sample["mask.png"] = encode(mask, "png")
    return sample


def spec(size: int, *, train: bool = False, channels: int = 3, mean=(0.5,), std=(0.25,), encoding: str = "npy",
         with_masks: bool = False, with_meta: bool = False) -> loader.BatchSpec:
    plan = plan_eval([ShardRef("s3://b/val-000000.tar", 4)], batch_size=4, rank=0, world_size=1, num_workers=0)
    return loader.BatchSpec(plan, Transform(size, train, encoding, with_masks), check_normalise(channels, mean, std),
                            0, with_meta, with_masks)


def record(channels: int, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> SimpleNamespace:
    """A duck-typed model record (the fields of models.factory.BackboneRecord that preprocessing reads)."""
    return SimpleNamespace(in_chans=channels, input_size=(channels, size, size), mean=mean, std=std)


# ---------------------------------------------------------------------------------------------
# inference == evaluation loader


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stats", ["one", "per-channel"])
@pytest.mark.parametrize("source,size", [((32, 32), 32), ((32, 32), 48), ((64, 64), 24), ((40, 56), 32)],
                         ids=["same-size", "upsample", "downsample", "non-square-source"])
def test_preprocess_is_the_eval_loader_path(channels: int, stats: str, source: tuple[int, int], size: int) -> None:
    mean, std = ((0.5,), (0.25,)) if stats == "one" else ((0.1, 0.2, 0.3)[:channels], (0.5, 0.25, 0.125)[:channels])
    images = np.stack([grey_image(i, *source) for i in range(3)])
    samples = [raw_sample(f"k{i}", img, i) for i, img in enumerate(images)]
    batch = loader.make_batch(spec(size, channels=channels, mean=mean, std=std), samples, random.Random(0))
    x = preprocess(images, record(channels, size, mean, std))
    assert x.shape == batch.images.shape == (3, channels, size, size) and x.dtype == torch.float32
    assert torch.equal(x, batch.images)
    assert x.is_contiguous()
    for i in range(3):  # one image at a time ([H, W]) is the same as in a batch
        assert torch.equal(preprocess(images[i], record(channels, size, mean, std))[0], batch.images[i])


def test_preprocess_matches_png_datasets_and_broadcast_record_stats() -> None:
    """A record carries mean/std per channel (models.factory.channel_stats); the loader may get one value."""
    images = np.stack([grey_image(i, 48, 48) for i in range(2)])
    samples = [raw_sample(f"k{i}", img, i, "png") for i, img in enumerate(images)]
    batch = loader.make_batch(spec(32, encoding="png"), samples, random.Random(0))
    assert torch.equal(preprocess(images, record(3, 32, (0.5,) * 3, (0.25,) * 3)), batch.images)


def test_preprocess_reference_values() -> None:
    """Independent of the loader: constant images stay constant, (x / 255 - mean) / std per channel."""
    rec = record(3, 32, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    x = preprocess(np.full((2, 64, 64), 255, np.uint8), rec)
    for c in range(3):
        torch.testing.assert_close(x[:, c], torch.full((2, 32, 32), (1.0 - rec.mean[c]) / rec.std[c]),
                                   atol=1e-5, rtol=0)
    img = grey_image(3, 32, 32)
    same = preprocess(img, record(1, 32, (0.5,), (0.25,)))
    torch.testing.assert_close(same[0, 0], (torch.from_numpy(img).float() / 255 - 0.5) / 0.25, atol=1e-5, rtol=0)


def test_preprocess_inputs() -> None:
    rec = record(3, 32, (0.5,), (0.25,))
    img = grey_image(1, 40, 40)
    want = preprocess(img, rec)
    assert want.shape == (1, 3, 32, 32)
    assert torch.equal(preprocess(torch.from_numpy(img), rec), want)
    assert torch.equal(preprocess(img[None, None], rec), want)  # [B, 1, H, W]
    assert torch.equal(preprocess(img.astype(np.float64) / 255.0, rec), want)  # float [0, 1] -> the same uint8
    assert torch.equal(preprocess(torch.from_numpy(img).float() / 255.0, rec), want)
    assert torch.equal(preprocess(img[:, ::-1], rec), preprocess(np.ascontiguousarray(img[:, ::-1]), rec))
    assert preprocess(np.zeros((0, 40, 40), np.uint8), rec).shape == (0, 3, 32, 32)

    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\]"):
        preprocess(img.astype(np.float32), rec)  # 0..255 floats
    with pytest.raises(ConfigError, match="uint8"):
        preprocess(img.astype(np.int16), rec)
    with pytest.raises(ConfigError, match="expected grey images"):
        preprocess(np.zeros((2, 3, 8, 8), np.uint8), rec)
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        preprocess(img, record(2, 32, (0.5,), (0.25,)))
    with pytest.raises(ConfigError, match="input_size"):
        preprocess(img, SimpleNamespace(in_chans=3, input_size=(3, 32, 16), mean=(0.5,), std=(0.25,)))
    with pytest.raises(ConfigError, match="bilinear"):
        preprocess(img, SimpleNamespace(**vars(rec), interpolation="bicubic"))


# ---------------------------------------------------------------------------------------------
# the loader's batches


def test_batch_fields_labels_keys_meta() -> None:
    images = [grey_image(i, 32, 32) for i in range(3)]
    samples = [raw_sample(f"dir/k{i}", img, 5 + i) for i, img in enumerate(images)]
    batch = loader.make_batch(spec(32, with_meta=True), samples, random.Random(0))
    assert isinstance(batch, loader.Batch) and len(batch) == 3
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [5, 6, 7]
    assert batch.keys == ["dir/k0", "dir/k1", "dir/k2"]
    assert batch.meta == [{"key": f"dir/k{i}", "index": 5 + i, "modality": "CT"} for i in range(3)]
    assert batch.masks is None

    plain = loader.make_batch(spec(32), samples, random.Random(0))
    assert plain.meta is None and plain.masks is None and plain.keys == batch.keys
    assert torch.equal(plain.images, batch.images)


def test_batch_pin_memory_is_what_dataloader_pinning_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DataLoader(pin_memory=True)`` pins a batch through its ``pin_memory`` method (CPU stand-in for pinning)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    masks = [(grey_image(i, 32, 32) >= 128).astype(np.uint8) for i in range(2)]
    samples = [raw_sample(f"k{i}", grey_image(i, 32, 32), i, mask=m) for i, m in enumerate(masks)]
    batch = loader.make_batch(spec(32, with_masks=True, with_meta=True), samples, random.Random(0))
    pinned_ids = []

    def fake_pin(self: torch.Tensor, *args: object) -> torch.Tensor:
        out = self.clone()
        pinned_ids.append(id(out))
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    out = pin_memory(batch)
    assert isinstance(out, loader.Batch) and out is not batch
    assert {id(out.images), id(out.labels), id(out.masks)} == set(pinned_ids)
    assert torch.equal(out.images, batch.images) and torch.equal(out.masks, batch.masks)
    assert out.keys == batch.keys and out.meta == batch.meta


def test_masks_follow_crop_and_flip_in_training() -> None:
    """0/255 block images with mask = image >= 128: after random crops and flips they still agree."""
    samples = []
    for i in range(16):
        img = block_image(i, 32)
        samples.append(raw_sample(f"k{i}", img, i % 4, mask=(img >= 128).astype(np.uint8)))
    s = spec(48, train=True, channels=1, mean=(0.0,), std=(1.0,), with_masks=True)
    batch = loader.make_batch(s, samples, random.Random(3))
    assert batch.masks.shape == (16, 1, 48, 48) and batch.masks.dtype == torch.int64
    assert set(batch.masks.unique().tolist()) <= {0, 1}
    sure = (batch.images < 0.1) | (batch.images > 0.9)  # away from block edges, where bilinear blends
    agree = ((batch.images > 0.5) == (batch.masks == 1))[sure].float().mean().item()
    flipped = [((batch.images[i] > 0.5) == (batch.masks[i].flip(-1) == 1))[sure[i]].float().mean().item()
               for i in range(16)]
    assert agree > 0.99
    assert min(flipped) < 0.9  # the check above would notice a mask that missed a flip

    again = loader.make_batch(s, samples, random.Random(3))  # same rng: same crops and flips
    assert torch.equal(again.images, batch.images) and torch.equal(again.masks, batch.masks)
    other = loader.make_batch(s, samples, random.Random(4))
    assert not torch.equal(other.images, batch.images)


def test_missing_and_mismatched_masks() -> None:
    img = block_image(0, 32)
    batch = loader.make_batch(spec(32, with_masks=True), [raw_sample("k", img, 0)], random.Random(0))
    assert batch.masks.shape == (1, 1, 32, 32) and not batch.masks.any()  # no mask member: background
    wrong = raw_sample("bad", img, 0, mask=np.zeros((16, 16), np.uint8))
    with pytest.raises(StorageError, match="does not match image"):
        loader.make_batch(spec(32, with_masks=True), [wrong], random.Random(0))


def test_per_channel_normalise_writes_each_channel_and_one_value_expands() -> None:
    plane = torch.full((2, 1, 4, 4), 255.0)
    out = check_normalise(3, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))(plane.clone())
    assert out.is_contiguous() and [round(out[0, c, 0, 0].item(), 5) for c in range(3)] == [1.8, 3.2, 5.6]
    shared = check_normalise(3, (0.5,), (0.25,))(plane.clone())
    assert shared.stride(1) == 0 and torch.allclose(shared, torch.full((2, 3, 4, 4), 2.0))
    with pytest.raises(ConfigError, match="std values must be positive"):
        check_normalise(1, (0.5,), (0.0,))


def test_random_resized_crop_box_within_image_and_ratio() -> None:
    rng = random.Random(0)
    for width, height in [(32, 32), (64, 16), (7, 200)]:
        for _ in range(50):
            left, top, right, bottom = transforms.random_resized_crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
    # when no draw fits (a very thin image) the fallback is the largest centred crop within the ratio range
    assert transforms.random_resized_crop_box(1, 100, random.Random(0)) == (0, 49, 1, 50)  # 1 x round(1 / (3/4)), centred


@pytest.mark.parametrize("channels,mean,std", [(3, (0.5,), (0.25,)), (3, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)),
                                               (1, (0.5,), (0.25,))])
def test_workers_parts_join_into_the_batch_one_worker_builds(channels: int, mean: tuple, std: tuple) -> None:
    """Training: each loader worker builds its part of a batch, the rank joins them in worker order."""
    from radimagenet.data.order import sample_rngs

    images = [block_image(i, 32) for i in range(7)]
    samples = [raw_sample(f"k{i}", img, i % 3, mask=(img >= 128).astype(np.uint8)) for i, img in enumerate(images)]
    s = spec(24, train=True, channels=channels, mean=mean, std=std, with_masks=True, with_meta=True)
    ids = np.arange(100, 107)
    whole = loader.make_batch(s, samples, sample_rngs(1, 2, ids))
    parts = [loader.make_batch(s, samples[a:b], sample_rngs(1, 2, ids[a:b])) for a, b in [(0, 3), (3, 3), (3, 7)]]
    for joined in (loader.join_batches(s, [parts[0], None, parts[2]]), loader.join_batches(s, parts)):
        assert torch.equal(joined.images, whole.images) and joined.images.shape == (7, channels, 24, 24)
        assert torch.equal(joined.labels, whole.labels) and torch.equal(joined.masks, whole.masks)
        assert joined.keys == whole.keys and joined.meta == whole.meta
    assert loader.join_batches(s, [parts[0]]) is parts[0]  # one part: nothing to copy
    empty = loader.join_batches(s, [None, None])
    assert empty.images.shape == (0, channels, 24, 24) and empty.keys == [] and len(empty.labels) == 0
