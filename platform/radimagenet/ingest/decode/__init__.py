"""Key-image decoding: one DICOM, PNG or JPEG file -> one uint8 grey image plus safe metadata.

    d = decode_file("ct.dcm")                 # Decoded(image=uint8 HxW, meta={...}, patient_id=...)
    small = resize(d.image, 224)              # whole image, area/antialiased, aspect squashed

Anything that cannot become a training sample raises :class:`Rejected` with a stable reason code
from :data:`REJECT_REASONS`; ``detail`` never contains PHI or the file path.

DICOM pipeline (pydicom 3): one ``dcmread``, header sanity checks (before decoding: geometry, the
megapixel limit ``too_large``, BurnedInAnnotation), the length check of native pixel data (pydicom
silently reads many truncated files), decoding of ONE frame (multi-frame policy; a large native
multi-frame file has only that frame's bytes read), then colour/palette -> luma, and the modality LUT (rescale) + VOI
(file VOI LUT or window, configured default, or percentile min-max) + MONOCHROME1 inversion folded into a
single float32 multiply-add, clipped in place and cast to uint8. Native and RLE grey frames take
fast paths equal to pydicom's decoders, JPEG-LS goes to CharLS (pyjpegls) first; everything else,
and any fast-path failure, goes through pydicom's plugins.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from radimagenet.ingest.decode.common import (
    _EOF_WARNING,
    _JPEG_MAGIC,
    _PNG_MAGIC,
    REJECT_REASONS,
    DecodeConfig,
    Decoded,
    Rejected,
)
from radimagenet.ingest.decode.dicom import _decode_dicom, _read_dicom, _read_headerless_dicom
from radimagenet.ingest.decode.mask import decode_mask
from radimagenet.ingest.decode.pil import _decode_pil
from radimagenet.ingest.decode.pixels import preferred_plugin
from radimagenet.ingest.decode.resample import resize, resize_mask

__all__ = [
    "REJECT_REASONS",
    "DecodeConfig",
    "Decoded",
    "Rejected",
    "decode_file",
    "decode_mask",
    "preferred_plugin",
    "resize",
    "resize_mask",
]


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
                    ds = _read_dicom(f, cfg.max_megapixels)
                    f.seek(-8, 2)
                    return _decode_dicom(ds, cfg, tail=f.read(8))
        except OSError as exc:
            raise Rejected("unreadable", f"cannot read file: {type(exc).__name__}") from None
        if head.startswith(_PNG_MAGIC):
            return _decode_pil(path, "png", cfg)
        if head.startswith(_JPEG_MAGIC):
            return _decode_pil(path, "jpeg", cfg)
        ds = _read_headerless_dicom(path, head, cfg.max_megapixels)
        if ds is None:
            raise Rejected("unsupported_format", "not DICOM (no 'DICM' preamble), PNG or JPEG")
        return _decode_dicom(ds, cfg)
