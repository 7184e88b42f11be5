"""The training input pipeline: WebDataset-style tar shards read from S3 into PyTorch batches.

    manifest = load_manifest("s3://datasets/radimagenet-v1")     # radimagenet.dataset.format
    loader = make_loader(manifest, "train", batch_size=256, rank=r, world_size=w, epoch=e, image_size=224)
    for batch in loader:   # a Batch: .images float32 [B, C, S, S] normalised, .labels int64 [B], .keys
        ...

Every batch is a :class:`Batch` with the same fields whatever the options: ``images``, ``labels``
and ``keys`` always, ``masks`` (``with_masks``) and ``meta`` (``with_meta``) else None. The epoch
order is :mod:`radimagenet.data.order`, who reads what :mod:`radimagenet.data.plan`; the per-sample
transform and the per-batch normalisation are :mod:`radimagenet.data.transforms` (also inference's).
Tar members are parsed by :mod:`radimagenet.dataset.tar` (about 5x faster than ``tarfile`` in ``r|``
mode or webdataset's expander); each DataLoader worker opens its own S3 connections.

Training epochs (``train=True``): partitioned by sample
    * The epoch's order of samples is a function of ``(seed, epoch)`` and the split alone; step ``s``
      consumes its next ``world_size * batch_size`` samples, cut into ranks and, within a rank, into
      loader workers: each worker builds its part of every batch and the rank joins them in worker
      order (so a rank's batches do not depend on ``num_workers``). Every rank yields the same number
      of batches, all full (``drop_last``); any dataset, even one shard, trains on any number of
      ranks and workers. ``start`` begins an epoch at a global position (a resumed run).
    * A worker reads its samples as runs of contiguous samples of a shard, one ranged GET each (byte
      ranges from the shard's index, :mod:`radimagenet.dataset.index`), a few GETs ahead, and keeps
      each sample until its batch is due.
    * Augmentation: random resized crop (scale (0.35, 1), ratio (3/4, 4/3)) and a horizontal flip
      with p=0.5, drawn from ``(seed, epoch, sample)`` (:func:`radimagenet.data.order.sample_rngs`):
      the same whichever rank or worker reads the sample. Left-right flips keep images plausible (the
      body is roughly symmetric and laterality is not a label); vertical flips are *not* used: anatomy
      has a fixed cranio-caudal orientation, and an upside-down chest or knee is an image the model
      never meets.

Evaluation (``train=False``)
    Shards streamed whole, in manifest order, split by rank (``shards[rank::world_size]``) then by worker; every
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
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from radimagenet.data.order import epoch_order, sample_rngs
from radimagenet.data.plan import (
    RankPlan,
    ReaderPlan,
    TrainPlan,
    WorkerPlan,
    plan_eval,
    plan_train,
    run_length,
)
from radimagenet.data.reads import reader_samples
from radimagenet.data.transforms import Normalise, Transform, check_normalise, new_tensor
from radimagenet.dataset.format import UNLABELED, is_multi_label, is_unlabeled, split_shards
from radimagenet.dataset.index import split_indexes
from radimagenet.dataset.reader import (
    parse_meta,
    read_shard,
    sample_label,
    sample_label_ids,
)
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
    labels: torch.Tensor  # int64 [B]; a multi-label dataset: float32 [B, classes], 1 where the image has the label;
    # an unlabeled dataset: int64 [B] of UNLABELED (-1, dataset.format)
    keys: list[str]  # sample keys
    masks: torch.Tensor | None = None  # int64 [B, 1, S, S] when with_masks
    meta: list[dict] | None = None  # each sample's .json (+ "key") when with_meta

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        return dataclasses.replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory(),
                                   masks=None if self.masks is None else self.masks.pin_memory())


def _read(url: str, keep: Mapping[str, frozenset[str]] | None) -> Iterator[dict[str, Any]]:
    """A shard's samples; with ``keep``, only those whose key it lists for the shard."""
    if keep is None:
        return read_shard(url)
    kept = keep.get(url, frozenset())
    return (s for s in read_shard(url) if s["__key__"] in kept)


def _train_batches(spec: BatchSpec, reader: ReaderPlan) -> Iterator[Batch | None]:
    """A reader's part of each of the rank's batches (None where it has no sample in one)."""
    samples = reader_samples(reader, spec.urls, spec.offsets, spec.shard_starts, spec.read_ahead)
    rngs = (r for i in range(0, len(reader.ids), 1024)  # made 1,024 at a time: the numpy work is per call
            for r in sample_rngs(spec.seed, spec.epoch, reader.ids[i : i + 1024]))
    for count in reader.counts.tolist():
        if count == 0:
            yield None
            continue
        yield make_batch(spec, [next(samples) for _ in range(count)], [next(rngs) for _ in range(count)])


def _eval_stream(plan: WorkerPlan, keep: Mapping[str, frozenset[str]] | None = None) -> Iterator[dict[str, Any]]:
    for shard in plan.shards:
        yield from _read(shard.url, keep)


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker needs to turn its plan into batches (picklable for spawn contexts)."""

    plan: RankPlan | TrainPlan
    transform: Transform
    normalise: Normalise
    shuffle_buffer: int
    with_meta: bool
    with_masks: bool
    keep: Mapping[str, frozenset[str]] | None = None  # shard URL -> the sample keys read (None: all)
    num_labels: int = 0  # multi-label datasets: the number of classes (labels become multi-hot rows)
    # training (a TrainPlan): the split's shards, their sample indexes and the augmentation seed
    urls: tuple[str, ...] = ()
    offsets: tuple[np.ndarray, ...] = ()  # per shard: sample i is bytes [offsets[i], offsets[i + 1])
    shard_starts: np.ndarray | None = None  # global sample id of each shard's first sample
    read_ahead: int = 0  # samples per ranged GET at most
    seed: int = 0
    epoch: int = 0
    unlabeled: bool = False  # an unlabeled dataset: every label is UNLABELED (the samples have no cls member)


def worker_batches(spec: BatchSpec, worker: int) -> Iterator[Batch | None]:
    """The batches of one loader worker (train: its part of every batch of the rank; eval: all its samples)."""
    if isinstance(spec.plan, TrainPlan):
        yield from _train_batches(spec, spec.plan.readers[worker])
        return
    plan = spec.plan.workers[worker]
    for chunk in _chunks(_eval_stream(plan, spec.keep), spec.plan.batch_size):
        yield make_batch(spec, chunk, None)


def join_batches(spec: BatchSpec, parts: Sequence[Batch | None], pin: bool = False) -> Batch:
    """One batch from the loader workers' parts of it, in worker order (``pin``: in pinned memory).

    A grey batch (channels a stride-0 ``expand`` of one plane) is joined plane by plane.
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        return make_batch(spec, [], None)
    if len(parts) == 1 and not pin:
        return parts[0]
    images = parts[0].images
    grey = images.shape[1] > 1 and images.stride(1) == 0
    planes = [p.images[:, :1] if grey else p.images for p in parts]
    n = sum(len(p) for p in planes)
    out = torch.cat(planes, out=torch.empty((n, *planes[0].shape[1:]), dtype=images.dtype, pin_memory=pin))
    labels = torch.cat([p.labels for p in parts])
    masks = None if parts[0].masks is None else torch.cat([p.masks for p in parts])
    return Batch(
        images=out.expand(n, images.shape[1], *images.shape[2:]) if grey else out,
        labels=labels.pin_memory() if pin else labels,
        keys=[k for p in parts for k in p.keys],
        masks=None if masks is None else (masks.pin_memory() if pin else masks),
        meta=None if parts[0].meta is None else [m for p in parts for m in p.meta],
    )


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def make_batch(spec: BatchSpec, samples: list[dict[str, Any]],
               rng: random.Random | Sequence[random.Random] | None) -> Batch:
    """Raw shard samples (``{"__key__", "npy"|"png", "cls", ...}``) -> a :class:`Batch`.

    Each sample goes through ``spec.transform`` into its slot of one ``[B, 1, S, S]`` plane (in
    shared memory inside a DataLoader worker), then the batch through ``spec.normalise``. ``rng``:
    one per sample (training: :func:`radimagenet.data.order.sample_rngs`), one for all, or None (eval).
    """
    size, n = spec.transform.size, len(samples)
    plane = new_tensor((n, 1, size, size))
    masks = new_tensor((n, 1, size, size), torch.uint8) if spec.with_masks else None
    keys = []
    rngs = rng if isinstance(rng, Sequence) else [rng] * n
    for i, sample in enumerate(samples):
        keys.append(sample["__key__"])
        spec.transform(sample, rngs[i], plane[i : i + 1], None if masks is None else masks[i : i + 1])
    return Batch(
        images=spec.normalise(plane),
        labels=batch_labels(samples, spec.num_labels, spec.unlabeled),
        keys=keys,
        masks=None if masks is None else masks.to(torch.int64),
        meta=[parse_meta(s) for s in samples] if spec.with_meta else None,
    )


def batch_labels(samples: list[dict[str, Any]], num_labels: int = 0, unlabeled: bool = False) -> torch.Tensor:
    """The samples' labels: int64 ids ``[B]``, or (``num_labels`` > 0, a multi-label dataset) float32
    multi-hot rows ``[B, num_labels]``; ``unlabeled`` (an unlabeled dataset): int64 ``UNLABELED`` ``[B]``."""
    if unlabeled:
        return torch.full((len(samples),), UNLABELED, dtype=torch.int64)
    if not num_labels:
        return torch.tensor([sample_label(s) for s in samples], dtype=torch.int64)
    out = torch.zeros((len(samples), num_labels), dtype=torch.float32)
    for i, sample in enumerate(samples):
        ids = sample_label_ids(sample)
        if max(ids) >= num_labels:
            raise StorageError(f"sample {sample['__key__']!r} has label id {max(ids)} >= {num_labels} classes")
        out[i, list(ids)] = 1.0
    return out


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
        if isinstance(plan, TrainPlan):
            return plan.samples
        return sum(w.samples for w in plan.workers)

    def position(self, batches: int) -> int:
        """Training: the epoch's global position (samples consumed by all ranks) after ``batches`` batches."""
        if not isinstance(self.spec.plan, TrainPlan):
            raise ConfigError("an evaluation loader has no position in an epoch order")
        return self.spec.plan.position(batches)

    def __iter__(self) -> Iterator[Batch]:
        train = isinstance(self.spec.plan, TrainPlan)
        if self.num_workers == 0:
            parts: Iterator[Any] = iter(self.dataset)
        else:
            parts = iter(torch.utils.data.DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_collate_passthrough,
                worker_init_fn=_worker_init, persistent_workers=False,
                pin_memory=torch.cuda.is_available() and not train,  # train: pinned when its parts are joined
            ))
        if not train:
            return parts
        return self._joined(parts)

    def _joined(self, parts: Iterator[Batch | None]) -> Iterator[Batch]:
        """Each batch from its workers' parts (DataLoader hands them out in worker order, one per worker)."""
        readers = len(self.spec.plan.readers)
        pin = self.num_workers > 0 and torch.cuda.is_available()
        for _ in range(len(self)):
            yield join_batches(self.spec, [next(parts) for _ in range(readers)], pin)


def _train_plan(manifest: dict, split: str, keep: Mapping[str, frozenset[str]] | None, *, epoch: int, seed: int,
                **kw: Any) -> tuple[TrainPlan, dict[str, Any]]:
    """The rank's :class:`TrainPlan` and what its workers need to read it (the BatchSpec's training fields)."""
    urls = [s.url for s in split_shards(manifest, split)]
    indexes = split_indexes(manifest, split)
    sizes = [len(index) for index in indexes]
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    if keep is None:
        universe = [np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in range(len(sizes))]
    else:  # only the kept samples: the order, the batch count and len() follow the subset
        universe = [starts[i] + np.flatnonzero(np.isin(index.keys, [k.encode() for k in keep.get(url, ())]))
                    for i, (index, url) in enumerate(zip(indexes, urls, strict=True))]
    plan = plan_train(epoch_order(universe, seed, epoch), split=split, **kw)
    sample_bytes = sum(int(ix.offsets[-1] - ix.offsets[0]) for ix in indexes) / max(sum(sizes), 1)
    lanes = max(len(np.unique(r.lanes)) for r in plan.readers)
    return plan, {"urls": tuple(urls), "offsets": tuple(ix.offsets for ix in indexes), "shard_starts": starts[:-1],
                  "read_ahead": run_length(lanes, sample_bytes), "seed": seed, "epoch": epoch}


def make_loader(
    manifest: dict, split: str, *, batch_size: int, rank: int = 0, world_size: int = 1,
    epoch: int = 0, seed: int = 0, train: bool = True, num_workers: int = 2,
    image_size: int | None = None, channels: int = 3,
    mean: tuple[float, ...] = (0.5,), std: tuple[float, ...] = (0.25,),
    shuffle_buffer: int = 1000, with_meta: bool = False, with_masks: bool = False,
    keep: Mapping[str, frozenset[str]] | None = None, start: int = 0, drop_last: bool = True,
) -> Loader:
    """The batches ``rank`` reads from ``split`` in ``epoch`` (see the module doc for the policies).

    Yields :class:`Batch` es: ``images``, ``labels`` and ``keys`` always; ``masks`` with
    ``with_masks``; ``meta`` (each sample's ``.json`` plus ``key``) with ``with_meta``. ``keep`` (shard
    URL -> sample keys, e.g. :func:`radimagenet.data.subset.label_subset`) reads only those samples.
    Training: ``start`` is the global position in the epoch's order to begin at (a resumed run:
    :meth:`Loader.position` of the interrupted one, with any world size); ``drop_last`` as in
    :func:`radimagenet.data.plan.plan_train`. ``shuffle_buffer`` is no longer used (the epoch order
    mixes the whole split; kept so that callers and configs stay valid).
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
    transform = Transform(size, train, manifest["encoding"], with_masks)
    labels = len(manifest["classes"]) if is_multi_label(manifest) else 0
    unlabeled = is_unlabeled(manifest)
    if not train:
        plan = plan_eval(shards, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=num_workers)
        return Loader(BatchSpec(plan, transform, normalise, 0, with_meta, with_masks, keep, labels,
                                unlabeled=unlabeled), num_workers)
    plan, reads = _train_plan(manifest, split, keep, batch_size=batch_size, rank=rank, world_size=world_size,
                              num_workers=num_workers, epoch=epoch, seed=seed, start=start, drop_last=drop_last)
    return Loader(BatchSpec(plan, transform, normalise, 0, with_meta, with_masks, None, labels, **reads,
                            unlabeled=unlabeled), num_workers)

