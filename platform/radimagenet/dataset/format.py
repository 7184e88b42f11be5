"""The dataset format, defined once: manifest, shard names, sample members and the key rule.

A dataset is ``<split>-NNNNNN.tar`` WebDataset shards plus ``manifest.json`` under one S3 prefix
(docs/design.md). Each sample is the tar members sharing a *key*: the member path up to the first
dot of its basename; the rest of the name is the member's *extension* (``npy``/``png`` image,
``cls`` label, ``json`` metadata, ``mask.png`` optional mask), as WebDataset reads them. Samples of an
unlabeled dataset (``ingest --unlabeled``, :func:`is_unlabeled`) have no ``cls`` member.

Everything here is plain data and functions (no tar parsing: see :mod:`radimagenet.dataset.tar`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from radimagenet.errors import ConfigError
from radimagenet.io import storage

FORMAT = "radimagenet-dataset/1"  # manifest["format"]; readers refuse anything else
ENCODINGS = ("npy", "png")  # image member extensions (manifest["encoding"])
SPLITS = ("train", "val", "test")  # the splits an ingest writes, in manifest order
LABEL_EXT = "cls"  # label id as ASCII decimal; a multi-label sample's ids comma-separated ("3,7")
UNLABELED = -1  # the label id of a sample of an unlabeled dataset (no ``cls`` member; the loader's label)
META_EXT = "json"  # non-identifying metadata
MASK_EXT = "mask.png"  # optional 0/1 mask, same size as the image
MANIFEST_NAME = "manifest.json"
INDEX_DIR = "_index"  # per-shard sample indexes: <prefix>/_index/<split>-NNNNNN.json
INDEX_FORMAT = "radimagenet-shard-index/1"  # an index's "format"; readers rebuild anything else


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def split_member_name(name: str) -> tuple[str, str]:
    """``(key, ext)`` of a tar member: the path up to the first dot of its basename, and the rest.

    ``"a.b/c0ffee.mask.png"`` -> ``("a.b/c0ffee", "mask.png")``; a name whose basename has no dot
    gives ``(name, "")`` (not a sample member). This is the one key rule of reader and verifier.
    """
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def member_name(key: str, ext: str) -> str:
    """The tar member name of ``key``'s ``ext`` member (inverse of :func:`split_member_name`)."""
    return f"{key}.{ext}"


def check_key(key: str) -> str:
    """``key`` unchanged if the key rule gives it back from its member names, else a ConfigError."""
    base = key[key.rfind("/") + 1 :]
    if not base or "." in base:
        raise ConfigError(f"sample key {key!r} is not usable: its basename must be non-empty and hold no dot")
    return key


def pixel_key(image: np.ndarray) -> str:
    """Content key: XXH3-128 of a decoded uint8 image's shape and pixels (32 hex digits).

    The ingest names each sample by the key of its full-resolution image, so equal pixels give equal
    keys (how exact duplicates are found, within a dataset and across datasets); it is not a security
    boundary (shards and the dataset digest use SHA-256). XXH3 costs 0.006 ms per 512 x 512 image where
    SHA-256 costs 0.16 ms, a tenth of the whole per-file budget of an uncompressed ingest.
    """
    h = xxhash.xxh3_128(f"{image.shape[0]}x{image.shape[1]}:".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def shard_name(split: str, index: int) -> str:
    """``train-000012.tar``: the object name of shard ``index`` of ``split``."""
    return f"{split}-{index:06d}.tar"


def manifest_uri(uri: str) -> str:
    """The manifest's URI from the dataset prefix or the manifest itself (``.../manifest.json``)."""
    uri = uri.rstrip("/")
    return uri if uri.endswith(".json") else f"{uri}/{MANIFEST_NAME}"


def index_uri(shard_url: str) -> str:
    """``s3://b/ds/train-000003.tar`` -> ``s3://b/ds/_index/train-000003.json``: where a shard's sample
    index lives (written by the shard writer, or built from the shard once and cached there)."""
    prefix, _, name = shard_url.rpartition("/")
    return f"{prefix}/{INDEX_DIR}/{name.removesuffix('.tar')}.json"


def modality_of(class_name: str) -> str:
    """``"CT/lung/nodule"`` -> ``"CT"`` (the modality is the first path component of a label)."""
    return class_name.split("/", 1)[0] if "/" in class_name else class_name


# --------------------------------------------------------------------------------------------------
# Samples and shards
# --------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One sample as the ingest writes it (unless it is a duplicate of an earlier one)."""

    index: int  # input row index
    source: str  # the input's keyed pseudonym (src-...), never its path
    key: str
    split: str
    patient: str  # pseudonym
    label_id: int  # the label (multi-label: the first of ``label_ids``; UNLABELED: none, no cls member)
    image: bytes  # encoded image member (manifest encoding)
    meta: bytes  # json member
    mask: bytes | None = None  # mask.png member
    patient_source: str = ""  # where the patient came from: column, dicom, or file (one patient per file)
    label_ids: tuple[int, ...] = ()  # multi-label datasets: every label of the sample (sorted ids)


def encode_label(sample: Sample) -> bytes:
    """The ``cls`` member of ``sample``: ``b"3"``, or ``b"3,7"`` for a multi-label sample."""
    return label_text(sample.label_ids or (sample.label_id,)).encode()


def member_label_ids(member: dict) -> tuple[int, ...]:
    """The label ids of a shard record's member (``label_ids`` in a multi-label dataset, else ``label_id``;
    none in an unlabeled dataset, whose members carry no ``label_id``)."""
    if "label_id" not in member:
        return ()
    return tuple(member.get("label_ids") or (member["label_id"],))


def decode_label(data: bytes | str) -> tuple[int, ...]:
    """The label ids in a ``cls`` member (one for a single-label dataset); ValueError if it is not one."""
    text = data.decode() if isinstance(data, bytes | bytearray) else data
    ids = tuple(int(part) for part in text.strip().split(","))
    if any(i < 0 for i in ids):
        raise ValueError(f"negative label id in {text!r}")
    return ids


def label_text(label_ids: tuple[int, ...] | list[int]) -> str:
    """A sample's labels as the ``cls`` member and the dataset digest write them: ``"3"`` or ``"3,7"``."""
    return ",".join(map(str, label_ids))


LABEL_SEP = "|"  # multi-label: the separator of an image's class names (labels CSV, predictions CSV)


def label_names(label: str, multi_label: bool) -> list[str]:
    """The class names of a ``label`` cell: itself, or (multi-label) its ``|``-separated names."""
    return label.split(LABEL_SEP) if multi_label else [label]


def is_multi_label(manifest: dict) -> bool:
    """Whether a dataset's images carry several labels each (``radimagenet ingest --multi-label``)."""
    return bool(manifest.get("multi_label", False))


def is_unlabeled(manifest: dict) -> bool:
    """Whether a dataset's images carry no label (``radimagenet ingest --unlabeled``): no classes, no
    ``cls`` members; the loader gives each sample the label :data:`UNLABELED`."""
    return bool(manifest.get("unlabeled", False))


@dataclass(frozen=True)
class ShardRef:
    """One tar shard of a split: where it is and how many samples the manifest says it holds."""

    url: str
    samples: int


def split_shards(manifest: dict, split: str) -> list[ShardRef]:
    """The shards of ``split`` in manifest order; a clear error names the splits that exist."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ConfigError(f"dataset has no {split!r} split; it has {sorted(splits)}")
    return [ShardRef(s["url"], int(s["samples"])) for s in splits[split]["shards"]]


def class_counts(manifest: dict, split: str) -> list[int]:
    """Samples per class id in ``split`` (from the manifest; for loss weighting or sampling). Multi-label:
    the samples that carry each label (they sum to more than the split's samples)."""
    per_name = manifest["splits"][split].get("classes", {})
    return [int(per_name.get(name, 0)) for name in manifest["classes"]]


# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------


SPLIT_UNITS = ("patient", "image")
IDENTITY_SOURCES = ("column", "dicom")  # a sample's patient_source that names a real patient


def split_unit_of(patient_sources: Iterable[str]) -> str:
    """The manifest's ``split_unit`` from the written samples' patient sources: ``patient`` when every
    patient came from a real identity (labels column, DICOM), else ``image`` (some file was its own unit)."""
    return "patient" if all(s in IDENTITY_SOURCES for s in patient_sources) else "image"


def split_unit(manifest: dict) -> str:
    """What a dataset's splits keep together: ``patient``, ``image`` (one patient's images may sit in
    train and test) or ``unknown``. A manifest written before ``split_unit`` existed is ``image`` when
    its ingest said ``patient_from: file``, else ``unknown`` (its auto mode fell back per file silently)."""
    unit = manifest.get("split_unit")
    if unit in SPLIT_UNITS:
        return unit
    return "image" if (manifest.get("ingest") or {}).get("patient_from") == "file" else "unknown"


def validate_manifest(manifest: Any, where: str = "manifest") -> dict:
    """Check the fields readers rely on (docs/design.md); return the manifest unchanged."""
    if not isinstance(manifest, dict):
        raise ConfigError(f"{where} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{where} has format {manifest.get('format')!r}; this version reads {FORMAT!r}")
    missing = [k for k in ("classes", "image_size", "encoding", "splits") if k not in manifest]
    if missing:
        raise ConfigError(f"{where} is incomplete: missing {missing}")
    if not isinstance(manifest.get("unlabeled", False), bool):
        raise ConfigError(f"{where}: 'unlabeled' must be true or false")
    if is_unlabeled(manifest):
        if manifest["classes"] != [] or manifest.get("multi_label", False):
            raise ConfigError(f"{where}: an unlabeled dataset has 'classes' [] and is not multi-label")
    elif not isinstance(manifest["classes"], list) or not manifest["classes"]:
        raise ConfigError(f"{where}: 'classes' must be a non-empty list")
    if not isinstance(manifest["image_size"], int) or manifest["image_size"] < 1:
        raise ConfigError(f"{where}: 'image_size' must be a positive integer")
    if manifest["encoding"] not in ENCODINGS:
        raise ConfigError(f"{where}: encoding {manifest['encoding']!r} is not one of {list(ENCODINGS)}")
    if not isinstance(manifest.get("multi_label", False), bool):
        raise ConfigError(f"{where}: 'multi_label' must be true or false")
    if manifest.get("split_unit", "patient") not in SPLIT_UNITS:
        raise ConfigError(f"{where}: split_unit {manifest['split_unit']!r} is not one of {list(SPLIT_UNITS)}")
    splits = manifest["splits"]
    if not isinstance(splits, dict) or not splits:
        raise ConfigError(f"{where}: 'splits' must be a non-empty mapping")
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list):
            raise ConfigError(f"{where}: split {name!r} has no 'shards' list")
        for i, shard in enumerate(shards):
            if not isinstance(shard, dict) or not isinstance(shard.get("url"), str) \
                    or not isinstance(shard.get("samples"), int) or shard["samples"] < 0:
                raise ConfigError(f"{where}: split {name!r} shard {i} needs a 'url' and a 'samples' count")
        counted = sum(s["samples"] for s in shards)
        if split.get("samples", counted) != counted:
            raise ConfigError(
                f"{where}: split {name!r} says {split['samples']} samples but its shards hold {counted}"
            )
    return manifest


def load_manifest(uri: str) -> dict:
    """Read and validate ``s3://.../manifest.json`` (``uri`` may also be the dataset prefix).

    A missing manifest is a :class:`ConfigError` that says whether the prefix holds an unfinished
    ingest (shards or ``_journal/`` without a manifest) or nothing at all.
    """
    target = manifest_uri(uri)
    if not storage.exists(target):
        prefix = target.rsplit("/", 1)[0]
        if storage.list_keys(prefix):
            raise ConfigError(
                f"dataset at {prefix} is incomplete: no manifest.json (the ingest did not finish; "
                f"run `radimagenet ingest` again to resume it)"
            )
        raise ConfigError(f"no dataset at {prefix}: {target} does not exist")
    try:
        manifest = storage.read_json(target)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{target} is not valid JSON: {exc}") from exc
    return validate_manifest(manifest, target)
