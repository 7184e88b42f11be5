"""What each whitelisted metadata field may hold: one validator per field, and the vocabularies.

A value is copied into a sample only when its validator accepts it (a code from a known vocabulary, a
number in range); anything else is dropped and counted, never copied as free text:

    check_field("modality", "CT")          # True
    check_field("body_part", "SMITH^JOHN")  # False: not a DICOM Body Part Examined term
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

#: DICOM Modality defined terms (PS3.3 C.7.3.1.1.1), current and retired.
MODALITIES = frozenset("""
    AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL
    IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX
    REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF
    STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())

#: DICOM Body Part Examined defined terms (PS3.16 Annex L) and a few widespread vendor terms, spelled as
#: decode writes them: upper case without spaces, '-' or '_' ("Whole Body" -> WHOLEBODY).
BODY_PARTS = frozenset("""
    ABDOMEN ABDOMENPELVIS ACJOINT ADRENAL AMNIOTICFLUID ANKLE ANUS AORTA AORTICARCH APPENDIX ARM AXILLA
    BACK BASILARARTERY BILEDUCT BLADDER BRACHIALARTERY BRAIN BRAINSTEM BREAST BRONCHUS BUTTOCK CALCANEUS
    CALF CAROTID CEREBELLUM CERVIX CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CIRCLEOFWILLIS CLAVICLE COCCYX
    COLON COMMONBILEDUCT CORNEA CORONARYARTERY CSPINE CTSPINE CULDESAC DUODENUM EAR ELBOW ESOPHAGUS
    EXTREMITY EYE EYELID FACE FEMUR FINGER FOOT FOREARM GALLBLADDER HAND HEAD HEADNECK HEART HIP HUMERUS
    IAC ILEUM ILIUM JAW JEJUNUM KIDNEY KNEE LARYNX LEG LIVER LSPINE LSSPINE LUNG MAXILLA MEDIASTINUM
    MOUTH NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS PAROTID PATELLA
    PELVIS PENIS PHARYNX PROSTATE RECTUM RIB SACRUM SCALP SCAPULA SCLERA SCROTUM SELLA SHOULDER SKULL
    SPINE SPLEEN SSPINE STERNUM STOMACH SUBMANDIBULAR TESTIS THIGH THORAX THUMB THYMUS THYROID TIBIA
    TLSPINE TMJ TOE TONGUE TRACHEA TSPINE UPRURINARYTRACT URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY
    WRIST ZYGOMA ABDOMINALAORTA ANTCOMMA ANUSRECTUMSIGMD BRACHIOCEPHALIC CAROTIDARTERY CEREBRUM
    CORONARY FIBULA FOREFOOT HINDFOOT HYPOPHYSIS LOWERARM LOWERLEG MANDIBLE MIDFOOT PITUITARY RADIUS
    SPINALCORD UPPERARM UPPERLEG ULNA VERTEBRA
""".split())


#: DICOM PhotometricInterpretation values (PS3.3 C.7.6.3.1.2) and the PIL modes of PNG/JPEG inputs.
PHOTOMETRICS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
    "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
    "1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "YCbCr", "LAB", "I", "F",
    "I;16", "I;16B", "I;16L", "I;16N",
})

SOURCE_FORMATS = frozenset({"dicom", "png", "jpeg"})  # what ingest/decode writes
WINDOW_SOURCES = frozenset({"file", "default", "full_range", "minmax"})  # decode/window.py

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_PIXELS = 1 << 20  # rows, columns
_MAX_FRAMES = 1_000_000
_MAX_WINDOW = 2.0**40  # |center|, width: 32-bit and float data have full-range windows near 2**32


def _int_in(lo: int, hi: int) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return type(v) is int and lo <= v <= hi
    return check


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _code(vocabulary: frozenset[str], empty: bool = True) -> Callable[[Any], bool]:
    """A term of ``vocabulary``, or (with ``empty``) an empty string: not recorded."""
    def check(v: Any) -> bool:
        return isinstance(v, str) and (v in vocabulary or (empty and v == ""))
    return check


def _pixel_spacing(v: Any) -> bool:
    if v is None:
        return True
    return (isinstance(v, list | tuple) and 1 <= len(v) <= 2
            and all(_number(x) and 0 < x < 100 for x in v))


@functools.cache
def _transfer_syntax_names() -> frozenset[str]:
    import pydicom.uid

    return frozenset(str(u.name) for u in pydicom.uid.AllTransferSyntaxes)


def _transfer_syntax(v: Any) -> bool:
    """None (not DICOM), a UID, or the name pydicom gives a known transfer syntax."""
    if v is None:
        return True
    if not isinstance(v, str):
        return False
    return (len(v) <= 64 and _UID.fullmatch(v) is not None) or v in _transfer_syntax_names()


def _window(v: Any) -> bool:
    return (isinstance(v, dict) and set(v) == {"center", "width", "source"}
            and _number(v["center"]) and abs(v["center"]) <= _MAX_WINDOW
            and _number(v["width"]) and 0 < v["width"] <= _MAX_WINDOW
            and isinstance(v["source"], str) and v["source"] in WINDOW_SOURCES)


#: The only per-sample fields that may appear in shards (besides label, split and the pseudonym), each
#: with the test its value must pass.
VALIDATORS: dict[str, Callable[[Any], bool]] = {
    "modality": _code(MODALITIES),
    "body_part": _code(BODY_PARTS),
    "rows": _int_in(1, _MAX_PIXELS),
    "columns": _int_in(1, _MAX_PIXELS),
    "pixel_spacing": _pixel_spacing,
    "photometric": _code(PHOTOMETRICS, empty=False),
    "bits_stored": _int_in(1, 64),
    "frames": _int_in(1, _MAX_FRAMES),
    "transfer_syntax": _transfer_syntax,
    "window": _window,
    "source_format": _code(SOURCE_FORMATS, empty=False),
}


def check_field(name: str, value: Any) -> bool:
    """Whether ``value`` fits whitelisted field ``name`` (False for any other field)."""
    check = VALIDATORS.get(name)
    return check is not None and check(value)
