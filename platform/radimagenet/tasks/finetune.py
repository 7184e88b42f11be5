"""Downstream fine-tuning: classification or segmentation from a registered backbone, scratch or ImageNet.

    cfg = load_config(FinetuneConfig, "pipelines/demo-finetune.yaml", ["backbone=radimagenet-demo@candidate"])
    result = finetune(cfg)                       # Ray Train (scaling.num_workers) or in_process=True
    result.metrics["test_auc"], result.run_id

Defaults follow the RadImageNet recipe: global average pooling, dropout 0.5, softmax head, every layer
trainable, Adam at lr 1e-4, the dataset's patient-wise train/val/test splits, and the epoch with the
lowest validation loss kept (its weights are restored before testing). ``train.freeze=all|top10|none``
and ``train.lr`` span the paper's 24-setting grid.

The same worker function runs in-process or on every Ray Train worker (the :class:`~radimagenet.train.engine.Context`
of pretraining): each epoch trains, evaluates the validation split (every rank predicts its share, the
results are gathered) and reports a checkpoint (current + best weights), so a failed worker resumes.
After the last epoch the best weights are tested; rank 0 logs the report (AUC + bootstrap CI, accuracy,
sensitivity/specificity at the validation-chosen threshold; or Dice), figures, Grad-CAM overlays,
localisation scores, per-sample predictions (``predictions/test.csv``) and the fine-tuned weights.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from radimagenet.config import flatten, from_dict, to_dict
from radimagenet.errors import ConfigError
from radimagenet.io import tracking
from radimagenet.train.config import CheckpointSection, ScalingSection, manifest_uri

if TYPE_CHECKING:
    import torch
    from torch import nn

    from radimagenet.models.factory import BackboneRecord
    from radimagenet.train.engine import Context

NEGATIVE_NAMES = ("normal", "negative", "healthy", "no_finding", "none")
BEST_FILE = "best.safetensors"
PREDICTIONS_FILE = "predictions/test.csv"
REPORT_FILE = "report/test_report.json"
THRESHOLD_RULE = re.compile(r"youden|closest|(sensitivity|specificity)=(0(\.\d+)?|1(\.0+)?)")

# ------------------------------------------------------------------------------------------- config


@dataclass
class DataSection:
    manifest: str = ""  # s3://BUCKET/PREFIX (or its manifest.json), made by `radimagenet ingest`
    image_size: int | None = None  # None: the dataset's image size (the ingest's --image-size)
    num_workers: int = 1  # loader processes per training worker
    shuffle_buffer: int = 512
    mean: tuple[float, ...] | None = None  # None: the backbone's own (scratch: 0.5; imagenet: timm's)
    std: tuple[float, ...] | None = None


@dataclass
class ModelSection:
    arch: str = "resnet50"  # for init=scratch|imagenet (a registered backbone brings its own)
    in_chans: int = 3  # for init=scratch (imagenet: 3; a backbone: its record's)
    drop_rate: float = 0.5  # dropout before the softmax head (RadImageNet recipe)
    weights_file: str = ""  # init=imagenet: a local timm weights file; empty: look in the HF cache only


@dataclass
class TrainSection:
    epochs: int = 30
    batch_size: int = 32  # per worker
    lr: float = 1e-4
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    freeze: Literal["none", "top10", "all"] = "none"  # all: only the head trains; top10: + last 10 layers
    label_smoothing: float = 0.0
    seed: int = 0
    log_every: int = 10


@dataclass
class EvalSection:
    metrics: Literal["auto", "binary", "multiclass"] = "auto"  # auto: binary for 2 classes
    positive_class: str = ""  # binary: empty = the class that is not "normal" (else class 1)
    threshold_rule: str = "youden"  # youden | closest | sensitivity=0.9 | specificity=0.9 (on validation)
    n_boot: int = 1000  # bootstrap resamples for the AUC interval
    gradcam_samples: int = 8  # Grad-CAM overlays logged (0: none)
    gradcam_max_images: int = 256  # test images used for the localisation score
    overlay_samples: int = 8  # segmentation prediction overlays logged
    log_model: bool = True  # log the fine-tuned weights + record as run artifacts


@dataclass
class TrackingSection:
    experiment: str = "radimagenet-finetune"
    run_name: str = ""  # empty: finetune-<task>-<init>-<time>; the same name resumes the same run
    uri: str = ""  # empty: MLFLOW_TRACKING_URI
    run_id: str = ""  # filled by the launcher
    parent_run_id: str = ""  # set by `radimagenet compare`: the run is nested under it


@dataclass
class FinetuneConfig:
    task: Literal["classification", "segmentation"] = "classification"
    backbone: str = ""  # registry reference: NAME@alias, NAME/VERSION or NAME (latest)
    init: Literal["backbone", "scratch", "imagenet"] = "backbone"
    resolved_backbone: str = ""  # filled by the launcher: NAME/VERSION that every worker loads
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    scaling: ScalingSection = field(default_factory=lambda: ScalingSection(max_failures=1))
    tracking: TrackingSection = field(default_factory=TrackingSection)
    checkpoint: CheckpointSection = field(default_factory=lambda: CheckpointSection(num_to_keep=1))


def validate(cfg: FinetuneConfig) -> FinetuneConfig:
    """Check what types cannot; returns ``cfg`` or raises one ConfigError listing every problem."""
    problems = _init_problems(cfg) + _number_problems(cfg)
    if not cfg.data.manifest:
        problems.append("data.manifest is required (s3://BUCKET/PREFIX of a `radimagenet ingest` dataset)")
    if not THRESHOLD_RULE.fullmatch(cfg.eval.threshold_rule):
        problems.append(f"eval.threshold_rule {cfg.eval.threshold_rule!r} is not youden, closest, "
                        "sensitivity=<0..1> or specificity=<0..1>")
    for name in ("mean", "std"):
        values = getattr(cfg.data, name)
        if values is not None and len(values) not in (1, 3):
            problems.append(f"data.{name} needs 1 or 3 values, got {values}")
    if cfg.data.std is not None and any(s <= 0 for s in cfg.data.std):
        problems.append(f"data.std must be > 0, got {cfg.data.std}")
    if cfg.tracking.run_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", cfg.tracking.run_name):
        problems.append(f"tracking.run_name {cfg.tracking.run_name!r} may hold only letters, digits, '.', '_', '-'")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _init_problems(cfg: FinetuneConfig) -> list[str]:
    if cfg.init == "backbone" and not cfg.backbone:
        return ["backbone is required (a registry reference such as radimagenet-resnet50@champion), "
                "or set init=scratch / init=imagenet with model.arch"]
    if cfg.init != "backbone" and cfg.backbone:
        return [f"backbone={cfg.backbone!r} and init={cfg.init} exclude each other: drop one"]
    if cfg.init != "backbone" and not cfg.model.arch:
        return [f"init={cfg.init} needs model.arch"]
    return []


def _number_problems(cfg: FinetuneConfig) -> list[str]:
    t, e, checks = cfg.train, cfg.eval, []
    checks += [(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
               (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
               (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
               (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
               (0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
               (0 <= cfg.model.drop_rate < 1, f"model.drop_rate must be in [0, 1), got {cfg.model.drop_rate}"),
               (cfg.model.in_chans in (1, 3), f"model.in_chans must be 1 or 3, got {cfg.model.in_chans}"),
               (e.n_boot >= 1, f"eval.n_boot must be >= 1, got {e.n_boot}"),
               (min(e.gradcam_samples, e.gradcam_max_images, e.overlay_samples) >= 0,
                "eval.gradcam_samples, gradcam_max_images and overlay_samples must be >= 0"),
               (cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}"),
               (cfg.data.image_size is None or cfg.data.image_size >= 16,
                f"data.image_size must be >= 16, got {cfg.data.image_size}"),
               (cfg.scaling.num_workers >= 1, f"scaling.num_workers must be >= 1, got {cfg.scaling.num_workers}")]
    return [msg for ok, msg in checks if not ok]


def init_name(cfg: FinetuneConfig) -> str:
    """What the model starts from, for names and tables: the backbone reference, ``scratch`` or ``imagenet``."""
    return cfg.backbone if cfg.init == "backbone" else cfg.init


def resolve(cfg: FinetuneConfig, manifest: dict | None = None) -> FinetuneConfig:
    """A copy with derived defaults: manifest URI, image size (the dataset's), run name."""
    validate(cfg)
    data = dataclasses.replace(cfg.data, manifest=manifest_uri(cfg.data.manifest))
    if data.image_size is None and manifest is not None:
        data = dataclasses.replace(data, image_size=int(manifest["image_size"]))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", init_name(cfg)).strip("-") or "model"
    run_name = cfg.tracking.run_name or f"finetune-{cfg.task}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(cfg, data=data, tracking=dataclasses.replace(cfg.tracking, run_name=run_name[:128]))


# ------------------------------------------------------------------------------------ task checks


@dataclass(frozen=True)
class TaskSpec:
    """What the dataset and config make of the task."""

    task: str  # classification | segmentation
    mode: str  # binary | multiclass | segmentation
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
    _check_splits(manifest, where, cfg.task)
    if cfg.task == "segmentation":
        if not manifest.get("has_masks"):
            raise ConfigError(f"task=segmentation needs lesion masks but dataset {where} has none "
                              "(ingest it with a labels.csv that has a mask column)")
        return TaskSpec("segmentation", "segmentation", tuple(classes), -1)
    if len(classes) < 2:
        raise ConfigError(f"classification needs at least 2 classes; dataset {where} has {len(classes)}: {classes}")
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


def _check_splits(manifest: dict, where: str, task: str) -> None:
    splits = manifest.get("splits", {})
    missing = [s for s in ("train", "val", "test") if not splits.get(s, {}).get("samples")]
    if missing:
        raise ConfigError(f"fine-tuning needs patient-wise train, val and test splits; dataset {where} has no "
                          f"samples in {missing} (splits: {sorted(splits)}); re-ingest with --split fractions")


def check_masks(manifest: dict, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """The first sample of each split must have a mask in its image's pixel grid (a wrong ingest fails here,
    not an hour into training; the loader checks every later sample)."""
    from radimagenet.data import loader as data

    for split in splits:
        sample = next(data.iterate_samples(manifest, split), None)
        if sample is None or sample["mask"] is None:
            continue
        if sample["mask"].shape != sample["image"].shape:
            raise ConfigError(
                f"dataset {manifest.get('uri')}: sample {sample['key']} of split {split!r} has a mask of "
                f"size {sample['mask'].shape} but its image is {sample['image'].shape}: masks must be in "
                "the image's pixel grid (re-ingest the dataset)")


# ------------------------------------------------------------------------------------ models


def imagenet_weights_file(arch: str, weights_file: str = "") -> str:
    """A local file with timm's ImageNet weights for ``arch``: ``weights_file``, else the HF cache.

    Never downloads; a clear ConfigError says how to provide the file when there is none.
    """
    if weights_file:
        if not os.path.isfile(weights_file):
            raise ConfigError(f"model.weights_file {weights_file} does not exist")
        return os.path.abspath(weights_file)
    import timm

    hub_id = getattr(timm.models.get_pretrained_cfg(arch), "hf_hub_id", None) if timm.is_model(arch) else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    raise ConfigError(
        f"init=imagenet: no local ImageNet weights for {arch!r} (HF cache: {hub_id or 'no hub id'}); weights are "
        "never downloaded at run time: put timm's weights file on this machine and pass model.weights_file=PATH"
    )


def build_classifier(cfg: FinetuneConfig, manifest: dict, num_classes: int) -> tuple[nn.Module, BackboneRecord]:
    """``(model, record)`` with a fresh ``num_classes`` head (dropout ``model.drop_rate``, global avg pool)."""
    import timm

    from radimagenet.models import registry as backbones
    from radimagenet.models.factory import attach_record, create_model, make_record

    if cfg.init == "backbone":
        return backbones.load(cfg.resolved_backbone or cfg.backbone, num_classes, tracking_uri=cfg.tracking.uri,
                              drop_rate=cfg.model.drop_rate)
    if cfg.init == "scratch":
        model = create_model(cfg.model.arch, num_classes, cfg.model.in_chans, cfg.model.drop_rate)
        mean, std = cfg.data.mean or (0.5,), cfg.data.std or (0.25,)
        record = make_record(cfg.model.arch, manifest, in_chans=cfg.model.in_chans,
                             image_size=cfg.data.image_size, mean=mean, std=std)
        return attach_record(model, record), record
    path = imagenet_weights_file(cfg.model.arch, cfg.model.weights_file)
    model = timm.create_model(cfg.model.arch, pretrained=True, num_classes=num_classes, in_chans=3,
                              drop_rate=cfg.model.drop_rate, pretrained_cfg_overlay={"file": path})
    mean = cfg.data.mean or tuple(model.pretrained_cfg["mean"])
    std = cfg.data.std or tuple(model.pretrained_cfg["std"])
    record = make_record(cfg.model.arch, manifest, in_chans=3, image_size=cfg.data.image_size, mean=mean, std=std)
    record.source = {"init": "imagenet", "weights_file": path}
    return attach_record(model, record), record


def build_model(cfg: FinetuneConfig, manifest: dict, spec: TaskSpec) -> tuple[nn.Module, BackboneRecord]:
    """The classifier, or a U-Net whose encoder carries the initial weights; the record travels along."""
    from radimagenet.models.unet import create_unet

    if spec.task == "classification":
        return build_classifier(cfg, manifest, len(spec.classes))
    encoder, record = build_classifier(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, drop_rate=0.0)),
                                       manifest, 1)
    unet = create_unet(encoder if cfg.init != "scratch" else record.arch, num_classes=1, in_chans=record.in_chans)
    unet.radimagenet_cfg = record
    return unet, record


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that always train: the classifier head, or the U-Net's decoder and segmentation head."""
    if hasattr(model, "decoder") and hasattr(model, "segmentation_head"):
        return list(model.decoder.parameters()) + list(model.segmentation_head.parameters())
    return list(model.get_classifier().parameters())


def apply_freeze(model: nn.Module, mode: str) -> dict[str, int]:
    """Freeze the backbone: ``all`` (only the head trains), ``top10`` (head + the backbone's last 10
    parameterised layers, in registration order), ``none``. Returns trainable/total parameter counts."""
    head = {id(p) for p in head_parameters(model)}
    layers = [m for m in model.modules()
              if any(id(p) not in head for p in m.parameters(recurse=False))]
    keep = {id(m) for m in layers[-10:]} if mode == "top10" else set() if mode == "all" else {id(m) for m in layers}
    for m in layers:
        for p in m.parameters(recurse=False):
            p.requires_grad = id(m) in keep or id(p) in head
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but frozen normalisation layers stay in inference mode (their running stats too)."""
    from torch import nn

    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def build_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """Adam (the recipe), AdamW or SGD over the trainable parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)


# ------------------------------------------------------------------------------------ the loop


@dataclass
class Best:
    """The epoch with the lowest validation loss and its weights (CPU copies)."""

    epoch: int = -1
    loss: float = math.inf
    state: dict[str, Any] | None = None


def finetune_loop(config: dict[str, Any], ctx: Context | None = None) -> dict[str, float]:
    """Fine-tune ``config`` (a resolved :class:`FinetuneConfig` dict) on one worker; returns the test metrics."""
    import torch

    from radimagenet.data import loader as data
    from radimagenet.train.engine import local_context, metric_logger

    cfg = from_dict(FinetuneConfig, config)
    ctx = ctx or local_context(cfg)
    torch.manual_seed(cfg.train.seed)
    manifest = data.load_manifest(cfg.data.manifest)
    spec = check_task(cfg, manifest)
    model, record = build_model(cfg, manifest, spec)
    counts = apply_freeze(model, cfg.train.freeze)
    model = model.to(ctx.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant lr (the recipe)
    start_epoch, step, best = restore(ctx, model, optimizer, scheduler, manifest)
    log = metric_logger(cfg, ctx)
    log({"model/trainable_params": counts["trainable"], "model/total_params": counts["total"]}, step)
    train_model = ctx.prepare_model(model)
    for epoch in range(start_epoch, cfg.train.epochs):
        step, metrics = train_one_epoch(train_model, model, optimizer, cfg, spec, manifest, ctx, epoch, step, log)
        val = evaluate_split(model, cfg, spec, manifest, ctx, "val")
        if val.loss < best.loss:
            best = Best(epoch, val.loss, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        metrics |= val.metrics | {"epoch": epoch + 1, "best_epoch": best.epoch + 1, "val/best_loss": best.loss}
        log(metrics, step)
        if ctx.is_main:
            print(f"[radimagenet] finetune epoch {epoch + 1}/{cfg.train.epochs} "
                  + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        save_and_report(ctx, cfg, config, model, optimizer, scheduler, epoch, step, manifest, record, metrics, best)
    if best.state is not None:
        model.load_state_dict(best.state)
    final = report_test_split(model, record, cfg, spec, manifest, ctx, best)
    log(final, step)
    ctx.report(final, None, "final")
    return final


def _autocast(ctx: Context) -> Any:
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" else contextlib.nullcontext()


def _loss(logits: torch.Tensor, target: torch.Tensor, spec: TaskSpec, cfg: FinetuneConfig) -> torch.Tensor:
    import torch.nn.functional as F

    from radimagenet.models.unet import bce_dice_loss

    if spec.task == "segmentation":
        return bce_dice_loss(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target, label_smoothing=cfg.train.label_smoothing)


def _unpack(batch: tuple, spec: TaskSpec) -> tuple[Any, Any, list]:
    """``(images, target, meta)``: the target is the mask (segmentation) or the label."""
    if spec.task == "segmentation":
        images, masks, _labels, *rest = batch
        return images, masks, rest[0] if rest else []
    images, labels, *rest = batch
    return images, labels, rest[0] if rest else []


def _loader(model: nn.Module, cfg: FinetuneConfig, manifest: dict, spec: TaskSpec, ctx: Context, split: str, *,
            train: bool, epoch: int = 0, num_workers: int | None = None, masks: bool = False) -> Any:
    """The split's batches, preprocessed as the model's record says (channels, mean, std)."""
    from radimagenet.data import loader as data

    record = model.radimagenet_cfg
    return data.make_loader(manifest, split, batch_size=cfg.train.batch_size, rank=ctx.rank,
                            world_size=ctx.world_size, epoch=epoch, seed=cfg.train.seed, train=train,
                            num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                            image_size=cfg.data.image_size, channels=record.in_chans, mean=tuple(record.mean),
                            std=tuple(record.std), shuffle_buffer=cfg.data.shuffle_buffer, with_meta=not train,
                            with_masks=spec.task == "segmentation" or masks)


def train_one_epoch(train_model: nn.Module, model: nn.Module, optimizer: Any, cfg: FinetuneConfig, spec: TaskSpec,
                    manifest: dict, ctx: Context, epoch: int, step: int,
                    log: Callable[[dict[str, float], int], None]) -> tuple[int, dict[str, float]]:
    """One pass over the rank's training batches; returns the new step and the epoch's train metrics."""
    import torch

    set_train_mode(train_model)
    loader = _loader(model, cfg, manifest, spec, ctx, "train", train=True, epoch=epoch)
    total, start = torch.zeros(()), time.perf_counter()
    for batch in loader:
        images, target, _ = _unpack(batch, spec)
        with _autocast(ctx):
            loss = _loss(train_model(images.to(ctx.device)), target.to(ctx.device), spec, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        total += loss.detach().cpu()
        if step % cfg.train.log_every == 0:
            log({"train/loss": float(loss.item())}, step)
    n = max(len(loader), 1)
    return step, {"train/epoch_loss": float(total) / n,
                  "train/images_per_s": n * cfg.train.batch_size * ctx.world_size / max(time.perf_counter() - start, 1e-9)}


@dataclass
class SplitOutput:
    """A split's gathered predictions (every sample once, sorted by key) and its metrics."""

    keys: list[str]
    labels: np.ndarray  # class ids
    outputs: np.ndarray  # classification: softmax probabilities [N, K]; segmentation: [N, 2] Dice, has lesion
    loss: float
    metrics: dict[str, float]


def evaluate_split(model: nn.Module, cfg: FinetuneConfig, spec: TaskSpec, manifest: dict, ctx: Context,
                   split: str) -> SplitOutput:
    """Predict ``split`` on every rank, gather, and compute its loss (the model-selection criterion)."""
    import torch

    from radimagenet.train.engine import gather

    model.eval()
    outs, losses, keys, labels = [], [], [], []
    with torch.no_grad():
        for batch in _loader(model, cfg, manifest, spec, ctx, split, train=False):
            out, loss, label, meta = _predict_batch(model, batch, spec, ctx, cfg)
            outs.append(out)
            losses.append(loss)
            labels.append(label)
            keys.extend(m["key"] for m in meta)
    local = (np.concatenate(outs) if outs else np.zeros((0,) + _out_shape(spec)),
             np.stack([np.concatenate(losses), np.concatenate(labels)], 1) if losses else np.zeros((0, 2)), keys)
    out, loss_label, keys = gather(local, ctx)
    order = np.argsort(np.asarray(keys), kind="stable")
    out, loss_label, keys = out[order], loss_label[order], [keys[i] for i in order]
    loss = float(loss_label[:, 0].mean()) if len(keys) else math.nan
    metrics = {f"{split}/loss": loss, f"{split}/samples": float(len(keys))}
    if spec.task == "segmentation":
        metrics[f"{split}/dice"] = float(out[:, 0].mean()) if len(keys) else math.nan
    elif len(keys):
        from radimagenet.eval.classification import macro_auc

        labels_np = loss_label[:, 1].astype(np.int64)
        metrics |= {f"{split}/accuracy": float((out.argmax(1) == labels_np).mean()),
                    f"{split}/auc": macro_auc(out, labels_np)}
    return SplitOutput(keys, loss_label[:, 1].astype(np.int64), out, loss, metrics)


def _out_shape(spec: TaskSpec) -> tuple[int, ...]:
    return (2,) if spec.task == "segmentation" else (len(spec.classes),)


def _predict_batch(model: nn.Module, batch: tuple, spec: TaskSpec, ctx: Context,
                   cfg: FinetuneConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Per-sample outputs and losses of one evaluation batch."""
    import torch
    import torch.nn.functional as F

    from radimagenet.models.unet import bce_dice_loss, dice_per_image

    if spec.task == "segmentation":
        images, masks, labels, meta = batch
        with _autocast(ctx):
            logits = model(images.to(ctx.device)).float().cpu()
        target = masks.float()
        losses = [float(bce_dice_loss(logits[i : i + 1], target[i : i + 1])) for i in range(len(logits))]
        dice = dice_per_image(logits, target, from_logits=True).numpy()
        lesion = target.flatten(1).amax(1).numpy()
        return np.stack([dice, lesion], 1), np.asarray(losses), labels.numpy(), meta
    images, labels, meta = batch[0], batch[-2], batch[-1]
    with _autocast(ctx):
        logits = model(images.to(ctx.device)).float().cpu()
    losses = F.cross_entropy(logits, labels, reduction="none")
    return torch.softmax(logits, 1).numpy(), losses.numpy(), labels.numpy(), meta


# ------------------------------------------------------------------------------------ checkpoints


def restore(ctx: Context, model: nn.Module, optimizer: Any, scheduler: Any, manifest: dict) -> tuple[int, int, Best]:
    """``(start_epoch, step, best)`` from the latest checkpoint, or a fresh start."""
    from safetensors.torch import load_file

    from radimagenet.train import checkpoint

    with ctx.latest_checkpoint() as directory:
        if directory is None:
            return 0, 0, Best()
        state = checkpoint.load(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                dataset_digest=str(manifest.get("digest", "")))
        best_path = os.path.join(directory, BEST_FILE)
        best_state = load_file(best_path, device="cpu") if os.path.exists(best_path) else None
    metrics = state.get("metrics", {})
    best = Best(int(metrics.get("best_epoch", 0)) - 1, float(metrics.get("val/best_loss", math.inf)), best_state)
    if ctx.is_main:
        print(f"[radimagenet] finetune resumed after epoch {state['epoch'] + 1}", flush=True)
    return state["epoch"] + 1, state["step"], best


def save_and_report(ctx: Context, cfg: FinetuneConfig, config: dict, model: nn.Module, optimizer: Any,
                    scheduler: Any, epoch: int, step: int, manifest: dict, record: BackboneRecord,
                    metrics: dict, best: Best) -> None:
    """The pretraining loop's checkpoint + report, with the best weights so far beside it."""
    from safetensors.torch import save_file

    from radimagenet.train import loop

    def write_best(directory: str) -> None:
        if best.state is not None:
            save_file({k: v.contiguous() for k, v in best.state.items()}, os.path.join(directory, BEST_FILE))

    loop.save_and_report(ctx, cfg, config, model, optimizer, scheduler, epoch, step, manifest, record, metrics,
                         extra=write_best)


# ------------------------------------------------------------------------------------ test report


def report_test_split(model: nn.Module, record: BackboneRecord, cfg: FinetuneConfig, spec: TaskSpec,
                    manifest: dict, ctx: Context, best: Best) -> dict[str, float]:
    """Evaluate the best weights on val (threshold) and test; rank 0 writes figures and artifacts."""
    test = evaluate_split(model, cfg, spec, manifest, ctx, "test")
    out_dir = tempfile.mkdtemp(prefix="radimagenet-ft-report-") if ctx.is_main else None
    try:
        if spec.task == "segmentation":
            metrics = segmentation_report(test)
            if out_dir:
                write_segmentation_overlays(model, cfg, spec, manifest, ctx, out_dir)
        else:
            val = evaluate_split(model, cfg, spec, manifest, ctx, "val")
            metrics = classification_report(val, test, spec, cfg, out_dir)
            if out_dir and cfg.eval.gradcam_samples + (cfg.eval.gradcam_max_images if manifest.get("has_masks") else 0):
                metrics |= write_gradcam(model, cfg, spec, manifest, out_dir)
        metrics |= {"best_epoch": best.epoch + 1, "val/best_loss": best.loss}
        if out_dir:
            write_predictions(test, spec, os.path.join(out_dir, PREDICTIONS_FILE))
            _write_json(os.path.join(out_dir, REPORT_FILE), metrics)
            if cfg.eval.log_model:
                write_model(model, record, spec, int(cfg.data.image_size or manifest["image_size"]),
                            os.path.join(out_dir, "model"))
            log_artifacts(cfg, out_dir)
        return metrics
    finally:
        if out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)


def classification_report(val: SplitOutput, test: SplitOutput, spec: TaskSpec, cfg: FinetuneConfig,
                          out_dir: str | None) -> dict[str, float]:
    """Binary: AUC + bootstrap CI and the operating point chosen on validation; multiclass: macro AUC."""
    from radimagenet.eval import metrics as evaluate

    if spec.mode == "binary":
        pos = spec.positive
        threshold = evaluate.choose_threshold(val.labels == pos, val.outputs[:, pos], cfg.eval.threshold_rule)
        report = evaluate.binary_report(test.labels == pos, test.outputs[:, pos], threshold,
                                        n_boot=cfg.eval.n_boot, seed=cfg.train.seed)
        if out_dir:
            evaluate.roc_curve_png(test.labels == pos, test.outputs[:, pos], os.path.join(out_dir, "plots", "roc.png"),
                                   threshold=threshold, title=f"test ROC ({spec.classes[pos]} vs rest)")
            names = [f"not {spec.classes[pos]}", spec.classes[pos]]
    else:
        report = evaluate.multiclass_report(test.labels, test.outputs, n_boot=cfg.eval.n_boot, seed=cfg.train.seed)
        report |= macro_sensitivity_specificity(np.asarray(report["confusion_matrix"]))
        names = list(spec.classes)
        if out_dir:
            for k in np.unique(test.labels):
                evaluate.roc_curve_png(test.labels == k, test.outputs[:, k],
                                       os.path.join(out_dir, "plots", f"roc_class_{k}.png"),
                                       title=f"test ROC: {spec.classes[k]} vs rest")
    if out_dir:
        evaluate.confusion_matrix_png(report["confusion_matrix"], names,
                                      os.path.join(out_dir, "plots", "confusion_matrix.png"))
    return evaluate.scalar_metrics(report) | {"val/loss_best_weights": val.loss}


def macro_sensitivity_specificity(cm: np.ndarray, prefix: str = "test") -> dict[str, float]:
    """One-vs-rest sensitivity and specificity averaged over the classes present (argmax predictions)."""
    total, tp = cm.sum(), np.diag(cm)
    pos, pred = cm.sum(1), cm.sum(0)
    present = pos > 0
    sens = tp[present] / pos[present]
    spec = (total - pos - pred + tp)[present] / np.maximum(total - pos[present], 1)
    return {f"{prefix}_sensitivity": float(sens.mean()), f"{prefix}_specificity": float(spec.mean())}


def segmentation_report(test: SplitOutput) -> dict[str, float]:
    """Mean per-image Dice (empty vs empty counts 1) and the mean over the images that have a lesion."""
    dice, lesion = test.outputs[:, 0], test.outputs[:, 1] > 0
    out = {"test_dice": float(dice.mean()), "test_loss": test.loss, "test_n": float(len(dice)),
           "test_n_lesion": float(lesion.sum())}
    if lesion.any():
        out["test_dice_lesion"] = float(dice[lesion].mean())
    return out


def _test_batches(model: nn.Module, cfg: FinetuneConfig, spec: TaskSpec, manifest: dict) -> Iterator[tuple]:
    """The whole test split in this process (rank 0 only): ``(images, masks | None, labels, meta)``."""
    from radimagenet.train.engine import Context

    loader = _loader(model, cfg, manifest, spec, Context(), "test", train=False, num_workers=0,
                     masks=bool(manifest.get("has_masks")))
    for batch in loader:
        if len(batch) == 4:
            yield batch
        else:
            yield batch[0], None, batch[1], batch[2]


def write_gradcam(model: nn.Module, cfg: FinetuneConfig, spec: TaskSpec, manifest: dict,
                  out_dir: str) -> dict[str, float]:
    """Grad-CAM overlays for a sample of test images; with lesion masks, the localisation scores over
    (up to ``eval.gradcam_max_images``) lesion images: energy on the lesion, pointing-game hit rate."""
    from radimagenet.eval import explain

    energy, hits, area, saved, seen = [], [], [], 0, 0
    limit = max(cfg.eval.gradcam_samples, cfg.eval.gradcam_max_images if manifest.get("has_masks") else 0)
    for images, masks, labels, meta in _test_batches(model, cfg, spec, manifest):
        if seen >= limit:
            break
        target = spec.positive if spec.mode == "binary" else None
        cams = explain.gradcam(model, images.to(next(model.parameters()).device), target=target).cpu()
        for i in range(len(cams)):
            seen += 1
            mask = None if masks is None else masks[i, 0].numpy()
            if mask is not None and mask.any():
                energy.append(explain.localisation_score(cams[i], mask))
                hits.append(explain.pointing_game(cams[i], mask))
                area.append(float(mask.mean()))
            if saved < cfg.eval.gradcam_samples:
                explain.overlay_png(images[i], cams[i], os.path.join(
                    out_dir, "gradcam", f"gradcam_{saved:03d}_{meta[i]['key']}_y{int(labels[i])}.png"),
                    mask=mask if mask is not None and mask.any() else None, scale=max(1, 256 // images.shape[-1]))
                saved += 1
    out = {"test_gradcam_images": float(saved)}
    if energy:
        out |= {"test_gradcam_energy_on_lesion": float(np.nanmean(energy)),
                "test_gradcam_pointing_game": float(np.mean(hits)),
                "test_gradcam_lesion_area_fraction": float(np.mean(area)),  # chance level of the energy score
                "test_gradcam_lesion_images": float(len(energy))}
    return out


def write_segmentation_overlays(model: nn.Module, cfg: FinetuneConfig, spec: TaskSpec, manifest: dict,
                                ctx: Context, out_dir: str) -> None:
    """Prediction overlays (red: predicted, green outline: truth) for test images with a lesion first."""
    import torch

    from radimagenet.models.unet import prediction_overlay_png

    model.eval()
    chosen: list[tuple] = []
    with torch.no_grad():
        for images, masks, _labels, meta in _test_batches(model, cfg, spec, manifest):
            logits = model(images.to(ctx.device)).float().cpu()
            chosen += [(masks[i, 0].any().item(), images[i], logits[i, 0] > 0, masks[i, 0], meta[i]["key"])
                       for i in range(len(images))]
            if sum(c[0] for c in chosen) >= cfg.eval.overlay_samples:
                break
    chosen.sort(key=lambda c: not c[0])
    for n, (_, image, pred, mask, key) in enumerate(chosen[: cfg.eval.overlay_samples]):
        prediction_overlay_png(image, pred, mask, os.path.join(out_dir, "overlays", f"segmentation_{n:03d}_{key}.png"),
                               scale=max(1, 256 // image.shape[-1]))


def write_predictions(test: SplitOutput, spec: TaskSpec, path: str) -> None:
    """Per-sample test outputs sorted by key: the input of DeLong's test in ``radimagenet compare``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if spec.task == "segmentation":
            w.writerow(["key", "label_id", "dice", "has_lesion"])
            w.writerows([k, int(y), repr(float(d[0])), int(d[1] > 0)]
                        for k, y, d in zip(test.keys, test.labels, test.outputs, strict=True))
            return
        w.writerow(["key", "label_id"] + [f"prob_{i}" for i in range(len(spec.classes))])
        w.writerows([k, int(y), *map(lambda p: repr(float(p)), row)]
                    for k, y, row in zip(test.keys, test.labels, test.outputs, strict=True))


def read_predictions(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(keys, label ids, probabilities [N, K])`` from a ``predictions/test.csv`` text."""
    rows = list(csv.reader(io.StringIO(text)))
    body = rows[1:]
    return ([r[0] for r in body], np.asarray([int(r[1]) for r in body], np.int64),
            np.asarray([[float(x) for x in r[2:]] for r in body], np.float64))


def write_model(model: nn.Module, record: BackboneRecord, spec: TaskSpec, image_size: int, directory: str) -> None:
    """The fine-tuned weights (safetensors) and a record with the downstream classes."""
    from radimagenet.train.checkpoint import MODEL_FILE, save_weights

    os.makedirs(directory, exist_ok=True)
    save_weights(os.path.join(directory, MODEL_FILE), model)
    rec = dataclasses.replace(record, classes=list(spec.classes), num_classes=len(spec.classes),
                              input_size=(record.in_chans, image_size, image_size))
    rec.source = {**record.source, "finetuned_for": spec.task}
    with open(os.path.join(directory, tracking.RECORD_FILE), "w") as f:
        f.write(rec.to_json())


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def log_artifacts(cfg: FinetuneConfig, directory: str) -> None:
    """Upload ``directory`` as the run's artifacts (rank 0; nothing without an MLflow run)."""
    if cfg.tracking.run_id:
        tracking.client(tracking.tracking_uri(cfg.tracking.uri)).log_artifacts(cfg.tracking.run_id, directory)


def ray_finetune_fn(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs."""
    from radimagenet.train.engine import ray_context

    finetune_loop(config, ray_context())


# ------------------------------------------------------------------------------------ the driver


@dataclass
class FinetuneResult:
    run_id: str
    run_name: str
    resumed: bool
    metrics: dict[str, float]
    config: dict[str, Any]
    backbone: str  # NAME/VERSION, or scratch / imagenet


def preflight(cfg: FinetuneConfig) -> tuple[FinetuneConfig, dict, str, dict[str, str]]:
    """Everything checkable before a run exists: config, S3, dataset vs task, masks, architecture,
    MLflow, the backbone reference (resolved to NAME/VERSION), ImageNet weights. Returns
    ``(resolved cfg, manifest, tracking uri, tags)``."""
    from radimagenet.train.launch import prepare_data

    cfg, manifest = prepare_data(cfg, resolve)
    spec = check_task(cfg, manifest)
    if spec.task == "segmentation":
        check_masks(manifest)
    uri = tracking.tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    cfg, tags = _resolve_init(cfg, uri)
    if spec.task == "segmentation":
        _check_unet(tags["radimagenet.arch"])
    return cfg, manifest, uri, tags | {"radimagenet.task": spec.task, "radimagenet.metrics": spec.mode}


def _resolve_init(cfg: FinetuneConfig, uri: str) -> tuple[FinetuneConfig, dict[str, str]]:
    """Pin a registry reference to NAME/VERSION; check scratch/imagenet architectures and weights."""
    from radimagenet.models.factory import check_arch

    tags = {"radimagenet.kind": "finetune", "radimagenet.init": cfg.init, "radimagenet.initialisation": init_name(cfg)}
    if cfg.init == "backbone":
        mv = tracking.resolve_backbone(uri, cfg.backbone)
        pinned = f"{mv.name}/{mv.version}"
        tags |= {"radimagenet.backbone_ref": cfg.backbone, "radimagenet.backbone": pinned,
                 "radimagenet.backbone_name": mv.name, "radimagenet.backbone_version": str(mv.version),
                 "radimagenet.backbone_dataset_digest": mv.tags.get("dataset_digest", ""),
                 "radimagenet.arch": mv.tags.get("arch", "")}
        return dataclasses.replace(cfg, resolved_backbone=pinned), tags
    check_arch(cfg.model.arch)
    tags |= {"radimagenet.backbone": cfg.init, "radimagenet.arch": cfg.model.arch}
    if cfg.init == "imagenet":
        path = imagenet_weights_file(cfg.model.arch, cfg.model.weights_file)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights_file=path))
    return cfg, tags


def _check_unet(arch: str) -> None:
    from radimagenet.models.unet import create_unet

    if arch:
        create_unet(arch)


def finetune(cfg: FinetuneConfig, *, in_process: bool = False) -> FinetuneResult:
    """Fine-tune (or resume) ``cfg`` in one MLflow run: preflight, params, dataset, train, test report."""
    cfg, manifest, uri, tags = preflight(cfg)
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run_id, resumed = tracking.start_or_resume_run(uri, cfg.tracking.experiment, cfg.tracking.run_name, tags=tags)
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=uri, run_id=run_id))
    config = to_dict(cfg)
    try:
        tracking.log_params(uri, run_id, flatten(config))
        tracking.log_dataset(uri, run_id, manifest, cfg.data.manifest)
        tracking.log_text(uri, run_id, _yaml(config), "config/finetune.yaml")
        metrics = _run_in_process(cfg, config) if in_process else _run_with_ray(cfg, config)
    except KeyboardInterrupt:
        tracking.end_run(uri, run_id, "KILLED")
        raise
    except BaseException:
        _safe_end(uri, run_id)
        raise
    tracking.end_run(uri, run_id, "FINISHED")
    return FinetuneResult(run_id, cfg.tracking.run_name, resumed, metrics, config, tags["radimagenet.backbone"])


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


def _safe_end(uri: str, run_id: str) -> None:
    with contextlib.suppress(Exception):
        tracking.end_run(uri, run_id, "FAILED")


def _run_in_process(cfg: FinetuneConfig, config: dict) -> dict[str, float]:
    from radimagenet.train.engine import local_context

    return finetune_loop(config, local_context(cfg))


def _run_with_ray(cfg: FinetuneConfig, config: dict) -> dict[str, float]:
    """The same loop on ``scaling.num_workers`` Ray Train workers (restarts from the last checkpoint)."""
    from radimagenet.train.launch import fit_with_ray

    fit_with_ray(ray_finetune_fn, cfg, config, what="fine-tuning")
    # Ray's result.metrics are those of the last checkpoint (the last epoch): the test report is rank 0's artifact
    return json.loads(download_text(tracking.tracking_uri(cfg.tracking.uri), cfg.tracking.run_id, REPORT_FILE))


def download_text(uri: str, run_id: str, artifact_path: str) -> str:
    """The text of one run artifact (e.g. ``predictions/test.csv``)."""
    tmp = tempfile.mkdtemp(prefix="radimagenet-artifact-")
    try:
        local = tracking.client(uri).download_artifacts(run_id, artifact_path, tmp)
        with open(local) as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary_line(metrics: dict[str, float]) -> str:
    """One line of the headline test metrics (AUC with its CI, operating point; or Dice)."""
    m = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if "test_dice" in m:
        return (f"test Dice {m['test_dice']:.4f} (lesion images {m.get('test_dice_lesion', math.nan):.4f}), "
                f"best epoch {int(m.get('best_epoch', 0))}")
    line = (f"test AUC {m.get('test_auc', math.nan):.4f} (95% CI {m.get('test_auc_ci_low', math.nan):.4f}-"
            f"{m.get('test_auc_ci_high', math.nan):.4f}), accuracy {m.get('test_accuracy', math.nan):.4f}, "
            f"sensitivity {m.get('test_sensitivity', math.nan):.4f}, specificity {m.get('test_specificity', math.nan):.4f}")
    if "test_gradcam_energy_on_lesion" in m:
        line += (f"; Grad-CAM energy on lesion {m['test_gradcam_energy_on_lesion']:.3f} (chance "
                 f"{m['test_gradcam_lesion_area_fraction']:.3f}), pointing game {m['test_gradcam_pointing_game']:.3f}")
    return line + f"; best epoch {int(m.get('best_epoch', 0))}"
