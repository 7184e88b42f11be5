"""Segmentation downstream: a U-Net on a (registered, pretrained) timm backbone, Dice metric and losses.

    backbone, record = radimagenet.models.registry.load("radimagenet-resnet50", num_classes=2)
    unet = create_unet(backbone, num_classes=1)            # encoder weights copied, report kept
    unet.encoder_load_report                               # {"matched": 318, "total": 318, ...}
    loss = bce_dice_loss(unet(x), y)
    dice_score(unet(x), y, from_logits=True)               # mean per-image Dice

The U-Net is segmentation-models-pytorch's ``Unet`` with a ``tu-<timm name>`` encoder (a timm model
built with ``features_only=True``, no download: ``encoder_weights=None``). ``load_encoder_weights``
copies a timm *classification* model's state dict into it: timm's feature wrapper flattens module
paths (``features.conv0`` becomes ``features_conv0``), so keys are matched with dots and underscores
treated alike, and every tensor's shape must agree (the first conv may be adapted to another number of
input channels by timm's ``adapt_input_conv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.eval.metrics import as_grey_uint8, mask_contour, rgb_png

if TYPE_CHECKING:
    import torch
    from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _timm_name(model: nn.Module) -> str:
    """The timm architecture name of a model: its registry record's ``arch``, else timm's pretrained_cfg."""
    arch = getattr(getattr(model, "radimagenet_cfg", None), "arch", None)
    if arch:
        return str(arch)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if not name:
        raise ConfigError("cannot tell the encoder's timm architecture: pass its timm name as a string")
    return str(name)


def create_unet(
    encoder: nn.Module | str,
    num_classes: int = 1,
    in_chans: int | None = None,
    *,
    encoder_depth: int = 5,
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    **kwargs: Any,
) -> nn.Module:
    """A U-Net whose encoder is the timm architecture ``encoder`` (a name, or a timm model whose weights are copied).

    ``num_classes`` output channels of logits (1 for binary masks). ``in_chans`` defaults to the
    registry record's ``in_chans`` (``model.radimagenet_cfg``) for a registered backbone, else 3; a
    different count adapts the first conv. Extra ``kwargs`` go to ``smp.Unet``. With a model, the
    weights are loaded by ``load_encoder_weights`` (every encoder tensor must match) and its report is
    kept as ``unet.encoder_load_report``.
    """
    import segmentation_models_pytorch as smp

    if in_chans is None:
        in_chans = int(getattr(getattr(encoder, "radimagenet_cfg", None), "in_chans", None) or 3)
    if num_classes < 1 or in_chans < 1:
        raise ConfigError(f"num_classes and in_chans must be >= 1, got {num_classes}, {in_chans}")
    if len(decoder_channels) != encoder_depth:
        raise ConfigError(
            f"decoder_channels needs {encoder_depth} entries (encoder_depth), got {decoder_channels}"
        )
    name = encoder if isinstance(encoder, str) else _timm_name(encoder)
    name = name.removeprefix("tu-")
    try:
        unet = smp.Unet(
            encoder_name=f"tu-{name}",
            encoder_weights=None,
            encoder_depth=encoder_depth,
            decoder_channels=decoder_channels,
            in_channels=in_chans,
            classes=num_classes,
            **kwargs,
        )
    except (RuntimeError, KeyError, ValueError) as err:
        raise ConfigError(f"cannot build a U-Net on timm encoder {name!r}: {err}") from err
    if not isinstance(encoder, str):
        unet.encoder_load_report = load_encoder_weights(unet, encoder.state_dict())
    return unet


def _norm(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key.replace(".", "_")


def load_encoder_weights(
    unet: nn.Module, state_dict: Mapping[str, torch.Tensor], *, require_all: bool = True
) -> dict[str, Any]:
    """Copy a timm classifier's ``state_dict`` into ``unet``'s encoder; return what matched.

    Report: ``matched`` (tensors copied), ``total`` (encoder tensors), ``adapted`` (first-conv keys
    converted to another channel count), ``missing`` (encoder keys left at their init), ``shape_mismatch``,
    ``unused`` (source keys not used, e.g. the classifier head). ConfigError if nothing matches
    (wrong architecture) or, with ``require_all``, if any encoder tensor was not loaded.
    """
    import torch
    from timm.models import adapt_input_conv

    target = getattr(unet.encoder, "model", unet.encoder)
    current = target.state_dict()
    source: dict[str, torch.Tensor] = {}
    clashes: set[str] = set()
    for key, value in state_dict.items():
        k = _norm(key)
        if k in source:
            clashes.add(k)
        source[k] = value
    new, matched, adapted, missing, mismatch, used = dict(current), 0, [], [], [], set()
    for key, tensor in current.items():
        k = _norm(key)
        src = source.get(k) if k not in clashes else None
        if src is None:
            missing.append(key)
            continue
        if src.shape != tensor.shape and src.ndim == 4 and src.shape[0] == tensor.shape[0]:
            src = adapt_input_conv(tensor.shape[1], src)
            adapted.append(key)
        if src.shape != tensor.shape:
            mismatch.append(f"{key}: {tuple(src.shape)} -> {tuple(tensor.shape)}")
            continue
        new[key] = src.detach().to(dtype=tensor.dtype, device=tensor.device)
        matched += 1
        used.add(k)
    if matched == 0:
        raise ConfigError(
            "no encoder tensor matched the state dict: wrong architecture? "
            f"encoder keys look like {list(current)[:2]}, given keys like {list(state_dict)[:2]}"
        )
    if require_all and (missing or mismatch):
        raise ConfigError(
            f"{len(missing)} encoder tensors missing and {len(mismatch)} with other shapes "
            f"(e.g. {(missing + mismatch)[:3]}): the state dict is from a different architecture"
        )
    with torch.no_grad():
        target.load_state_dict(new, strict=True)
    return {
        "matched": matched,
        "total": len(current),
        "adapted": adapted,
        "missing": missing,
        "shape_mismatch": mismatch,
        "unused": sorted(set(source) - used),
    }


# ------------------------------------------------------------------------------------------ Dice


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


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss on sigmoid(logits): mean over images of 1 - (2 Σpt + s) / (Σp + Σt + s)."""
    if logits.shape != target.shape:
        raise ConfigError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    p = logits.sigmoid().flatten(1)
    t = target.to(p.dtype).flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5, smooth: float = 1.0
) -> torch.Tensor:
    """``bce_weight * BCE-with-logits + (1 - bce_weight) * soft Dice``."""
    import torch.nn.functional as F

    if not 0.0 <= bce_weight <= 1.0:
        raise ConfigError(f"bce_weight must be in [0, 1], got {bce_weight}")
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return bce_weight * bce + (1 - bce_weight) * dice_loss(logits, target, smooth)


def prediction_overlay_png(
    image: Any, pred_mask: Any, true_mask: Any, path: str | Path | None = None, *, scale: int = 1
) -> bytes:
    """PNG of the grey image with the predicted mask tinted red and outlined, the true mask outlined green.

    Where they overlap the tint shows through the green outline: red fill alone is a false positive,
    a green outline around no tint a false negative.
    """
    grey = as_grey_uint8(image)
    masks = []
    for name, m in (("pred_mask", pred_mask), ("true_mask", true_mask)):
        a = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m).squeeze() > 0
        if a.shape != grey.shape:
            raise ConfigError(f"{name} {a.shape} and image {grey.shape} differ in shape")
        masks.append(a)
    pred, true = masks
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float64)
    rgb[pred] = 0.6 * rgb[pred] + 0.4 * np.array([255.0, 0.0, 0.0])
    rgb = rgb.round().astype(np.uint8)
    rgb[mask_contour(pred)] = (255, 0, 0)
    rgb[mask_contour(true)] = (0, 255, 0)
    return rgb_png(rgb, path, scale=scale)
