"""Training checkpoints: one directory, no pickle for the weights.

    <dir>/model.safetensors   the unwrapped model's state dict (safetensors: loadable without pickle)
    <dir>/best.safetensors    the weights of the best epoch so far (tasks that select one)
    <dir>/train_state.pt      optimizer + scheduler state (tensors and plain containers only;
                              read back with ``torch.load(weights_only=True)``)
    <dir>/state.json          written last: epoch, step, resolved config, dataset digest, MLflow run id,
                              model record, metrics, the best epoch; a mid-epoch checkpoint also the
                              epoch's progress (loader position, samples, key digest: train/resume.py)

A checkpoint goes to ``storage_path/run_name/checkpoint_epoch-NNNNNN`` (after epoch NNNNNN, 0-based) or,
inside an epoch (``checkpoint.every_steps``), ``checkpoint_epoch-NNNNNN-step-SSSSSSSSS`` (epoch NNNNNN in
progress, after optimizer step SSSSSSSSS; it sorts before that epoch's end): through Ray Train's report
on a cluster, through :func:`fs_reporter` in-process. A directory without ``state.json`` is incomplete
and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from radimagenet.errors import ConfigError
from radimagenet.models.weights import MODEL_FILE, load_state, load_weights, save_state, save_weights

BEST_FILE = "best.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
STATE_FILE = "state.json"
PREFIX = "checkpoint_epoch-"


def name(epoch: int) -> str:
    """The directory name of the checkpoint written after ``epoch`` (0-based)."""
    return f"{PREFIX}{epoch:06d}"


def mid_name(epoch: int, step: int) -> str:
    """The directory name of a checkpoint written inside ``epoch`` (0-based), after optimizer step ``step``."""
    return f"{PREFIX}{epoch:06d}-step-{step:09d}"


def order_key(base_name: str) -> tuple[int, int, int]:
    """Sort key of checkpoint directory names, oldest first: a mid-epoch checkpoint comes after the end of
    the previous epoch and before the end of its own."""
    epoch, _, step = base_name[len(PREFIX):].partition("-step-")
    return (int(epoch), 0, int(step)) if step else (int(epoch), 1, 0)


def save(directory: str, *, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
         best_weights: dict[str, Any] | None = None) -> str:
    """Write a checkpoint into ``directory``: weights, optimizer/scheduler, then ``state.json``
    (``state`` holds epoch, step, config, dataset_digest, mlflow_run_id, record, metrics, best)."""
    import torch

    os.makedirs(directory, exist_ok=True)
    save_weights(os.path.join(directory, MODEL_FILE), model, {"arch": str(state.get("record", {}).get("arch", ""))})
    if best_weights is not None:
        save_state(os.path.join(directory, BEST_FILE), best_weights)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               os.path.join(directory, TRAIN_STATE_FILE))
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f, indent=2)
    return directory


def read_state(directory: str) -> dict[str, Any]:
    """The checkpoint's ``state.json``."""
    with open(os.path.join(directory, STATE_FILE)) as f:
        return json.load(f)


def load(directory: str, *, model: Any, optimizer: Any = None, scheduler: Any = None,
         dataset_digest: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model (and optimizer/scheduler when given) from ``directory``; returns ``(state.json,
    best weights or None)``. Refuses a checkpoint of another dataset: resuming on different data is
    never what was meant."""
    import torch

    state = read_state(directory)
    if dataset_digest is not None and state.get("dataset_digest") != dataset_digest:
        raise ConfigError(
            f"checkpoint in {directory} was trained on dataset {state.get('dataset_digest')}, "
            f"not {dataset_digest}: use a new tracking.run_name"
        )
    load_weights(os.path.join(directory, MODEL_FILE), model)
    if optimizer is not None or scheduler is not None:
        train_state = torch.load(os.path.join(directory, TRAIN_STATE_FILE), map_location="cpu", weights_only=True)
        if optimizer is not None:
            optimizer.load_state_dict(train_state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(train_state["scheduler"])
    best_path = os.path.join(directory, BEST_FILE)
    return state, (load_state(best_path) if os.path.exists(best_path) else None)


# ----------------------------------------------------------------- checkpoints on a filesystem


def list_checkpoints(fs: Any, root: str) -> list[str]:
    """The complete checkpoints under ``root`` (a pyarrow filesystem path), oldest first."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(PREFIX)),
                   key=order_key)
    return [f"{root}/{n}" for n in names if fs.get_file_info(f"{root}/{n}/{STATE_FILE}").is_file]


def fs_reporter(fs: Any, root: str, keep: int) -> Callable[[dict, str | None, str], None]:
    """``report(metrics, directory, name)`` that copies a checkpoint directory to ``root/name``
    (``state.json`` last) and keeps the newest ``keep``; what an in-process run uses instead of Ray's."""
    import pyarrow.fs as pafs

    def report(metrics: dict, directory: str | None, name: str) -> None:
        if directory is None:
            return
        target = f"{root}/{name}"
        fs.create_dir(target, recursive=True)
        for fname in sorted(os.listdir(directory), key=lambda n: n == STATE_FILE):
            pafs.copy_files(os.path.join(directory, fname), f"{target}/{fname}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        for old in list_checkpoints(fs, root)[:-keep]:
            fs.delete_dir(old)

    return report


@contextlib.contextmanager
def fs_latest(fs: Any, root: str) -> Iterator[str | None]:
    """The newest complete checkpoint under ``root`` as a local directory (deleted afterwards), or None."""
    import pyarrow.fs as pafs

    found = list_checkpoints(fs, root)
    if not found:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="radimagenet-restore-")
    try:
        pafs.copy_files(found[-1], tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
