"""Pretraining: supervised (the RadImageNet recipe: a timm backbone learns the dataset's classes) or,
with ``objective=dino|mae``, self-supervised (:mod:`radimagenet.tasks.ssl`, no labels needed); the final
checkpoint becomes a registered backbone version.

    result = pretrain(load_config(PretrainConfig, "pipelines/demo-pretrain.yaml", ["train.epochs=2"]))

The class count is never configured: it is ``len(manifest["classes"])``. :func:`resolve` fills the
defaults that depend on other values (registry name, run name, image size), so the *resolved* config is
what travels to workers, MLflow and checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radimagenet.dataset.format import is_multi_label, is_unlabeled, manifest_uri
from radimagenet.errors import ConfigError
from radimagenet.models.ssl_config import OBJECTIVES, SSLSection, ssl_problems
from radimagenet.train.config import (
    CheckpointSection,
    RegistrySection,
    RunResult,
    ScalingSection,
    TrackingSection,
    TrainSection,
    train_problems,
)


@dataclass
class DataSection:
    manifest: str = ""  # s3://BUCKET/PREFIX/manifest.json (or the dataset prefix)
    image_size: int | None = None  # None: the dataset's image size
    num_workers: int = 2  # loader processes per training worker
    shuffle_buffer: int = 1000  # ignored since training reads the sample-level epoch order (data/order.py); kept so configs load
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)


@dataclass
class ModelSection:
    arch: str = "resnet50"  # resnet50 | densenet121 | inception_v3 | inception_resnet_v2 | any timm name
    in_chans: int = 3
    drop_rate: float = 0.0


@dataclass
class PretrainConfig:
    objective: str = "supervised"  # supervised | dino | mae (self-supervised: radimagenet.models.ssl)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: TrackingSection = field(default_factory=lambda: TrackingSection(experiment="radimagenet-pretrain"))
    registry: RegistrySection = field(default_factory=RegistrySection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    ssl: SSLSection = field(default_factory=SSLSection)


def validate(cfg: PretrainConfig, *, need_data: bool = True) -> PretrainConfig:
    """Check values that types alone cannot; returns ``cfg`` unchanged or raises one ConfigError
    (``need_data=False``: a config without ``data.manifest`` yet, e.g. for ``--print-config``)."""
    problems = train_problems(cfg) + ssl_problems(cfg.ssl)
    if cfg.objective not in OBJECTIVES:
        problems.append(f"objective must be one of {', '.join(OBJECTIVES)}, got {cfg.objective!r}")
    if need_data and not cfg.data.manifest:
        problems.append("data.manifest is required (s3://BUCKET/PREFIX/manifest.json)")
    if cfg.data.image_size is not None and cfg.data.image_size < 8:
        problems.append(f"data.image_size must be >= 8, got {cfg.data.image_size}")
    if cfg.model.in_chans < 1:
        problems.append(f"model.in_chans must be >= 1, got {cfg.model.in_chans}")
    for name in ("mean", "std"):
        values = getattr(cfg.data, name)
        if len(values) not in (1, cfg.model.in_chans):
            problems.append(f"data.{name} needs 1 or model.in_chans={cfg.model.in_chans} values, got {values}")
    if any(s <= 0 for s in cfg.data.std):
        problems.append(f"data.std must be > 0, got {cfg.data.std}")
    if not cfg.model.arch:
        problems.append("model.arch is required")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def resolve(cfg: PretrainConfig, manifest: dict[str, Any] | None = None) -> PretrainConfig:
    """A copy with derived defaults filled in (registry name, run name, image size)."""
    validate(cfg)
    data = dataclasses.replace(cfg.data, manifest=manifest_uri(cfg.data.manifest))
    if data.image_size is None and manifest is not None:
        data = dataclasses.replace(data, image_size=int(manifest["image_size"]))
    arch = cfg.model.arch
    run_name = cfg.tracking.run_name or f"pretrain-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(
        cfg, data=data, tracking=dataclasses.replace(cfg.tracking, run_name=run_name),
        registry=dataclasses.replace(cfg.registry, name=cfg.registry.name or f"radimagenet-{arch}"),
    )


# ------------------------------------------------------------------------------------ the task


@dataclass
class PretrainTask:
    """Classification of the dataset's classes with label smoothing; validation: loss, accuracy, top-5,
    macro AUC and accuracy per modality. No epoch selection: the last epoch is the backbone."""

    cfg: PretrainConfig
    manifest: dict
    name: str = "pretrain"
    select_metric: str | None = None
    patience: int = 0

    def build_model(self) -> tuple[Any, Any]:
        from radimagenet.models.factory import create_model
        from radimagenet.models.record import make_record

        cfg, manifest = self.cfg, self.manifest
        record = make_record(cfg.model.arch, manifest, in_chans=cfg.model.in_chans, image_size=cfg.data.image_size,
                             mean=cfg.data.mean, std=cfg.data.std)
        return create_model(cfg.model.arch, len(manifest["classes"]), cfg.model.in_chans, cfg.model.drop_rate,
                            img_size=record.input_size[1]), record

    def loader(self, split: str, ctx: Any, *, epoch: int = 0, train: bool = False, start: int = 0) -> Any:
        from radimagenet.data.loader import make_loader

        cfg = self.cfg
        return make_loader(self.manifest, split, batch_size=cfg.train.batch_size, rank=ctx.rank,
                           world_size=ctx.world_size, epoch=epoch, seed=cfg.train.seed, train=train,
                           num_workers=cfg.data.num_workers, image_size=cfg.data.image_size,
                           channels=cfg.model.in_chans, mean=cfg.data.mean, std=cfg.data.std,
                           shuffle_buffer=cfg.data.shuffle_buffer, with_meta=not train, start=start, drop_last=False)

    def data_metrics(self) -> dict[str, float]:
        return {}

    def train_mode(self, model: Any) -> None:
        model.train()

    def loss(self, outputs: Any, batch: Any) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(outputs.float(), batch.labels.to(outputs.device, non_blocking=True),
                               label_smoothing=self.cfg.train.label_smoothing)

    def outputs(self, outputs: Any, batch: Any) -> dict[str, np.ndarray]:
        meta = [m or {} for m in (batch.meta or [{}] * len(batch))]
        return {"logits": outputs.cpu().numpy(), "label": batch.labels.numpy(),
                "modality": np.asarray([m.get("modality") or "" for m in meta], dtype=object),
                "patient": np.asarray([m.get("patient") or k for m, k in zip(meta, batch.keys, strict=True)],
                                      dtype=object)}

    def metrics(self, split: str, out: Any) -> dict[str, float]:
        from radimagenet.eval.metrics import classification_metrics

        modalities = list(out.arrays["modality"]) if len(out) else []
        metrics = classification_metrics(out.arrays["logits"], out.arrays["label"], self.manifest["classes"],
                                         None if not modalities or "" in modalities else modalities, prefix=split)
        return metrics | ({f"{split}/n_patients": float(len(set(out.arrays["patient"])))} if len(out) else {})

    def finish(self, model: Any, record: Any, ctx: Any, selected: dict[str, float]) -> dict[str, float]:
        return {}  # the driver registers the final checkpoint


def train_worker(config: dict[str, Any], ctx: Any) -> dict[str, float]:
    """Pretrain on one worker (rank ``ctx.rank``): the function every Ray Train worker runs."""
    from radimagenet.tasks.ssl import SSLTask
    from radimagenet.train.engine import fit_config

    def make_task(cfg: PretrainConfig, manifest: dict) -> Any:
        task = PretrainTask(cfg, manifest)
        return task if cfg.objective == "supervised" else SSLTask(cfg, manifest, task)

    return fit_config(config, ctx, PretrainConfig, make_task)


# ------------------------------------------------------------------------------------ the driver


@dataclass
class PretrainResult(RunResult):
    registry_name: str = ""
    version: str | None = None  # the registered backbone version


def preflight(cfg: PretrainConfig) -> tuple[PretrainConfig, dict, str]:
    """Check everything that can be checked before training; returns (resolved cfg, manifest, uri)."""
    from radimagenet.io import tracking
    from radimagenet.models.factory import check_arch
    from radimagenet.train.launch import prepare_data

    cfg, manifest = prepare_data(cfg, resolve)
    if cfg.objective == "supervised" and is_unlabeled(manifest):
        raise ConfigError(f"dataset {cfg.data.manifest} has no labels: supervised pretraining needs classes; "
                          "pretrain it self-supervised (objective=dino or objective=mae)")
    if cfg.objective == "supervised" and is_multi_label(manifest):
        raise ConfigError(f"dataset {cfg.data.manifest} is multi-label (several labels per image): supervised "
                          "pretraining trains one softmax over the classes; fine-tune on it instead "
                          "(`radimagenet finetune`)")
    check_arch(cfg.model.arch)
    uri = tracking.tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    return cfg, manifest, uri


def pretrain(cfg: PretrainConfig, *, in_process: bool = False) -> PretrainResult:
    """Train (or resume) ``cfg`` in one MLflow run and register the final checkpoint as a backbone."""
    from radimagenet.io.storage import arrow_filesystem
    from radimagenet.tasks.register import register_backbone
    from radimagenet.train import checkpoint
    from radimagenet.train.launch import launch, tracked_run

    cfg, manifest, uri = preflight(cfg)
    tags = {"radimagenet.kind": "pretrain", "radimagenet.arch": cfg.model.arch, "radimagenet.objective": cfg.objective}
    with tracked_run(cfg, uri, manifest, tags, "pretrain") as run:
        cfg = run.cfg
        out = launch(train_worker, cfg, run.config, in_process=in_process, what="pretraining")
        if in_process:
            fs, root = arrow_filesystem(cfg.checkpoint.storage_path)
            found = checkpoint.list_checkpoints(fs, f"{root}/{cfg.tracking.run_name}")
            metrics, ckpt = out, ((fs, found[-1]) if found else None)
        else:
            metrics = dict(out.metrics or {})
            ckpt = (out.checkpoint.filesystem, out.checkpoint.path) if out.checkpoint is not None else None
        version = None
        if cfg.registry.register:  # the checkpoint's metrics also cover a re-run that had nothing left to train
            version, metrics = register_backbone(cfg, uri, run.run_id, ckpt, metrics, manifest)
    return PretrainResult(run.run_id, cfg.tracking.run_name, run.resumed, metrics, run.config,
                          cfg.registry.name, version)
