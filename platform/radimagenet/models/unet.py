"""A U-Net on a (registered, pretrained) timm backbone, for downstream segmentation.

    backbone, record = radimagenet.models.registry.load("radimagenet-resnet50", num_classes=2)
    unet = create_unet(backbone, num_classes=1)            # encoder weights copied, report kept
    unet.encoder_load_report                               # {"matched": 318, "total": 318, ...}
    loss = radimagenet.tasks.segment.bce_dice_loss(unet(x), y)
    radimagenet.eval.dice.dice_score(unet(x), y, from_logits=True)   # mean per-image Dice

The U-Net is segmentation-models-pytorch's ``Unet`` with a ``tu-<timm name>`` encoder (a timm model
built with ``features_only=True``, no download: ``encoder_weights=None``). ``load_encoder_weights``
copies a timm *classification* model's state dict into it: timm's feature wrapper flattens module
paths (``features.conv0`` becomes ``features_conv0``), so keys are matched with dots and underscores
treated alike, and every tensor's shape must agree (the first conv may be adapted to another number of
input channels by timm's ``adapt_input_conv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from radimagenet.errors import ConfigError

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
