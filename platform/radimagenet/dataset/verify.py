"""Full verification of an ingested dataset: re-read every shard and check it against the manifest.

Shards are parsed by the same code that reads them for training (:mod:`radimagenet.dataset.tar`,
with the format's key rule), so what passes here is what the loader sees.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from radimagenet.dataset.format import (
    LABEL_EXT,
    META_EXT,
    decode_label,
    is_multi_label,
    is_unlabeled,
    label_text,
    split_member_name,
)
from radimagenet.dataset.tar import group_samples, iter_tar
from radimagenet.errors import StorageError
from radimagenet.io import storage


def verify(manifest: dict[str, Any]) -> list[str]:
    """Re-read every shard; return the problems found (empty list: the dataset is intact).

    Checks each shard's size and SHA-256, that it is a readable tar holding the stated number of
    samples, each with an image, a label (none in an unlabeled dataset) and metadata, that labels agree
    with the metadata and split, and that no sample key appears twice and no patient appears in two splits.
    """
    problems: list[str] = []
    keys: set[str] = set()
    patient_split: dict[str, str] = {}
    n_classes = len(manifest["classes"])
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            url = shard["url"]
            try:
                data = storage.read_bytes(url)
            except StorageError as exc:
                problems.append(f"{url}: {exc}")
                continue
            if len(data) != shard["bytes"]:
                problems.append(f"{url}: {len(data)} bytes, manifest says {shard['bytes']}")
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                problems.append(f"{url}: sha256 differs from the manifest")
            samples = _read_samples(data, url, problems)
            if len(samples) != shard["samples"]:
                problems.append(f"{url}: {len(samples)} samples, manifest says {shard['samples']}")
            for sample in samples:
                members = {ext: value for ext, value in sample.items() if ext != "__key__"}
                problems.extend(_check_sample(url, split, sample["__key__"], members, manifest, n_classes,
                                              keys, patient_split))
        total = sum(s["samples"] for s in info["shards"])
        if total != info["samples"]:
            problems.append(f"split {split}: shards hold {total} samples, manifest says {info['samples']}")
    return problems


def _read_samples(data: bytes, url: str, problems: list[str]) -> list[dict[str, Any]]:
    """The samples of a shard's bytes; a corrupt tar or a member outside any sample is a problem."""
    samples: list[dict[str, Any]] = []
    try:
        for sample in group_samples(_sample_members(iter_tar(io.BytesIO(data), url), url, problems)):
            samples.append(sample)
    except StorageError as exc:
        problems.append(str(exc))
    return samples


def _sample_members(members: Iterable[tuple[str, bytes]], url: str,
                    problems: list[str]) -> Iterator[tuple[str, bytes]]:
    for name, data in members:
        if not split_member_name(name)[1]:
            problems.append(f"{url}: member {name!r} has no extension, so it belongs to no sample")
        yield name, data


def _check_sample(url: str, split: str, key: str, members: dict[str, Any], manifest: dict[str, Any],
                  n_classes: int, keys: set[str], patient_split: dict[str, str]) -> list[str]:
    problems = []
    where = f"{url}: sample {key}"
    if key in keys:
        problems.append(f"{where} appears more than once in the dataset")
    keys.add(key)
    unlabeled = is_unlabeled(manifest)
    if manifest["encoding"] not in members or META_EXT not in members or (LABEL_EXT not in members and not unlabeled):
        return problems + [f"{where} lacks members (has {sorted(members)})"]
    try:
        meta = json.loads(members[META_EXT])
        label_ids = decode_label(members[LABEL_EXT]) if LABEL_EXT in members else ()
    except ValueError as exc:
        return problems + [f"{where}: unreadable .{LABEL_EXT} or .{META_EXT} member ({exc})"]
    if not isinstance(meta, dict):
        return problems + [f"{where}: .{META_EXT} member is not a JSON object"]
    problems.extend(_label_problems(where, label_ids, meta, manifest, n_classes))
    if meta.get("split") != split:
        problems.append(f"{where}: metadata says split {meta.get('split')!r}, shard is {split!r}")
    known = patient_split.setdefault(meta.get("patient"), split)
    if known != split:
        problems.append(f"{where}: patient {meta.get('patient')} is in both {known!r} and {split!r}")
    return problems


def _label_problems(where: str, label_ids: tuple[int, ...], meta: dict[str, Any], manifest: dict[str, Any],
                    n_classes: int) -> list[str]:
    """A sample's labels against the manifest and its metadata (an unlabeled dataset: that it has none)."""
    if is_unlabeled(manifest):
        if label_ids or "label_id" in meta:
            return [f"{where} carries a label (.{LABEL_EXT} member or label_id) but the dataset is unlabeled"]
        return []
    multi = is_multi_label(manifest)
    if not all(0 <= i < n_classes for i in label_ids) or meta.get("label_id") != label_ids[0] \
            or (multi and meta.get("label_ids") != list(label_ids)) or (not multi and len(label_ids) != 1):
        return [f"{where}: label id {label_text(label_ids)} is inconsistent"]
    return []
