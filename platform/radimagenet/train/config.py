"""The config sections every training task shares (YAML preset + dotted ``key=value`` overrides).

Each task's config (:class:`radimagenet.tasks.pretrain.PretrainConfig`,
:class:`radimagenet.tasks.finetune_config.FinetuneConfig`) is built from these sections, with its own
defaults; :func:`train_problems` checks what the engine relies on, so both tasks check it the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class TrainSection:
    """The engine's settings: epochs, batches, optimizer, per-step schedule, precision and logging."""

    epochs: int = 30
    batch_size: int = 64  # per worker
    lr: float = 0.1  # peak learning rate (after warmup)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 1e-4
    decay_norm_bias: bool = False  # also decay biases and normalisation parameters (one parameter group)
    schedule: Literal["cosine", "constant"] = "cosine"  # per optimizer step, after the warmup
    warmup_epochs: float = 1.0  # linear warmup, in epochs (per step)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    label_smoothing: float = 0.1
    accum_steps: int = 1  # gradient accumulation: batches per optimizer step
    seed: int = 0
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # deterministic kernels (torch.use_deterministic_algorithms; on GPU ops without one warn)
    log_every: int = 20  # optimizer steps between loss/throughput logs


@dataclass
class ScalingSection:
    num_workers: int = 1
    use_gpu: bool = False  # NCCL, bf16 autocast, channels_last
    cpus_per_worker: float = 1.0
    max_failures: int = 3  # worker failures Ray Train recovers from (restart from the last checkpoint)
    # how Ray places the workers: PACK fills a node first; SPREAD / STRICT_SPREAD one worker per node
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


@dataclass
class TrackingSection:
    experiment: str = "radimagenet"
    run_name: str = ""  # empty: <task>-<what>-<time>; the same name resumes the same run
    uri: str = ""  # empty: MLFLOW_TRACKING_URI
    run_id: str = ""  # filled by the launcher; workers log to this run
    parent_run_id: str = ""  # set by `radimagenet compare`: the run is nested under it
    system_metrics_interval: float = 10.0  # seconds between MLflow system/ metrics (CPU, memory, GPU); 0: off


@dataclass
class RegistrySection:
    name: str = ""  # empty: pretrain radimagenet-<arch>; finetune radimagenet-ft-<dataset>-<task>
    alias: str = "candidate"
    register: bool = True  # register the model when the run finishes (finetune: needs eval.log_model)


@dataclass
class CheckpointSection:
    storage_path: str = "s3://radimagenet/checkpoints"  # or a local directory
    num_to_keep: int = 2
    every_steps: int = 0  # also checkpoint every this many optimizer steps inside an epoch (0: at epoch ends only)


@dataclass
class RunResult:
    """What a training driver returns: its MLflow run, whether it resumed one, the final metrics and
    the resolved config (as logged and checkpointed)."""

    run_id: str
    run_name: str
    resumed: bool
    metrics: dict[str, float]
    config: dict[str, Any]


def train_problems(cfg: Any) -> list[str]:
    """What is wrong with the shared sections of a task config (``train``, ``scaling``, ``checkpoint``,
    ``tracking``, ``data``); an empty list when nothing is."""
    t, problems = cfg.train, []
    checks = [
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (t.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}"),
        (0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}"),
        (0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (t.accum_steps >= 1, f"train.accum_steps must be >= 1, got {t.accum_steps}"),
        (t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}"),
        (cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}"),
        (cfg.scaling.num_workers >= 1, f"scaling.num_workers must be >= 1, got {cfg.scaling.num_workers}"),
        (cfg.checkpoint.num_to_keep >= 1, f"checkpoint.num_to_keep must be >= 1, got {cfg.checkpoint.num_to_keep}"),
        (cfg.checkpoint.every_steps >= 0,
         f"checkpoint.every_steps must be >= 0 (0: at epoch ends only), got {cfg.checkpoint.every_steps}"),
        (not cfg.tracking.run_name or RUN_NAME.fullmatch(cfg.tracking.run_name),
         f"tracking.run_name {cfg.tracking.run_name!r} may hold only letters, digits, '.', '_', '-'"),
        (cfg.tracking.system_metrics_interval >= 0,
         f"tracking.system_metrics_interval must be >= 0 (0: off), got {cfg.tracking.system_metrics_interval}"),
    ]
    registry = getattr(cfg, "registry", None)  # pretraining and fine-tuning configs have one
    if registry is not None:
        problems += [f"registry.{key} {value!r} must be letters, digits, '.', '_', '-'"
                     for key, value, needed in (("name", registry.name, False), ("alias", registry.alias, True))
                     if (value or needed) and not RUN_NAME.fullmatch(value)]
    problems += [message for ok, message in checks if not ok]
    return problems
