"""A finished pretraining checkpoint becomes a registered backbone version: weights + record + config,
packaged as an MLflow pyfunc model (:func:`radimagenet.models.registry.register`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import yaml

from radimagenet.io import tracking
from radimagenet.models import registry
from radimagenet.models.record import BackboneRecord
from radimagenet.models.weights import MODEL_FILE
from radimagenet.train import checkpoint
from radimagenet.train.launch import TrainingError


def register_backbone(cfg: Any, uri: str, run_id: str, ckpt: tuple[Any, str] | None,
                      metrics: dict) -> tuple[str, dict]:
    """Turn the final checkpoint (``(pyarrow filesystem, path)``) into a registered backbone version
    (alias ``registry.alias``); returns ``(version, the checkpoint's metrics)``."""
    import pyarrow.fs as pafs

    if ckpt is None:
        raise TrainingError(f"run {cfg.tracking.run_name!r} produced no checkpoint to register")
    fs, path = ckpt
    tmp = tempfile.mkdtemp(prefix="radimagenet-register-")
    try:
        local = os.path.join(tmp, "ckpt")
        os.makedirs(local)
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        state = checkpoint.read_state(local)
        final = {k: float(v) for k, v in (state.get("metrics") or metrics).items() if isinstance(v, int | float)}
        record = BackboneRecord.from_dict(state["record"])
        record.metrics = final
        record.source = {"run_id": run_id, "run_name": cfg.tracking.run_name, "registry_name": cfg.registry.name,
                         "epochs": state["epoch"] + 1, "checkpoint": f"{path}"}
        out = os.path.join(tmp, "backbone")
        os.makedirs(out)
        shutil.copy(os.path.join(local, MODEL_FILE), os.path.join(out, MODEL_FILE))
        with open(os.path.join(out, tracking.RECORD_FILE), "w") as f:
            f.write(record.to_json())
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(state["config"], f, sort_keys=False)
        version = registry.register(uri, run_id, out, cfg.registry.name, cfg.registry.alias,
                                    _tags(record, cfg, state, final), _description(record, cfg, final))
        return version, final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tags(record: BackboneRecord, cfg: Any, state: dict, final: dict[str, float]) -> dict[str, str]:
    """What `registry list` shows without downloading anything."""
    return {
        "arch": record.arch, "in_chans": str(record.in_chans), "input_size": "x".join(map(str, record.input_size)),
        "mean": json.dumps(list(record.mean)), "std": json.dumps(list(record.std)),
        "interpolation": record.interpolation, "num_classes": str(record.num_classes),
        "dataset_digest": record.dataset_digest, "dataset_uri": cfg.data.manifest, "run_name": cfg.tracking.run_name,
        "epochs": str(state["epoch"] + 1), "step": str(state["step"]),
        **{k: f"{v:.4f}" for k, v in final.items() if k.startswith("val/")},
    }


def _description(record: BackboneRecord, cfg: Any, final: dict[str, float]) -> str:
    return (
        f"{record.arch} pretrained on dataset {record.dataset_digest} ({record.num_classes} classes), "
        f"input {record.in_chans}x{record.input_size[1]}x{record.input_size[2]}, grey replicated, "
        f"mean {list(record.mean)} std {list(record.std)} on [0,1] pixels; "
        f"val accuracy {final.get('val/accuracy', float('nan')):.4f}, AUC {final.get('val/auc', float('nan')):.4f}. "
        f"Load with radimagenet.backbones.load('{cfg.registry.name}/<version>')."
    )
