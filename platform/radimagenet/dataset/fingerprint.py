"""Per-image fingerprints of a dataset split, for finding images two datasets share.

    prints = fingerprint_split(manifest, "test")      # one streaming pass over the split's shards
    prints.keys[i], prints.patients[i], prints.digests[i], prints.phash[i]

Each image gets its sample key (the format's :func:`~radimagenet.dataset.format.pixel_key` of the
full-resolution image), its patient pseudonym, the same key rule applied to the *stored* image, and a
256-bit perceptual hash of the stored image (DCT pHash: a 32 x 32 Lanczos thumbnail, its 16 x 16
lowest DCT frequencies, one bit per coefficient above their median) that survives re-encoding and
small resizes. Only these ~100 bytes per image are kept, never pixels. A split's fingerprints are
cached next to the dataset (``<prefix>/_fingerprints/<split>.npz``), tagged with the split's shard
checksums; a dataset that changed, or a prefix we cannot write to, just means computing them again.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from radimagenet.dataset.format import META_EXT, pixel_key
from radimagenet.dataset.reader import decode_image, read_shard
from radimagenet.errors import StorageError
from radimagenet.io import storage

HASH_SIDE = 32  # thumbnail side the DCT runs on
HASH_LOW = 16  # HASH_LOW x HASH_LOW lowest frequencies -> 256 bits
HASH_BITS = HASH_LOW * HASH_LOW
VERSION = 1  # bump when a fingerprint's definition changes: old caches are then recomputed
CACHE_DIR = "_fingerprints"
HASH_BATCH = 256  # images hashed together


@dataclass
class Fingerprints:
    """What one pass over a split keeps, one row per image (byte strings: ASCII hex)."""

    keys: np.ndarray  # S: sample key (pixel key of the full-resolution image, as the ingest names it)
    patients: np.ndarray  # S: patient pseudonym ("" when the sample has none)
    digests: np.ndarray  # S32: pixel key of the stored image
    phash: np.ndarray  # (n, HASH_BITS // 8) uint8: packed perceptual hash

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def concat(parts: list[Fingerprints]) -> Fingerprints:
        """One table from several (an empty list gives an empty table)."""
        if not parts:
            return Fingerprints(np.array([], "S1"), np.array([], "S1"), np.array([], "S32"),
                                np.zeros((0, HASH_BITS // 8), np.uint8))
        return Fingerprints(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


FIELDS = ("keys", "patients", "digests", "phash")


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


_DCT = _dct_matrix(HASH_SIDE)


def perceptual_hash(images: list[np.ndarray]) -> np.ndarray:
    """``(n, 32)`` uint8: the packed 256-bit DCT pHash of each uint8 grey image (any size)."""
    if not images:
        return np.zeros((0, HASH_BITS // 8), np.uint8)
    side, lanczos = (HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS
    thumbs = np.stack([np.asarray(Image.fromarray(img).resize(side, lanczos, reducing_gap=2.0), np.float32)
                       for img in images])
    coeffs = (_DCT @ thumbs @ _DCT.T)[:, :HASH_LOW, :HASH_LOW].reshape(len(images), -1)
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1)


def shard_fingerprints(url: str, encoding: str) -> Fingerprints:
    """The fingerprints of one shard's samples, in shard order."""
    keys, patients, digests, hashes, images = [], [], [], [], []
    for sample in read_shard(url):
        image = decode_image(sample, encoding)
        meta = json.loads(sample[META_EXT]) if META_EXT in sample else {}
        keys.append(sample["__key__"].encode())
        patients.append(str(meta.get("patient") or "").encode())
        digests.append(pixel_key(image).encode())
        images.append(image)
        if len(images) == HASH_BATCH:  # hash as we go: a shard's pixels are never all in memory
            hashes.append(perceptual_hash(images))
            images = []
    hashes.append(perceptual_hash(images))
    return Fingerprints(np.array(keys, "S"), np.array(patients, "S"), np.array(digests, "S32"),
                        np.concatenate(hashes))


def fingerprint_split(manifest: dict, split: str, *, cache: bool = True, workers: int = 4,
                      progress: Callable[[int], None] | None = None) -> Fingerprints:
    """Every image of ``split`` (manifest order), from the cache next to the dataset or from its shards
    (``workers`` shards at a time); ``progress(n)`` is called with each shard's sample count."""
    shards = manifest["splits"][split]["shards"]
    where = _cache_uri(manifest, split) if cache else None
    tag = _cache_tag(manifest, split)
    if where is not None:
        cached = _read_cache(where, tag)
        if cached is not None:
            if progress:
                progress(len(cached))
            return cached
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(shards)))) as pool:
        parts = []
        for part in pool.map(lambda s: shard_fingerprints(s["url"], manifest["encoding"]), shards):
            parts.append(part)
            if progress:
                progress(len(part))
    prints = Fingerprints.concat(parts)
    if where is not None:
        _write_cache(where, tag, prints)
    return prints


def _cache_uri(manifest: dict, split: str) -> str | None:
    uri = str(manifest.get("uri") or "")
    return f"{uri.rstrip('/')}/{CACHE_DIR}/{split}.npz" if uri.startswith("s3://") else None


def _cache_tag(manifest: dict, split: str) -> str:
    """Changes whenever the split's content could: fingerprint version, dataset digest, shard checksums."""
    shards = [(s["url"], s.get("sha256", ""), s["samples"]) for s in manifest["splits"][split]["shards"]]
    text = json.dumps([VERSION, manifest.get("digest", ""), manifest["encoding"], shards])
    return hashlib.sha256(text.encode()).hexdigest()


def _read_cache(uri: str, tag: str) -> Fingerprints | None:
    try:
        if not storage.exists(uri):
            return None
        with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as z:
            if str(z["tag"]) != tag:
                return None
            return Fingerprints(*(z[f] for f in FIELDS))
    except (StorageError, ValueError, KeyError, OSError):
        return None  # unreadable or foreign: compute again


def _write_cache(uri: str, tag: str, prints: Fingerprints) -> None:
    buf = io.BytesIO()
    np.savez(buf, tag=np.array(tag), **{f: getattr(prints, f) for f in FIELDS})
    try:
        storage.write_bytes(uri, buf.getvalue())
    except StorageError:
        pass  # a read-only dataset prefix: the fingerprints are computed again next time
