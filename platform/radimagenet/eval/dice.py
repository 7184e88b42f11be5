"""Dice: the overlap of a predicted mask with the truth, per image or pooled over a batch.

    dice_per_image(logits, masks, from_logits=True)    # [B]; empty vs empty counts 1
    dice_score(logits, masks, from_logits=True)        # mean per-image Dice
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radimagenet.errors import ConfigError

if TYPE_CHECKING:
    import torch


def _binarise(pred: torch.Tensor, threshold: float, from_logits: bool | None) -> torch.Tensor:
    """Boolean mask from a mask, probabilities or logits (see ``dice_score``)."""
    import torch

    if pred.dtype == torch.bool or not pred.is_floating_point():
        return pred > 0
    if from_logits is None:
        binary = bool(((pred == 0) | (pred == 1)).all())
        from_logits = not binary and bool((pred < 0).any() or (pred > 1).any())
    return (torch.sigmoid(pred) if from_logits else pred) >= threshold


def dice_per_image(
    pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, *, from_logits: bool | None = None
) -> torch.Tensor:
    """Dice of each image [B] (all non-batch dims pooled); 1.0 where prediction and truth are both empty."""
    import torch

    if pred.shape != target.shape:
        raise ConfigError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim < 2:
        raise ConfigError("pred and target need a batch dimension: [B, ...]")
    p = _binarise(pred.detach(), threshold, from_logits).flatten(1).float()
    t = (target.detach() > 0.5).flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def dice_score(
    pred: torch.Tensor,
    target: torch.Tensor,
    threshold: float = 0.5,
    *,
    from_logits: bool | None = None,
    reduction: str = "mean",
) -> float:
    """Dice of a predicted mask against ``target`` (binary, [B, ...]); ``reduction`` "mean" or "global".

    ``pred`` is a bool/int mask, probabilities (thresholded at ``threshold``) or logits (sigmoid first).
    ``from_logits=None`` guesses: float values all 0/1 are a mask, values outside [0, 1] are logits,
    others probabilities; pass it explicitly in training code. "mean" averages per-image Dice (empty
    vs empty counts 1.0); "global" pools all pixels of the batch: 2|P∩T| / (|P| + |T|).
    """
    if reduction == "mean":
        return float(dice_per_image(pred, target, threshold, from_logits=from_logits).mean())
    if reduction != "global":
        raise ConfigError(f"reduction must be 'mean' or 'global', got {reduction!r}")
    if pred.shape != target.shape:
        raise ConfigError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = _binarise(pred.detach(), threshold, from_logits).float()
    t = (target.detach() > 0.5).float()
    total = float(p.sum() + t.sum())
    return 1.0 if total == 0 else float(2 * (p * t).sum() / total)
