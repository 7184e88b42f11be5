"""The typed pretraining config (YAML preset + dotted ``key=value`` overrides).

The class count is never configured: it is ``len(manifest["classes"])``. :func:`resolve` fills the
defaults that depend on other values (registry name, run name, image size) so the *resolved* config is
what travels to workers, MLflow and checkpoints.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from radimagenet.errors import ConfigError


@dataclass
class DataSection:
    manifest: str = ""  # s3://BUCKET/PREFIX/manifest.json (or the dataset prefix)
    image_size: int | None = None  # None: the dataset's image size
    num_workers: int = 2  # loader processes per training worker
    shuffle_buffer: int = 1000
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)


@dataclass
class ModelSection:
    arch: str = "resnet50"  # resnet50 | densenet121 | inception_v3 | inception_resnet_v2 | any timm name
    in_chans: int = 3
    drop_rate: float = 0.0


@dataclass
class TrainSection:
    epochs: int = 30
    batch_size: int = 64  # per worker
    lr: float = 0.1  # peak learning rate (after warmup)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    label_smoothing: float = 0.1
    seed: int = 0
    compile: bool = False
    log_every: int = 20  # steps between throughput/loss logs


@dataclass
class ScalingSection:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 3  # worker failures Ray Train recovers from (restart from the last checkpoint)


@dataclass
class TrackingSection:
    experiment: str = "radimagenet-pretrain"
    run_name: str = ""  # empty: pretrain-<arch>-<timestamp>; the same name resumes the same run
    uri: str = ""  # empty: MLFLOW_TRACKING_URI
    run_id: str = ""  # filled by the launcher; workers log to this run


@dataclass
class RegistrySection:
    name: str = ""  # empty: radimagenet-<arch>
    alias: str = "candidate"
    register: bool = True


@dataclass
class CheckpointSection:
    storage_path: str = "s3://radimagenet/checkpoints"  # or a local directory
    num_to_keep: int = 2


@dataclass
class PretrainConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Check values that types alone cannot; returns ``cfg`` unchanged or raises ConfigError."""
    problems = []
    if not cfg.data.manifest:
        problems.append("data.manifest is required (s3://BUCKET/PREFIX/manifest.json)")
    if cfg.train.epochs < 1:
        problems.append(f"train.epochs must be >= 1, got {cfg.train.epochs}")
    if cfg.train.batch_size < 1:
        problems.append(f"train.batch_size must be >= 1, got {cfg.train.batch_size}")
    if cfg.train.lr <= 0:
        problems.append(f"train.lr must be > 0, got {cfg.train.lr}")
    if cfg.train.weight_decay < 0:
        problems.append(f"train.weight_decay must be >= 0, got {cfg.train.weight_decay}")
    if cfg.train.warmup_epochs < 0:
        problems.append(f"train.warmup_epochs must be >= 0, got {cfg.train.warmup_epochs}")
    if not 0 <= cfg.train.label_smoothing < 1:
        problems.append(f"train.label_smoothing must be in [0, 1), got {cfg.train.label_smoothing}")
    if cfg.data.image_size is not None and cfg.data.image_size < 8:
        problems.append(f"data.image_size must be >= 8, got {cfg.data.image_size}")
    if cfg.data.num_workers < 0:
        problems.append(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    if cfg.model.in_chans < 1:
        problems.append(f"model.in_chans must be >= 1, got {cfg.model.in_chans}")
    for name in ("mean", "std"):
        values = getattr(cfg.data, name)
        if len(values) not in (1, cfg.model.in_chans):
            problems.append(f"data.{name} needs 1 or model.in_chans={cfg.model.in_chans} values, got {values}")
    if any(s <= 0 for s in cfg.data.std):
        problems.append(f"data.std must be > 0, got {cfg.data.std}")
    if cfg.scaling.num_workers < 1:
        problems.append(f"scaling.num_workers must be >= 1, got {cfg.scaling.num_workers}")
    if cfg.checkpoint.num_to_keep < 1:
        problems.append(f"checkpoint.num_to_keep must be >= 1, got {cfg.checkpoint.num_to_keep}")
    if not cfg.model.arch:
        problems.append("model.arch is required")
    if cfg.tracking.run_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", cfg.tracking.run_name):
        problems.append(f"tracking.run_name {cfg.tracking.run_name!r} may hold only letters, digits, '.', '_', '-'")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def manifest_uri(uri: str) -> str:
    """Accept the dataset prefix or the manifest itself: always return the manifest's URI."""
    return uri if uri.endswith(".json") else uri.rstrip("/") + "/manifest.json"


def resolve(cfg: PretrainConfig, manifest: dict[str, Any] | None = None) -> PretrainConfig:
    """A copy with derived defaults filled in (registry name, run name, image size)."""
    validate(cfg)
    data = dataclasses.replace(cfg.data, manifest=manifest_uri(cfg.data.manifest))
    if data.image_size is None and manifest is not None:
        data = dataclasses.replace(data, image_size=int(manifest["image_size"]))
    arch = cfg.model.arch
    run_name = cfg.tracking.run_name or f"pretrain-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(
        cfg,
        data=data,
        tracking=dataclasses.replace(cfg.tracking, run_name=run_name),
        registry=dataclasses.replace(cfg.registry, name=cfg.registry.name or f"radimagenet-{arch}"),
    )
