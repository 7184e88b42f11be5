"""The one training loop: every task (pretraining, classification, segmentation) runs through :func:`fit`.

    metrics = fit(task, cfg, config, manifest, ctx)     # in a Ray Train worker, a test or a notebook

A :class:`Task` says what differs between tasks (model, loss, per-sample evaluation outputs, metrics,
the artifacts after training); the engine does the rest once: device placement (channels_last and
bf16 autocast on GPU), DDP wrapping, ``torch.compile``, the optimizer (no weight decay on biases and
norms), a per-step schedule (linear warmup, then cosine or constant), gradient accumulation, the
checkpoint every epoch (and every ``checkpoint.every_steps`` inside one) and the resume from the latest
one with the very next sample (:mod:`radimagenet.train.resume`), keeping the best epoch's weights when the
task selects one, metric reduction across ranks, and logging. It reads top to bottom; checkpointing,
logging and evaluation are calls. This module holds the package's only ``.backward()``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from radimagenet.data.order import rng_seed
from radimagenet.errors import ConfigError
from radimagenet.eval.metrics import summarize
from radimagenet.io import tracking
from radimagenet.train import checkpoint
from radimagenet.train.config import TrainSection
from radimagenet.train.context import broadcast_buffers, gather, reduce_sum
from radimagenet.train.optim import build_optimizer, build_scheduler, optimizer_steps
from radimagenet.train.resume import (
    DIGEST_MOD,
    Best,
    EpochProgress,
    combined,
    digest_text,
    key_digest,
    rescale_schedule,
    restore,
    save,
)

if TYPE_CHECKING:
    from torch import nn

    from radimagenet.data.loader import Batch, Loader
    from radimagenet.train.context import Context

Logger = Callable[..., None]  # log(metrics, step, tags=None)


class Task(Protocol):
    """What a task tells the engine (see :mod:`radimagenet.tasks`)."""

    name: str  # pretrain | classification | segmentation: for log lines
    select_metric: str | None  # e.g. "val/loss" (lowest kept) or "val/auc" (highest); None: the last epoch
    patience: int  # stop after this many epochs without a better select_metric; 0: never stop early

    def build_model(self) -> tuple[nn.Module, Any]:
        """``(model, record)``: the model with its head (and frozen layers), and its preprocessing record."""

    def loader(self, split: str, ctx: Context, *, epoch: int = 0, train: bool = False, start: int = 0) -> Loader:
        """The batches ``ctx.rank`` reads from ``split`` (train: this epoch's shuffled share from global
        position ``start``, every sample once: the last batch may be short or empty)."""

    def data_metrics(self) -> dict[str, float]:
        """What the run trains on, logged once at the start (e.g. ``train/n_images``, ``train/n_patients``)."""

    def train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode (e.g. keeping frozen normalisation layers in eval mode)."""

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training loss of a batch (a scalar)."""

    def outputs(self, outputs: torch.Tensor, batch: Batch) -> dict[str, np.ndarray]:
        """Per-sample evaluation arrays of a batch (e.g. logits, loss, label), aligned with ``batch.keys``."""

    def metrics(self, split: str, out: Outputs) -> dict[str, float]:
        """A split's metrics from its gathered per-sample outputs."""

    # optional: ``after_step(progress)``, called after every optimizer step with the share of the run's steps
    # done (from the learning-rate schedule's step, so a resumed run continues it): a teacher's EMA update

    def finish(self, model: nn.Module, record: Any, ctx: Context, selected: dict[str, float]) -> dict[str, float]:
        """After the last epoch (best weights loaded): the test report and artifacts, which include
        ``selected`` (``best_epoch``, ``val/best_loss`` when the task selects epochs); ``{}`` for none."""


@dataclass
class Outputs:
    """A split's per-sample outputs gathered from every rank, each sample once, sorted by key."""

    keys: list[str]
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------------------------- the loop


def fit(task: Task, cfg: Any, config: dict[str, Any], manifest: dict, ctx: Context) -> dict[str, float]:
    """Train ``task`` for ``cfg.train.epochs`` (resuming from the latest checkpoint, also one written inside
    an epoch); returns the task's final metrics, or the last epoch's when the task reports none."""
    torch.manual_seed(cfg.train.seed)
    if getattr(cfg.train, "deterministic", False):  # process-wide, as torch has it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses determinism without it
        torch.use_deterministic_algorithms(True, warn_only=ctx.gpu)  # GPU: ops with no such kernel warn
        torch.backends.cudnn.benchmark = False
    model, record = task.build_model()
    model = model.to(ctx.device, memory_format=torch.channels_last if ctx.gpu else torch.contiguous_format)
    optimizer = build_optimizer(model, cfg.train)
    steps_per_epoch = optimizer_steps(len(task.loader("train", ctx, train=True)), cfg.train.accum_steps)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch)
    digest = str(manifest.get("digest", ""))
    resume = restore(ctx, model, optimizer, scheduler, digest)
    samples_per_step = ctx.world_size * cfg.train.batch_size * cfg.train.accum_steps
    if resume.samples_per_step and resume.samples_per_step != samples_per_step:  # another number of workers
        rescale_schedule(scheduler, optimizer, resume, steps_per_epoch, samples_per_step)
    step, best = resume.step, resume.best
    log = metric_logger(cfg.tracking, ctx)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    resumed = {"train/resumed_from_epoch": resume.start_epoch} if resume.found else {}
    if resume.progress:
        resumed["train/resumed_at_sample"] = resume.progress.position
    log({"model/trainable_params": trainable, "model/total_params": sum(p.numel() for p in model.parameters()),
         **task.data_metrics(), **resumed}, step)

    def state(epoch: int, step: int, metrics: dict[str, float], progress: EpochProgress, mid: bool) -> dict[str, Any]:
        return {"epoch": epoch, "step": step, "config": config, "dataset_digest": digest,
                "mlflow_run_id": cfg.tracking.run_id, "record": record.to_dict(),
                "metrics": {k: float(v) for k, v in metrics.items()},
                "best": {"epoch": best.epoch, "value": best.value} if best.epoch >= 0 else None,
                "samples_per_step": samples_per_step, "world_size": ctx.world_size,
                "mid_epoch": mid, "progress": progress.to_dict()}

    def mid_epoch(step: int, progress: EpochProgress) -> None:
        metrics = {"epoch": progress.epoch, "step": step, "position": progress.position}
        save(ctx, model, optimizer, scheduler, best, state(progress.epoch, step, metrics, progress, True),
             checkpoint.mid_name(progress.epoch, step))

    train_model = ctx.prepare_model(model)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    every = int(getattr(getattr(cfg, "checkpoint", None), "every_steps", 0) or 0)
    metrics: dict[str, float] = {}
    stopped: dict[str, float] = {}
    for epoch in range(resume.start_epoch, cfg.train.epochs):
        if task.patience and epoch - 1 - best.epoch >= task.patience:  # also when a stopped run is resumed
            stopped = {"early_stop_epoch": epoch}
            if ctx.is_main:
                print(f"[radimagenet] {task.name}: no better {task.select_metric} for {task.patience} epoch(s) "
                      f"after epoch {best.epoch + 1}; stopping after epoch {epoch}", flush=True)
            break
        progress = resume.progress if resume.progress and resume.progress.epoch == epoch else EpochProgress(epoch)
        loader = task.loader("train", ctx, epoch=epoch, train=True, start=progress.position)
        step, train_metrics, progress = train_one_epoch(
            train_model, task, loader, optimizer, scheduler, ctx, cfg.train, epoch, step, log,
            progress=progress, every_steps=every, on_checkpoint=mid_epoch,
            total_steps=cfg.train.epochs * steps_per_epoch)
        broadcast_buffers(model, ctx)
        _, val_metrics = evaluate(model, task, "val", ctx)
        best = select(best, task.select_metric, val_metrics, epoch, model)
        metrics = {"epoch": epoch + 1, "step": step, **train_metrics, **val_metrics, **best_metrics(best, task)}
        log(metrics, step, {f"data.epoch_{epoch + 1}_digest": digest_text(progress.digest)})
        if ctx.is_main:
            print(f"[radimagenet] {task.name} epoch {epoch + 1}/{cfg.train.epochs} {summarize(metrics)}", flush=True)
        save(ctx, model, optimizer, scheduler, best, state(epoch, step, metrics, progress, False),
             checkpoint.name(epoch))

    if best.state is not None:
        model.load_state_dict(best.state)
    final = task.finish(model, record, ctx, best_metrics(best, task) | stopped)
    if not final:
        return metrics
    log(final, step)
    ctx.report(final, None, "final")
    return final


def train_one_epoch(model: nn.Module, task: Task, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    scheduler: Any, ctx: Context, train: TrainSection, epoch: int, step: int,
                    log: Logger, *, progress: EpochProgress | None = None, every_steps: int = 0,
                    on_checkpoint: Callable[[int, EpochProgress], None] | None = None, total_steps: int = 0,
                    ) -> tuple[int, dict[str, float], EpochProgress]:
    """One pass over ``loader`` (from ``progress.position`` of the epoch, the accounting so far in
    ``progress``); returns the new optimizer step, the epoch's train metrics (loss, throughput and
    ``data/epoch_samples``, over every rank) and its :class:`EpochProgress`.

    Every ``every_steps`` optimizer steps (not at the epoch's end) ``on_checkpoint(step, progress)`` runs on
    every rank. A short last batch counts in the gradient by its samples: the rank's mean loss is scaled by
    its share of the step's samples (over its accumulated batches), so an epoch's every sample weighs the
    same; a rank with no sample left (or one) runs a padded batch whose padding adds nothing. Random draws
    on the device (dropout, self-supervised views) are seeded per batch from ``(seed, epoch, position,
    rank)``, so a run resumed on the same number of workers draws what an uninterrupted one would.
    ``total_steps``: the run's optimizer steps (default: ``train.epochs`` epochs like this loader's), the
    denominator of the ``progress`` a task's ``after_step`` receives.
    """
    task.train_mode(model)
    fmt = torch.channels_last if ctx.gpu else torch.contiguous_format
    batches = len(loader)  # type: ignore[arg-type]
    progress = progress or EpochProgress(epoch)
    mine = progress if ctx.is_main else EpochProgress(epoch)  # rank 0 carries what the checkpoint recorded
    position = positions(loader, ctx.world_size, progress.position)
    after_step = getattr(task, "after_step", None)  # e.g. a DINO teacher's EMA update
    # the run's optimizer steps as the schedule counts them (a resumed epoch's loader holds only what is left)
    total_steps = max(1, total_steps or train.epochs * optimizer_steps(batches, train.accum_steps))
    loss_sum, seen = torch.zeros((), device=ctx.device), 0
    window_images, window_start, epoch_start = 0, time.perf_counter(), time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), device=ctx.device)  # the mean loss of the batches of one optimizer step
    for i, batch in enumerate(loader):
        begin, end = position(i), position(i + 1)
        torch.manual_seed(rng_seed(train.seed, epoch, begin, ctx.rank))
        n = len(batch)
        images = batch.images.to(ctx.device, non_blocking=True, memory_format=fmt)
        if n < 2:  # nothing (or one image: batch norm needs two) left for this rank in the epoch's last step
            images = pad(images, 2)
        first = i // train.accum_steps * train.accum_steps  # the step's first batch
        group = min(train.accum_steps, batches - first)  # batches in this step
        step_samples = position(first + group) - position(first)  # the step's samples, all ranks
        full = step_samples == group * len(images) * ctx.world_size and n == len(images)
        last_micro = (i + 1) % train.accum_steps == 0 or i + 1 == batches
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(ctx):
                out = model(images)
                loss = task.loss(out if len(out) == n else out[:n], batch) if n else out.float().sum() * 0.0
            share = 1 / group if full else n * ctx.world_size / max(step_samples, 1)  # this batch's weight
            (loss if share == 1 else loss / group if full else loss * share).backward()
        if n:
            loss_sum += loss.detach()
            mine.batches += 1
        step_loss += loss.detach() * share
        mine.samples += n
        mine.digest = (mine.digest + key_digest(batch.keys)) % DIGEST_MOD
        window_images += n
        seen += n
        if last_micro:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if after_step is not None:
                after_step(min(1.0, scheduler.last_epoch / total_steps))
            step += 1
            if step % train.log_every == 0:
                elapsed = time.perf_counter() - window_start
                log({"train/loss": step_loss.item(), "train/lr": scheduler.get_last_lr()[0],
                     "train/images_per_s": window_images * ctx.world_size / max(elapsed, 1e-9)}, step)
                window_images, window_start = 0, time.perf_counter()
            step_loss = torch.zeros((), device=ctx.device)
            if every_steps and on_checkpoint and step % every_steps == 0 and i + 1 < batches:
                on_checkpoint(step, combined(mine, loss_sum, ctx, end))
        maybe_inject_fault(ctx.rank, epoch, i)
    total = combined(mine, loss_sum, ctx, position(batches))
    elapsed = time.perf_counter() - epoch_start
    rate = float(reduce_sum(torch.tensor(float(seen), device=ctx.device), ctx)) / max(elapsed, 1e-9)
    return step, {"train/epoch_loss": total.loss_sum / max(total.batches, 1), "train/epoch_images_per_s": rate,
                  "data/epoch_samples": float(total.samples)}, total


def positions(loader: Any, world_size: int, start: int) -> Callable[[int], int]:
    """``position(i)``: the epoch's global position after ``i`` batches of ``loader`` (a plain list of
    batches, as in tests and benchmarks: ``world_size`` equal batches per step from ``start``)."""
    if hasattr(loader, "position"):
        return loader.position
    sizes = np.concatenate([[0], np.cumsum([len(b) for b in loader])]) * world_size + start
    return lambda i: int(sizes[i])


def pad(images: torch.Tensor, n: int) -> torch.Tensor:
    """``images`` made ``n`` long by repeating them (zeros when there are none): padding for a short batch."""
    if len(images) == 0:
        return images.new_zeros((n, *images.shape[1:]))
    return images[torch.arange(n, device=images.device) % len(images)]


@torch.no_grad()
def predict(model: nn.Module, task: Task, split: str, ctx: Context) -> Outputs:
    """The task's per-sample outputs over the whole ``split``: each rank predicts its share, the shares
    are gathered so every sample counts once, sorted by key (the same on every rank and world size).
    ``model`` is the plain module (not DDP: ranks may hold different numbers of eval batches)."""
    model.eval()
    fmt = torch.channels_last if ctx.gpu else torch.contiguous_format
    keys: list[str] = []
    parts: dict[str, list[np.ndarray]] = {}
    for batch in task.loader(split, ctx, train=False):
        with autocast(ctx):
            out = model(batch.images.to(ctx.device, memory_format=fmt))
        for name, values in task.outputs(out.float(), batch).items():
            parts.setdefault(name, []).append(np.asarray(values))
        keys.extend(batch.keys)
    local = (keys, {name: np.concatenate(values) for name, values in parts.items()})
    shares = gather(local, ctx)
    keys = [k for share in shares for k in share[0]]
    names = sorted({name for share in shares for name in share[1]})
    arrays = {n: np.concatenate([share[1][n] for share in shares if n in share[1]]) for n in names}
    order = np.argsort(np.asarray(keys), kind="stable")
    return Outputs([keys[i] for i in order], {n: a[order] for n, a in arrays.items()})


def evaluate(model: nn.Module, task: Task, split: str, ctx: Context) -> tuple[Outputs, dict[str, float]]:
    """``(outputs, metrics)`` of ``split`` (every rank gets the same)."""
    out = predict(model, task, split, ctx)
    return out, task.metrics(split, out)


def fit_config(config: dict[str, Any], ctx: Context, config_cls: type,
               make_task: Callable[[Any, dict], Task]) -> dict[str, float]:
    """What a task's ``train_worker`` runs: rebuild the typed config from the plain dict it travelled
    as, load the manifest, make the task and :func:`fit` it."""
    from radimagenet.config import from_dict
    from radimagenet.dataset.format import load_manifest

    cfg = from_dict(config_cls, config)
    manifest = load_manifest(cfg.data.manifest)
    return fit(make_task(cfg, manifest), cfg, config, manifest, ctx)


# ---------------------------------------------------------------------------------- pieces


def autocast(ctx: Context) -> Any:
    """bf16 autocast on GPU, nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if ctx.gpu else contextlib.nullcontext()


def lower_is_better(metric: str) -> bool:
    """Losses and calibration errors improve downwards; AUC, accuracy, Dice upwards."""
    return metric.rsplit("/", 1)[-1].endswith(("loss", "ece"))


def select(best: Best, metric: str | None, val: dict[str, float], epoch: int, model: nn.Module) -> Best:
    """The new best epoch when ``val[metric]`` improved (see :func:`lower_is_better`), else ``best``."""
    if metric is None:
        return best
    if metric not in val:
        raise ConfigError(f"train.monitor={metric} is not a validation metric of this task; it reports "
                          f"{', '.join(sorted(k for k in val if '/' in k))}")
    value = float(val[metric])
    if not math.isfinite(value):
        return best
    if best.epoch >= 0 and not (value < best.value if lower_is_better(metric) else value > best.value):
        return best
    return Best(epoch, float(value), {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


def best_metrics(best: Best, task: Task) -> dict[str, float]:
    """``best_epoch`` and ``val/best_<metric>`` (e.g. ``val/best_loss``) when the task selects epochs."""
    if task.select_metric is None:
        return {}
    if best.epoch < 0:  # the metric was never finite
        return {"best_epoch": 0}
    split, _, name = task.select_metric.partition("/")
    return {"best_epoch": best.epoch + 1, f"{split}/best_{name}": best.value}


def metric_logger(tracking_cfg: Any, ctx: Context) -> Logger:
    """Rank 0 logs to the MLflow run made by the driver; other ranks (and runs without MLflow) do not.
    An MLflow outage mid-run costs metrics, never the training run."""
    if not ctx.is_main or not tracking_cfg.run_id:
        return lambda metrics, step, tags=None: None
    uri = tracking.tracking_uri(tracking_cfg.uri)

    def log(metrics: dict[str, float], step: int, tags: dict[str, str] | None = None) -> None:
        try:
            tracking.log_metrics(uri, tracking_cfg.run_id, metrics, step, tags)
        except Exception as exc:  # noqa: BLE001 - keep training; say so
            warnings.warn(f"MLflow logging failed at step {step}: {exc}", stacklevel=2)

    return log


def maybe_inject_fault(rank: int, epoch: int, batch: int) -> None:
    """Test hook: ``RADIMAGENET_FAULT_KILL=rank:epoch:batch`` SIGKILLs that worker once (``...:batch:pause``:
    it stops there instead, for the test to kill the driver); the marker file ``RADIMAGENET_FAULT_MARKER``
    records that it happened, so the replacement worker runs on."""
    spec = os.environ.get("RADIMAGENET_FAULT_KILL")
    marker = os.environ.get("RADIMAGENET_FAULT_MARKER")
    if not spec or not marker or os.path.exists(marker):
        return
    parts = spec.split(":")
    if tuple(int(x) for x in parts[:3]) == (rank, epoch, batch):
        with open(marker, "w") as f:
            f.write(f"stopped rank {rank} epoch {epoch} batch {batch} pid {os.getpid()}\n")
        if parts[3:] == ["pause"]:
            time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)
