"""DICOM reading and decoding: ``dcmread``, header values read once by tag number, Image Pixel
checks before decoding, then one frame through :mod:`.pixels` and windowing through :mod:`.window`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from radimagenet.ingest.decode.common import DecodeConfig, Decoded, Rejected, _frame_index, _Geometry
from radimagenet.ingest.decode.pixels import _check_decodable, _decode_pixels
from radimagenet.ingest.decode.window import _check_not_blank, _colour_to_luma, _grey_to_uint8, _window_values

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
