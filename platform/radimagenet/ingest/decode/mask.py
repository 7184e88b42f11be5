"""Label masks: PNG (0/255, 0/1 or small label sets) and DICOM SEG (first segment) -> uint8 HxW."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from radimagenet.ingest.decode.common import _PNG_MAGIC, DecodeConfig, Rejected, _check_size, _short
from radimagenet.ingest.decode.dicom import (
    _frame_count,
    _header,
    _header_int,
    _pixel_keyword,
    _read_dicom,
    _transfer_syntax,
)
from radimagenet.ingest.decode.pil import _open_pil
from radimagenet.ingest.decode.pixels import _RLE_LOSSLESS, _check_codestream, _check_decodable


def decode_mask(path: str | Path, cfg: DecodeConfig = DecodeConfig()) -> np.ndarray:  # noqa: B008
    """A uint8 HxW label mask from a PNG (0/255 or 0/1 -> 0/1) or DICOM SEG (first segment);
    ``cfg.max_megapixels`` bounds its size (checked from the header, before decoding)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            head = Path(path).read_bytes()[:132]
        except OSError as exc:
            raise Rejected("unreadable", f"cannot read mask: {type(exc).__name__}") from None
        if head.startswith(_PNG_MAGIC):
            return _normalise_labels(_pil_mask_array(path, cfg.max_megapixels))
        if head[128:132] == b"DICM":
            with open(path, "rb") as f:
                return _dicom_mask(_read_dicom(f, cfg.max_megapixels), cfg.max_megapixels)
        raise Rejected("unsupported_format", "a mask must be a PNG or a DICOM (SEG) file")


def _pil_mask_array(path: str | Path, max_megapixels: float) -> np.ndarray:
    """The pixel values of a PNG mask (palette indices kept as labels)."""
    img = _open_pil(path, "png", max_megapixels)
    if img.mode in ("RGB", "RGBA", "LA"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise Rejected("bad_mask", f"mask decoded to shape {arr.shape}, expected HxW")
    return arr


def _normalise_labels(arr: np.ndarray) -> np.ndarray:
    """0/1 and 0/255 -> 0/1; a small set of integer labels (< 255) is kept; else Rejected."""
    if arr.dtype.kind == "f":
        raise Rejected("bad_mask", "floating-point mask")
    labels = np.unique(arr)
    if labels.min() < 0:
        raise Rejected("bad_mask", "negative mask values")
    if set(labels.tolist()) <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    if labels.max() < 255 and labels.size <= 32:
        return arr.astype(np.uint8)
    raise Rejected("bad_mask", f"{labels.size} distinct values (max {int(labels.max())}): not a label mask")


def _dicom_mask(ds: Any, max_megapixels: float) -> np.ndarray:
    """First segment of a DICOM SEG (middle frame of that segment) or a plain DICOM label image."""
    from pydicom.pixels import pixel_array

    keyword = _pixel_keyword(ds)
    if keyword is None:
        raise Rejected("no_pixel_data", "the mask DICOM has no pixel data")
    h = _header(ds)
    _check_size(_header_int(h, "Rows"), _header_int(h, "Columns"), _header_int(h, "SamplesPerPixel", 1),
                _header_int(h, "BitsAllocated"), max_megapixels)
    tsyntax = _transfer_syntax(ds, keyword)
    _check_decodable(ds, keyword, tsyntax, None)
    frames = _frame_count(h)
    index = _seg_frame(ds, frames)
    if tsyntax.is_encapsulated and tsyntax != _RLE_LOSSLESS:  # the frame's own header, as for images
        geo = SimpleNamespace(rows=_header_int(h, "Rows"), cols=_header_int(h, "Columns"), frames=frames)
        _check_codestream(ds, keyword, geo, None if frames == 1 else index, tsyntax, max_megapixels)
    try:
        arr = pixel_array(ds, index=None if frames == 1 else index)
    except Exception as exc:
        raise Rejected("decode_failed", f"{tsyntax.name}: {type(exc).__name__}: {_short(exc)}") from None
    if arr.ndim != 2:
        raise Rejected("bad_mask", f"mask frame has shape {arr.shape}, expected HxW")
    if str(ds.get("SegmentationType", "")).upper() == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        return (arr > maximum / 2).astype(np.uint8)
    if str(ds.get("Modality", "")).upper() == "SEG":
        return (arr > 0).astype(np.uint8)
    return _normalise_labels(arr)


def _seg_frame(ds: Any, frames: int) -> int:
    """Index of the middle frame that belongs to the lowest referenced segment number."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    segment_of: list[int | None] = []
    for item in per_frame:
        try:
            segment_of.append(int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        except (AttributeError, IndexError, TypeError, ValueError):
            segment_of.append(None)
    numbers = [s for s in segment_of if s is not None]
    if len(segment_of) != frames or not numbers:
        return frames // 2
    first = min(numbers)
    indices = [i for i, s in enumerate(segment_of) if s == first]
    return indices[len(indices) // 2]
