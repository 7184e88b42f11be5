"""The generated image record (:class:`Pixels`) and the drawing primitives the anatomy uses: a random
pose grid, ellipses, disks, smooth noise and random points inside a region."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pixels:
    """A generated image as stored: array plus the Image Pixel / VOI header it needs."""

    array: np.ndarray  # (H, W) or (H, W, 3), stored values
    modality: str
    body_part: str
    photometric: str
    bits_stored: int
    signed: bool
    spacing: float
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: tuple[float, float] | None = None  # (center, width)
    mask: np.ndarray | None = None


def _grid(rng: np.random.Generator, h: int, w: int, scale=(0.85, 1.1), rot=0.25, shift=0.08):
    """Canonical coordinates (u, v) of every pixel under a random pose (shift, scale, rotation)."""
    s = float(rng.uniform(*scale))
    theta = float(rng.uniform(-rot, rot))
    cx, cy = rng.uniform(-shift, shift, 2)
    half = max(h, w) / 2.0
    x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2.0) / half)[None, :]
    y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2.0) / half)[:, None]
    c, sn = math.cos(theta) / s, math.sin(theta) / s
    u = (x - cx) * c + (y - cy) * sn
    v = -(x - cx) * sn + (y - cy) * c
    return u.astype(np.float32), v.astype(np.float32)


def _ell(u, v, cx, cy, rx, ry, theta=0.0) -> np.ndarray:
    """Boolean ellipse in canonical coordinates."""
    du, dv = u - cx, v - cy
    if theta:
        c, s = math.cos(theta), math.sin(theta)
        du, dv = du * c + dv * s, -du * s + dv * c
    return (du / rx) ** 2 + (dv / ry) ** 2 <= 1.0


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth unit-variance-ish noise with feature size ~ h/cells (bicubic upsampled white noise)."""
    from PIL import Image

    ch, cw = max(2, cells), max(2, int(cells * w / h))
    small = rng.standard_normal((ch, cw)).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC))
    return big / max(float(big.std()), 1e-6)


def _pick(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int] | None:
    """A random pixel (row, col) inside ``mask``."""
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return None
    i = int(flat[int(rng.integers(0, flat.size))])
    return divmod(i, mask.shape[1])


def _disk(h: int, w: int, py: float, px: float, r: float) -> np.ndarray:
    """Boolean disk in pixel coordinates."""
    y = (np.arange(h, dtype=np.float32) - py)[:, None]
    x = (np.arange(w, dtype=np.float32) - px)[None, :]
    return y * y + x * x <= r * r
