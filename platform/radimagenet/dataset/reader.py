"""Reading samples back from shards: streaming from S3, member decoding, whole-split iteration.

Shards are read with boto3 (:func:`radimagenet.io.storage.open_stream`, so ``AWS_ENDPOINT_URL`` is
honoured) through :func:`radimagenet.dataset.tar.iter_tar`. A forked process (a DataLoader worker)
gets its own S3 client: the cache of :func:`radimagenet.io.storage.client` is keyed by process.
Training reads runs of samples instead (:func:`read_runs`: byte ranges from the shard index of
:mod:`radimagenet.dataset.index`, one ranged GET each, fetched ahead on threads).

A raw sample is a dict ``{"__key__": key, <ext>: bytes, ...}`` (see :mod:`radimagenet.dataset.format`).
"""

from __future__ import annotations

import collections
import io
import itertools
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from radimagenet.dataset.format import (
    LABEL_EXT,
    MASK_EXT,
    META_EXT,
    UNLABELED,
    decode_label,
    is_unlabeled,
    split_shards,
)
from radimagenet.dataset.tar import group_samples, iter_tar
from radimagenet.errors import StorageError
from radimagenet.io import storage
from radimagenet.io.ranged import BrokenRead, read_range


def read_shard(url: str) -> Iterator[dict[str, Any]]:
    """Stream the raw samples of one shard from S3 (the body is closed when the iterator is)."""
    body = storage.open_stream(url)
    try:
        yield from group_samples(iter_tar(body, url))
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - network errors surface as one clear line
        raise StorageError(f"reading {url} failed: {exc}") from exc
    finally:
        body.close()


class _Whole:
    """A stream that hands over one buffer whole (a bytearray is then parsed in place, not copied)."""

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def read(self, _: int) -> bytes | bytearray:
        data, self.data = self.data, b""
        return data


def parse_samples(data: bytes | bytearray, where: str = "tar") -> list[dict[str, Any]]:
    """The raw samples in a buffer of whole samples cut out of a shard (a byte range from its index)."""
    return list(group_samples(iter_tar(_Whole(data), where, chunk=max(len(data), 1))))


def _fetch(url: str, start: int, end: int, attempts: int = 3) -> bytearray:
    for attempt in range(attempts):  # a read that breaks off mid-body is tried again
        try:
            return read_range(url, start, end)
        except BrokenRead:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def read_runs(runs: Iterable[tuple[str, int, int]], prefetch: int = 16, threads: int = 8) -> Iterator[bytearray]:
    """The bytes of each ``(url, start, end)`` range of a shard, in order, one GET each.

    The next ``prefetch`` ranges are fetched by ``threads`` threads while the caller works on the
    current one (a GET waits 5-20 ms on the network); the caller parses (:func:`parse_samples`).
    """
    pending: collections.deque = collections.deque()
    todo = iter(runs)
    pool = ThreadPoolExecutor(max(min(threads, prefetch), 1), thread_name_prefix="ranges")
    try:
        for run in itertools.islice(todo, max(prefetch, 1)):
            pending.append(pool.submit(_fetch, *run))
        while pending:
            future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_fetch, *nxt))
            yield future.result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False)


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def decode_npy(data: bytes | bytearray) -> np.ndarray:
    """A ``.npy`` payload as an array viewing ``data``; the parsed header is cached (all images share it)."""
    if data[:8] == b"\x93NUMPY\x01\x00":
        hlen = int.from_bytes(data[8:10], "little")
        header = bytes(data[10 : 10 + hlen])
        parsed = _NPY_HEADERS.get(header)
        if parsed is None:
            with io.BytesIO(bytes(data[: 10 + hlen])) as f:
                np.lib.format.read_magic(f)
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            if fortran or dtype.hasobject:
                return np.load(io.BytesIO(data), allow_pickle=False)
            parsed = _NPY_HEADERS.setdefault(header, (dtype, shape, 10 + hlen))
        dtype, shape, offset = parsed
        return np.frombuffer(data, dtype, offset=offset).reshape(shape)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _payload(sample: dict[str, Any], ext: str) -> bytes:
    data = sample.get(ext)
    if data is None:
        raise StorageError(f"sample {sample.get('__key__')!r} has no .{ext} member")
    return data


def _png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    return np.array(img if img.mode == "L" else img.convert("L"))


def decode_image(sample: dict[str, Any], encoding: str) -> np.ndarray:
    """The sample's grey image as a uint8 ``[S, S]`` array (a view of the member bytes for ``npy``)."""
    data = _payload(sample, encoding)
    arr = decode_npy(data) if encoding == "npy" else _png(data)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise StorageError(
            f"sample {sample['__key__']!r}: expected a 2-D uint8 image, got {arr.dtype} {arr.shape}"
        )
    return arr


def decode_mask(sample: dict[str, Any]) -> np.ndarray | None:
    """The sample's ``.mask.png`` as a uint8 array, or None when it has none."""
    data = sample.get(MASK_EXT)
    return None if data is None else _png(data)


def sample_label_ids(sample: dict[str, Any]) -> tuple[int, ...]:
    """The label ids of a raw sample (its ``.cls`` member): one, or several in a multi-label dataset."""
    try:
        return decode_label(sample[LABEL_EXT])
    except (KeyError, ValueError) as exc:
        raise StorageError(f"sample {sample.get('__key__')!r} has no valid .cls label member") from exc


def sample_label(sample: dict[str, Any]) -> int:
    """The label id of a raw sample (multi-label: its first label; see :func:`sample_label_ids`)."""
    return sample_label_ids(sample)[0]


def parse_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's ``.json`` metadata (``{}`` without one) with its ``key`` added."""
    meta = json.loads(sample[META_EXT]) if META_EXT in sample else {}
    return {"key": sample["__key__"], **meta}


def iterate_samples(manifest: dict, split: str) -> Iterator[dict[str, Any]]:
    """Every sample of ``split`` in manifest order, decoded, in this process (tools, fine-tuning, tests).

    ``{"key", "image": uint8 [S, S], "label_id": int, "label_ids": tuple, "meta": dict, "mask": uint8 [S, S] | None}``
    (``label_id`` is the first of ``label_ids``: several only in a multi-label dataset; an unlabeled
    dataset: ``UNLABELED`` and ``()``).
    """
    encoding, unlabeled = manifest["encoding"], is_unlabeled(manifest)
    for shard in split_shards(manifest, split):
        for sample in read_shard(shard.url):
            mask = decode_mask(sample)
            yield {
                "key": sample["__key__"],
                "image": np.array(decode_image(sample, encoding)),
                "label_id": UNLABELED if unlabeled else sample_label(sample),
                "label_ids": () if unlabeled else sample_label_ids(sample),
                "meta": json.loads(sample[META_EXT]) if META_EXT in sample else {},
                "mask": None if mask is None else np.array(mask),
            }


def sample_labels(manifest: dict, split: str) -> dict[str, int]:
    """``{key: label_id}`` for every sample of ``split`` (reads the shards, decodes no images; an
    unlabeled dataset: every label ``UNLABELED``)."""
    unlabeled = is_unlabeled(manifest)
    return {
        sample["__key__"]: UNLABELED if unlabeled else sample_label(sample)
        for shard in split_shards(manifest, split)
        for sample in read_shard(shard.url)
    }
