"""The per-worker pretraining loop: one function that runs under Ray Train or in-process.

    metrics = train_loop(to_dict(cfg))                      # in-process: rank 0 of 1, no Ray
    TorchTrainer(ray_train_fn, train_loop_config=to_dict(cfg), ...)   # each Ray Train worker

The loop only sees a :class:`Context` (rank, world size, device, how to wrap the model for DDP, how to
report metrics + a checkpoint, where the latest checkpoint is), so it does not care which of the two
runs it. Checkpointing, logging and evaluation are calls; the loop reads top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from radimagenet.config import from_dict
from radimagenet.data import loader as data
from radimagenet.eval.classification import classification_metrics, summarize
from radimagenet.io import tracking
from radimagenet.models.factory import create_model, make_record
from radimagenet.train import checkpoint
from radimagenet.train.config import PretrainConfig

CHECKPOINT_PREFIX = "checkpoint_epoch-"


@dataclass
class Context:
    """What the loop needs from its runner (Ray Train worker or plain process)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m
    # report(metrics, checkpoint_dir or None, checkpoint_name): every rank calls it once per epoch
    report: Callable[[dict[str, float], str | None, str], None] = lambda m, d, n: None
    # latest_checkpoint(): a context manager yielding a local directory, or None when starting fresh
    latest_checkpoint: Callable[[], contextlib.AbstractContextManager[str | None]] = (
        lambda: contextlib.nullcontext(None)
    )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------------- the loop


def train_loop(config: dict[str, Any], ctx: Context | None = None) -> dict[str, float]:
    """Pretrain ``config`` (a resolved :class:`PretrainConfig` as a dict); returns the last metrics."""
    cfg = from_dict(PretrainConfig, config)
    ctx = ctx or local_context(cfg)
    torch.manual_seed(cfg.train.seed)
    manifest = data.load_manifest(cfg.data.manifest)
    record = make_record(cfg.model.arch, manifest, in_chans=cfg.model.in_chans, image_size=cfg.data.image_size,
                         mean=cfg.data.mean, std=cfg.data.std)
    gpu = ctx.device.type == "cuda"

    model = create_model(cfg.model.arch, len(manifest["classes"]), cfg.model.in_chans, cfg.model.drop_rate)
    model = model.to(ctx.device, memory_format=torch.channels_last if gpu else torch.contiguous_format)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(train_loader(cfg, manifest, ctx, epoch=0))
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    start_epoch, step = restore(ctx, model, optimizer, scheduler, manifest)
    log = metric_logger(cfg, ctx)
    if start_epoch > 0:
        log({"train/resumed_from_epoch": start_epoch}, step)

    train_model = ctx.prepare_model(model)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        loader = train_loader(cfg, manifest, ctx, epoch)
        step, train_metrics = train_one_epoch(train_model, loader, optimizer, scheduler, loss_fn, ctx, cfg,
                                              epoch, step, log)
        val_metrics = evaluate(model, manifest, cfg, ctx)
        metrics = {"epoch": epoch + 1, "step": step, **train_metrics, **val_metrics}
        log(metrics, step)
        if ctx.is_main:
            print(f"[radimagenet] epoch {epoch + 1}/{cfg.train.epochs} {summarize(metrics)}", flush=True)
        save_and_report(ctx, cfg, config, model, optimizer, scheduler, epoch, step, manifest, record, metrics)
    return metrics


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, ctx: Context, cfg: PretrainConfig,
                    epoch: int, step: int, log: Callable[[dict[str, float], int], None]) -> tuple[int, dict]:
    """One pass over ``loader``; returns the new global step and the epoch's train metrics."""
    model.train()
    gpu = ctx.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
    loss_sum = torch.zeros((), device=ctx.device)
    window_images, window_start, epoch_images, epoch_start = 0, time.perf_counter(), 0, time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        images = images.to(ctx.device, non_blocking=True,
                           memory_format=torch.channels_last if gpu else torch.contiguous_format)
        labels = labels.to(ctx.device, non_blocking=True)
        with autocast:
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        loss_sum += loss.detach()
        window_images += len(labels)
        epoch_images += len(labels)
        if step % cfg.train.log_every == 0:
            elapsed = time.perf_counter() - window_start
            log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0],
                 "train/images_per_s": window_images * ctx.world_size / max(elapsed, 1e-9)}, step)
            window_images, window_start = 0, time.perf_counter()
        maybe_inject_fault(ctx.rank, epoch, i)
    n = max(len(loader), 1)
    elapsed = time.perf_counter() - epoch_start
    return step, {"train/epoch_loss": float(loss_sum.item()) / n,
                  "train/epoch_images_per_s": epoch_images * ctx.world_size / max(elapsed, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, manifest: dict, cfg: PretrainConfig, ctx: Context, split: str = "val") -> dict:
    """Metrics over the whole ``split``: each rank predicts its share, rank results are gathered so
    every sample counts exactly once, every rank computes the same metrics. ``model`` is the plain
    module (not DDP: ranks may hold different numbers of eval batches)."""
    model.eval()
    gpu = ctx.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
    loader = data.make_loader(manifest, split, batch_size=cfg.train.batch_size, rank=ctx.rank,
                              world_size=ctx.world_size, train=False, num_workers=cfg.data.num_workers,
                              image_size=cfg.data.image_size, channels=cfg.model.in_chans,
                              mean=cfg.data.mean, std=cfg.data.std, with_meta=True)
    logits, labels, modalities = [], [], []
    for images, y, meta in loader:
        images = images.to(ctx.device, memory_format=torch.channels_last if gpu else torch.contiguous_format)
        with autocast:
            logits.append(model(images).float().cpu().numpy())
        labels.append(y.numpy())
        modalities.extend(m.get("modality") for m in meta)
    num_classes = len(manifest["classes"])
    local = (np.concatenate(logits) if logits else np.zeros((0, num_classes), np.float32),
             np.concatenate(labels) if labels else np.zeros(0, np.int64), modalities)
    all_logits, all_labels, all_mods = gather(local, ctx)
    if any(m is None for m in all_mods):
        all_mods = None  # fall back to the class-name prefix
    return classification_metrics(all_logits, all_labels, manifest["classes"], all_mods)


# ---------------------------------------------------------------------------------- pieces


def train_loader(cfg: PretrainConfig, manifest: dict, ctx: Context, epoch: int) -> data.Loader:
    return data.make_loader(manifest, "train", batch_size=cfg.train.batch_size, rank=ctx.rank,
                            world_size=ctx.world_size, epoch=epoch, seed=cfg.train.seed, train=True,
                            num_workers=cfg.data.num_workers, image_size=cfg.data.image_size,
                            channels=cfg.model.in_chans, mean=cfg.data.mean, std=cfg.data.std,
                            shuffle_buffer=cfg.data.shuffle_buffer)


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW; no weight decay on biases and norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr)
    return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps`` (per step)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, steps_per_epoch: int) -> Any:
    warmup = round(cfg.train.warmup_epochs * steps_per_epoch)
    total = cfg.train.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, cfg.train.min_lr_ratio)
    )


def restore(ctx: Context, model, optimizer, scheduler, manifest: dict) -> tuple[int, int]:
    """``(start_epoch, step)`` from the latest checkpoint, or ``(0, 0)``."""
    with ctx.latest_checkpoint() as directory:
        if directory is None:
            return 0, 0
        state = checkpoint.load(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                dataset_digest=str(manifest.get("digest", "")))
    if ctx.is_main:
        print(f"[radimagenet] resumed after epoch {state['epoch'] + 1} (step {state['step']})", flush=True)
    return state["epoch"] + 1, state["step"]


def save_and_report(ctx: Context, cfg: Any, config: dict, model, optimizer, scheduler, epoch: int, step: int,
                    manifest: dict, record, metrics: dict,
                    extra: Callable[[str], None] | None = None) -> None:
    """Rank 0 writes the checkpoint (and ``extra(directory)``'s files); every rank reports (Ray
    Train's report is a barrier). Pretraining and fine-tuning both save through here."""
    name = f"{CHECKPOINT_PREFIX}{epoch:06d}"
    if not ctx.is_main:
        ctx.report(metrics, None, name)
        return
    tmp = tempfile.mkdtemp(prefix="radimagenet-ckpt-")
    try:
        if extra is not None:
            extra(tmp)
        checkpoint.save(tmp, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch, step=step,
                        config=config, dataset_digest=str(manifest.get("digest", "")),
                        run_id=cfg.tracking.run_id, record=record.to_dict(), metrics=metrics)
        ctx.report(metrics, tmp, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gather(local: Any, ctx: Context) -> tuple[np.ndarray, np.ndarray, list]:
    """Concatenate every rank's ``(logits, labels, modalities)`` (each sample counted once)."""
    if ctx.world_size == 1 or not torch.distributed.is_initialized():
        return local
    parts: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(parts, local)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [m for p in parts for m in p[2]])


def metric_logger(cfg: PretrainConfig, ctx: Context) -> Callable[[dict[str, float], int], None]:
    """Rank 0 logs to the MLflow run made by the driver; other ranks (and runs without MLflow) do not.
    An MLflow outage mid-run costs metrics, never the training run."""
    if not ctx.is_main or not cfg.tracking.run_id:
        return lambda metrics, step: None
    uri = tracking.tracking_uri(cfg.tracking.uri)

    def log(metrics: dict[str, float], step: int) -> None:
        try:
            tracking.log_metrics(uri, cfg.tracking.run_id, metrics, step)
        except Exception as exc:  # noqa: BLE001 - keep training; say so
            warnings.warn(f"MLflow logging failed at step {step}: {exc}", stacklevel=2)

    return log


def maybe_inject_fault(rank: int, epoch: int, batch: int) -> None:
    """Test hook: ``RADIMAGENET_FAULT_KILL=rank:epoch:batch`` SIGKILLs that worker once (the marker
    file ``RADIMAGENET_FAULT_MARKER`` records that it happened, so the replacement worker runs on)."""
    spec = os.environ.get("RADIMAGENET_FAULT_KILL")
    marker = os.environ.get("RADIMAGENET_FAULT_MARKER")
    if not spec or not marker or os.path.exists(marker):
        return
    if tuple(int(x) for x in spec.split(":")) == (rank, epoch, batch):
        with open(marker, "w") as f:
            f.write(f"killed rank {rank} epoch {epoch} batch {batch} pid {os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------- contexts


def local_context(cfg: PretrainConfig, checkpoint_root: str | None = None) -> Context:
    """In-process: rank 0 of 1; checkpoints under ``checkpoint_root`` (default
    ``checkpoint.storage_path/run_name``, local or S3)."""
    from radimagenet.train.launch import storage_filesystem

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    fs, root = storage_filesystem(checkpoint_root or cfg.checkpoint.storage_path)
    run_root = root if checkpoint_root else f"{root}/{cfg.tracking.run_name}"
    return Context(device=device, report=_fs_reporter(fs, run_root, cfg.checkpoint.num_to_keep),
                   latest_checkpoint=lambda: _fs_latest(fs, run_root))


def _fs_checkpoints(fs: Any, root: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
    return [f"{root}/{n}" for n in names if fs.get_file_info(f"{root}/{n}/{checkpoint.STATE_FILE}").is_file]


def _fs_reporter(fs: Any, root: str, keep: int) -> Callable[[dict, str | None, str], None]:
    import pyarrow.fs as pafs

    def report(metrics: dict, directory: str | None, name: str) -> None:
        if directory is None:
            return
        target = f"{root}/{name}"
        fs.create_dir(target, recursive=True)
        # state.json last: a checkpoint without it is incomplete and ignored
        for fname in sorted(os.listdir(directory), key=lambda n: n == checkpoint.STATE_FILE):
            pafs.copy_files(os.path.join(directory, fname), f"{target}/{fname}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        for old in _fs_checkpoints(fs, root)[:-keep]:
            fs.delete_dir(old)

    return report


@contextlib.contextmanager
def _fs_latest(fs: Any, root: str) -> Iterator[str | None]:
    import pyarrow.fs as pafs

    found = _fs_checkpoints(fs, root)
    if not found:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="radimagenet-restore-")
    try:
        pafs.copy_files(found[-1], tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ray_context() -> Context:
    """Inside a Ray Train worker: rank/world from ``ray.train.get_context()``, DDP via
    ``ray.train.torch.prepare_model``, checkpoints through ``ray.train.report``/``get_checkpoint``."""
    import ray.train
    import ray.train.torch

    rctx = ray.train.get_context()

    def report(metrics: dict, directory: str | None, name: str) -> None:
        ckpt = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)

    @contextlib.contextmanager
    def latest() -> Iterator[str | None]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    return Context(rank=rctx.get_world_rank(), world_size=rctx.get_world_size(),
                   device=ray.train.torch.get_device(), prepare_model=ray.train.torch.prepare_model,
                   report=report, latest_checkpoint=latest)


def ray_train_fn(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs."""
    train_loop(config, ray_context())
