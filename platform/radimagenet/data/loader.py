"""The training input pipeline: WebDataset-style tar shards streamed from S3 into PyTorch batches.

    manifest = load_manifest("s3://datasets/radimagenet-v1")     # radimagenet.dataset.format
    loader = make_loader(manifest, "train", batch_size=256, rank=r, world_size=w, epoch=e, image_size=224)
    for batch in loader:   # a Batch: .images float32 [B, C, S, S] normalised, .labels int64 [B], .keys
        ...

Every batch is a :class:`Batch` with the same fields whatever the options: ``images``, ``labels``
and ``keys`` always, ``masks`` (``with_masks``) and ``meta`` (``with_meta``) else None. Planning
(which worker reads which shards) is :mod:`radimagenet.data.plan`; the per-sample transform and
the per-batch normalisation are :mod:`radimagenet.data.transforms` (also used by inference).

Shards are read with boto3 (:func:`radimagenet.io.storage.open_stream`, so ``AWS_ENDPOINT_URL`` is
honoured) by a small streaming tar reader (:mod:`radimagenet.dataset.reader`; about 5x faster than
``tarfile`` in ``r|`` mode or webdataset's expander); each DataLoader worker opens its own S3 client
(boto3 clients are not fork-safe: the cache of :func:`radimagenet.io.storage.client` is dropped
when the pid changes).

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
    from the dataset's (antialiased when shrinking). Inference gets exactly these tensors from
    :func:`radimagenet.data.transforms.preprocess`.

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

import dataclasses
import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from radimagenet.data.plan import RankPlan, WorkerPlan, plan_eval, plan_train, rng_seed
from radimagenet.data.transforms import Normalise, Transform, check_normalise, new_tensor
from radimagenet.dataset.format import split_shards
from radimagenet.dataset.reader import parse_meta, read_shard, sample_label
from radimagenet.errors import ConfigError, StorageError

# --------------------------------------------------------------------------------------------------
# Streams and batches
# --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch of the loader, the same fields in training, evaluation and segmentation.

    ``images`` may be a stride-0 ``expand`` of one grey plane (see :class:`Normalise`):
    ``.to(device)`` / ``.contiguous()`` materialise it; do not modify it in place on the CPU.
    """

    images: torch.Tensor  # float32 [B, C, S, S], normalised
    labels: torch.Tensor  # int64 [B]
    keys: list[str]  # sample keys
    masks: torch.Tensor | None = None  # int64 [B, 1, S, S] when with_masks
    meta: list[dict] | None = None  # each sample's .json (+ "key") when with_meta

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        return dataclasses.replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory(),
                                   masks=None if self.masks is None else self.masks.pin_memory())


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


def _read(url: str, keep: Mapping[str, frozenset[str]] | None) -> Iterator[dict[str, Any]]:
    """A shard's samples; with ``keep``, only those whose key it lists for the shard."""
    if keep is None:
        return read_shard(url)
    kept = keep.get(url, frozenset())
    return (s for s in read_shard(url) if s["__key__"] in kept)


def _train_stream(plan: WorkerPlan, bufsize: int, rng: random.Random, where: str,
                  keep: Mapping[str, frozenset[str]] | None = None) -> Iterator[dict[str, Any]]:
    """The worker's shards shuffled through the buffer, then again in a fresh order, for as long as needed.

    The buffer is drained at the end of each pass, so a worker that holds enough samples for its
    quota never reads a shard twice; only one that holds too few starts another pass (a "cycle").
    """
    shards, cycle = list(plan.shards), 0
    while True:
        n = 0
        for sample in shuffled((s for shard in shards for s in _read(shard.url, keep)), bufsize, rng):
            n += 1
            yield sample
        if n == 0:
            raise StorageError(f"{where}: the shards {[s.url for s in shards]} hold no samples")
        cycle += 1
        shards = random.Random(rng_seed(*plan.seed, cycle)).sample(shards, len(shards))


def _eval_stream(plan: WorkerPlan, keep: Mapping[str, frozenset[str]] | None = None) -> Iterator[dict[str, Any]]:
    for shard in plan.shards:
        yield from _read(shard.url, keep)


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker needs to turn its plan into batches (picklable for spawn contexts)."""

    plan: RankPlan
    transform: Transform
    normalise: Normalise
    shuffle_buffer: int
    with_meta: bool
    with_masks: bool
    keep: Mapping[str, frozenset[str]] | None = None  # shard URL -> the sample keys read (None: all)


def worker_batches(spec: BatchSpec, worker: int) -> Iterator[Batch]:
    """The batches of one loader worker (train: exactly its quota of full batches; eval: all its samples)."""
    plan = spec.plan.workers[worker]
    if plan.batches is not None:  # train: shuffled, exactly plan.batches full batches
        quota = plan.batches * spec.plan.batch_size  # the buffer never reads ahead more than needed
        stream = _train_stream(plan, min(spec.shuffle_buffer, quota),
                               random.Random(rng_seed(*plan.seed, 1_000_003)), f"worker {worker}", spec.keep)
        stream = itertools.islice(stream, quota)
    else:
        stream = _eval_stream(plan, spec.keep)
    aug_rng = random.Random(rng_seed(*plan.seed, 7))
    for chunk in _chunks(stream, spec.plan.batch_size):
        yield make_batch(spec, chunk, aug_rng)


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def make_batch(spec: BatchSpec, samples: list[dict[str, Any]], rng: random.Random) -> Batch:
    """Raw shard samples (``{"__key__", "npy"|"png", "cls", ...}``) -> a :class:`Batch`.

    Each sample goes through ``spec.transform`` into its slot of one ``[B, 1, S, S]`` plane (in
    shared memory inside a DataLoader worker), then the batch through ``spec.normalise``.
    """
    size, n = spec.transform.size, len(samples)
    plane = new_tensor((n, 1, size, size))
    masks = new_tensor((n, 1, size, size), torch.uint8) if spec.with_masks else None
    keys = []
    for i, sample in enumerate(samples):
        keys.append(sample["__key__"])
        spec.transform(sample, rng, plane[i : i + 1], None if masks is None else masks[i : i + 1])
    return Batch(
        images=spec.normalise(plane),
        labels=torch.tensor([sample_label(s) for s in samples], dtype=torch.int64),
        keys=keys,
        masks=None if masks is None else masks.to(torch.int64),
        meta=[parse_meta(s) for s in samples] if spec.with_meta else None,
    )


class _ShardDataset(torch.utils.data.IterableDataset):
    """Yields ready batches; each DataLoader worker reads its own part of the plan."""

    def __init__(self, spec: BatchSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        return worker_batches(self.spec, info.id if info is not None else 0)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _collate_passthrough(batch: Any) -> Any:
    return batch


class Loader:
    """An epoch of :class:`Batch` es for one rank; ``len()`` is the number of batches this rank yields."""

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

    def __iter__(self) -> Iterator[Batch]:
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
    keep: Mapping[str, frozenset[str]] | None = None,
) -> Loader:
    """The batches ``rank`` reads from ``split`` in ``epoch`` (see the module doc for the policies).

    Yields :class:`Batch` es: ``images``, ``labels`` and ``keys`` always; ``masks`` with
    ``with_masks``; ``meta`` (each sample's ``.json`` plus ``key``) with ``with_meta``. ``keep`` (shard
    URL -> sample keys, e.g. :func:`radimagenet.data.subset.label_subset`) reads only those samples.
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
    if keep is not None:  # plan by the kept counts: quotas and len() follow the subset
        shards = [dataclasses.replace(s, samples=len(keep[s.url])) for s in shards if keep.get(s.url)]
    if train:
        plan = plan_train(shards, batch_size=batch_size, rank=rank, world_size=world_size,
                          num_workers=num_workers, epoch=epoch, seed=seed, split=split)
    else:
        plan = plan_eval(shards, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=num_workers)
    transform = Transform(size, train, manifest["encoding"], with_masks)
    spec = BatchSpec(plan, transform, normalise, shuffle_buffer if train else 0, with_meta, with_masks, keep)
    return Loader(spec, num_workers)

