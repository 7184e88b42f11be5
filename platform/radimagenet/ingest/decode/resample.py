"""Resizing decoded images (area/bilinear, whole image) and label masks (nearest) to size x size."""

from __future__ import annotations

import numpy as np


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """The WHOLE uint8 grey image as size x size (aspect squashed; area averaging when shrinking)."""
    from PIL import Image

    _check_2d_uint8(image, "image")
    _check_size(size)
    h, w = image.shape
    if (h, w) == (size, size):
        return image.copy()
    shrink = h >= size and w >= size
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((size, size), method))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A uint8 label mask as size x size by nearest neighbour (labels are never blended)."""
    from PIL import Image

    _check_2d_uint8(mask, "mask")
    _check_size(size)
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def _check_2d_uint8(array: np.ndarray, name: str) -> None:
    """ValueError unless ``array`` is a 2-D uint8 array."""
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype != np.uint8:
        shape = getattr(array, "shape", None)
        raise ValueError(
            f"{name} must be a 2-D uint8 array, not {getattr(array, 'dtype', type(array))} {shape}"
        )


def _check_size(size: int) -> None:
    """ValueError unless ``size`` is a positive int."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, not {size!r}")
