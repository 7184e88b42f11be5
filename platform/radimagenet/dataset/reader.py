"""Reading samples back from shards: streaming from S3, member decoding, whole-split iteration.

Shards are read with boto3 (:func:`radimagenet.io.storage.open_stream`, so ``AWS_ENDPOINT_URL`` is
honoured) through :func:`radimagenet.dataset.tar.iter_tar`. A forked process (a DataLoader worker)
gets its own S3 client: the cache of :func:`radimagenet.io.storage.client` is keyed by process.

A raw sample is a dict ``{"__key__": key, <ext>: bytes, ...}`` (see :mod:`radimagenet.dataset.format`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from radimagenet.dataset.format import LABEL_EXT, MASK_EXT, META_EXT, split_shards
from radimagenet.dataset.tar import group_samples, iter_tar
from radimagenet.errors import StorageError
from radimagenet.io import storage


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


def sample_label(sample: dict[str, Any]) -> int:
    """The label id of a raw sample (its ``.cls`` member)."""
    try:
        return int(sample[LABEL_EXT])
    except (KeyError, ValueError) as exc:
        raise StorageError(f"sample {sample.get('__key__')!r} has no valid .cls label member") from exc


def parse_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's ``.json`` metadata (``{}`` without one) with its ``key`` added."""
    meta = json.loads(sample[META_EXT]) if META_EXT in sample else {}
    return {"key": sample["__key__"], **meta}


def iterate_samples(manifest: dict, split: str) -> Iterator[dict[str, Any]]:
    """Every sample of ``split`` in manifest order, decoded, in this process (tools, fine-tuning, tests).

    ``{"key", "image": uint8 [S, S], "label_id": int, "meta": dict, "mask": uint8 [S, S] | None}``.
    """
    encoding = manifest["encoding"]
    for shard in split_shards(manifest, split):
        for sample in read_shard(shard.url):
            mask = decode_mask(sample)
            yield {
                "key": sample["__key__"],
                "image": np.array(decode_image(sample, encoding)),
                "label_id": sample_label(sample),
                "meta": json.loads(sample[META_EXT]) if META_EXT in sample else {},
                "mask": None if mask is None else np.array(mask),
            }


def sample_labels(manifest: dict, split: str) -> dict[str, int]:
    """``{key: label_id}`` for every sample of ``split`` (reads the shards, decodes no images)."""
    return {
        sample["__key__"]: sample_label(sample)
        for shard in split_shards(manifest, split)
        for sample in read_shard(shard.url)
    }
