"""Training checkpoints: one directory, no pickle for the weights.

    <dir>/model.safetensors   the unwrapped model's state dict (safetensors: loadable without pickle)
    <dir>/train_state.pt      optimizer + scheduler state (tensors and plain containers only;
                              read back with ``torch.load(weights_only=True)``)
    <dir>/state.json          epoch (completed), step, resolved config, dataset digest, MLflow run id,
                              backbone record, the epoch's metrics

Ray Train uploads the directory to ``storage_path/run_name/checkpoint_*`` (see ``launch.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any

MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
STATE_FILE = "state.json"


def unwrap(model: Any) -> Any:
    """The plain module under DDP and/or torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_weights(path: str, model: Any, metadata: dict[str, str] | None = None) -> None:
    """The model's state dict as safetensors (tensors made contiguous, shared storage cloned)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    save_file(state, path, metadata=metadata)


def load_weights(path: str, model: Any, strict: bool = True) -> Any:
    """Load safetensors weights into ``model`` (no pickle involved); returns the load result."""
    from safetensors.torch import load_file

    return unwrap(model).load_state_dict(load_file(path, device="cpu"), strict=strict)


def save(
    directory: str,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    epoch: int,
    step: int,
    config: dict[str, Any],
    dataset_digest: str,
    run_id: str,
    record: dict[str, Any],
    metrics: dict[str, float],
) -> str:
    """Write a checkpoint for the state *after* ``epoch`` (0-based) into ``directory``."""
    import torch

    os.makedirs(directory, exist_ok=True)
    save_weights(os.path.join(directory, MODEL_FILE), model, {"arch": record.get("arch", "")})
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        os.path.join(directory, TRAIN_STATE_FILE),
    )
    state = {
        "epoch": epoch,
        "step": step,
        "config": config,
        "dataset_digest": dataset_digest,
        "mlflow_run_id": run_id,
        "record": record,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f, indent=2)
    return directory


def read_state(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, STATE_FILE)) as f:
        return json.load(f)


def load(directory: str, *, model: Any, optimizer: Any = None, scheduler: Any = None,
         dataset_digest: str | None = None) -> dict[str, Any]:
    """Restore model (and optimizer/scheduler when given) from ``directory``; returns ``state.json``.

    Refuses a checkpoint of another dataset: resuming on different data is never what was meant.
    """
    import torch

    from radimagenet.errors import ConfigError

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
    return state
