"""DICOM reading and decoding: ``dcmread``, header values read once by tag number, Image Pixel
checks before decoding, then one frame through :mod:`.pixels` and windowing through :mod:`.window`."""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from typing import Any

from radimagenet.ingest.decode.common import (
    _PIXEL_TAGS,
    DecodeConfig,
    Decoded,
    Rejected,
    _check_size,
    _frame_index,
    _Geometry,
)
from radimagenet.ingest.decode.pixels import _check_decodable, _decode_pixels, _read_deferred_frame
from radimagenet.ingest.decode.window import _check_not_blank, _colour_to_luma, _grey_to_uint8, _window_values

# Every tag decoding needs, read ONCE by number: a Dataset lookup by keyword costs ~4 us.
_HEADER_TAGS: dict[str, int] = {
    "SOPClassUID": 0x00080016,
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
    "BurnedInAnnotation": 0x00280301,
    "ModalityLUTSequence": 0x00283000,
    "VOILUTSequence": 0x00283010,
    "SharedFunctionalGroupsSequence": 0x52009229,
}


# ------------------------------------------------------------------------------- DICOM reading

# Elements larger than this are not read by dcmread: native pixel data of a big multi-frame file is
# then read one kept frame at a time (pixels._read_deferred_frame); smaller files read as before.
_DEFER_BYTES = 64 * 1024 * 1024


def _read_dicom(f, max_megapixels: float = math.inf) -> Any:
    """``dcmread`` of an open file, any parse error -> Rejected('unreadable'); a Deflated file is read
    only if it inflates to at most 4 bytes x the megapixel limit (pydicom inflates it whole)."""
    from pydicom import dcmread

    deflated = _check_inflated_size(f, 4e6 * max_megapixels)
    try:  # pydicom cannot re-read a deferred element of an inflated dataset
        ds = dcmread(f, defer_size=None if deflated else _DEFER_BYTES)
    except UserWarning:
        raise Rejected("truncated", "the file ends inside an undefined-length element") from None
    except Exception as exc:  # pydicom raises many types for corrupt headers
        raise Rejected("unreadable", f"DICOM parse error: {type(exc).__name__}") from None
    if len(ds) == 0:
        raise Rejected("unreadable", "no data elements after the file meta information")
    return ds


_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"


def _check_inflated_size(f, max_bytes: float) -> bool:
    """Whether the file is Deflated Explicit VR; Rejected('too_large') if it inflates past ``max_bytes``,
    measured in bounded steps (a deflate bomb: a few MB of zeros inflate to GBs). Others: one peek."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    start = f.tell()
    try:  # the file meta as pydicom reads it (preamble or not, group length or not)
        read_preamble(f, True)
        syntax = str(_read_file_meta_info(f).get("TransferSyntaxUID", ""))
        data_start = f.tell()
    except Exception:  # noqa: BLE001 - not readable as DICOM meta: dcmread names the problem
        syntax = ""
    f.seek(start)
    if syntax.encode() != _DEFLATED_UID:
        return False
    if not math.isfinite(max_bytes):
        return True
    f.seek(data_start)
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        data = f.read(1 << 20)
        while data and not inflater.eof:
            total += len(inflater.decompress(data, 1 << 22))
            if total > max_bytes:
                raise Rejected("too_large", f"the deflated dataset inflates to more than {max_bytes / 2**20:.0f} "
                               "MiB (4 bytes x the megapixel limit; raise it with --max-megapixels)")
            data = inflater.unconsumed_tail or f.read(1 << 20)
    except zlib.error:
        pass  # corrupt: dcmread names it
    finally:
        f.seek(start)
    return True


def _read_headerless_dicom(path: str | Path, head: bytes, max_megapixels: float = math.inf) -> Any | None:
    """A DICOM without preamble, read with ``force`` only if it starts like one and has pixels."""
    if len(head) < 8:
        return None
    group_le, group_be = int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")
    if group_le not in (0x0002, 0x0008) and group_be not in (0x0002, 0x0008):
        return None
    from pydicom import dcmread

    try:
        with open(path, "rb") as f:
            deflated = _check_inflated_size(f, 4e6 * max_megapixels)  # Rejected('too_large') escapes
            ds = dcmread(f, force=True, defer_size=None if deflated else _DEFER_BYTES)
    except Rejected:
        raise
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


_TEXT_TAGS = frozenset(
    {"Modality", "BodyPartExamined", "PhotometricInterpretation", "VOILUTFunction", "BurnedInAnnotation",
     "SOPClassUID"}
)

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
    _check_size(rows, cols, samples, bits_allocated, cfg.max_megapixels)
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
    _check_burned_in(h, cfg)
    tsyntax = _transfer_syntax(ds, keyword)
    index = _frame_index(geo.frames, cfg)
    h = _frame_values(ds, h, index)
    _check_decodable(ds, keyword, tsyntax, geo)
    _check_encapsulated_end(ds, tsyntax, tail)
    frame_geo, index = _read_deferred_frame(ds, keyword, geo, index)
    arr = _decode_pixels(ds, keyword, frame_geo, index, tsyntax, cfg.max_megapixels)
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
    sop_class = str(h.get("SOPClassUID", "") or "")
    return Decoded(image=image, meta=meta, patient_id=patient_id, sop_class=sop_class)


_PER_FRAME_GROUPS = 0x52009230
# Functional group macros (PS3.3 C.7.6.16.2) -> the header values they hold for their frame(s); a
# Frame VOI LUT item holds a window or, in the "Frame VOI LUT With LUT" macro, a VOI LUT Sequence.
_FUNCTIONAL_GROUPS: dict[str, tuple[str, ...]] = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}


def _frame_values(ds: Any, h: dict[str, Any], index: int | None) -> dict[str, Any]:
    """``h`` with the rescale, VOI (window or LUT) and spacing of the kept frame of an enhanced image:
    the shared functional groups, then that frame's per-frame groups, over the top-level values.
    Files without functional groups (every classic image) return ``h`` unchanged, at no cost."""
    shared = h.get("SharedFunctionalGroupsSequence")
    if not shared and _PER_FRAME_GROUPS not in ds:
        return h
    groups = [shared[0]] if shared else []
    per_frame = ds[_PER_FRAME_GROUPS].value if _PER_FRAME_GROUPS in ds else None
    if per_frame and len(per_frame) > (index or 0):
        groups.append(per_frame[index or 0])
    out = dict(h)
    for group in groups:
        for sequence, keywords in _FUNCTIONAL_GROUPS.items():
            items = group.get(sequence)
            if not items:
                continue
            found = {k: v for k in keywords if (v := items[0].get(k)) not in (None, "", [])}
            if found and sequence == "FrameVOILUTSequence":  # a frame's VOI replaces the whole VOI
                for keyword in keywords:
                    out.pop(keyword, None)
            out.update(found)
    return out


def _check_burned_in(h: dict[str, Any], cfg: DecodeConfig) -> None:
    """Rejected('burned_in_annotation') for BurnedInAnnotation YES unless the config allows it."""
    if cfg.allow_burned_in:
        return
    value = h.get("BurnedInAnnotation")
    if str(value or "").strip().upper() == "YES":
        raise Rejected("burned_in_annotation", "BurnedInAnnotation is YES (identifying text may be in the "
                       "pixels); use --allow-burned-in to keep such images")


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
        "body_part": re.sub(r"[\s_\-]+", "", str(h.get("BodyPartExamined", "") or "").upper()),  # fields.py terms
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
    """PixelSpacing (the kept frame's functional group's for enhanced images) or ImagerPixelSpacing,
    as floats; else None."""
    for value in (h.get("PixelSpacing"), h.get("ImagerPixelSpacing")):
        try:
            spacing = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing
    return None
