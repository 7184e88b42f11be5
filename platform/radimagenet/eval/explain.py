"""Grad-CAM saliency maps and the localisation measures behind the paper's Grad-CAM claim.

    cams = gradcam(model, images)                       # [B, H, W] in [0, 1], predicted class
    overlay_png(images[0], cams[0], "cam.png", mask=lesion_masks[0])
    localisation_score(cams[0], lesion_masks[0])        # share of the map's energy on the lesion
    pointing_game(cams[0], lesion_masks[0])             # is the map's peak on the lesion?

Grad-CAM (Selvaraju et al. 2017): the feature map A [K, h, w] of the chosen layer is weighted by the
spatial mean of d(class score)/dA per channel, summed over channels, passed through ReLU, upsampled
(bilinear) to the image size and min-max scaled to [0, 1] per image.

Which feature map: for models exposing ``forward_features``/``forward_head`` (every timm model:
resnet, densenet, efficientnet, inception...), the output of ``forward_features`` (the last conv
block), computed without any hook. For any other ``nn.Module`` pass ``layer`` (a submodule or its
dotted name); a temporary forward hook captures its output and is always removed. Without either,
the last ``nn.Conv2d`` registered in the model is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.eval.figures import as_grey_uint8, jet, mask_contour, rgb_png

if TYPE_CHECKING:
    import torch
    from torch import nn


def _resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module | None:
    """The submodule whose output is explained, or None for the forward_features route."""
    from torch import nn

    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ConfigError(f"model has no submodule {layer!r}") from None
    if layer is not None:
        if not any(m is layer for m in model.modules()):
            raise ConfigError("layer is not a submodule of model")
        return layer
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("model has no forward_features and no Conv2d: pass layer= explicitly")
    return convs[-1]


def token_grid(model: Any, tokens: Any) -> Any:
    """A ViT's token sequence ``[B, N, D]`` as its patch grid ``[B, D, g, g]`` (prefix tokens dropped), so
    feature-map code (Grad-CAM, masked-image decoders) treats ViTs as CNNs; a 4-D map is returned as is."""
    if tokens.ndim == 4:
        return tokens
    patches = tokens[:, getattr(model, "num_prefix_tokens", 0):]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ConfigError(f"cannot lay {patches.shape[1]} tokens of {type(model).__name__} on a square grid")
    return patches.transpose(1, 2).reshape(len(tokens), -1, side, side)


def _activations_and_logits(
    model: nn.Module, images: torch.Tensor, layer: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model once; return the explained feature map (part of the graph) and the logits."""
    if layer is None:
        feats = model.forward_features(images)
        if not feats.requires_grad:  # frozen backbone: let gradients reach the map anyway
            feats = feats.detach().requires_grad_(True)
        return feats, model.forward_head(feats)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not hasattr(output, "requires_grad"):
            raise ConfigError("the chosen layer's output is not a tensor")
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(images)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError("the chosen layer was not run by model.forward")
    return captured[-1], logits


def _target_scores(logits: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """Per-image score to explain: the logit of ``target`` (default: the predicted class).

    A single-output model ([B] or [B, 1]) explains its one logit (the positive class); target is ignored.
    """
    import torch

    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return logits.reshape(-1)
    if logits.ndim != 2:
        raise ConfigError(f"expected logits [B, classes], got shape {tuple(logits.shape)}")
    b, k = logits.shape
    if target is None:
        idx = logits.argmax(dim=1)
    else:
        idx = torch.as_tensor(target, device=logits.device, dtype=torch.long).reshape(-1)
        if idx.numel() not in (1, b):
            raise ConfigError(f"target must be one class or one per image ({b}), got {idx.numel()}")
        idx = idx.expand(b)
        if (idx < 0).any() or (idx >= k).any():
            raise ConfigError(f"target classes must lie in [0, {k})")
    return logits.gather(1, idx.reshape(b, 1)).reshape(b)


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    layer: nn.Module | str | None = None,
) -> torch.Tensor:
    """Grad-CAM maps [B, H, W] in [0, 1] for ``images`` [B, C, H, W] (see the module docstring).

    The model runs in eval mode (BatchNorm running statistics, no dropout); every module's
    train/eval flag is restored afterwards, no hook outlives the call, and parameter ``.grad`` is
    untouched (gradients are taken with ``torch.autograd.grad`` w.r.t. the feature map only).
    A map that is zero everywhere (no positive evidence) stays zero.
    """
    import torch
    import torch.nn.functional as F

    if images.ndim != 4:
        raise ConfigError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    chosen = _resolve_layer(model, layer)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            acts, logits = _activations_and_logits(model, images, chosen)
            if acts.ndim not in (3, 4):
                raise ConfigError(f"explained feature map must be [B, K, h, w], got {tuple(acts.shape)}")
            scores = _target_scores(logits, target)
            (grads,) = torch.autograd.grad(scores.sum(), acts)
            if acts.ndim == 3:  # a ViT's tokens [B, N, D]: its patch grid is the feature map
                acts, grads = token_grid(model, acts), token_grid(model, grads)
    finally:
        for module, mode in modes:
            module.training = mode
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(dim=1).values[:, None, None], flat.max(dim=1).values[:, None, None]
    return torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))


def _as_2d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64).squeeze()
    if a.ndim != 2:
        raise ConfigError(f"{name} must be a single [H, W] map, got shape {a.shape}")
    return a


def _cam_and_mask(cam: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    c, m = _as_2d(cam, "cam"), _as_2d(mask, "mask") > 0
    if c.shape != m.shape:
        raise ConfigError(f"cam {c.shape} and mask {m.shape} differ in shape")
    if (c < 0).any():
        raise ConfigError("cam has negative values; pass a Grad-CAM map (ReLU'd, in [0, 1])")
    return c, m


def localisation_score(cam: Any, mask: Any) -> float:
    """Energy-based pointing: ``sum(cam * mask) / sum(cam)``, the share of the map's mass on the lesion.

    1.0 means all saliency lies inside the mask; a map spread uniformly scores the mask's area fraction
    (the chance level to compare against). NaN for an all-zero map.
    """
    c, m = _cam_and_mask(cam, mask)
    total = c.sum()
    return float(c[m].sum() / total) if total > 0 else float("nan")


def pointing_game(cam: Any, mask: Any) -> bool:
    """True if the map's maximum lies inside the mask (any tied maximum counts); False for a flat map."""
    c, m = _cam_and_mask(cam, mask)
    if c.max() == c.min():
        return False
    return bool((c[m] == c.max()).any())


def overlay_png(
    image: Any,
    cam: Any,
    path: str | Path | None = None,
    mask: Any = None,
    *,
    alpha: float = 0.45,
    scale: int = 1,
) -> bytes:
    """PNG of the grey image with the jet-coloured Grad-CAM blended on top (and the mask outline in white).

    ``image``: uint8 [H, W] or a (normalised) tensor/array [C, H, W]; ``cam`` [H, W] in [0, 1] (resized
    bilinearly if its size differs); ``mask`` [H, W] binary. Returns the PNG bytes, also written to ``path``.
    """
    from PIL import Image

    grey = as_grey_uint8(image)
    c = _as_2d(cam, "cam")
    if c.shape != grey.shape:
        c = np.asarray(
            Image.fromarray(c.astype(np.float32)).resize(grey.shape[::-1], Image.Resampling.BILINEAR)
        )
    heat = jet(np.clip(c, 0, 1)).astype(np.float64)
    rgb = (1 - alpha) * np.repeat(grey[..., None], 3, axis=2) + alpha * heat
    rgb = rgb.round().astype(np.uint8)
    if mask is not None:
        m = _as_2d(mask, "mask")
        if m.shape != grey.shape:
            raise ConfigError(f"mask {m.shape} and image {grey.shape} differ in shape")
        rgb[mask_contour(m)] = (255, 255, 255)
    return rgb_png(rgb, path, scale=scale)
