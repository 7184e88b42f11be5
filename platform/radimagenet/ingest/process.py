"""Per-file processing: decode → de-identify → split → resize → encode. A pure function per file.

A bad file never raises: it becomes a :class:`Reject` with a reason code. Work crosses into Ray tasks
as plain data (a :class:`Context` and a list of :class:`InputRow`).
"""

from __future__ import annotations

import functools
import io
import json
import os
from dataclasses import dataclass

import numpy as np
import xxhash

from radimagenet.dataset.format import Sample
from radimagenet.ingest import decode
from radimagenet.ingest.deid import clean_meta, patient_key, split_of
from radimagenet.ingest.sources import InputRow


@dataclass(frozen=True)
class Context:
    """Everything a worker needs to process rows (plain data, cheap to ship to Ray)."""

    class_ids: dict[str, int]
    decode_cfg: decode.DecodeConfig
    image_size: int
    encoding: str
    secret: bytes
    fractions: tuple[float, float, float]
    patient_from: str


@dataclass
class Reject:
    index: int
    source: str
    reason: str
    detail: str


class MaskMismatch(Exception):
    """The mask's size differs from its image's."""


def pixel_key(image: np.ndarray) -> str:
    """Content key: XXH3-128 of the decoded full-resolution uint8 pixels and their shape (32 hex).

    The key finds exact duplicates among a dataset's own images; it is not a security boundary
    (shards and the dataset digest use SHA-256). XXH3 costs 0.006 ms per 512 x 512 image where
    SHA-256 costs 0.16 ms, a tenth of the whole per-file budget of an uncompressed ingest.
    """
    h = xxhash.xxh3_128(f"{image.shape[0]}x{image.shape[1]}:".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """Lossless encoding of a uint8 grey image: ``npy`` (raw, fastest) or ``png``."""
    if encoding == "npy":
        return b"".join((_npy_header(image.shape, image.dtype.str), np.ascontiguousarray(image).data))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The .npy header numpy writes for a C-ordered array (built once per shape: 15 of 17 us)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _patient_identity(row: InputRow, decoded: decode.Decoded, ctx: Context) -> tuple[str | None, str]:
    """(raw identity to hash, where it came from), following ``ctx.patient_from``."""
    mode = ctx.patient_from
    if mode in ("auto", "column") and row.patient_id:
        return row.patient_id, "column"
    if mode in ("auto", "dicom") and decoded.patient_id:
        return decoded.patient_id, "dicom"
    if mode in ("auto", "file"):
        return "file:" + row.source, "file"
    return None, mode


def process_row(row: InputRow, ctx: Context) -> Sample | Reject:
    """Turn one input into a sample, or a reject with a reason."""
    if row.problem:
        return Reject(row.index, row.source, *row.problem)
    if not os.path.isfile(row.path):
        return Reject(row.index, row.source, "missing_file", f"{row.source} does not exist or is not a file")
    try:
        decoded = decode.decode_file(row.path, ctx.decode_cfg)
        mask = _load_mask(row, decoded.image.shape, ctx.image_size)
    except MaskMismatch as exc:
        return Reject(row.index, row.source, "mask_size_mismatch", str(exc))
    except decode.Rejected as exc:
        return Reject(row.index, row.source, exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - a bug in one file's decoding must not stop the run
        return Reject(row.index, row.source, "decode_failed", f"{type(exc).__name__}: {exc}")
    identity, origin = _patient_identity(row, decoded, ctx)
    if identity is None:
        return Reject(row.index, row.source, "missing_patient_id", f"no patient ID ({origin}) for {row.source}")
    patient = patient_key(ctx.secret, identity)
    split = row.split or split_of(patient, ctx.fractions)
    label_id = ctx.class_ids[row.label]
    meta = clean_meta(decoded.meta)
    meta.update(label=row.label, label_id=label_id, split=split, patient=patient, patient_source=origin)
    resized = decode.resize(decoded.image, ctx.image_size)
    return Sample(
        index=row.index,
        source=row.source,
        key=pixel_key(decoded.image),
        split=split,
        patient=patient,
        label_id=label_id,
        image=encode_image(resized, ctx.encoding),
        meta=json.dumps(meta, sort_keys=True).encode(),
        mask=mask,
    )


def _load_mask(row: InputRow, shape: tuple[int, ...], size: int) -> bytes | None:
    if row.mask is None:
        return None
    mask = decode.decode_mask(row.mask)
    if mask.shape[:2] != tuple(shape[:2]):
        raise MaskMismatch(f"mask {mask.shape[1]}x{mask.shape[0]} does not match image {shape[1]}x{shape[0]}")
    return encode_mask(decode.resize_mask(mask, size))


def process_rows(rows: list[InputRow], ctx: Context) -> list[Sample | Reject]:
    """Process a chunk of rows in order (the unit of work of a Ray task)."""
    return [process_row(r, ctx) for r in rows]
