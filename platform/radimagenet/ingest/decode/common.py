"""What every decoding module shares: reject reasons, :class:`Rejected`, the config and result types,
the validated pixel geometry, the multi-frame policy and the file-format magic numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    "too_large": "a frame (or mask) whose declared size exceeds the megapixel limit (--max-megapixels)",
    "burned_in_annotation": "BurnedInAnnotation is YES (text in the pixels) and --allow-burned-in is not set",
    "burned_in_text": "the pixel text check (--text-check) found text regions in the image (burned-in "
    "names, dates, IDs ...); the detail gives only their count and area, never the text",
    "outside_source": "a labels path or mask, or a link in the folder, that resolves outside SOURCE "
    "(absolute path, '..', a symlink out); never read",
    "bad_filename": "a file or folder name that is not valid UTF-8 (shown with its bytes escaped, \\xff)",
    "bad_label": "a label with a control, invisible format or line-separator character (\\n, \\t, \\x00 ...)",
    # reasons of the rows and the driver, before or after decoding
    "missing_file": "the labels file names a file that does not exist or is not a regular file",
    "bad_row": "a labels row without a path, with extra cells or a NUL in its path",
    "missing_label": "a labels row without a label, or a file not inside a label folder",
    "bad_split": "a split column value that is not train, val or test",
    "split_conflict": "the patient is already in another split than the labels file or --split-csv gives this row",
    "not_in_split_files": "--split-csv files were given and none of them lists this file",
    "mask_size_mismatch": "the mask's pixel grid differs from its image's",
    "missing_patient_id": "no patient identity where --patient-from requires one (ways out: a patient_id "
    "column, --split-csv files, or --split-unit image)",
}

_PIXEL_TAGS = {"PixelData": 0x7FE00010, "FloatPixelData": 0x7FE00008, "DoubleFloatPixelData": 0x7FE00009}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_EOF_WARNING = "End of file reached before delimiter"
_MULTIFRAME_POLICIES = ("middle", "first", "reject")


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
    (identity for 8-bit) instead of being percentile-stretched. ``max_megapixels``: the largest
    decoded frame (checked from the header, before any pixel allocation; see :func:`_check_size`).
    ``allow_burned_in``: keep DICOMs whose BurnedInAnnotation is YES (rejected by default).
    """

    windows: dict[str, tuple[float, float]] = field(default_factory=lambda: {"CT": (40.0, 400.0)})
    multiframe: str = "middle"
    min_size: int = 16
    use_file_window: bool = True
    full_range_8bit: bool = True  # display-ready 8-bit data (and colour) keep their stored levels
    max_megapixels: float = 64.0
    allow_burned_in: bool = False

    def __post_init__(self) -> None:
        if self.multiframe not in _MULTIFRAME_POLICIES:
            raise ValueError(f"multiframe must be one of {_MULTIFRAME_POLICIES}, not {self.multiframe!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, not {self.min_size}")
        if not self.max_megapixels > 0:  # also refuses NaN
            raise ValueError(f"max_megapixels must be > 0, not {self.max_megapixels}")
        for modality, (_, width) in self.windows.items():
            if not width > 0:
                raise ValueError(f"window width for {modality} must be > 0, not {width}")


@dataclass
class Decoded:
    """A decoded key image: uint8 HxW grey, non-identifying ``meta``, the raw PatientID, and the DICOM
    SOP Class UID ("" for PNG/JPEG; it says which images get the pixel text check)."""

    image: np.ndarray
    meta: dict[str, Any]
    patient_id: str | None
    sop_class: str = ""


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


def _frame_index(frames: int, cfg: DecodeConfig) -> int | None:
    """Which frame to decode (None: single frame), per the multi-frame policy."""
    if frames == 1:
        return None
    if cfg.multiframe == "reject":
        raise Rejected("multiframe", f"{frames} frames and the multi-frame policy is 'reject'")
    return 0 if cfg.multiframe == "first" else frames // 2


def _check_size(rows: int, cols: int, samples: int, bits_allocated: int, max_megapixels: float) -> None:
    """Rejected('too_large') when one decoded frame of the declared size is above the limit: more
    than ``max_megapixels`` pixels, or more bytes than a float32 frame of that many pixels (the
    allocation estimate: rows x columns x samples x bytes per sample; 1-bit data decodes to bytes)."""
    pixels = rows * cols
    limit = max_megapixels * 1e6
    if pixels > limit:
        raise Rejected("too_large", f"{rows} x {cols} = {pixels / 1e6:.1f} megapixels per frame, above the "
                       f"limit of {max_megapixels:g} (raise it with --max-megapixels)")
    nbytes = pixels * samples * max((bits_allocated + 7) // 8, 1)
    if nbytes > 4 * limit:
        raise Rejected("too_large", f"a decoded {rows} x {cols} x {samples} x {bits_allocated}-bit frame needs "
                       f"{nbytes / 2**20:.0f} MiB, above 4 bytes x {max_megapixels:g} megapixels "
                       "(raise it with --max-megapixels)")


def _short(exc: Exception) -> str:
    """An exception message on one bounded line (decoder messages carry no PHI)."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
