"""Decoding members (no server), and reading shards and manifests from the local stack's S3 (integration)."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from helpers_shards import encode_image, ensure_bucket, write_test_dataset
from radimagenet.dataset import reader
from radimagenet.dataset.format import class_counts, load_manifest, manifest_uri, split_shards
from radimagenet.errors import ConfigError, StorageError
from radimagenet.io import storage

# ---------------------------------------------------------------------------------------------
# decoding (no server)


def test_decode_npy_views_the_member_bytes_and_caches_the_header():
    image = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    data = bytearray(encode_image(image, "npy"))
    arr = reader.decode_npy(data)
    assert np.array_equal(arr, image) and arr.flags.writeable  # a view of the (writable) bytearray
    data[-1] = 7
    assert arr[-1, -1] == 7
    assert np.array_equal(reader.decode_npy(encode_image(image.T.copy(), "npy")), image.T)
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(image))
    assert np.array_equal(reader.decode_npy(fortran.getvalue()), image)


def test_decode_image_mask_label_and_meta():
    image = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).astype(np.uint8)
    mask = (image > 90).astype(np.uint8)
    sample = {"__key__": "k", "npy": encode_image(image, "npy"), "png": encode_image(image, "png"),
              "cls": b"2", "json": b'{"split": "val"}', "mask.png": encode_image(mask, "png")}
    assert np.array_equal(reader.decode_image(sample, "npy"), image)
    assert np.array_equal(reader.decode_image(sample, "png"), image)
    assert np.array_equal(reader.decode_mask(sample), mask)
    assert reader.decode_mask({"__key__": "k"}) is None
    assert reader.sample_label(sample) == 2
    assert reader.parse_meta(sample) == {"key": "k", "split": "val"}
    assert reader.parse_meta({"__key__": "k"}) == {"key": "k"}
    rgb = io.BytesIO()
    Image.fromarray(np.stack([image] * 3, -1)).save(rgb, format="PNG")
    assert np.array_equal(reader.decode_image({"__key__": "k", "png": rgb.getvalue()}, "png"), image)


def test_decode_errors_name_the_sample():
    with pytest.raises(StorageError, match=r"sample 'k' has no .npy member"):
        reader.decode_image({"__key__": "k", "png": b""}, "npy")
    wide = {"__key__": "k", "npy": encode_image(np.zeros((2, 2, 3), np.uint8), "npy")}
    with pytest.raises(StorageError, match=r"sample 'k': expected a 2-D uint8 image"):
        reader.decode_image(wide, "npy")
    for bad in ({"__key__": "k"}, {"__key__": "k", "cls": b"x"}):
        with pytest.raises(StorageError, match=r"sample 'k' has no valid .cls label member"):
            reader.sample_label(bad)


# ---------------------------------------------------------------------------------------------
# shards and manifests on S3


def _prefix(name: str) -> str:
    return f"s3://radimagenet/tests/reader-{uuid.uuid4().hex[:8]}/{name}"


@pytest.fixture(scope="module")
def small(stack_env: dict[str, str]) -> dict:
    uri = _prefix("small")
    ensure_bucket(uri)
    return write_test_dataset(uri, {"train": 7, "val": 13}, 4, masks=True, shard_sizes={"val": [5, 3, 4, 1]})


@pytest.mark.integration
def test_load_manifest_valid_missing_incomplete(small: dict) -> None:
    loaded = load_manifest(small["uri"])
    assert loaded["splits"]["val"]["samples"] == 13
    assert load_manifest(manifest_uri(small["uri"])) == load_manifest(small["uri"] + "/") == loaded

    with pytest.raises(ConfigError, match="no dataset at"):
        load_manifest(_prefix("nothing-here"))

    partial = _prefix("partial")
    storage.write_bytes(partial + "/train-000000.tar", b"\0" * 1024)
    with pytest.raises(ConfigError, match="incomplete: no manifest.json"):
        load_manifest(partial)

    storage.write_json(partial + "/manifest.json", {**loaded, "format": "something-else/9"})
    with pytest.raises(ConfigError, match="format"):
        load_manifest(partial)
    broken = {**loaded, "splits": {"train": {"samples": 5, "shards": [{"url": "s3://x/y.tar", "samples": 4}]}}}
    storage.write_json(partial + "/manifest.json", broken)
    with pytest.raises(ConfigError, match="says 5 samples but its shards hold 4"):
        load_manifest(partial)


@pytest.mark.integration
def test_read_shard_iterate_samples_and_labels(small: dict) -> None:
    shards = split_shards(small, "val")
    assert [s.samples for s in shards] == [5, 3, 4, 1]
    raw = [s for shard in shards for s in reader.read_shard(shard.url)]
    assert len(raw) == 13 and all(set(s) == {"__key__", "npy", "cls", "json", "mask.png"} for s in raw)

    samples = list(reader.iterate_samples(small, "val"))
    assert [s["meta"]["index"] for s in samples] == list(range(13))  # manifest order
    assert [s["key"] for s in samples] == [s["__key__"] for s in raw]
    assert {s["key"]: s["label_id"] for s in samples} == reader.sample_labels(small, "val")
    first = samples[0]
    assert first["image"].shape == (32, 32) and first["image"].dtype == np.uint8
    assert np.array_equal(first["mask"], (first["image"] >= 128).astype(np.uint8))
    assert class_counts(small, "val") == [4, 3, 3, 3]


@pytest.mark.integration
def test_read_shard_errors_name_the_shard(small: dict) -> None:
    missing = small["uri"] + "/val-999999.tar"
    with pytest.raises(StorageError, match="val-999999.tar"):
        list(reader.read_shard(missing))
    truncated = _prefix("cut") + "/train-000000.tar"
    storage.write_bytes(truncated, storage.read_bytes(split_shards(small, "train")[0].url)[:1500])
    with pytest.raises(StorageError, match=rf"{truncated} is truncated"):
        list(reader.read_shard(truncated))
