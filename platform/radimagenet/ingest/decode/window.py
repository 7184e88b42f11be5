"""Pixel values -> uint8 grey: modality LUT (rescale), VOI (file window, configured default, full
range or percentile min-max; LINEAR, LINEAR_EXACT, SIGMOID, VOI LUT), MONOCHROME1 inversion and
colour/palette -> luma, folded into one float32 multiply-add where possible.

Precedence. Modality: a Modality LUT Sequence replaces Rescale Slope/Intercept (PS3.3 C.11.1 allows one
or the other). VOI: a file's VOI LUT Sequence comes before its Window Center/Width when both are present
(PS3.3 C.11.2 makes them alternative views and names no default; we follow pydicom's ``prefer_lut``:
the LUT is the scanner's full, often non-linear, VOI and the window its linear summary), then the
configured modality window, then the full stored range (display-ready 8-bit data), then the percentile
min-max. An enhanced image's per-frame VOI (window or LUT) replaces the top-level one (dicom.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radimagenet.ingest.decode.common import DecodeConfig, Rejected, _Geometry
from radimagenet.ingest.decode.lut import apply_lut, read_lut

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
    modality_lut = _lut_item(h, "ModalityLUTSequence")
    if modality_lut is not None:  # it replaces the rescale (PS3.3 C.11.1: one or the other)
        first, table = read_lut(modality_lut, little=_little(ds), signed_input=geo.signed, name="Modality LUT")
        arr = apply_lut(arr, first, table)
    else:
        slope = _float_tag(h, "RescaleSlope", 1.0)
        intercept = _float_tag(h, "RescaleIntercept", 0.0)
    voi_lut = _lut_item(h, "VOILUTSequence") if cfg.use_file_window else None
    if voi_lut is not None:  # before Window Center/Width when both are present (module docstring)
        signed = modality_lut is None and (geo.signed or intercept < 0 or slope < 0)
        first, table = read_lut(voi_lut, little=_little(ds), signed_input=signed, name="VOI LUT")
        return _voi_lut_to_uint8(arr, first, table, slope, intercept, invert)
    file_window = _file_window(h) if cfg.use_file_window else None
    plain_8bit = arr.dtype == np.uint8 and geo.bits_stored <= 8 and (slope, intercept) == (1.0, 0.0)
    fixed = (0.0, 255.0) if cfg.full_range_8bit and plain_8bit else None
    return _window_values(arr, slope, intercept, modality, file_window, fixed, invert, cfg)


def _little(ds: Any) -> bool:
    """Whether the dataset was read little endian (OW LUT Data is in the file's byte order)."""
    return ds.original_encoding[1] is not False


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


def _lut_item(h: dict[str, Any], keyword: str) -> Any | None:
    """The first item of a Modality/VOI LUT Sequence; None when the sequence is absent or empty or the
    item has no LUT Descriptor or no LUT Data (the rescale or window is used as if it were absent)."""
    seq = h.get(keyword)
    if not seq or seq[0].get("LUTDescriptor") is None or seq[0].get("LUTData") is None:
        return None
    return seq[0]


def _voi_lut_to_uint8(
    arr: np.ndarray, first: int, table: np.ndarray, slope: float, intercept: float, invert: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The modality output mapped through the file's first VOI LUT, the table's lowest..highest entry
    to 0..255: not 0..2^bits-1 of the LUT Descriptor, whose bit depth scanners often overstate (a
    12-bit table declared 16-bit would come out nearly black). Rare; not the fast path."""
    values = arr if (slope, intercept) == (1.0, 0.0) else arr * slope + intercept
    out = apply_lut(values, first, table)
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        raise Rejected("blank", "the VOI LUT maps every value to one output")
    image = _affine_to_uint8(out, 255.0 / (hi - lo), -lo * 255.0 / (hi - lo), invert)
    return image, {"center": first + table.size / 2.0, "width": float(table.size), "source": "file"}


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
