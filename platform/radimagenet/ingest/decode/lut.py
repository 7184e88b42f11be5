"""LUT tables of the Modality LUT and VOI LUT Sequences (PS3.3 C.11.1, C.11.2), read as scanners write
them and applied by index; malformed tables are Rejected('bad_header').

    first, table = read_lut(ds.VOILUTSequence[0], little=True, signed_input=False, name="VOI LUT")
    out = apply_lut(values, first, table)          # float32, same shape as ``values``

Read leniently where real files disagree with the standard, as DCMTK does: the first mapped value
written as US for signed input (e.g. 63488 for -2048), 8-bit entries packed two per OW word, entries
wider than the descriptor's bit depth, and fewer (or more) LUT Data entries than the descriptor
declares (the table is the entries present, up to the declared count). pydicom's ``apply_voi`` and
``apply_modality_lut`` are not used: they wrap indices of 8-bit tables with more than 256 entries and
fail on 10-15 bit Modality LUTs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radimagenet.ingest.decode.common import Rejected


def read_lut(item: Any, *, little: bool, signed_input: bool, name: str) -> tuple[int, np.ndarray]:
    """(first mapped input value, float32 table) of one LUT item (LUT Descriptor + LUT Data).

    ``signed_input``: the values the LUT maps can be negative (a first mapped value of 32768 or more
    written as US is then read as its signed 16-bit value). ``little``: the dataset's byte order.
    """
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        elem = item["LUTData"]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise Rejected("bad_header", f"{name}: LUT Descriptor or LUT Data missing or malformed") from None
    if len(descriptor) != 3:
        raise Rejected("bad_header", f"{name}: LUT Descriptor has {len(descriptor)} values, not 3")
    count, first, bits = descriptor
    count = count or 65536  # PS3.3 C.11.1.1.1: 0 means 2^16 entries
    if signed_input and first >= 32768:
        first -= 65536
    if not 1 <= bits <= 16:
        raise Rejected("bad_header", f"{name}: {bits} bits per LUT entry")
    table = _lut_entries(elem.value, count, bits, little)
    if table.size == 0:
        raise Rejected("bad_header", f"{name}: LUT Data is empty")
    return first, table[:count].astype(np.float32)


def _lut_entries(value: Any, count: int, bits: int, little: bool) -> np.ndarray:
    """The LUT Data entries: a list of US values, or OW bytes of 16-bit words (8-bit entries may be
    packed two per word, the first entry in the low byte)."""
    if isinstance(value, bytes | bytearray):
        words = np.frombuffer(value[: len(value) // 2 * 2], dtype="<u2" if little else ">u2")
        if words.size < count and bits <= 8 and words.size * 2 >= count:
            return words.astype("<u2").view(np.uint8)  # low byte first, whatever the file's byte order
        return words
    if value is None:
        return np.zeros(0)
    values = [value] if isinstance(value, int) else list(value)
    try:
        return np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise Rejected("bad_header", "LUT Data holds values that are not integers") from None


def apply_lut(values: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    """``table[values - first]`` with inputs below the table mapped to its first entry and above it to
    its last (PS3.3 C.11.1.1.1); non-integer inputs (a rescaled modality output) are rounded first."""
    last = first + table.size - 1
    if values.dtype.kind in "iu":
        index = np.clip(values.astype(np.int64), first, last)
    else:  # clipped before the cast: a float beyond int64 has no defined integer
        index = np.rint(np.clip(values, first, last)).astype(np.int64)
    index -= first
    np.clip(index, 0, table.size - 1, out=index)  # NaN casts to any integer
    return table[index]
