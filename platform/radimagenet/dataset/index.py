"""Per-shard sample indexes: each sample's key and byte range in its shard, so readers fetch runs of samples.

    indexes = split_indexes(manifest, "train")        # one ShardIndex per shard, in manifest order
    start, end = indexes[0].offsets[[10, 20]]         # samples 10..19 of the first shard: one ranged GET

A shard's index is ``<prefix>/_index/<split>-NNNNNN.json`` (:func:`radimagenet.dataset.format.index_uri`):
``{"format": "radimagenet-shard-index/1", "shard": "train-000000.tar", "sha256": <the shard's>,
"samples": n, "keys": [n keys], "offsets": [n + 1 byte offsets]}``; sample ``i`` is the bytes
``[offsets[i], offsets[i + 1])`` of the shard (its tar members, headers and padding included), and
``offsets[n]`` is where the end-of-archive blocks start. The shard writer writes it next to each shard
(:mod:`radimagenet.dataset.writer`). A dataset written before indexes existed, or an index that does not
match its manifest entry (sample count, SHA-256), gets one built by a streaming pass over the shard
and cached there (a prefix we cannot write to just means building it again next time).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from radimagenet.dataset.format import INDEX_FORMAT, index_uri, split_member_name
from radimagenet.dataset.tar import iter_tar
from radimagenet.errors import StorageError
from radimagenet.io import storage

LOAD_THREADS = 8  # indexes read (or built) at once


@dataclass(frozen=True)
class ShardIndex:
    """One shard's samples: keys (UTF-8 bytes, compact for millions of samples) and byte offsets."""

    keys: np.ndarray  # S: sample keys in shard order
    offsets: np.ndarray  # int64 [n + 1]: sample i is the bytes [offsets[i], offsets[i + 1])

    def __len__(self) -> int:
        return len(self.keys)


def index_document(url: str, sha256: str, keys: list[str], offsets: list[int]) -> dict[str, Any]:
    """The JSON object of a shard's index (see the module doc)."""
    if len(offsets) != len(keys) + 1:
        raise ValueError(f"an index of {len(keys)} samples needs {len(keys) + 1} offsets, got {len(offsets)}")
    return {"format": INDEX_FORMAT, "shard": url.rsplit("/", 1)[-1], "sha256": sha256, "samples": len(keys),
            "keys": keys, "offsets": offsets}


def write_index(url: str, sha256: str, keys: list[str], offsets: list[int]) -> None:
    """Store a shard's index next to the dataset (compact JSON: ~45 bytes per sample)."""
    doc = index_document(url, sha256, keys, offsets)
    storage.write_bytes(index_uri(url), json.dumps(doc, separators=(",", ":")).encode(), "application/json")


def build_index(url: str) -> tuple[list[str], list[int]]:
    """``(keys, offsets)`` of a shard from one streaming pass (the format's key rule groups members)."""
    keys: list[str] = []
    offsets: list[int] = []
    end = 0
    body = storage.open_stream(url)
    try:
        for name, _, start, stop in iter_tar(body, url, spans=True):
            key, ext = split_member_name(name)
            if not ext:
                continue
            if not keys or keys[-1] != key:
                keys.append(key)
                offsets.append(start)
            end = stop
    finally:
        body.close()
    return keys, [*offsets, end]


def _parse(doc: Any, shard: dict[str, Any]) -> ShardIndex | None:
    """The index in ``doc`` if it is one and fits the manifest's entry for the shard, else None."""
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        return None
    keys, offsets = doc.get("keys"), doc.get("offsets")
    if not isinstance(keys, list) or not isinstance(offsets, list) or len(offsets) != len(keys) + 1:
        return None
    if len(keys) != shard["samples"] or (shard.get("sha256") and doc.get("sha256") != shard["sha256"]):
        return None
    arr = np.asarray(offsets, dtype=np.int64)
    if len(arr) > 1 and (np.any(np.diff(arr) <= 0) or arr[0] < 0):
        return None
    return ShardIndex(np.array([k.encode() for k in keys], dtype=bytes), arr)


def shard_index(shard: dict[str, Any], cache: bool = True) -> ShardIndex:
    """A shard's index (``shard``: its manifest entry): the stored one, else built and (``cache``) stored."""
    url = shard["url"]
    where = index_uri(url)
    try:
        found = _parse(json.loads(storage.read_bytes(where)), shard) if storage.exists(where) else None
    except (StorageError, ValueError):
        found = None
    if found is not None:
        return found
    keys, offsets = build_index(url)
    doc = index_document(url, shard.get("sha256", ""), keys, offsets)
    index = _parse(doc, shard)
    if index is None:
        raise StorageError(f"{url} holds {len(keys)} samples but the manifest says {shard['samples']}; "
                           f"run `radimagenet dataset verify` on the dataset")
    if cache:
        try:
            write_index(url, doc["sha256"], keys, offsets)
        except StorageError:
            pass  # a read-only prefix: build it again next time
    return index


_MEMO: dict[tuple[str, str, int], ShardIndex] = {}


def split_indexes(manifest: dict, split: str, cache: bool = True) -> list[ShardIndex]:
    """The index of every shard of ``split``, in manifest order (kept in this process after the first call)."""
    shards = manifest["splits"][split]["shards"]
    ids = [(s["url"], s.get("sha256", ""), int(s["samples"])) for s in shards]
    missing = [(i, s) for i, s in zip(ids, shards, strict=True) if i not in _MEMO]
    if missing:
        with ThreadPoolExecutor(min(LOAD_THREADS, len(missing))) as pool:
            for (i, _), index in zip(missing, pool.map(lambda m: shard_index(m[1], cache), missing), strict=True):
                _MEMO[i] = index
    return [_MEMO[i] for i in ids]
