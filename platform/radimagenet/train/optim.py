"""The optimizer and the per-step learning-rate schedule the engine builds (:mod:`radimagenet.train.engine`).

    optimizer = build_optimizer(model, cfg.train)      # SGD / Adam / AdamW, no decay on biases and norms
    scheduler = build_scheduler(optimizer, cfg.train, optimizer_steps(len(loader), cfg.train.accum_steps))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from radimagenet.train.config import TrainSection

if TYPE_CHECKING:
    from torch import nn


def build_optimizer(model: nn.Module, train: TrainSection) -> torch.optim.Optimizer:
    """SGD (momentum, optionally Nesterov), Adam or AdamW over the trainable parameters; biases and
    normalisation parameters get no weight decay (their own group) unless ``train.decay_norm_bias``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.decay_norm_bias:
        groups = [{"params": params, "weight_decay": train.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": train.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum,
                           nesterov=train.nesterov and train.momentum > 0)


def optimizer_steps(batches: int, accum_steps: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (the last partial accumulation counts)."""
    return math.ceil(batches / max(accum_steps, 1))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0,
              schedule: str = "cosine") -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps`` (or constant 1)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection, steps_per_epoch: int) -> Any:
    """The per-step learning-rate schedule of :func:`lr_factor`."""
    warmup = round(train.warmup_epochs * steps_per_epoch)
    total = train.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, train.min_lr_ratio, train.schedule))
