"""PNG and JPEG key images through PIL: one frame (multi-frame policy), EXIF orientation, grey uint8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.ingest.decode.common import (
    DecodeConfig,
    Decoded,
    Rejected,
    _check_size,
    _frame_index,
    _short,
)
from radimagenet.ingest.decode.window import _check_not_blank, _window_values


def _open_pil(path: str | Path, fmt: str, max_megapixels: float) -> Any:
    """Open a PNG/JPEG with PIL (lazy: the header only), check its size, then load it; errors ->
    Rejected. PIL's own bomb limit (2 x ``Image.MAX_IMAGE_PIXELS``, ~179 MP) also applies."""
    from PIL import Image

    img = None
    try:
        img = Image.open(path)
        _check_pil_size(img, max_megapixels)
        img.load()
    except BaseException as exc:
        if img is not None:
            img.close()  # no file handle left open until garbage collection
        if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
            raise Rejected("too_large", f"{fmt}: {_short(exc)}") from None
        if isinstance(exc, OSError | SyntaxError | ValueError):
            reason = "truncated" if "truncated" in str(exc) else "decode_failed"
            raise Rejected(reason, f"{fmt}: {type(exc).__name__}: {_short(exc)}") from None
        raise
    return img


def _check_pil_size(img: Any, max_megapixels: float) -> None:
    """Rejected('too_large') from the header of an opened, not yet loaded, PIL image."""
    w, h = img.size
    mode = img.mode
    bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 8
    _check_size(h, w, len(img.getbands()), bits, max_megapixels)


def _pil_frame(img: Any, cfg: DecodeConfig) -> tuple[Any, int]:
    """The frame chosen by the multi-frame policy (animated PNG, MPO) and the frame count."""
    frames = int(getattr(img, "n_frames", 1) or 1)
    index = _frame_index(frames, cfg)
    if index:
        from PIL import Image

        try:
            img.seek(index)
            _check_pil_size(img, cfg.max_megapixels)  # an MPO frame has its own size
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("too_large", _short(exc)) from None
    return img, frames


def _decode_pil(path: str | Path, fmt: str, cfg: DecodeConfig) -> Decoded:
    """PNG/JPEG -> grey uint8: 8-bit as stored, colour -> luma ("L"), 16-bit/float -> min-max."""
    from PIL import ImageOps

    img, frames = _pil_frame(_open_pil(path, fmt, cfg.max_megapixels), cfg)
    mode = img.mode
    if fmt == "jpeg":
        img = ImageOps.exif_transpose(img)
    w, h = img.size
    if h < cfg.min_size or w < cfg.min_size:
        raise Rejected("too_small", f"{h} x {w} is below the minimum {cfg.min_size}")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise Rejected("non_finite", f"{fmt}: NaN or infinite pixel values")
        image, window = _window_values(values, 1.0, 0.0, "", None, None, False, cfg)
        bits = 32 if mode in ("I", "F") else 16
    else:
        image = np.asarray(img if mode == "L" else img.convert("L"))
        window, bits = {"center": 127.5, "width": 255.0, "source": "full_range"}, 8
    _check_not_blank(image)
    meta = {
        "modality": "",
        "body_part": "",
        "rows": int(image.shape[0]),
        "columns": int(image.shape[1]),
        "pixel_spacing": None,
        "photometric": mode,
        "bits_stored": bits,
        "frames": frames,
        "transfer_syntax": None,
        "window": window,
        "source_format": fmt,
    }
    return Decoded(image=np.ascontiguousarray(image), meta=meta, patient_id=None)
