"""Per-file processing: decode → de-identify → split → resize → encode. A pure function per file.

A bad file never raises: it becomes a :class:`Reject` with a reason code. Results name their input by
its keyed pseudonym (:func:`~radimagenet.ingest.deid.source_pseudonym`), never by its path, and a
reject's detail is made path-free. Work crosses into Ray tasks as plain data (a :class:`Context` and a
list of :class:`InputRow`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from radimagenet.dataset.format import UNLABELED, Sample, label_names, pixel_key
from radimagenet.errors import ConfigError
from radimagenet.ingest import decode
from radimagenet.ingest.deid import clean_meta, patient_key, source_pseudonym, split_of
from radimagenet.ingest.sources import InputRow
from radimagenet.ingest.textcheck import checks, describe, detect_text


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
    text_check: str = "off"  # which images the pixel text check sees (textcheck.checks)
    multi_label: bool = False  # a row's label lists several |-separated class names
    unlabeled: bool = False  # no labels: samples get no cls member and no label fields in their json
    source_root: str = ""  # SOURCE, resolved on the driver: every node that processes rows must see it


@dataclass
class Reject:
    """An input that did not become a sample: ``source`` is its pseudonym, ``detail`` path-free."""

    index: int
    source: str
    reason: str
    detail: str


@dataclass
class Processed(Sample):
    """A sample and the whitelisted fields whose values were dropped (did not fit the field)."""

    dropped: tuple[str, ...] = ()


class MaskMismatch(Exception):
    """The mask's size differs from its image's."""


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
    """(raw identity to hash, where it came from), following ``ctx.patient_from``. Under ``auto`` a
    row without one is its own patient only when its split is given (split files, a split column)."""
    mode = ctx.patient_from
    if mode == "file":
        return "file:" + row.source, "file"
    if mode in ("auto", "column") and row.patient_id:
        return row.patient_id, "column"
    if mode in ("auto", "dicom") and decoded.patient_id:
        return decoded.patient_id, "dicom"
    if mode == "auto" and row.split is not None:
        return "file:" + row.source, "file"
    return None, mode


def process_row(row: InputRow, ctx: Context) -> Sample | Reject:
    """Turn one input into a sample, or a reject with a reason (both named by the input's pseudonym)."""
    source = source_pseudonym(ctx.secret, row.source)
    if row.problem:
        reason, detail = row.problem
        return Reject(row.index, source, reason, path_free(detail, row))
    if not os.path.isfile(row.path):
        return Reject(row.index, source, "missing_file", "the file does not exist or is not a file")
    try:
        decoded = decode.decode_file(row.path, ctx.decode_cfg)
        mask = _load_mask(row, decoded.image.shape, ctx.image_size, ctx.decode_cfg)
    except MaskMismatch as exc:
        return Reject(row.index, source, "mask_size_mismatch", path_free(str(exc), row))
    except decode.Rejected as exc:
        return Reject(row.index, source, exc.reason, path_free(exc.detail, row))
    except Exception as exc:  # noqa: BLE001 - a bug in one file's decoding must not stop the run
        return Reject(row.index, source, "decode_failed", path_free(f"{type(exc).__name__}: {exc}", row))
    text = _text_found(decoded, ctx.text_check)
    if text:
        return Reject(row.index, source, "burned_in_text", text)
    identity, origin = _patient_identity(row, decoded, ctx)
    if identity is None:
        return Reject(row.index, source, "missing_patient_id", f"no patient identity (--patient-from {origin}); "
                      f"give a patient_id column, --split-csv files or --split-unit image")
    patient = patient_key(ctx.secret, identity)
    split = row.split or split_of(patient, ctx.fractions)
    names = () if ctx.unlabeled else label_names(row.label, ctx.multi_label)
    label_ids = tuple(sorted(ctx.class_ids[n] for n in names))
    label_id = label_ids[0] if label_ids else UNLABELED
    dropped: list[str] = []
    meta = clean_meta(decoded.meta, dropped)
    meta.update(split=split, patient=patient, patient_source=origin)
    if not ctx.unlabeled:
        meta.update(label=row.label, label_id=label_id)
    if ctx.multi_label:
        meta["label_ids"] = list(label_ids)
    if dropped:
        meta["dropped_fields"] = dropped
    resized = decode.resize(decoded.image, ctx.image_size)
    return Processed(
        index=row.index,
        source=source,
        key=pixel_key(decoded.image),
        split=split,
        patient=patient,
        label_id=label_id,
        image=encode_image(resized, ctx.encoding),
        meta=json.dumps(meta, sort_keys=True).encode(),
        mask=mask,
        patient_source=origin,
        label_ids=label_ids if ctx.multi_label else (),
        dropped=tuple(dropped),
    )


def _text_found(decoded: decode.Decoded, mode: str) -> str | None:
    """The reject detail when the pixel text check applies to this image and finds text (its count and
    area only), else None. A detector error rejects too: an image that could not be checked is not kept."""
    meta = decoded.meta
    if not checks(mode, meta.get("source_format", ""), decoded.sop_class, meta.get("modality", "")):
        return None
    try:
        boxes = detect_text(decoded.image)
    except Exception as exc:  # noqa: BLE001 - one image the detector cannot take must not stop the run
        return f"the text check failed ({type(exc).__name__}), so the image is not kept"
    return describe(boxes, decoded.image.shape) if boxes else None


# an absolute POSIX, home-relative or Windows path (not "0/255": a path starts the text or follows a space)
_PATHLIKE = re.compile(r"(?:(?<=^)|(?<=[\s'\"(=:,\[]))(?:~|[A-Za-z]:)?[/\\][^\s'\",:;)\]]+")


def path_free(detail: str, row: InputRow) -> str:
    """``detail`` with every part of the row's paths (the path as given, absolute, its folder and file
    name, the mask's) and anything else that looks like an absolute path replaced by ``<path>``."""
    needles = set()
    for p in (row.source, row.path, row.mask):
        if p:
            needles.update((p, os.path.dirname(p), os.path.basename(p)))
    for needle in sorted((n for n in needles if len(n) >= 3), key=len, reverse=True):
        detail = detail.replace(needle, "<path>")
    return _PATHLIKE.sub("<path>", detail)


def _load_mask(row: InputRow, shape: tuple[int, ...], size: int, cfg: decode.DecodeConfig) -> bytes | None:
    if row.mask is None:
        return None
    mask = decode.decode_mask(row.mask, cfg)
    if mask.shape[:2] != tuple(shape[:2]):
        raise MaskMismatch(f"mask {mask.shape[1]}x{mask.shape[0]} does not match image {shape[1]}x{shape[0]}")
    return encode_mask(decode.resize_mask(mask, size))


def process_rows(rows: list[InputRow], ctx: Context) -> list[Sample | Reject]:
    """Process a chunk of rows in order (the unit of work of a Ray task). A node that cannot see SOURCE
    stops the ingest with a clear error rather than rejecting every file ``missing_file``."""
    if ctx.source_root and not os.path.isdir(ctx.source_root):
        import socket

        raise ConfigError(f"SOURCE {ctx.source_root} is not visible on node {socket.gethostname()}: an ingest with "
                          "--workers > 1 processes files on the Ray cluster's nodes, so SOURCE must be on a "
                          "filesystem every node mounts at the same path (or run with --workers 1)")
    return [process_row(r, ctx) for r in rows]
