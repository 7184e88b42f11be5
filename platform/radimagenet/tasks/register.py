"""A finished run becomes a registered version: pretraining's final checkpoint a backbone, a fine-tuning
run's ``model/`` artifacts a fine-tuned model; weights + record + config + model card
(:func:`radimagenet.models.card.model_card`), packaged as an MLflow pyfunc model
(:func:`radimagenet.models.registry.register`). The driver registers once, after the run finished;
a re-run of a finished job finds its version (same run, same ``step`` tag) instead of adding one."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import yaml

from radimagenet.config import to_dict
from radimagenet.io import tracking
from radimagenet.models import registry
from radimagenet.models.bundle import read_record
from radimagenet.models.card import CARD_FILE, model_card
from radimagenet.models.record import BackboneRecord
from radimagenet.models.weights import MODEL_FILE, load_state, save_state
from radimagenet.tasks.leakage import OVERLAP_TAG
from radimagenet.train import checkpoint
from radimagenet.train.launch import TrainingError


def register_backbone(cfg: Any, uri: str, run_id: str, ckpt: tuple[Any, str] | None,
                      metrics: dict, manifest: dict | None = None) -> tuple[str, dict]:
    """Turn the final checkpoint (``(pyarrow filesystem, path)``) into a registered backbone version
    (alias ``registry.alias``) with its card (``manifest``: the pretraining dataset's); returns
    ``(version, the checkpoint's metrics)``."""
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
        if record.objective == "supervised":
            shutil.copy(os.path.join(local, MODEL_FILE), os.path.join(out, MODEL_FILE))
        else:  # a self-supervised network: register its backbone (the DINO teacher, the masked-image encoder)
            from radimagenet.models.ssl import backbone_state

            save_state(os.path.join(out, MODEL_FILE), backbone_state(load_state(os.path.join(local, MODEL_FILE))))
        with open(os.path.join(out, tracking.RECORD_FILE), "w") as f:
            f.write(record.to_json())
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(state["config"], f, sort_keys=False)
        with open(os.path.join(out, CARD_FILE), "w") as f:
            f.write(model_card(record, name=cfg.registry.name, kind="backbone", config=state["config"],
                               manifest=manifest, metrics=final, run_id=run_id))
        version = registry.register(uri, run_id, out, cfg.registry.name, cfg.registry.alias,
                                    _tags(record, cfg, state, final), _description(record, cfg, final))
        return version, final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tags(record: BackboneRecord, cfg: Any, state: dict, final: dict[str, float]) -> dict[str, str]:
    """What `registry list` shows without downloading anything."""
    return {
        "arch": record.arch, "objective": record.objective, "in_chans": str(record.in_chans), "input_size": "x".join(map(str, record.input_size)),
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


def register_finetuned(cfg: Any, uri: str, run_id: str, manifest: dict, tags: dict[str, str],
                       metrics: dict[str, float]) -> str | None:
    """Register the run's ``model/`` artifacts (rank 0's best weights and record) as a version of
    ``registry.name`` (a ``finetuned`` registered model, alias ``registry.alias``): the record gets the
    test metrics and its lineage (the run, the backbone version it started from, the datasets' digests),
    the folder ``config.yaml`` and the card. ``tags``: the run's (backbone, overlap). None when
    ``eval.log_model`` is off (no weights to register)."""
    from radimagenet.tasks.downstream import MODEL_DIR

    if not cfg.eval.log_model:
        print("[radimagenet] eval.log_model=false: the fine-tuned model is not registered", file=sys.stderr)
        return None
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    run = tracking.get_run(uri, run_id)
    step = str(int(run.data.metrics.get("step", 0)))  # the weights' training step: a resume that trains on adds one
    existing = tracking.registered_version(uri, cfg.registry.name, run_id, step)
    if existing is not None:  # a re-run of a finished run: nothing new to register
        tracking.set_alias(uri, cfg.registry.name, existing, cfg.registry.alias)
        return existing
    with tempfile.TemporaryDirectory(prefix="radimagenet-register-") as tmp:
        local = tracking.download_run_artifacts(uri, run_id, MODEL_DIR, tmp)
        record = read_record(local)
        lineage = {"run_id": run_id, "run_name": cfg.tracking.run_name, "registry_name": cfg.registry.name,
                   "init": cfg.init, "backbone": tags.get("radimagenet.backbone", cfg.init),
                   "backbone_dataset_digest": tags.get("radimagenet.backbone_dataset_digest", ""),
                   "dataset_digest": str(manifest.get("digest", "")), "dataset_uri": cfg.data.manifest}
        record.metrics, record.source = final, {**lineage, "init_record": record.source.get("init_record", {})}
        with open(os.path.join(local, tracking.RECORD_FILE), "w") as f:
            f.write(record.to_json())
        with open(os.path.join(local, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        examples = [f"runs:/{run_id}/{p}" for p in tracking.list_run_artifacts(
            uri, run_id, "overlays" if record.task == "segmentation" else "gradcam")]
        with open(os.path.join(local, CARD_FILE), "w") as f:
            f.write(model_card(record, name=cfg.registry.name, kind="finetuned", config=to_dict(cfg), manifest=manifest,
                               metrics=final, tags=tags, examples=examples, run_id=run_id))
        version_tags = {
            "task": record.task, "arch": record.arch, "input_size": "x".join(map(str, record.input_size)),
            "num_classes": str(record.num_classes), "run_name": cfg.tracking.run_name, "step": step,
            **{k: str(v)[:5000] for k, v in lineage.items() if k not in ("run_id", "run_name", "registry_name")},
            **({"overlap": tags[OVERLAP_TAG]} if tags.get(OVERLAP_TAG) else {}),
            **{k: f"{v:.4f}" for k, v in final.items() if k.startswith("test/")}}
        return registry.register(uri, run_id, local, cfg.registry.name, cfg.registry.alias, version_tags,
                                 _finetuned_description(record, cfg, lineage, final), kind="finetuned")


def _finetuned_description(record: BackboneRecord, cfg: Any, lineage: dict[str, str], final: dict[str, float]) -> str:
    nan = float("nan")
    score = (f"test Dice {final.get('test/dice', nan):.4f}" if record.task == "segmentation" else
             f"test AUC {final.get('test/auc', nan):.4f} (95% CI {final.get('test/auc_ci_low', nan):.4f}-"
             f"{final.get('test/auc_ci_high', nan):.4f})")
    return (f"{record.arch} fine-tuned for {record.task} of {record.num_classes} classes on dataset "
            f"{lineage['dataset_digest']} from {lineage['backbone']}; {score}. Research use only, not for diagnosis. "
            f"Model card: radimagenet registry show {cfg.registry.name}/<version>.")
