"""Pixel values -> uint8 grey: modality LUT (rescale), VOI (file window, configured default, full
range or percentile min-max; LINEAR, LINEAR_EXACT, SIGMOID, VOI LUT), MONOCHROME1 inversion and
colour/palette -> luma, folded into one float32 multiply-add where possible."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radimagenet.ingest.decode.common import DecodeConfig, Rejected, _Geometry

_LUMA = (0.299, 0.587, 0.114)
_PERCENTILES = (0.5, 99.5)


def _grey_to_uint8(
    arr: np.ndarray, ds: Any, h: dict[str, Any], geo: _Geometry, modality: str, cfg: DecodeConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality LUT + VOI for a monochrome frame; the fast path is one fused affine."""
    invert = geo.photometric == "MONOCHROME1"
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise Rejected("non_finite", "the pixel data holds NaN or infinite values")
    slope, intercept = 1.0, 0.0
    if h.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        arr = apply_modality_lut(arr, ds)
    else:
        slope = _float_tag(h, "RescaleSlope", 1.0)
        intercept = _float_tag(h, "RescaleIntercept", 0.0)
    if cfg.use_file_window and _has_voi_lut(h):
        return _voi_lut_to_uint8(arr, ds, slope, intercept, invert)
    file_window = _file_window(h) if cfg.use_file_window else None
    plain_8bit = arr.dtype == np.uint8 and geo.bits_stored <= 8 and (slope, intercept) == (1.0, 0.0)
    fixed = (0.0, 255.0) if cfg.full_range_8bit and plain_8bit else None
    return _window_values(arr, slope, intercept, modality, file_window, fixed, invert, cfg)


def _float_tag(h: dict[str, Any], keyword: str, default: float) -> float:
    """A finite float DS tag (first value), the default when absent or empty."""
    value = h.get(keyword)
    if value is None or value == "":
        return default
    try:
        result = float(value[0] if _is_multivalue(value) else value)
    except (TypeError, ValueError):
        raise Rejected("bad_header", f"{keyword} is not a number") from None
    if not math.isfinite(result):
        raise Rejected("non_finite", f"{keyword} is not finite")
    return result


def _is_multivalue(value: Any) -> bool:
    """True for pydicom MultiValue containers."""
    from pydicom.multival import MultiValue

    return isinstance(value, MultiValue | list | tuple)


def _file_window(h: dict[str, Any]) -> tuple[float, float, str] | None:
    """(center, width, function) of the first file window, or None when absent or invalid."""
    if h.get("WindowCenter") in (None, "") or h.get("WindowWidth") in (None, ""):
        return None
    try:
        center = _float_tag(h, "WindowCenter", math.nan)
        width = _float_tag(h, "WindowWidth", math.nan)
    except Rejected:
        return None
    function = str(h.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or not width > 0:
        return None
    if function == "LINEAR" and width < 1:
        return None
    return center, width, function


def _has_voi_lut(h: dict[str, Any]) -> bool:
    """A usable VOI LUT Sequence (descriptor and data in the first item)."""
    seq = h.get("VOILUTSequence")
    if not seq:
        return False
    item = seq[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _voi_lut_to_uint8(
    arr: np.ndarray, ds: Any, slope: float, intercept: float, invert: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The file's first VOI LUT, its output range mapped to 0..255 (rare; not the fast path)."""
    from pydicom.pixels import apply_voi

    values = arr if (slope, intercept) == (1.0, 0.0) else np.rint(arr * slope + intercept)
    values = values.astype(np.int64, copy=False)
    try:
        descriptor = [int(v) for v in ds.VOILUTSequence[0].LUTDescriptor]
        n_entries, first = descriptor[0] or 65536, descriptor[1]
        table = apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds).astype(np.float32)
        out = apply_voi(values, ds).astype(np.float32)
    except Exception as exc:
        raise Rejected("bad_header", f"VOI LUT Sequence cannot be applied: {type(exc).__name__}") from None
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        raise Rejected("blank", "the VOI LUT maps every value to one output")
    image = _affine_to_uint8(out, 255.0 / (hi - lo), -lo * 255.0 / (hi - lo), invert)
    return image, {"center": first + n_entries / 2.0, "width": float(n_entries), "source": "file"}


def _window_values(
    values: np.ndarray,
    slope: float,
    intercept: float,
    modality: str,
    file_window: tuple[float, float, str] | None,
    fixed_range: tuple[float, float] | None,
    invert: bool,
    cfg: DecodeConfig,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Window ``values * slope + intercept`` to uint8.

    Precedence: the file window, the configured modality default, the fixed (full stored) range,
    the percentile min-max. ``window["source"]`` says which: file|default|full_range|minmax.
    """
    if file_window is not None:
        center, width, function = file_window
        source = "file"
    elif modality in cfg.windows:
        center, width = (float(v) for v in cfg.windows[modality])
        function, source = "LINEAR", "default"
    elif fixed_range is not None:
        lo, hi = fixed_range
        center, width, function, source = (lo + hi) / 2.0, hi - lo, "LINEAR_EXACT", "full_range"
    else:
        lo, hi = _robust_range(values, slope, intercept)
        center, width, function, source = (lo + hi) / 2.0, hi - lo, "LINEAR_EXACT", "minmax"
    window = {"center": float(center), "width": float(width), "source": source}
    if function == "SIGMOID":
        return _sigmoid_to_uint8(values, slope, intercept, center, width, invert), window
    if function == "LINEAR":  # PS3.3 C.11.2.1.2.1
        center, width = center - 0.5, max(width - 1.0, 1e-6)
    gain = 255.0 / width
    a = slope * gain
    b = (intercept - center) * gain + 127.5
    return _affine_to_uint8(values, a, b, invert), window


def _robust_range(values: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """0.5/99.5 percentiles of the modality output (subsampled for speed; true min/max fallback)."""
    step = max(1, int(math.sqrt(values.size / 65536)))
    sample = values[::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, _PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise Rejected("blank", "every pixel has the same value")
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _affine_to_uint8(values: np.ndarray, a: float, b: float, invert: bool) -> np.ndarray:
    """uint8(clip(values * a + b)) in one float32 buffer; rounding and inversion folded in."""
    if invert:
        a, b = -a, 255.0 - b
    buf = values.astype(np.float32, copy=not (values.dtype == np.float32 and values.flags.writeable))
    np.multiply(buf, np.float32(a), out=buf)
    np.add(buf, np.float32(b + 0.5), out=buf)
    np.clip(buf, 0.0, 255.0, out=buf)
    return buf.astype(np.uint8)


def _sigmoid_to_uint8(
    values: np.ndarray, slope: float, intercept: float, center: float, width: float, invert: bool
) -> np.ndarray:
    """The SIGMOID VOI function (PS3.3 C.11.2.1.3.1), then uint8."""
    buf = values.astype(np.float32)
    np.multiply(buf, np.float32(-4.0 * slope / width), out=buf)
    np.add(buf, np.float32(-4.0 * (intercept - center) / width), out=buf)
    np.clip(buf, -80.0, 80.0, out=buf)
    np.exp(buf, out=buf)
    np.add(buf, np.float32(1.0), out=buf)
    np.divide(np.float32(1.0), buf, out=buf)
    return _affine_to_uint8(buf, 255.0, 0.0, invert)


def _colour_to_luma(arr: np.ndarray, ds: Any, geo: _Geometry) -> tuple[np.ndarray, float]:
    """Luma (float32) of RGB / YBR (already RGB from pydicom) / PALETTE COLOR, and its top value."""
    photometric = geo.photometric
    top = float(2**geo.bits_stored - 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise Rejected("bad_header", f"palette LUT cannot be applied: {type(exc).__name__}") from None
        arr = arr[..., :3]
        top = float(np.iinfo(arr.dtype).max)
    elif photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        raise Rejected("unsupported_photometric", f"cannot convert {photometric} to grey")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise Rejected("bad_shape", f"{photometric} decoded to shape {arr.shape}, expected HxWx3")
    return arr.astype(np.float32) @ np.asarray(_LUMA, dtype=np.float32), top


def _check_not_blank(image: np.ndarray) -> None:
    """Rejected('blank') when every output pixel is equal."""
    if image.min() == image.max():
        raise Rejected("blank", f"every pixel is {int(image.flat[0])} after windowing")
