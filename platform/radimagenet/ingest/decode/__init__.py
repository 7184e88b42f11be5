"""Key-image decoding: one DICOM, PNG or JPEG file -> one uint8 grey image plus safe metadata.

    d = decode_file("ct.dcm")                 # Decoded(image=uint8 HxW, meta={...}, patient_id=...)
    small = resize(d.image, 224)              # whole image, area/antialiased, aspect squashed

Anything that cannot become a training sample raises :class:`Rejected` with a stable reason code
from :data:`REJECT_REASONS`; ``detail`` never contains PHI or the file path.

DICOM pipeline (pydicom 3): one ``dcmread``, header sanity checks (before decoding), the length
check of native pixel data (pydicom silently reads many truncated files), decoding of ONE frame
(multi-frame policy), then colour/palette -> luma, and the modality LUT (rescale) + VOI
(file window, configured default, or percentile min-max) + MONOCHROME1 inversion folded into a
single float32 multiply-add, clipped in place and cast to uint8. Native and RLE grey frames take
fast paths equal to pydicom's decoders, JPEG-LS goes to CharLS (pyjpegls) first; everything else,
and any fast-path failure, goes through pydicom's plugins.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REJECT_REASONS: dict[str, str] = {
    "unreadable": "the file could not be opened or parsed (corrupt or truncated DICOM header, I/O error)",
    "unsupported_format": "not a DICOM, PNG or JPEG file",
    "no_pixel_data": "a DICOM object without an image (RT plan, structured report, waveform ...)",
    "bad_header": "image pixel tags missing or inconsistent (Rows, Columns, BitsAllocated, "
    "SamplesPerPixel, PhotometricInterpretation, NumberOfFrames, Transfer Syntax)",
    "truncated": "native pixel data shorter than Rows*Columns*SamplesPerPixel*BitsAllocated*Frames",
    "unsupported_syntax": "a transfer syntax pydicom cannot decode at all (video, JPIP ...)",
    "missing_decoder": "no installed plugin can decode this transfer syntax",
    "decode_failed": "the pixel decoder raised an error (corrupt or truncated compressed data)",
    "bad_shape": "the decoded array does not have the shape the header declares",
    "unsupported_photometric": "a photometric interpretation that cannot be converted to grey",
    "non_finite": "NaN or infinite pixel values or rescale/window parameters",
    "multiframe": "a multi-frame image and the multi-frame policy is 'reject'",
    "too_small": "rows or columns below the configured minimum size",
    "blank": "no contrast after windowing (every output pixel has the same value)",
    "bad_mask": "a mask file that is not a 0/1, 0/255 or small-label image, or a SEG without segments",
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_LUMA = (0.299, 0.587, 0.114)
_PERCENTILES = (0.5, 99.5)
_EOF_WARNING = "End of file reached before delimiter"
_MULTIFRAME_POLICIES = ("middle", "first", "reject")
_PIXEL_TAGS = {"PixelData": 0x7FE00010, "FloatPixelData": 0x7FE00008, "DoubleFloatPixelData": 0x7FE00009}
# Every tag decoding needs, read ONCE by number: a Dataset lookup by keyword costs ~4 us.
_HEADER_TAGS: dict[str, int] = {
    "Modality": 0x00080060,
    "PatientID": 0x00100020,
    "BodyPartExamined": 0x00180015,
    "ImagerPixelSpacing": 0x00181164,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "PixelRepresentation": 0x00280103,
    "WindowCenter": 0x00281050,
    "WindowWidth": 0x00281051,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
    "VOILUTFunction": 0x00281056,
    "ModalityLUTSequence": 0x00283000,
    "VOILUTSequence": 0x00283010,
    "SharedFunctionalGroupsSequence": 0x52009229,
}


class Rejected(Exception):
    """An input that cannot become a sample; ``reason`` is a key of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; add it to REJECT_REASONS")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        """Picklable across process pools (the default would call ``Rejected(message)``)."""
        return (Rejected, (self.reason, self.detail))


@dataclass(frozen=True)
class DecodeConfig:
    """How pixel values become display grey levels.

    ``windows``: modality -> (center, width) used when the file has no VOI (or
    ``use_file_window`` is False); other modalities without VOI get a percentile (0.5/99.5)
    min-max of the modality-LUT output. ``multiframe``: "middle" | "first" | "reject".
    ``full_range_8bit``: images that are already display-ready and have no VOI (colour/palette
    images, unsigned 8-bit grey without rescale) map their full stored range to 0..255
    (identity for 8-bit) instead of being percentile-stretched.
    """

    windows: dict[str, tuple[float, float]] = field(default_factory=lambda: {"CT": (40.0, 400.0)})
    multiframe: str = "middle"
    min_size: int = 16
    use_file_window: bool = True
    full_range_8bit: bool = True  # display-ready 8-bit data (and colour) keep their stored levels

    def __post_init__(self) -> None:
        if self.multiframe not in _MULTIFRAME_POLICIES:
            raise ValueError(f"multiframe must be one of {_MULTIFRAME_POLICIES}, not {self.multiframe!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, not {self.min_size}")
        for modality, (_, width) in self.windows.items():
            if not width > 0:
                raise ValueError(f"window width for {modality} must be > 0, not {width}")


@dataclass
class Decoded:
    """A decoded key image: uint8 HxW grey, non-identifying ``meta``, and the raw PatientID."""

    image: np.ndarray
    meta: dict[str, Any]
    patient_id: str | None


# --------------------------------------------------------------------------------------- public


def decode_file(path: str | Path, cfg: DecodeConfig = DecodeConfig()) -> Decoded:  # noqa: B008
    """Decode one DICOM/PNG/JPEG file (sniffed by content, not by name) or raise :class:`Rejected`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("error", message=_EOF_WARNING)  # pydicom only warns, then drops data
        try:
            with open(path, "rb") as f:
                head = f.read(132)
                if head[128:132] == b"DICM":
                    f.seek(0)
                    ds = _read_dicom(f)
                    f.seek(-8, 2)
                    return _decode_dicom(ds, cfg, tail=f.read(8))
        except OSError as exc:
            raise Rejected("unreadable", f"cannot read file: {type(exc).__name__}") from None
        if head.startswith(_PNG_MAGIC):
            return _decode_pil(path, "png", cfg)
        if head.startswith(_JPEG_MAGIC):
            return _decode_pil(path, "jpeg", cfg)
        ds = _read_headerless_dicom(path, head)
        if ds is None:
            raise Rejected("unsupported_format", "not DICOM (no 'DICM' preamble), PNG or JPEG")
        return _decode_dicom(ds, cfg)


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


def decode_mask(path: str | Path) -> np.ndarray:
    """A uint8 HxW label mask from a PNG (0/255 or 0/1 -> 0/1) or DICOM SEG (first segment)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            head = Path(path).read_bytes()[:132]
        except OSError as exc:
            raise Rejected("unreadable", f"cannot read mask: {type(exc).__name__}") from None
        if head.startswith(_PNG_MAGIC):
            return _normalise_labels(_pil_mask_array(path))
        if head[128:132] == b"DICM":
            with open(path, "rb") as f:
                return _dicom_mask(_read_dicom(f))
        raise Rejected("unsupported_format", "a mask must be a PNG or a DICOM (SEG) file")


# ------------------------------------------------------------------------------- DICOM reading


def _read_dicom(f) -> Any:
    """``dcmread`` of an open file, any parse error -> Rejected('unreadable')."""
    from pydicom import dcmread

    try:
        ds = dcmread(f)
    except UserWarning:
        raise Rejected("truncated", "the file ends inside an undefined-length element") from None
    except Exception as exc:  # pydicom raises many types for corrupt headers
        raise Rejected("unreadable", f"DICOM parse error: {type(exc).__name__}") from None
    if len(ds) == 0:
        raise Rejected("unreadable", "no data elements after the file meta information")
    return ds


def _read_headerless_dicom(path: str | Path, head: bytes) -> Any | None:
    """A DICOM without preamble, read with ``force`` only if it starts like one and has pixels."""
    if len(head) < 8:
        return None
    group_le, group_be = int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")
    if group_le not in (0x0002, 0x0008) and group_be not in (0x0002, 0x0008):
        return None
    from pydicom import dcmread

    try:
        ds = dcmread(path, force=True)
    except Exception:
        return None
    if not _pixel_keyword(ds):
        if "SOPClassUID" in ds or "Modality" in ds:
            raise Rejected("no_pixel_data", "DICOM object (without preamble) has no pixel data")
        return None
    return ds


def _pixel_keyword(ds: Any) -> str | None:
    """Which pixel data element the dataset holds, if any."""
    for keyword, tag in _PIXEL_TAGS.items():
        if tag in ds:
            return keyword
    return None


_TEXT_TAGS = frozenset({"Modality", "BodyPartExamined", "PhotometricInterpretation", "VOILUTFunction"})
_NUMBER_STRING_TAGS = frozenset(
    {"NumberOfFrames", "PixelSpacing", "ImagerPixelSpacing", "WindowCenter", "WindowWidth"}
    | {"RescaleIntercept", "RescaleSlope"}
)
_US_TAGS = frozenset(
    {"SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"}
)


def _header(ds: Any) -> dict[str, Any]:
    """The values of the tags decoding needs (present ones only), each looked up once.

    Plain CS/DS/IS/US elements are parsed from their raw bytes: pydicom's element conversion
    costs ~20 us each, as much as the whole windowing of a 512 x 512 image for ~15 tags.
    """
    little = ds.original_encoding[1] is not False
    out: dict[str, Any] = {}
    for name, tag in _HEADER_TAGS.items():
        if tag in ds:
            value = _raw_value(ds.get_item(tag), name, little)
            out[name] = ds[tag].value if value is None else value
    return out


def _raw_value(elem: Any, name: str, little: bool) -> Any:
    """The value of a still-raw CS/DS/IS/US element, or None to let pydicom convert it."""
    raw = getattr(elem, "value", None)
    if type(elem).__name__ != "RawDataElement" or not isinstance(raw, bytes):
        return None
    if name in _US_TAGS:
        return int.from_bytes(raw, "little" if little else "big") if len(raw) == 2 else None
    if name not in _TEXT_TAGS and name not in _NUMBER_STRING_TAGS:
        return None
    parts = [part.strip(" \x00") for part in raw.decode("latin-1").split("\\")]
    return parts[0] if len(parts) == 1 else parts


def _transfer_syntax(ds: Any, keyword: str) -> Any:
    """The dataset's transfer syntax; inferred from the encoding for meta-less native files."""
    from pydicom import uid

    tsyntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if tsyntax:
        return uid.UID(tsyntax)
    if ds[keyword].is_undefined_length:
        raise Rejected("bad_header", "no Transfer Syntax UID and the pixel data is encapsulated")
    implicit, little = ds.original_encoding
    if implicit:
        tsyntax = uid.ImplicitVRLittleEndian
    else:
        tsyntax = uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _header_int(h: dict[str, Any], keyword: str, default: int | None = None) -> int:
    """An integer Image Pixel tag, or Rejected('bad_header') if missing or not an integer."""
    value = h.get(keyword, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Rejected("bad_header", f"{keyword} is missing or not an integer") from None


def _frame_count(h: dict[str, Any]) -> int:
    """NumberOfFrames (1 when absent or 0), or Rejected('bad_header') if malformed."""
    value = h.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise Rejected("bad_header", "NumberOfFrames is not an integer") from None
    if n < 0:
        raise Rejected("bad_header", f"NumberOfFrames is negative ({n})")
    return max(n, 1)


@dataclass(frozen=True)
class _Geometry:
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    frames: int
    photometric: str
    signed: bool


def _geometry(h: dict[str, Any], cfg: DecodeConfig) -> _Geometry:
    """Validated Image Pixel geometry; too small images are rejected before decoding."""
    rows, cols = _header_int(h, "Rows"), _header_int(h, "Columns")
    samples = _header_int(h, "SamplesPerPixel", 1)
    bits_allocated = _header_int(h, "BitsAllocated")
    bits_stored = _header_int(h, "BitsStored", bits_allocated)
    photometric = str(h.get("PhotometricInterpretation", "") or "").strip().upper()
    if rows <= 0 or cols <= 0:
        raise Rejected("bad_header", f"Rows x Columns is {rows} x {cols}")
    if bits_allocated not in (1, 8, 16, 32, 64) or not 0 < bits_stored <= bits_allocated:
        raise Rejected("bad_header", f"BitsAllocated {bits_allocated} / BitsStored {bits_stored}")
    if samples not in (1, 3):
        raise Rejected("bad_header", f"SamplesPerPixel is {samples}")
    if not photometric:
        raise Rejected("bad_header", "PhotometricInterpretation is missing")
    if rows < cfg.min_size or cols < cfg.min_size:
        raise Rejected("too_small", f"{rows} x {cols} is below the minimum {cfg.min_size}")
    frames = _frame_count(h)
    signed = _header_int(h, "PixelRepresentation", 0) == 1
    return _Geometry(rows, cols, samples, bits_allocated, bits_stored, frames, photometric, signed)


def _frame_index(frames: int, cfg: DecodeConfig) -> int | None:
    """Which frame to decode (None: single frame), per the multi-frame policy."""
    if frames == 1:
        return None
    if cfg.multiframe == "reject":
        raise Rejected("multiframe", f"{frames} frames and the multi-frame policy is 'reject'")
    return 0 if cfg.multiframe == "first" else frames // 2


def _expected_bytes(geo: _Geometry) -> int:
    """Length of native pixel data per PS3.5 8.1.1 (1-bit packed, YBR_FULL_422 subsampled)."""
    n = geo.rows * geo.cols * geo.samples * geo.frames
    length = (n + 7) // 8 if geo.bits_allocated == 1 else n * (geo.bits_allocated // 8)
    return length // 3 * 2 if geo.photometric == "YBR_FULL_422" else length


def _check_decodable(ds: Any, keyword: str, tsyntax: Any, geo: _Geometry | None) -> None:
    """Decoder availability, and the length check for native (uncompressed) pixel data."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise Rejected("unsupported_syntax", f"no decoder exists for {tsyntax.name}") from None
    if not decoder.is_available:
        raise Rejected("missing_decoder", f"no installed plugin decodes {tsyntax.name}")
    if tsyntax.is_encapsulated:
        if not ds[keyword].is_undefined_length:
            raise Rejected("bad_header", f"{tsyntax.name} but the pixel data is not encapsulated")
        return
    if geo is None:
        return
    expected, actual = _expected_bytes(geo), len(ds[keyword].value or b"")
    if actual < expected:
        raise Rejected("truncated", f"pixel data has {actual} bytes, the header needs {expected}")


def _native_grey_frame(ds: Any, keyword: str, geo: _Geometry, index: int | None, tsyntax: Any):
    """Fast path: a read-only view of one little-endian native grey frame (None if not eligible).

    Equivalent to pydicom's native decoder for these inputs (including its correction of unused
    high bits) without its per-call overhead, which is as large as dcmread's for 512x512 CT.
    """
    if (
        keyword != "PixelData"
        or tsyntax.is_encapsulated
        or not tsyntax.is_little_endian
        or geo.samples != 1
        or geo.bits_allocated not in (8, 16, 32)
        or geo.photometric not in ("MONOCHROME1", "MONOCHROME2")
    ):
        return None
    dtype = _grey_dtype(geo)
    count = geo.rows * geo.cols
    offset = (index or 0) * count * dtype.itemsize
    arr = np.frombuffer(ds[keyword].value, dtype=dtype, count=count, offset=offset)
    return _unused_high_bits(arr.reshape(geo.rows, geo.cols), geo)


_RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _rle_grey_frame(ds: Any, keyword: str, geo: _Geometry, index: int | None, tsyntax: Any):
    """Fast path: one RLE Lossless grey frame decoded by pylibjpeg-rle directly (None if not
    eligible, or on any failure: pydicom's path then decodes or names the reason).

    The same decoder pydicom calls, without pydicom's per-call option handling (0.34 of 0.80 ms
    for a 512x512 CT frame); the result is checked equal to pydicom's by the tests.
    """
    if (
        tsyntax != _RLE_LOSSLESS
        or keyword != "PixelData"
        or geo.samples != 1
        or geo.bits_allocated not in (8, 16)
        or geo.photometric not in ("MONOCHROME1", "MONOCHROME2")
    ):
        return None
    try:
        from pydicom.encaps import get_frame
        from rle.utils import decode_pixel_data

        frame = get_frame(ds[keyword].value, index or 0, number_of_frames=geo.frames)
        buf = decode_pixel_data(frame, version=2, rows=geo.rows, columns=geo.cols, samples_per_pixel=1,
                                bits_allocated=geo.bits_allocated, byteorder="<")
        dtype = _grey_dtype(geo)
        if len(buf) != geo.rows * geo.cols * dtype.itemsize:
            return None
        arr = np.frombuffer(buf, dtype=dtype).reshape(geo.rows, geo.cols)
    except Exception:  # noqa: BLE001 - the general path re-decodes and classifies the failure
        return None
    return _unused_high_bits(arr, geo)


def _grey_dtype(geo: _Geometry) -> np.dtype:
    return np.dtype(f"<{'i' if geo.signed else 'u'}{geo.bits_allocated // 8}")


def _unused_high_bits(arr: np.ndarray, geo: _Geometry) -> np.ndarray:
    """PS3.5 8.1.1: unused high bits are undefined; sign-extend / mask them like pydicom."""
    shift = geo.bits_allocated - geo.bits_stored
    if shift:
        arr = np.left_shift(arr, shift)
        np.right_shift(arr, shift, out=arr)
    return arr


def _decode_pixels(ds: Any, keyword: str, geo: _Geometry, index: int | None, tsyntax: Any) -> np.ndarray:
    """One decoded frame (rows, cols[, samples]) with the shape checked against the header."""
    from pydicom.pixels import pixel_array

    fast = _native_grey_frame(ds, keyword, geo, index, tsyntax)
    if fast is None:
        fast = _rle_grey_frame(ds, keyword, geo, index, tsyntax)
    if fast is not None:
        return fast
    preferred = preferred_plugin(tsyntax)
    for plugin in ([preferred] if preferred else []) + [""]:  # "": pydicom tries every installed plugin
        try:
            arr = pixel_array(ds, index=index, decoding_plugin=plugin)
            break
        except Exception as exc:  # plugins raise anything from ValueError to RuntimeError
            if plugin:
                continue
            reason = "missing_decoder" if _unsupported_by_all_plugins(exc) else "decode_failed"
            raise Rejected(reason, f"{tsyntax.name}: {type(exc).__name__}: {_short(exc)}") from None
    expected = (geo.rows, geo.cols) if geo.samples == 1 else (geo.rows, geo.cols, geo.samples)
    if arr.shape != expected:
        raise Rejected("bad_shape", f"decoded {arr.shape}, header declares {expected}")
    return arr


# Plugins that decode a syntax identically to pydicom's default choice, only faster: JPEG-LS through
# CharLS (pyjpegls) is 1.5-4x faster than through libjpeg (pylibjpeg), e.g. 7 vs 27 ms per 512x512 CT
# frame. Lossy JPEG is left to the default: its decoders differ in the pixels they produce.
_FASTEST_PLUGIN = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-Lossless
}


@functools.lru_cache(maxsize=64)
def preferred_plugin(tsyntax: str) -> str:
    """The plugin tried first for ``tsyntax`` when it is installed, else "" (pydicom's default order)."""
    from pydicom.pixels import get_decoder

    plugin = _FASTEST_PLUGIN.get(str(tsyntax), "")
    try:
        return plugin if plugin in get_decoder(tsyntax).available_plugins else ""
    except NotImplementedError:
        return ""


def _short(exc: Exception) -> str:
    """An exception message on one bounded line (decoder messages carry no PHI)."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]


def _unsupported_by_all_plugins(exc: Exception) -> bool:
    """True when every installed plugin declined the data as unsupported (e.g. 12-bit JPEG)."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return bool(lines) and all("not support" in line for line in lines)


# ------------------------------------------------------------------------------- DICOM decoding


def _decode_dicom(ds: Any, cfg: DecodeConfig, tail: bytes | None = None) -> Decoded:
    """Validate, decode one frame and window a parsed DICOM dataset (``tail``: last file bytes)."""
    keyword = _pixel_keyword(ds)
    if keyword is None:
        _check_missing_pixels(ds)
    h = _header(ds)
    geo = _geometry(h, cfg)
    tsyntax = _transfer_syntax(ds, keyword)
    index = _frame_index(geo.frames, cfg)
    _check_decodable(ds, keyword, tsyntax, geo)
    _check_encapsulated_end(ds, tsyntax, tail)
    arr = _decode_pixels(ds, keyword, geo, index, tsyntax)
    modality = str(h.get("Modality", "") or "").strip().upper()
    if geo.photometric in ("MONOCHROME1", "MONOCHROME2"):
        image, window = _grey_to_uint8(arr, ds, h, geo, modality, cfg)
    else:
        luma, top = _colour_to_luma(arr, ds, geo)
        fixed = (0.0, top) if cfg.full_range_8bit else None
        image, window = _window_values(luma, 1.0, 0.0, modality, None, fixed, False, cfg)
    _check_not_blank(image)
    meta = _dicom_meta(h, geo, tsyntax, modality, window)
    patient_id = str(h.get("PatientID", "") or "").strip() or None
    return Decoded(image=image, meta=meta, patient_id=patient_id)


def _check_missing_pixels(ds: Any) -> None:
    """Always raises: 'truncated' if an image header lost its pixel data (pydicom drops a cut-off
    encapsulated element silently), else 'no_pixel_data'."""
    if 0x00280010 in ds and 0x00280011 in ds:
        raise Rejected("truncated", "image header present but the pixel data element is missing or cut off")
    sop_class = ds.get("SOPClassUID")
    if sop_class is not None and "Image Storage" in getattr(sop_class, "name", ""):
        raise Rejected("truncated", f"a {sop_class.name} object without pixel data (cut off?)")
    raise Rejected("no_pixel_data", "the DICOM object has no pixel data")


_SEQUENCE_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


def _check_encapsulated_end(ds: Any, tsyntax: Any, tail: bytes | None) -> None:
    """Encapsulated pixel data that is the last element must end with a sequence delimiter."""
    if tail is None or not tsyntax.is_encapsulated or tail in _SEQUENCE_DELIMITERS:
        return
    if next(reversed(ds.keys()), None) == 0x7FE00010:
        raise Rejected("truncated", f"{tsyntax.name} pixel data ends without a sequence delimiter")


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


def _dicom_meta(
    h: dict[str, Any], geo: _Geometry, tsyntax: Any, modality: str, window: dict
) -> dict[str, Any]:
    """Non-identifying metadata of a decoded DICOM (never names, IDs, dates, UIDs)."""
    return {
        "modality": modality,
        "body_part": str(h.get("BodyPartExamined", "") or "").strip(),
        "rows": geo.rows,
        "columns": geo.cols,
        "pixel_spacing": _pixel_spacing(h),
        "photometric": geo.photometric,
        "bits_stored": geo.bits_stored,
        "frames": geo.frames,
        "transfer_syntax": tsyntax.name,
        "window": window,
        "source_format": "dicom",
    }


def _pixel_spacing(h: dict[str, Any]) -> list[float] | None:
    """PixelSpacing, ImagerPixelSpacing or the shared functional group's, as floats; else None."""
    candidates = [h.get("PixelSpacing"), h.get("ImagerPixelSpacing")]
    try:
        candidates.append(h["SharedFunctionalGroupsSequence"][0].PixelMeasuresSequence[0].PixelSpacing)
    except (AttributeError, IndexError, KeyError, TypeError):
        pass
    for value in candidates:
        try:
            spacing = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing
    return None


# ---------------------------------------------------------------------------------- PNG / JPEG


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


# ----------------------------------------------------------------------------------------- masks


def _pil_mask_array(path: str | Path) -> np.ndarray:
    """The pixel values of a PNG mask (palette indices kept as labels)."""
    img = _open_pil(path, "png")
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


def _dicom_mask(ds: Any) -> np.ndarray:
    """First segment of a DICOM SEG (middle frame of that segment) or a plain DICOM label image."""
    from pydicom.pixels import pixel_array

    keyword = _pixel_keyword(ds)
    if keyword is None:
        raise Rejected("no_pixel_data", "the mask DICOM has no pixel data")
    tsyntax = _transfer_syntax(ds, keyword)
    _check_decodable(ds, keyword, tsyntax, None)
    frames = _frame_count(_header(ds))
    index = _seg_frame(ds, frames)
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


# ----------------------------------------------------------------------------------------- checks


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
