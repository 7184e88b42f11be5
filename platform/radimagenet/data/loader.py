"""The training input pipeline: WebDataset-style tar shards streamed from S3 into PyTorch batches.

    manifest = load_manifest("s3://datasets/radimagenet-v1")
    loader = make_loader(manifest, "train", batch_size=256, rank=r, world_size=w, epoch=e, image_size=224)
    for images, labels in loader:   # float32 [B, C, S, S] normalised, int64 [B]
        ...

Shards are read with boto3 (:func:`radimagenet.io.storage.open_stream`, so ``AWS_ENDPOINT_URL`` is
honoured) by a small streaming tar reader (about 5x faster than ``tarfile`` in ``r|`` mode or
webdataset's expander); each DataLoader worker opens its own S3 client (boto3 clients are not
fork-safe: the cache of :func:`radimagenet.io.storage.client` is dropped when the pid changes).

Training epochs (``train=True``)
    * The shard list is permuted by an rng seeded with ``(seed, epoch)`` - identical on every rank -
      then *dealt* to ranks and, within a rank, to loader workers: each shard in permuted order goes
      to whichever rank (then worker) holds the fewest samples so far, ties to the lowest index. With
      equal shards this is plain striding (``shards[rank::world_size]``); with uneven shards it
      balances the sample counts.
    * Every rank yields exactly ``(total_samples // world_size) // batch_size`` full batches (so DDP
      never hangs at an epoch end). The quota is split evenly over the rank's workers. A worker that
      runs out of samples before its quota reads its own shards again in a fresh order (a "cycle");
      a worker that reaches its quota stops early, so some samples are skipped in an epoch and the
      epoch permutation varies which.
    * Each worker shuffles samples through a buffer of ``shuffle_buffer`` samples; every random
      choice (shuffle, crop, flip) comes from rngs seeded by ``(seed, epoch, rank, worker)``, so an
      epoch is reproducible for a fixed world size and worker count.
    * Augmentation: random resized crop (scale (0.35, 1), ratio (3/4, 4/3)) and a horizontal flip
      with p=0.5. Left-right flips keep images plausible (the body is roughly symmetric and
      laterality is not a label); vertical flips are *not* used: anatomy has a fixed cranio-caudal
      orientation, and an upside-down chest or knee is an image the model never meets.

Evaluation (``train=False``)
    Shards in manifest order are split by rank (``shards[rank::world_size]``) then by worker; every
    sample is yielded exactly once across ranks, the last batch of a worker may be short, and
    ``len(loader)`` may differ between ranks (a rank or worker may even get no shard: allowed
    here, unlike training). No augmentation: images are only resized when ``image_size`` differs
    from the dataset's (antialiased when shrinking).

Speed (one worker, one core, 224 px): the crop is sliced from the uint8 image (a view of the tar
member's bytes for ``npy``), flipped on uint8, and bilinearly upsampled straight into its slot of
the batch tensor (allocated in shared memory inside DataLoader workers, so nothing is copied on
the way to the trainer); normalisation runs once per batch, in place, and grey is replicated to 3
channels by a stride-0 ``expand``. Measured with ``benchmarks/loader.py``.

Masks (``with_masks=True``): ``<key>.mask.png`` gets the same crop box and flip, resized
nearest-neighbour, yielded as int64 ``[B, 1, S, S]``; a sample without a mask member gets an
all-zero mask.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from radimagenet.errors import ConfigError, StorageError
from radimagenet.io import storage

FORMAT = "radimagenet-dataset/1"
ENCODINGS = ("npy", "png")
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
READ_CHUNK = 1 << 20  # bytes per S3 read



# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRef:
    """One tar shard of a split: where it is and how many samples the manifest says it holds."""

    url: str
    samples: int


def _manifest_uri(uri: str) -> str:
    return uri if uri.endswith(".json") else str(storage.parse_uri(uri).join("manifest.json"))


def validate_manifest(manifest: Any, where: str = "manifest") -> dict:
    """Check the fields the loader relies on (docs/design.md); return the manifest unchanged."""
    if not isinstance(manifest, dict):
        raise ConfigError(f"{where} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{where} has format {manifest.get('format')!r}; this version reads {FORMAT!r}")
    missing = [k for k in ("classes", "image_size", "encoding", "splits") if k not in manifest]
    if missing:
        raise ConfigError(f"{where} is incomplete: missing {missing}")
    if not isinstance(manifest["classes"], list) or not manifest["classes"]:
        raise ConfigError(f"{where}: 'classes' must be a non-empty list")
    if not isinstance(manifest["image_size"], int) or manifest["image_size"] < 1:
        raise ConfigError(f"{where}: 'image_size' must be a positive integer")
    if manifest["encoding"] not in ENCODINGS:
        raise ConfigError(f"{where}: encoding {manifest['encoding']!r} is not one of {list(ENCODINGS)}")
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
    target = _manifest_uri(uri)
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


def split_shards(manifest: dict, split: str) -> list[ShardRef]:
    """The shards of ``split`` in manifest order; a clear error names the splits that exist."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ConfigError(f"dataset has no {split!r} split; it has {sorted(splits)}")
    return [ShardRef(s["url"], int(s["samples"])) for s in splits[split]["shards"]]


def class_counts(manifest: dict, split: str) -> list[int]:
    """Samples per class id in ``split`` (from the manifest; for loss weighting or sampling)."""
    per_name = manifest["splits"][split].get("classes", {})
    return [int(per_name.get(name, 0)) for name in manifest["classes"]]


# --------------------------------------------------------------------------------------------------
# Planning: which worker reads which shards, and how many batches (pure functions)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker of one rank reads in one epoch."""

    shards: tuple[ShardRef, ...]
    batches: int | None  # train: exact number of full batches to yield; eval: None (read everything)
    seed: tuple[int, ...]  # rng seed material (seed, epoch, rank, worker)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@dataclass(frozen=True)
class RankPlan:
    """One rank's epoch: a plan per loader worker and the number of batches the rank yields."""

    workers: tuple[WorkerPlan, ...]
    num_batches: int
    batch_size: int


def rng_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers (order matters), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0])


def deal_balanced(shards: Iterable[ShardRef], n: int) -> list[list[ShardRef]]:
    """Deal shards in order to ``n`` bins, each to the bin with the fewest samples (ties: lowest index)."""
    bins: list[list[ShardRef]] = [[] for _ in range(n)]
    loads = [0] * n
    for shard in shards:
        i = min(range(n), key=lambda b: (loads[b], len(bins[b]), b))
        bins[i].append(shard)
        loads[i] += shard.samples
    return bins


def plan_train(
    shards: list[ShardRef], *, batch_size: int, rank: int, world_size: int, num_workers: int,
    epoch: int, seed: int, split: str = "train",
) -> RankPlan:
    """Plan a training epoch for ``rank``: equal batch counts on every rank (see the module doc)."""
    shards = [s for s in shards if s.samples > 0]
    workers = max(num_workers, 1)
    if len(shards) < world_size * workers:
        raise ConfigError(
            f"dataset has {len(shards)} {split} shards but {world_size} ranks x {workers} loader workers "
            f"need at least {world_size * workers}; re-ingest with a smaller --shard-size or use fewer workers"
        )
    total = sum(s.samples for s in shards)
    num_batches = total // world_size // batch_size
    if num_batches == 0:
        raise ConfigError(
            f"{split} split has {total} samples: {world_size} ranks x batch size {batch_size} leaves "
            f"0 full batches per rank; use a smaller batch size or fewer ranks"
        )
    order = random.Random(rng_seed(seed, epoch)).sample(shards, len(shards))
    mine = deal_balanced(order, world_size)[rank]
    per_worker = deal_balanced(mine, workers)
    plans = tuple(
        WorkerPlan(tuple(per_worker[w]), num_batches // workers + (w < num_batches % workers),
                   (seed, epoch, rank, w))
        for w in range(workers)
    )
    return RankPlan(plans, num_batches, batch_size)


def plan_eval(
    shards: list[ShardRef], *, batch_size: int, rank: int, world_size: int, num_workers: int
) -> RankPlan:
    """Plan an evaluation pass: manifest order, split by rank then worker, every sample once."""
    workers = max(num_workers, 1)
    mine = shards[rank::world_size]
    plans = tuple(WorkerPlan(tuple(mine[w::workers]), None, (0, 0, rank, w)) for w in range(workers))
    num_batches = sum(math.ceil(p.samples / batch_size) for p in plans)
    return RankPlan(plans, num_batches, batch_size)


# --------------------------------------------------------------------------------------------------
# Reading shards
# --------------------------------------------------------------------------------------------------

def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode()
        pos += length
    return out


def iter_tar(stream: Any, where: str = "tar", chunk: int = READ_CHUNK) -> Iterator[tuple[str, bytearray]]:
    """``(name, data)`` of the regular files of a tar stream (ustar, GNU long names, pax), in order.

    ``data`` is a (writable) ``bytearray``, so arrays decoded from it can become tensors without a copy.

    Reads ``chunk`` bytes at a time from any object with ``read(n)`` and parses headers itself: much
    faster than ``tarfile`` in stream mode, which reads in 10 KiB steps and builds a TarInfo each time.
    """
    buf, pos, eof = bytearray(), 0, False

    def fill(n: int) -> bool:
        nonlocal buf, pos, eof
        if len(buf) - pos >= n:
            return True
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < n and not eof:
            data = stream.read(max(chunk, n - have))
            if not data:
                eof = True
                break
            parts.append(data)
            have += len(data)
        buf, pos = bytearray().join(parts), 0
        return have >= n

    long_name: str | None = None
    pax: dict[str, str] = {}
    while fill(512):
        header = buf[pos : pos + 512]
        if header.count(0) == 512:
            return
        if header[257:262] != b"ustar":  # every tar writer in use (tarfile, GNU, webdataset) sets it
            raise StorageError(f"{where} is corrupt or not a ustar/pax/GNU tar (bad header magic)")
        name = header[:100].split(b"\0", 1)[0].decode()
        if header[257:262] == b"ustar" and header[345]:
            name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
        size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
        kind = header[156:157]
        pos += 512
        padded = (size + 511) & ~511
        if not fill(padded):
            raise StorageError(f"{where} is truncated (member {name!r} needs {size} bytes)")
        data = buf[pos : pos + size]
        pos += padded
        if kind in (b"0", b"\0", b"7"):
            yield pax.get("path", long_name or name), data
            long_name, pax = None, {}
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode()
        elif kind == b"x":
            pax = _pax_records(data)
        # directories, links, global pax headers ('g') and the rest carry no sample data


def group_samples(members: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """Group consecutive members sharing a key (the path up to the basename's first dot) into samples.

    ``{"__key__": "abc", "npy": b"...", "cls": b"3", "json": b"{...}", "mask.png": b"..."}``.
    """
    current: dict[str, Any] | None = None
    for name, data in members:
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot < 0:
            continue
        key, ext = name[:dot], name[dot + 1 :]
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current


def read_shard(url: str) -> Iterator[dict[str, Any]]:
    """Stream the samples of one shard from S3 (the body is closed when the iterator is). A forked
    loader worker gets its own S3 client: ``storage.client()`` is keyed by process."""
    body = storage.open_stream(url)
    try:
        yield from group_samples(iter_tar(body, url))
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - network errors surface as one clear line
        raise StorageError(f"reading {url} failed: {exc}") from exc
    finally:
        body.close()


# --------------------------------------------------------------------------------------------------
# Decoding and augmentation (per sample, uint8)
# --------------------------------------------------------------------------------------------------

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
    data = sample.get("mask.png")
    return None if data is None else _png(data)


def random_resized_crop_box(
    width: int, height: int, rng: random.Random,
    scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """A random ``(left, top, right, bottom)`` crop box, drawn as torchvision's RandomResizedCrop does."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    aspect = width / height  # fallback: the largest centred crop within the ratio range
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def resize_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Bilinear-resize uint8 ``src [1, 1, h, w]`` into float ``dst [1, 1, S, S]`` (half-pixel centres).

    Upsampling (the usual case: crops are never larger than the image) writes straight into ``dst``;
    shrinking in any dimension uses the antialiased kernel so downscaled images do not alias.
    """
    size = tuple(dst.shape[-2:])
    if tuple(src.shape[-2:]) == size:
        dst.copy_(src)
    elif src.shape[-2] <= size[0] and src.shape[-1] <= size[1]:
        torch.ops.aten.upsample_bilinear2d.out(src.to(torch.float32), list(size), False, None, None, out=dst)
    else:
        dst.copy_(F.interpolate(src.to(torch.float32), size=size, mode="bilinear", antialias=True))


def resize_mask_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Nearest-neighbour resize of a uint8 mask ``src [1, 1, h, w]`` into ``dst [1, 1, S, S]``."""
    if tuple(src.shape[-2:]) == tuple(dst.shape[-2:]):
        dst.copy_(src)
    else:
        dst.copy_(F.interpolate(src, size=tuple(dst.shape[-2:]), mode="nearest-exact"))


@dataclass(frozen=True)
class Transform:
    """Per-sample spatial transform to ``size`` x ``size`` (train: crop + flip; eval: resize only).

    Writes the *unnormalised* float image into a slot of the batch tensor (normalisation is per
    batch, and commutes with bilinear resizing) and the mask, resized nearest-neighbour with the
    same crop box and flip, into the uint8 mask batch.
    """

    size: int
    train: bool
    encoding: str
    with_masks: bool = False

    def __call__(self, sample: dict[str, Any], rng: random.Random,
                 image_out: torch.Tensor, mask_out: torch.Tensor | None = None) -> None:
        image = _as_tensor(decode_image(sample, self.encoding))
        height, width = image.shape
        box, flip = (0, 0, width, height), False
        if self.train:
            box = random_resized_crop_box(width, height, rng)
            flip = rng.random() < 0.5
        left, top, right, bottom = box
        crop = image[top:bottom, left:right]
        resize_into(image_out, (crop.flip(-1) if flip else crop)[None, None])
        if mask_out is None:
            return
        mask = decode_mask(sample)
        if mask is None:  # no mask member: all background
            mask_out.zero_()
            return
        if mask.shape != (height, width):
            raise StorageError(
                f"sample {sample['__key__']!r}: mask {mask.shape} does not match image {(height, width)}"
            )
        mcrop = _as_tensor(mask)[top:bottom, left:right]
        resize_mask_into(mask_out, (mcrop.flip(-1) if flip else mcrop)[None, None])


# --------------------------------------------------------------------------------------------------
# Batching (per batch: normalisation and channel replication)
# --------------------------------------------------------------------------------------------------


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory directly
    (as torch's default_collate does), so sending it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    base = torch.empty(0, dtype=dtype)
    storage = base._typed_storage()._new_shared(math.prod(shape))
    return base.new(storage).view(shape)


@dataclass(frozen=True)
class Normalise:
    """float ``[B, 1, S, S]`` of 0..255 values -> ``[B, channels, S, S]`` of ``(x / 255 - mean) / std``.

    With one mean/std for all channels (the natural choice for grey images) the plane is
    normalised in place and the channels are a stride-0 ``expand`` of it: no extra work and 3x
    less to send between processes. ``.to(device)`` / ``.contiguous()`` materialise it; do not
    modify it in place on the CPU. Distinct per-channel values (e.g. ImageNet's) write every channel.
    """

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def coefficients(self) -> list[tuple[float, float]]:
        """``(scale, shift)`` per channel with ``y = x * scale + shift`` for 0..255 ``x``."""
        mean = self.mean * self.channels if len(self.mean) == 1 else self.mean
        std = self.std * self.channels if len(self.std) == 1 else self.std
        return [(1.0 / (255.0 * s), -m / s) for m, s in zip(mean, std, strict=True)]

    def __call__(self, plane: torch.Tensor) -> torch.Tensor:
        b, _, h, w = plane.shape
        coef = self.coefficients()
        if len(set(coef)) == 1:
            scale, shift = coef[0]
            return plane.mul_(scale).add_(shift).expand(b, self.channels, h, w)
        out = _new_tensor((b, self.channels, h, w))
        for c, (scale, shift) in enumerate(coef):
            torch.mul(plane[:, 0], scale, out=out[:, c]).add_(shift)
        return out


def check_normalise(channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Normalise:
    """Validate the channel count and mean/std lengths (1 value, or one per channel)."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ConfigError(f"{name} must have 1 or {channels} values, got {len(values)}: {tuple(values)}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"std values must be positive, got {tuple(std)}")
    return Normalise(channels, tuple(float(m) for m in mean), tuple(float(s) for s in std))


def shuffled(items: Iterable[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle through a buffer of ``bufsize`` items (pass-through when ``bufsize`` <= 1)."""
    if bufsize <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


def _train_stream(plan: WorkerPlan, bufsize: int, rng: random.Random, where: str) -> Iterator[dict[str, Any]]:
    """The worker's shards shuffled through the buffer, then again in a fresh order, for as long as needed.

    The buffer is drained at the end of each pass, so a worker that holds enough samples for its
    quota never reads a shard twice; only one that holds too few starts another pass (a "cycle").
    """
    shards, cycle = list(plan.shards), 0
    while True:
        n = 0
        for sample in shuffled((s for shard in shards for s in read_shard(shard.url)), bufsize, rng):
            n += 1
            yield sample
        if n == 0:
            raise StorageError(f"{where}: the shards {[s.url for s in shards]} hold no samples")
        cycle += 1
        shards = random.Random(rng_seed(*plan.seed, cycle)).sample(shards, len(shards))


def _eval_stream(plan: WorkerPlan) -> Iterator[dict[str, Any]]:
    for shard in plan.shards:
        yield from read_shard(shard.url)


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker needs to turn its plan into batches (picklable for spawn contexts)."""

    plan: RankPlan
    transform: Transform
    normalise: Normalise
    shuffle_buffer: int
    with_meta: bool
    with_masks: bool


def sample_label(sample: dict[str, Any]) -> int:
    """The label id of a raw sample (its ``.cls`` member)."""
    try:
        return int(sample["cls"])
    except (KeyError, ValueError) as exc:
        raise StorageError(f"sample {sample.get('__key__')!r} has no valid .cls label member") from exc


def _parse_meta(sample: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads(sample["json"]) if "json" in sample else {}
    return {"key": sample["__key__"], **meta}


def worker_batches(spec: BatchSpec, worker: int) -> Iterator[tuple]:
    """The batches of one loader worker: ``(images, labels)`` (+ masks before labels, + meta last)."""
    plan = spec.plan.workers[worker]
    if plan.batches is not None:  # train: shuffled, exactly plan.batches full batches
        quota = plan.batches * spec.plan.batch_size  # the buffer never reads ahead more than needed
        stream = _train_stream(plan, min(spec.shuffle_buffer, quota),
                               random.Random(rng_seed(*plan.seed, 1_000_003)), f"worker {worker}")
        stream = itertools.islice(stream, quota)
    else:
        stream = _eval_stream(plan)
    aug_rng = random.Random(rng_seed(*plan.seed, 7))
    for chunk in _chunks(stream, spec.plan.batch_size):
        yield _make_batch(spec, chunk, aug_rng)


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _make_batch(spec: BatchSpec, samples: list[dict[str, Any]], rng: random.Random) -> tuple:
    size, n = spec.transform.size, len(samples)
    plane = _new_tensor((n, 1, size, size))
    masks = _new_tensor((n, 1, size, size), torch.uint8) if spec.with_masks else None
    for i, sample in enumerate(samples):
        spec.transform(sample, rng, plane[i : i + 1], None if masks is None else masks[i : i + 1])
    out: list[Any] = [spec.normalise(plane)]
    if masks is not None:
        out.append(masks.to(torch.int64))
    out.append(torch.tensor([sample_label(s) for s in samples], dtype=torch.int64))
    if spec.with_meta:
        out.append([_parse_meta(s) for s in samples])
    return tuple(out)


class _ShardDataset(torch.utils.data.IterableDataset):
    """Yields ready batches; each DataLoader worker reads its own part of the plan."""

    def __init__(self, spec: BatchSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        return worker_batches(self.spec, info.id if info is not None else 0)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _collate_passthrough(batch: Any) -> Any:
    return batch


class Loader:
    """An epoch of batches for one rank; ``len()`` is the number of batches this rank yields."""

    def __init__(self, spec: BatchSpec, num_workers: int):
        self.spec = spec
        self.num_workers = num_workers
        self.dataset = _ShardDataset(spec)

    def __len__(self) -> int:
        return self.spec.plan.num_batches

    @property
    def num_samples(self) -> int:
        """Samples this rank yields this epoch."""
        plan = self.spec.plan
        if plan.workers[0].batches is not None:
            return plan.num_batches * plan.batch_size
        return sum(w.samples for w in plan.workers)

    def __iter__(self) -> Iterator[tuple]:
        if self.num_workers == 0:
            return iter(self.dataset)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_collate_passthrough,
            worker_init_fn=_worker_init, persistent_workers=False, pin_memory=torch.cuda.is_available(),
        )
        return iter(loader)


def make_loader(
    manifest: dict, split: str, *, batch_size: int, rank: int = 0, world_size: int = 1,
    epoch: int = 0, seed: int = 0, train: bool = True, num_workers: int = 2,
    image_size: int | None = None, channels: int = 3,
    mean: tuple[float, ...] = (0.5,), std: tuple[float, ...] = (0.25,),
    shuffle_buffer: int = 1000, with_meta: bool = False, with_masks: bool = False,
) -> Loader:
    """The batches ``rank`` reads from ``split`` in ``epoch`` (see the module doc for the policies).

    Yields ``(images, labels)``; ``(images, masks, labels)`` with ``with_masks``; a list of per-sample
    meta dicts (the sample's ``.json`` plus ``key``) is appended with ``with_meta``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got rank={rank} world_size={world_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    size = manifest["image_size"] if image_size is None else image_size
    if size < 8:
        raise ConfigError(f"image_size must be at least 8, got {size}")
    if with_masks and not manifest.get("has_masks"):
        raise ConfigError(f"with_masks=True but the dataset at {manifest.get('uri')} has no masks")
    normalise = check_normalise(channels, mean, std)
    shards = split_shards(manifest, split)
    if train:
        plan = plan_train(shards, batch_size=batch_size, rank=rank, world_size=world_size,
                          num_workers=num_workers, epoch=epoch, seed=seed, split=split)
    else:
        plan = plan_eval(shards, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=num_workers)
    transform = Transform(size, train, manifest["encoding"], with_masks)
    spec = BatchSpec(plan, transform, normalise, shuffle_buffer if train else 0, with_meta, with_masks)
    return Loader(spec, num_workers)


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
                "meta": json.loads(sample["json"]) if "json" in sample else {},
                "mask": None if mask is None else np.array(mask),
            }


def sample_labels(manifest: dict, split: str) -> dict[str, int]:
    """``{key: label_id}`` for every sample of ``split`` (reads the shards, decodes no images)."""
    return {
        sample["__key__"]: sample_label(sample)
        for shard in split_shards(manifest, split)
        for sample in read_shard(shard.url)
    }
