"""Where the engine runs: a :class:`Context` says rank, world size, device, how to wrap the model for
DDP, how to report metrics + a checkpoint and where the latest checkpoint is.

    ctx = local_context(cfg)        # in-process: rank 0 of 1, checkpoints under checkpoint.storage_path
    ctx = ray_context()             # inside a Ray Train worker

The engine does not care which of the two it gets, so the same function runs in a notebook, a test
and a cluster job.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from radimagenet.io.storage import arrow_filesystem
from radimagenet.train import checkpoint


def _dist() -> Any:
    import torch.distributed

    return torch.distributed


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


@dataclass
class Context:
    """What the engine needs from its runner (Ray Train worker or plain process)."""

    rank: int = 0
    world_size: int = 1
    device: Any = field(default_factory=_cpu)  # torch.device
    prepare_model: Callable[[Any], Any] = lambda m: m  # DDP wrapping under Ray Train
    # report(metrics, checkpoint_dir or None, checkpoint_name): every rank calls it once per epoch
    report: Callable[[dict[str, float], str | None, str], None] = lambda m, d, n: None
    # latest_checkpoint(): a context manager yielding a local directory, or None when starting fresh
    latest_checkpoint: Callable[[], contextlib.AbstractContextManager[str | None]] = (
        lambda: contextlib.nullcontext(None)
    )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def local_context(cfg: Any, checkpoint_root: str | None = None) -> Context:
    """In-process: rank 0 of 1; checkpoints under ``checkpoint_root`` (default
    ``checkpoint.storage_path/run_name``, local or S3). ``cfg`` is any task config."""
    import torch

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    fs, root = arrow_filesystem(checkpoint_root or cfg.checkpoint.storage_path)
    run_root = root if checkpoint_root else f"{root}/{cfg.tracking.run_name}"
    return Context(device=device, report=checkpoint.fs_reporter(fs, run_root, cfg.checkpoint.num_to_keep),
                   latest_checkpoint=lambda: checkpoint.fs_latest(fs, run_root))


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
        # each rank downloads into a folder of its own: Checkpoint.as_directory() shares one folder per node
        # between the ranks, and one rank deleting it as another read it broke a 4-worker resume (file read failed)
        import pyarrow.fs

        ckpt = ray.train.get_checkpoint()
        if ckpt is None or isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
            yield None if ckpt is None else ckpt.path  # a local checkpoint is read where it is
            return
        tmp = tempfile.mkdtemp(prefix="radimagenet-restore-")
        try:
            yield ckpt.to_directory(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return Context(rank=rctx.get_world_rank(), world_size=rctx.get_world_size(),
                   device=ray.train.torch.get_device(), prepare_model=ray.train.torch.prepare_model,
                   report=report, latest_checkpoint=latest)


def gather(local: Any, ctx: Context) -> list[Any]:
    """Every rank's ``local`` object, in rank order (``[local]`` on one rank)."""
    if ctx.world_size == 1 or not _dist().is_initialized():
        return [local]
    parts: list[Any] = [None] * ctx.world_size
    _dist().all_gather_object(parts, local)
    return parts


def reduce_sum(values: Any, ctx: Context) -> Any:
    """``values`` (a tensor) summed over every rank."""
    if ctx.world_size > 1 and _dist().is_initialized():
        values = values.clone()
        _dist().all_reduce(values)
    return values


def broadcast_buffers(model: Any, ctx: Context) -> None:
    """Every rank takes rank 0's buffers (batch-norm statistics, a DINO centre): after an epoch each rank's
    last forward left its own, and evaluation and the checkpoint must see one model."""
    if ctx.world_size > 1 and _dist().is_initialized():
        for buffer in model.buffers():
            _dist().broadcast(buffer, 0)
