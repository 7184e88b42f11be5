"""PNG and JPEG key images through PIL: one frame (multi-frame policy), EXIF orientation, grey uint8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.ingest.decode.common import DecodeConfig, Decoded, Rejected, _frame_index, _short
from radimagenet.ingest.decode.window import _check_not_blank, _window_values


def _open_pil(path: str | Path, fmt: str) -> Any:
    """Open and fully load a PNG/JPEG with PIL; errors -> Rejected."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError:
        raise Rejected("decode_failed", f"{fmt}: image exceeds PIL's decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc) else "decode_failed"
        raise Rejected(reason, f"{fmt}: {type(exc).__name__}: {_short(exc)}") from None
    return img


def _pil_frame(img: Any, cfg: DecodeConfig) -> tuple[Any, int]:
    """The frame chosen by the multi-frame policy (animated PNG, MPO) and the frame count."""
    frames = int(getattr(img, "n_frames", 1) or 1)
    index = _frame_index(frames, cfg)
    if index:
        img.seek(index)
        img.load()
    return img, frames


def _decode_pil(path: str | Path, fmt: str, cfg: DecodeConfig) -> Decoded:
    """PNG/JPEG -> grey uint8: 8-bit as stored, colour -> luma ("L"), 16-bit/float -> min-max."""
    from PIL import ImageOps

    img, frames = _pil_frame(_open_pil(path, fmt), cfg)
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
