"""The one preprocessing of the project: grey uint8 image -> normalised float32 ``[C, S, S]``.

Training, evaluation and inference all go through this module, so a model sees at inference
exactly the pixels it saw in training:

* :class:`Transform` - per sample, spatial: train = random resized crop (scale (0.35, 1), ratio
  (3/4, 4/3)) + horizontal flip with p=0.5; eval = resize only (bilinear, half-pixel centres,
  antialiased when shrinking). It writes the *unnormalised* 0..255 float image straight into its
  slot of the batch tensor (and the mask, nearest-neighbour, with the same box and flip).
* :class:`Normalise` - per batch, in place: ``(x / 255 - mean) / std`` and grey -> ``C`` channels.
* :func:`preprocess` - inference (notebooks, ``predict``): a batch of grey images through
  ``Transform(train=False)`` and ``Normalise`` as the evaluation loader does, driven by a model's
  record (``in_chans``, ``input_size``, ``mean``, ``std``).

Vertical flips are not used: anatomy has a fixed cranio-caudal orientation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radimagenet.dataset.reader import decode_image, decode_mask
from radimagenet.errors import ConfigError, StorageError

CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


# --------------------------------------------------------------------------------------------------
# Spatial transforms (per sample, uint8 in, 0..255 float out)
# --------------------------------------------------------------------------------------------------


def random_resized_crop_box(
    width: int, height: int, rng: random.Random,
    scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """A random ``(left, top, right, bottom)`` crop box, drawn as torchvision's RandomResizedCrop does."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    aspect = width / height  # fallback: the largest centred crop within the ratio range
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``arr``'s memory when it is writeable (a copy otherwise)."""
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def resize_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Bilinear-resize uint8 ``src [1, 1, h, w]`` into float ``dst [1, 1, S, S]`` (half-pixel centres).

    Upsampling (the usual case: crops are never larger than the image) writes straight into ``dst``;
    shrinking in any dimension uses the antialiased kernel so downscaled images do not alias.
    """
    size = tuple(dst.shape[-2:])
    if tuple(src.shape[-2:]) == size:
        dst.copy_(src)
    elif src.shape[-2] <= size[0] and src.shape[-1] <= size[1]:
        torch.ops.aten.upsample_bilinear2d.out(src.to(torch.float32), list(size), False, None, None, out=dst)
    else:
        dst.copy_(F.interpolate(src.to(torch.float32), size=size, mode="bilinear", antialias=True))


def resize_mask_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Nearest-neighbour resize of a uint8 mask ``src [1, 1, h, w]`` into ``dst [1, 1, S, S]``."""
    if tuple(src.shape[-2:]) == tuple(dst.shape[-2:]):
        dst.copy_(src)
    else:
        dst.copy_(F.interpolate(src, size=tuple(dst.shape[-2:]), mode="nearest-exact"))


@dataclass(frozen=True)
class Transform:
    """Per-sample spatial transform to ``size`` x ``size`` (train: crop + flip; eval: resize only).

    Writes the *unnormalised* float image into a slot of the batch tensor (normalisation is per
    batch, and commutes with bilinear resizing) and the mask, resized nearest-neighbour with the
    same crop box and flip, into the uint8 mask batch. ``encoding`` is the dataset's image member
    (``npy`` or ``png``), used only to decode samples.
    """

    size: int
    train: bool
    encoding: str
    with_masks: bool = False

    def __call__(self, sample: dict[str, Any], rng: random.Random,
                 image_out: torch.Tensor, mask_out: torch.Tensor | None = None) -> None:
        """Decode a raw shard sample and transform it into ``image_out`` (and ``mask_out``)."""
        image = as_tensor(decode_image(sample, self.encoding))
        box, flip = self.apply(image, rng, image_out)
        if mask_out is None:
            return
        mask = decode_mask(sample)
        if mask is None:  # no mask member: all background
            mask_out.zero_()
            return
        if mask.shape != tuple(image.shape):
            raise StorageError(
                f"sample {sample['__key__']!r}: mask {mask.shape} does not match image {tuple(image.shape)}"
            )
        left, top, right, bottom = box
        mcrop = as_tensor(mask)[top:bottom, left:right]
        resize_mask_into(mask_out, (mcrop.flip(-1) if flip else mcrop)[None, None])

    def apply(self, image: torch.Tensor, rng: random.Random | None,
              image_out: torch.Tensor) -> tuple[tuple[int, int, int, int], bool]:
        """Transform one uint8 ``[H, W]`` image into ``image_out [1, 1, S, S]``; return ``(box, flip)``.

        ``rng`` is only drawn from in training mode (it may be None in eval mode).
        """
        height, width = image.shape
        box, flip = (0, 0, width, height), False
        if self.train:
            if rng is None:
                raise ConfigError("a training Transform needs an rng")
            box = random_resized_crop_box(width, height, rng)
            flip = rng.random() < 0.5
        left, top, right, bottom = box
        crop = image[top:bottom, left:right]
        resize_into(image_out, (crop.flip(-1) if flip else crop)[None, None])
        return box, flip


# --------------------------------------------------------------------------------------------------
# Per batch: normalisation and channel replication
# --------------------------------------------------------------------------------------------------


def new_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory directly
    (as torch's default_collate does), so sending it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    base = torch.empty(0, dtype=dtype)
    storage = base._typed_storage()._new_shared(math.prod(shape))
    return base.new(storage).view(shape)


@dataclass(frozen=True)
class Normalise:
    """float ``[B, 1, S, S]`` of 0..255 values -> ``[B, channels, S, S]`` of ``(x / 255 - mean) / std``.

    With one mean/std for all channels (the natural choice for grey images) the plane is
    normalised in place and the channels are a stride-0 ``expand`` of it: no extra work and 3x
    less to send between processes. ``.to(device)`` / ``.contiguous()`` materialise it; do not
    modify it in place on the CPU. Distinct per-channel values (e.g. ImageNet's) write every channel.
    """

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def coefficients(self) -> list[tuple[float, float]]:
        """``(scale, shift)`` per channel with ``y = x * scale + shift`` for 0..255 ``x``."""
        mean = self.mean * self.channels if len(self.mean) == 1 else self.mean
        std = self.std * self.channels if len(self.std) == 1 else self.std
        return [(1.0 / (255.0 * s), -m / s) for m, s in zip(mean, std, strict=True)]

    def __call__(self, plane: torch.Tensor) -> torch.Tensor:
        b, _, h, w = plane.shape
        coef = self.coefficients()
        if len(set(coef)) == 1:
            scale, shift = coef[0]
            return plane.mul_(scale).add_(shift).expand(b, self.channels, h, w)
        out = new_tensor((b, self.channels, h, w))
        for c, (scale, shift) in enumerate(coef):
            torch.mul(plane[:, 0], scale, out=out[:, c]).add_(shift)
        return out


def check_normalise(channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Normalise:
    """Validate the channel count and mean/std lengths (1 value, or one per channel)."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ConfigError(f"{name} must have 1 or {channels} values, got {len(values)}: {tuple(values)}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"std values must be positive, got {tuple(std)}")
    return Normalise(channels, tuple(float(m) for m in mean), tuple(float(s) for s in std))


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------


def grey_uint8(images: Any) -> torch.Tensor:
    """Grey images as a uint8 tensor ``[B, H, W]`` (the pixels a dataset stores).

    Accepts a numpy array or tensor (or anything ``np.asarray`` takes) shaped ``[H, W]``,
    ``[B, H, W]`` or ``[B, 1, H, W]``: uint8 as is; floating point must lie in ``[0, 1]`` and is
    quantised as the ingest does (``uint8(x * 255 + 0.5)``), so it reaches the model as the same
    pixel values a training image would. Any other dtype, or floats outside ``[0, 1]``, is a
    :class:`ConfigError`.
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(images)))
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ConfigError(f"expected grey images [H,W], [B,H,W] or [B,1,H,W], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ConfigError(f"expected uint8 (0..255) or floating point (0..1) images, got {x.dtype}")
    x = x.to(torch.float32)
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ConfigError(
            f"floating-point images must lie in [0, 1] (got {x.min().item():g}..{x.max().item():g}); "
            "pass uint8 for 0..255 values"
        )
    return (x * 255.0 + 0.5).clamp_(0.0, 255.0).to(torch.uint8)


def preprocess(images: Any, record: Any) -> torch.Tensor:
    """Grey images -> normalised float32 ``[B, C, S, S]`` exactly as the evaluation loader makes them.

    ``images``: see :func:`grey_uint8` (uint8 ``[H, W]`` / ``[B, H, W]``, or float in ``[0, 1]``).
    ``record`` is a model's record (e.g. ``radimagenet.models.factory.BackboneRecord``); its
    ``in_chans``, ``input_size`` ``(C, S, S)``, ``mean`` and ``std`` are used. Each image goes
    through ``Transform(S, train=False).apply`` (bilinear resize, antialiased when shrinking) and
    the batch through :class:`Normalise`: the very code of ``make_loader(..., train=False)``. The
    result is contiguous and on the device of a tensor input (computed on the CPU).
    """
    in_chans = int(record.in_chans)
    channels, height, width = (int(v) for v in record.input_size)
    if channels != in_chans or height != width or height < 1:
        raise ConfigError(f"record input_size {tuple(record.input_size)} must be ({in_chans}, S, S)")
    interpolation = getattr(record, "interpolation", "bilinear")
    if interpolation != "bilinear":
        raise ConfigError(f"record interpolation {interpolation!r}: training resizes bilinearly only")
    normalise = check_normalise(in_chans, tuple(record.mean), tuple(record.std))
    device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    x = grey_uint8(images).cpu()
    transform = Transform(height, train=False, encoding="npy")
    plane = new_tensor((x.shape[0], 1, height, height))
    for i in range(x.shape[0]):
        transform.apply(x[i], None, plane[i : i + 1])
    return normalise(plane).contiguous().to(device)
