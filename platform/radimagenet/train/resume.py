"""Where a training run stands, as a checkpoint records it and a resumed run continues from it.

    resume = restore(ctx, model, optimizer, scheduler, digest)     # Resume(start_epoch, step, best, progress)
    save(ctx, model, optimizer, scheduler, best, state, name)        # rank 0 writes, every rank reports

A checkpoint is written after every epoch and, with ``checkpoint.every_steps``, every that many optimizer
steps inside one. Each carries its epoch's :class:`EpochProgress`; a mid-epoch one (``mid_epoch``) is
resumed from it: the loader's *position* (the
samples of the epoch order consumed by all ranks together, :mod:`radimagenet.data.order`), which alone lets a
resumed run continue with the very next sample on any number of workers, and the epoch's accounting so far
(samples, key digest, loss sums), so the epoch's figures are the same as an uninterrupted epoch's.

The epoch digest is order-independent: the sum, modulo 2**64, of a 64-bit hash of each sample key seen
(:func:`key_digest`); any two runs that trained on the same samples in an epoch log the same
``data.epoch_<e>_digest``, whatever their order, their worker counts and their interruptions, and a
repeated or skipped sample changes it.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from radimagenet.train import checkpoint
from radimagenet.train.context import gather

if TYPE_CHECKING:
    from torch import nn

    from radimagenet.train.context import Context

DIGEST_MOD = 1 << 64


def key_digest(keys: Iterable[str]) -> int:
    """The order-independent digest of sample keys: the sum of their 64-bit BLAKE2b hashes mod 2**64."""
    total = 0
    for key in keys:
        total += int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return total % DIGEST_MOD


def digest_text(value: int) -> str:
    """A digest as 16 hex digits (what the ``data.epoch_<e>_digest`` tag holds)."""
    return f"{value % DIGEST_MOD:016x}"


@dataclass
class EpochProgress:
    """An epoch's accounting, over every rank: the loader position reached, the samples trained on,
    their key digest, the sum of the batch losses and the number of (non-empty) batches."""

    epoch: int
    position: int = 0
    samples: int = 0
    digest: int = 0
    loss_sum: float = 0.0
    batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"digest": digest_text(self.digest)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochProgress:
        return cls(int(data["epoch"]), int(data["position"]), int(data["samples"]), int(data["digest"], 16),
                   float(data["loss_sum"]), int(data["batches"]))


def combine(parts: list[EpochProgress], position: int) -> EpochProgress:
    """The ranks' accounting summed (each rank's ``parts`` entry counts what it trained on), at ``position``."""
    return EpochProgress(parts[0].epoch, position, sum(p.samples for p in parts),
                         sum(p.digest for p in parts) % DIGEST_MOD, sum(p.loss_sum for p in parts),
                         sum(p.batches for p in parts))


def combined(mine: EpochProgress, loss_sum: Any, ctx: Context, position: int) -> EpochProgress:
    """Every rank's accounting summed (``mine`` with this rank's loss sum so far), at ``position``."""
    local = EpochProgress(mine.epoch, position, mine.samples, mine.digest, mine.loss_sum + float(loss_sum),
                          mine.batches)
    return combine(gather(local, ctx), position)


@dataclass
class Best:
    """The epoch where the task's selection metric was best, and its weights (CPU copies)."""

    epoch: int = -1  # -1: none yet (the metric was never finite)
    value: float = math.nan
    state: dict[str, Any] | None = None


@dataclass
class Resume:
    """What :func:`restore` found: the epoch to run next, the optimizer step, the best epoch so far, the
    progress inside ``start_epoch`` (None: it starts at its beginning), and the samples per optimizer step
    of the run that wrote the checkpoint (0: unknown, or no checkpoint)."""

    start_epoch: int = 0
    step: int = 0
    best: Best = field(default_factory=Best)
    progress: EpochProgress | None = None
    samples_per_step: int = 0

    @property
    def found(self) -> bool:
        """Whether a checkpoint was restored (one after an epoch, or one inside an epoch)."""
        return self.start_epoch > 0 or self.progress is not None


def restore(ctx: Context, model: nn.Module, optimizer: Any, scheduler: Any, digest: str) -> Resume:
    """The run's state from its latest checkpoint (mid-epoch or end of epoch), or a fresh start."""
    with ctx.latest_checkpoint() as directory:
        if directory is None:
            return Resume()
        state, best_state = checkpoint.load(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                            dataset_digest=digest)
    info = state.get("best")
    if info is None and "best_epoch" in state.get("metrics", {}):  # checkpoints written before the engine
        info = {"epoch": int(state["metrics"]["best_epoch"]) - 1, "value": state["metrics"].get("val/best_loss")}
    info = info or {}
    value = info.get("value")
    best = Best(int(info.get("epoch", -1)), math.nan if value is None else float(value), best_state)
    progress = EpochProgress.from_dict(state["progress"]) if state.get("mid_epoch") else None
    start = state["epoch"] if progress else state["epoch"] + 1
    if ctx.is_main:
        where = (f"in epoch {start + 1} at sample {progress.position} of its order" if progress
                 else f"after epoch {start}")
        print(f"[radimagenet] resumed {where} (step {state['step']})", flush=True)
    return Resume(start, int(state["step"]), best, progress, int(state.get("samples_per_step", 0)))


def rescale_schedule(scheduler: Any, optimizer: Any, resume: Resume, steps_per_epoch: int,
                     samples_per_step: int) -> None:
    """After a resume on another number of workers (another global batch): move the per-step learning-rate
    schedule to the step this run's batches would have reached at the same place in the data, so the
    schedule follows epochs, not the old run's step count."""
    position = resume.progress.position if resume.progress else 0
    now = resume.start_epoch * steps_per_epoch + math.ceil(position / samples_per_step)
    scheduler.last_epoch = now
    lrs = [base * fn(now) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def save(ctx: Context, model: nn.Module, optimizer: Any, scheduler: Any, best: Best, state: dict[str, Any],
         name: str) -> None:
    """Rank 0 writes the checkpoint ``name`` (see :mod:`radimagenet.train.checkpoint`); every rank reports
    (Ray Train's report is a barrier)."""
    if not ctx.is_main:
        ctx.report(state["metrics"], None, name)
        return
    tmp = tempfile.mkdtemp(prefix="radimagenet-ckpt-")
    try:
        checkpoint.save(tmp, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                        best_weights=best.state)
        ctx.report(state["metrics"], tmp, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
