"""Which parameters train: the paper's ``freeze`` modes (``none``, ``top10``, ``all``) and a training
mode that keeps frozen normalisation layers (and their running statistics) in inference mode."""

from __future__ import annotations

from typing import Any


def head_parameters(model: Any) -> list[Any]:
    """Parameters that always train: the classifier head, or the U-Net's decoder and segmentation head."""
    if hasattr(model, "decoder") and hasattr(model, "segmentation_head"):
        return list(model.decoder.parameters()) + list(model.segmentation_head.parameters())
    return list(model.get_classifier().parameters())


def apply_freeze(model: Any, mode: str) -> dict[str, int]:
    """Freeze the backbone: ``all`` (only the head trains), ``top10`` (head + the backbone's last 10
    parameterised layers, in registration order), ``none``. Returns trainable/total parameter counts."""
    head = {id(p) for p in head_parameters(model)}
    layers = [m for m in model.modules() if any(id(p) not in head for p in m.parameters(recurse=False))]
    keep = {id(m) for m in layers[-10:]} if mode == "top10" else set() if mode == "all" else {id(m) for m in layers}
    for m in layers:
        for p in m.parameters(recurse=False):
            p.requires_grad = id(m) in keep or id(p) in head
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def set_train_mode(model: Any) -> None:
    """``model.train()``, but frozen normalisation layers stay in inference mode (their running stats too)."""
    from torch import nn

    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
