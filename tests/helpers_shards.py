"""Write small datasets in the documented shard format (docs/design.md) for tests and benchmarks.

Stands in for ``radimagenet ingest`` where a test needs shards with a known content and layout:
uneven shard sizes, a chosen encoding, optional masks. Images are deterministic functions of
``(split, index)``, so two datasets written with different encodings hold the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from radimagenet.dataset.format import FORMAT, manifest_uri, shard_name
from radimagenet.io import storage, upload

ImageFn = Callable[[str, int, int], np.ndarray]
PatientFn = Callable[[str, int], str]


def default_image(split: str, index: int, size: int) -> np.ndarray:
    """A unique grey uint8 image: a blocky 0/255 pattern (so masks can be derived) plus a tag."""
    rng = np.random.default_rng([sum(map(ord, split)), index])
    blocks = max(size // 8, 1)
    pattern = rng.integers(0, 2, size=(blocks, blocks), dtype=np.uint8)
    img = np.kron(pattern, np.ones((size // blocks, size // blocks), dtype=np.uint8)) * 255
    img = np.ascontiguousarray(img[:size, :size]).astype(np.uint8)
    return img


def default_mask(image: np.ndarray) -> np.ndarray:
    """The mask that goes with :func:`default_image`: 1 where the image is bright."""
    return (image >= 128).astype(np.uint8)


def sample_key(image: np.ndarray) -> str:
    """First 24 hex digits of SHA-256 over the pixels and the shape (the ingest's key rule)."""
    h = hashlib.sha256(image.tobytes())
    h.update(repr(tuple(image.shape)).encode())
    return h.hexdigest()[:24]


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """``npy`` (NumPy v1 format) or ``png`` (8-bit grey) bytes of a uint8 image."""
    buf = io.BytesIO()
    if encoding == "npy":
        np.save(buf, image, allow_pickle=False)
    elif encoding == "png":
        Image.fromarray(image, mode="L").save(buf, format="PNG")
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _shard_sizes(total: int, shard_samples: int) -> list[int]:
    sizes = [shard_samples] * (total // shard_samples)
    if total % shard_samples:
        sizes.append(total % shard_samples)
    return sizes


def write_test_dataset(
    prefix_uri: str,
    samples_per_split: dict[str, int],
    shard_samples: int,
    image_size: int = 32,
    encoding: str = "npy",
    masks: bool = False,
    *,
    shard_sizes: dict[str, list[int]] | None = None,
    num_classes: int = 4,
    image_fn: ImageFn = default_image,
    patient_fn: PatientFn | None = None,
) -> dict:
    """Write ``<split>-NNNNNN.tar`` shards and ``manifest.json`` under ``prefix_uri``; return the manifest.

    ``shard_sizes`` overrides the even ``shard_samples`` split per split (e.g. ``{"train": [9, 1, 5]}``)
    to make deliberately uneven shards. Sample ``i`` of a split gets label ``i % num_classes`` and
    patient ``patient_fn(split, i)`` (default ``p{i:05d}``).
    """
    prefix = str(storage.parse_uri(prefix_uri))
    classes = [f"CT/part{c}/finding{c}" for c in range(num_classes)]
    splits: dict[str, dict] = {}
    keys: list[tuple[str, str, int]] = []
    for split, total in samples_per_split.items():
        sizes = (shard_sizes or {}).get(split) or _shard_sizes(total, shard_samples)
        if sum(sizes) != total:
            raise ValueError(f"shard sizes {sizes} do not add up to {total} for {split}")
        shards, counts, index = [], {c: 0 for c in classes}, 0
        for n, size in enumerate(sizes):
            url = f"{prefix}/{shard_name(split, n)}"
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for _ in range(size):
                    image = image_fn(split, index, image_size)
                    key, label = sample_key(image), index % num_classes
                    meta = {"label": classes[label], "label_id": label, "split": split,
                            "patient": patient_fn(split, index) if patient_fn else f"p{index:05d}",
                            "modality": ["CT", "MR"][index % 2],
                            "index": index}
                    _add(tar, f"{key}.{encoding}", encode_image(image, encoding))
                    _add(tar, f"{key}.cls", str(label).encode())
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
                    if masks:
                        _add(tar, f"{key}.mask.png", encode_image(default_mask(image), "png"))
                    counts[classes[label]] += 1
                    keys.append((split, key, label))
                    index += 1
            data = buf.getvalue()
            with upload.S3Writer(url) as w:
                w.write(data)
            shards.append({"url": url, "samples": size, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        splits[split] = {"samples": total, "classes": counts, "shards": shards}
    digest = hashlib.sha256(json.dumps([sorted(keys), image_size, encoding]).encode()).hexdigest()
    manifest = {
        "format": FORMAT, "uri": prefix,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "classes": classes, "image_size": image_size, "channels": 1, "encoding": encoding,
        "has_masks": masks, "splits": splits,
        "counts": {"inputs": len(keys), "written": len(keys), "rejected": 0, "duplicates": 0,
                   "rejected_by_reason": {}},
        "digest": f"sha256:{digest}", "ingest": {"writer": "tests/helpers_shards.py"},
        "versions": {"radimagenet": "0.1.0", "numpy": np.__version__},
    }
    storage.write_json(manifest_uri(prefix), manifest)
    return manifest


def ensure_bucket(uri: str) -> None:
    """Create the bucket of ``uri`` when it does not exist yet (test stacks start empty)."""
    bucket = storage.parse_uri(uri).bucket
    c = storage.client()
    try:
        c.head_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - missing bucket: create it
        c.create_bucket(Bucket=bucket)
