"""The typed fine-tuning config and the checks of a dataset against the task, before anything runs.

    cfg = load_config(FinetuneConfig, "pipelines/demo-finetune.yaml", ["backbone=radimagenet-demo@candidate"])
    spec = check_task(resolve(cfg, manifest), manifest)     # binary | multiclass | segmentation

Defaults follow the RadImageNet recipe: global average pooling, dropout 0.5, softmax head, every layer
trainable, Adam at a constant lr 1e-4, the dataset's patient-wise train/val/test splits, and the epoch
with the lowest validation loss kept. ``train.freeze=all|top10|none`` and ``train.lr`` span the
paper's 24-setting grid. The engine's other settings (``train.schedule``, ``train.warmup_epochs``,
``train.compile``, ``train.accum_steps``) work here as in pretraining.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Literal

from radimagenet.dataset.format import is_multi_label, is_unlabeled, manifest_uri
from radimagenet.errors import ConfigError
from radimagenet.train.config import (
    CheckpointSection,
    RegistrySection,
    ScalingSection,
    TrackingSection,
    TrainSection,
    train_problems,
)

# the validation metrics that can pick the kept epoch (and stop early), per task
MONITORS = {"classification": ("val/loss", "val/auc", "val/accuracy"), "segmentation": ("val/loss", "val/dice")}
NEGATIVE_NAMES = ("normal", "negative", "healthy", "no_finding", "none")
THRESHOLD_RULE = re.compile(r"youden|closest|(sensitivity|specificity)=(0(\.\d+)?|1(\.0+)?)")

# ------------------------------------------------------------------------------------------- config


@dataclass
class DataSection:
    manifest: str = ""  # s3://BUCKET/PREFIX (or its manifest.json), made by `radimagenet ingest`
    image_size: int | None = None  # None: the dataset's image size (the ingest's --image-size)
    num_workers: int = 1  # loader processes per training worker
    shuffle_buffer: int = 512  # ignored since training reads the sample-level epoch order (data/order.py); kept so configs load
    mean: tuple[float, ...] | None = None  # None: the backbone's own (scratch: 0.5; imagenet: timm's)
    std: tuple[float, ...] | None = None
    # train on a stratified, patient-level share of the training split (seeded by train.seed): label-efficiency curves
    label_fraction: float = 1.0
    # init=backbone: compare the backbone's pretraining data with the test split (shared images, patients):
    # warn (warning + tag radimagenet.overlap), error (refuse to start) or off
    overlap: Literal["warn", "error", "off"] = "warn"


@dataclass
class ModelSection:
    arch: str = "resnet50"  # for init=scratch|imagenet (a registered backbone brings its own)
    in_chans: int = 3  # for init=scratch (imagenet: 3; a backbone: its record's)
    drop_rate: float = 0.5  # dropout before the softmax head (RadImageNet recipe)
    weights_file: str = ""  # init=imagenet: a timm weights file (local or s3://); empty: the HF cache only


@dataclass
class FinetuneTrainSection(TrainSection):
    """The engine's settings with the recipe's defaults, plus which layers train."""

    epochs: int = 30
    batch_size: int = 32  # per worker
    lr: float = 1e-4
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm_bias: bool = True
    schedule: Literal["cosine", "constant"] = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    log_every: int = 10
    freeze: Literal["none", "top10", "all"] = "none"  # all: only the head trains; top10: + last 10 layers
    monitor: str = "val/loss"  # the validation metric that picks the kept epoch (loss: lowest; auc, dice: highest)
    patience: int = 0  # stop after this many epochs without a better train.monitor; 0: train every epoch
    class_weights: Literal["none", "balanced"] = "none"  # balanced: loss weights n / (k * n_class) on train


@dataclass
class EvalSection:
    metrics: Literal["auto", "binary", "multiclass", "multilabel"] = "auto"  # auto: binary for 2 classes,
    # multilabel for a dataset ingested with --multi-label (a sigmoid per label)
    positive_class: str = ""  # binary: empty = the class that is not "normal" (else class 1)
    threshold_rule: str = "youden"  # youden | closest | sensitivity=0.9 | specificity=0.9 (on validation)
    n_boot: int = 1000  # bootstrap resamples for the AUC interval
    gradcam_samples: int = 8  # Grad-CAM overlays logged (0: none)
    gradcam_max_images: int = 256  # test images used for the localisation score
    overlay_samples: int = 8  # segmentation prediction overlays logged
    log_model: bool = True  # log the fine-tuned weights + record as run artifacts
    knn_k: int = 20  # protocol=knn: neighbours that vote


@dataclass
class FinetuneConfig:
    task: Literal["classification", "segmentation"] = "classification"
    # finetune: every layer trains (train.freeze); linear: the linear probe (train.freeze=all, only the head);
    # knn: no training, the test images classified by their nearest training images (tasks/knn.py)
    protocol: Literal["finetune", "linear", "knn"] = "finetune"
    backbone: str = ""  # registry reference: NAME@alias, NAME/VERSION or NAME (latest)
    init: Literal["backbone", "scratch", "imagenet"] = "backbone"
    resolved_backbone: str = ""  # filled by the launcher: NAME/VERSION that every worker loads
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: FinetuneTrainSection = field(default_factory=FinetuneTrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    scaling: ScalingSection = field(default_factory=lambda: ScalingSection(max_failures=1))
    tracking: TrackingSection = field(default_factory=lambda: TrackingSection(experiment="radimagenet-finetune"))
    checkpoint: CheckpointSection = field(default_factory=lambda: CheckpointSection(num_to_keep=1))
    registry: RegistrySection = field(default_factory=RegistrySection)


def validate(cfg: FinetuneConfig, *, need_data: bool = True) -> FinetuneConfig:
    """Check what types cannot; returns ``cfg`` or raises one ConfigError listing every problem
    (``need_data=False``: a config without ``data.manifest`` or ``backbone`` yet, e.g. for ``--print-config``)."""
    problems = _init_problems(cfg, need_data) + train_problems(cfg) + _downstream_problems(cfg, need_data)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _init_problems(cfg: FinetuneConfig, need_data: bool = True) -> list[str]:
    if cfg.init == "backbone" and not cfg.backbone and need_data:
        return ["backbone is required (a registry reference such as radimagenet-resnet50@champion), "
                "or set init=scratch / init=imagenet with model.arch"]
    if cfg.init != "backbone" and cfg.backbone:
        return [f"backbone={cfg.backbone!r} and init={cfg.init} exclude each other: drop one"]
    if cfg.init != "backbone" and not cfg.model.arch:
        return [f"init={cfg.init} needs model.arch"]
    return []


def _downstream_problems(cfg: FinetuneConfig, need_data: bool) -> list[str]:
    e, problems = cfg.eval, []
    if need_data and not cfg.data.manifest:
        problems.append("data.manifest is required (s3://BUCKET/PREFIX of a `radimagenet ingest` dataset)")
    if not THRESHOLD_RULE.fullmatch(e.threshold_rule):
        problems.append(f"eval.threshold_rule {e.threshold_rule!r} is not youden, closest, "
                        "sensitivity=<0..1> or specificity=<0..1>")
    for name in ("mean", "std"):
        values = getattr(cfg.data, name)
        if values is not None and len(values) not in (1, 3):
            problems.append(f"data.{name} needs 1 or 3 values, got {values}")
    checks = [(cfg.data.std is None or all(s > 0 for s in cfg.data.std), f"data.std must be > 0, got {cfg.data.std}"),
              (0 <= cfg.model.drop_rate < 1, f"model.drop_rate must be in [0, 1), got {cfg.model.drop_rate}"),
              (cfg.model.in_chans in (1, 3), f"model.in_chans must be 1 or 3, got {cfg.model.in_chans}"),
              (e.n_boot >= 1, f"eval.n_boot must be >= 1, got {e.n_boot}"),
              (min(e.gradcam_samples, e.gradcam_max_images, e.overlay_samples) >= 0,
               "eval.gradcam_samples, gradcam_max_images and overlay_samples must be >= 0"),
              (cfg.data.image_size is None or cfg.data.image_size >= 16,
               f"data.image_size must be >= 16, got {cfg.data.image_size}"),
              (0 < cfg.data.label_fraction <= 1, f"data.label_fraction must be in (0, 1], got {cfg.data.label_fraction}"),
              (cfg.train.monitor in MONITORS[cfg.task], f"train.monitor must be one of {MONITORS[cfg.task]} for "
               f"task={cfg.task}, got {cfg.train.monitor!r}"),
              (cfg.train.patience >= 0, f"train.patience must be >= 0 (0: no early stopping), got {cfg.train.patience}"),
              (cfg.task == "classification" or cfg.train.class_weights == "none",
               "train.class_weights applies to task=classification only"),
              (cfg.task == "classification" or cfg.protocol == "finetune",
               f"protocol={cfg.protocol} applies to task=classification only"),
              (cfg.protocol != "linear" or cfg.train.freeze in ("none", "all"),
               f"protocol=linear trains only the head (train.freeze=all), not train.freeze={cfg.train.freeze}"),
              (e.knn_k >= 1, f"eval.knn_k must be >= 1, got {e.knn_k}")]
    return problems + [msg for ok, msg in checks if not ok]


def init_name(cfg: FinetuneConfig) -> str:
    """What the model starts from, for names and tables: the backbone reference, ``scratch`` or ``imagenet``."""
    return cfg.backbone if cfg.init == "backbone" else cfg.init


def registry_name(cfg: FinetuneConfig) -> str:
    """``registry.name``, else ``radimagenet-ft-<dataset>-<task>``: the dataset is the last folder of
    ``data.manifest`` (``s3://radimagenet/datasets/lesions`` -> ``radimagenet-ft-lesions-classification``), so
    every fine-tuning on one dataset and task is a version of one registered model."""
    if cfg.registry.name:
        return cfg.registry.name
    parts = manifest_uri(cfg.data.manifest).split("/")
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", parts[-2] if len(parts) > 1 else "").strip("-._") or "dataset"
    return f"radimagenet-ft-{dataset}-{cfg.task}"[:128]


def resolve(cfg: FinetuneConfig, manifest: dict | None = None) -> FinetuneConfig:
    """A copy with derived defaults: manifest URI, image size (the dataset's), run name, registry name."""
    validate(cfg)
    data = dataclasses.replace(cfg.data, manifest=manifest_uri(cfg.data.manifest))
    if data.image_size is None and manifest is not None:
        data = dataclasses.replace(data, image_size=int(manifest["image_size"]))
    cfg = protocol_settings(cfg)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", init_name(cfg)).strip("-") or "model"
    run_name = cfg.tracking.run_name or f"finetune-{cfg.task}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(cfg, data=data, tracking=dataclasses.replace(cfg.tracking, run_name=run_name[:128]),
                               registry=dataclasses.replace(cfg.registry, name=registry_name(cfg)))


def protocol_settings(cfg: FinetuneConfig) -> FinetuneConfig:
    """What ``protocol`` implies: ``linear`` trains only the head (``train.freeze=all``); ``knn`` trains nothing,
    so it logs and registers no model and draws no Grad-CAM (its "model" is a vote among training images)."""
    if cfg.protocol == "linear":
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, freeze="all"))
    if cfg.protocol == "knn":
        return dataclasses.replace(
            cfg, eval=dataclasses.replace(cfg.eval, log_model=False, gradcam_samples=0, gradcam_max_images=0),
            registry=dataclasses.replace(cfg.registry, register=False))
    return cfg


# ------------------------------------------------------------------------------------ task checks


@dataclass(frozen=True)
class TaskSpec:
    """What the dataset and config make of the task."""

    task: str  # classification | segmentation
    mode: str  # binary | multiclass | multilabel | segmentation
    classes: tuple[str, ...]
    positive: int  # binary: the positive class id (else -1)


def positive_index(classes: list[str], wanted: str = "") -> int:
    """The positive class of a binary task: ``wanted``, else the one class that is not "normal"-like, else 1."""
    if wanted:
        if wanted not in classes:
            raise ConfigError(f"eval.positive_class {wanted!r} is not a class of the dataset: {classes}")
        return classes.index(wanted)
    negative = [i for i, c in enumerate(classes) if c.rsplit("/", 1)[-1].lower() in NEGATIVE_NAMES]
    return 1 - negative[0] if len(negative) == 1 else 1


def check_task(cfg: FinetuneConfig, manifest: dict) -> TaskSpec:
    """Does the dataset fit the task? A ConfigError names the mismatch (pure: reads only the manifest)."""
    classes, where = list(manifest["classes"]), manifest.get("uri") or cfg.data.manifest
    if is_unlabeled(manifest):
        raise ConfigError(f"dataset {where} is unlabeled (ingest --unlabeled): fine-tuning needs labels; pretrain "
                          "a backbone on it (objective=dino or mae) and fine-tune that on a labelled dataset")
    _check_splits(manifest, where, cfg.task)
    if cfg.task == "segmentation":
        if not manifest.get("has_masks"):
            raise ConfigError(f"task=segmentation needs lesion masks but dataset {where} has none "
                              "(ingest it with a labels.csv that has a mask column)")
        return TaskSpec("segmentation", "segmentation", tuple(classes), -1)
    if len(classes) < 2:
        raise ConfigError(f"classification needs at least 2 classes; dataset {where} has {len(classes)}: {classes}")
    if is_multi_label(manifest) or cfg.eval.metrics == "multilabel":
        if cfg.protocol == "knn":
            raise ConfigError(f"protocol=knn votes one label per image; dataset {where} is multi-label: use "
                              "protocol=linear")
        return _check_multilabel(cfg, manifest, where, classes)
    mode = cfg.eval.metrics if cfg.eval.metrics != "auto" else ("binary" if len(classes) == 2 else "multiclass")
    if mode == "binary" and len(classes) != 2:
        raise ConfigError(f"eval.metrics=binary needs exactly 2 classes; dataset {where} has {len(classes)}: "
                          f"{classes} (use eval.metrics=multiclass)")
    for split in ("val", "test"):
        present = [c for c, n in manifest["splits"][split].get("classes", {}).items() if n > 0]
        if len(present) < 2:
            raise ConfigError(f"the {split} split of {where} holds only {present or 'no'} class(es): "
                              "AUC and the validation threshold need at least 2")
    positive = positive_index(classes, cfg.eval.positive_class) if mode == "binary" else -1
    return TaskSpec("classification", mode, tuple(classes), positive)


def _check_multilabel(cfg: FinetuneConfig, manifest: dict, where: str, classes: list[str]) -> TaskSpec:
    """A multi-label dataset takes ``eval.metrics`` auto or multilabel; val and test each need a label
    that some images have and others lack (else no AUC is defined)."""
    if not is_multi_label(manifest):
        raise ConfigError(f"eval.metrics=multilabel needs a multi-label dataset (ingest --multi-label); {where} "
                          "gives each image one label")
    if cfg.eval.metrics not in ("auto", "multilabel"):
        raise ConfigError(f"dataset {where} is multi-label (several labels per image): eval.metrics must be auto "
                          f"or multilabel, not {cfg.eval.metrics}")
    if cfg.train.label_smoothing:
        raise ConfigError("train.label_smoothing applies to the softmax head; a multi-label dataset trains a "
                          "sigmoid per label: set train.label_smoothing=0")
    for split in ("val", "test"):
        n = manifest["splits"][split]["samples"]
        usable = [c for c, k in manifest["splits"][split].get("classes", {}).items() if 0 < k < n]
        if not usable:
            raise ConfigError(f"the {split} split of {where} has no label that some images have and others lack: "
                              "no AUC is defined")
    return TaskSpec("classification", "multilabel", tuple(classes), -1)


def _check_splits(manifest: dict, where: str, task: str) -> None:
    splits = manifest.get("splits", {})
    missing = [s for s in ("train", "val", "test") if not splits.get(s, {}).get("samples")]
    if missing:
        raise ConfigError(f"fine-tuning needs patient-wise train, val and test splits; dataset {where} has no "
                          f"samples in {missing} (splits: {sorted(splits)}); re-ingest with --split fractions")


def check_masks(manifest: dict, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """The first sample of each split must have a mask in its image's pixel grid (a wrong ingest fails here,
    not an hour into training; the loader checks every later sample)."""
    from radimagenet.dataset.reader import iterate_samples

    for split in splits:
        sample = next(iterate_samples(manifest, split), None)
        if sample is None or sample["mask"] is None:
            continue
        if sample["mask"].shape != sample["image"].shape:
            raise ConfigError(
                f"dataset {manifest.get('uri')}: sample {sample['key']} of split {split!r} has a mask of "
                f"size {sample['mask'].shape} but its image is {sample['image'].shape}: masks must be in "
                "the image's pixel grid (re-ingest the dataset)")
