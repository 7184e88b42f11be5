"""Downstream segmentation: a U-Net whose encoder carries the initial weights, BCE + soft Dice loss,
the epoch with the lowest validation loss kept; after training, the test Dice (per image, and over
the images with a lesion) and prediction overlays."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.tasks import downstream
from radimagenet.tasks.finetune_config import FinetuneConfig

if TYPE_CHECKING:
    import torch


def bce_dice_per_image(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5,
                       smooth: float = 1.0) -> torch.Tensor:
    """Per image [B]: ``bce_weight * BCE-with-logits + (1 - bce_weight) * soft Dice loss`` on sigmoid(logits)."""
    import torch.nn.functional as F

    if logits.shape != target.shape:
        raise ConfigError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if not 0.0 <= bce_weight <= 1.0:
        raise ConfigError(f"bce_weight must be in [0, 1], got {bce_weight}")
    t = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(1).mean(1)
    p, t = logits.sigmoid().flatten(1), t.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return bce_weight * bce + (1 - bce_weight) * dice


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5,
                  smooth: float = 1.0) -> torch.Tensor:
    """The batch's mean of :func:`bce_dice_per_image` (every image has the same number of pixels)."""
    return bce_dice_per_image(logits, target, bce_weight, smooth).mean()


@dataclass
class SegmentTask(downstream.DownstreamTask):
    name: str = "segmentation"
    masks: ClassVar[bool] = True

    def build_model(self) -> tuple[Any, Any]:
        """A U-Net on the encoder of the initial classifier (its weights copied; scratch: fresh)."""
        from radimagenet.models.freeze import apply_freeze
        from radimagenet.models.unet import create_unet

        cfg = dataclasses.replace(self.cfg, model=dataclasses.replace(self.cfg.model, drop_rate=0.0))
        encoder, self.record = downstream.build_classifier(cfg, self.manifest, 1)
        unet = create_unet(encoder if cfg.init != "scratch" else self.record.arch, num_classes=1,
                           in_chans=self.record.in_chans)
        unet.radimagenet_cfg = self.record
        apply_freeze(unet, cfg.train.freeze)
        return unet, self.record

    def loss(self, outputs: Any, batch: Any) -> Any:
        return bce_dice_loss(outputs.float(), batch.masks.to(outputs.device, non_blocking=True).float())

    def outputs(self, outputs: Any, batch: Any) -> dict[str, np.ndarray]:
        from radimagenet.eval.dice import dice_per_image

        logits, target = outputs.float().cpu(), batch.masks.float()
        return {"dice": dice_per_image(logits, target, from_logits=True).numpy(),
                "lesion": target.flatten(1).amax(1).numpy(), "label": batch.labels.numpy(),
                "loss": bce_dice_per_image(logits, target).numpy()}

    def metrics(self, split: str, out: Any) -> dict[str, float]:
        n = len(out)
        return {f"{split}/loss": float(out.arrays["loss"].mean()) if n else float("nan"),
                f"{split}/n_images": float(n),
                f"{split}/dice": float(out.arrays["dice"].mean()) if n else float("nan")}

    def finish(self, model: Any, record: Any, ctx: Any, selected: dict[str, float]) -> dict[str, float]:
        """Test Dice of the best weights; rank 0 writes overlays, predictions and the report."""
        from radimagenet.train.engine import predict

        test = predict(model, self, "test", ctx)
        metrics = report(test) | selected
        with downstream.report_dir(ctx) as out_dir:
            if out_dir:
                write_overlays(model, record, self.cfg, self.manifest, out_dir)
                downstream.save_report(self.cfg, self.manifest, model, record, self.spec, test, metrics, out_dir)
        return metrics


def report(test: Any) -> dict[str, float]:
    """Mean per-image Dice (empty vs empty counts 1) and the mean over the images that have a lesion."""
    dice, lesion = test.arrays["dice"], test.arrays["lesion"] > 0
    out = {"test/dice": float(dice.mean()), "test/loss": float(test.arrays["loss"].mean()),
           "test/n_images": float(len(dice)), "test/n_lesion": float(lesion.sum())}
    if lesion.any():
        out["test/dice_lesion"] = float(dice[lesion].mean())
    return out


def write_overlays(model: Any, record: Any, cfg: FinetuneConfig, manifest: dict, out_dir: str) -> None:
    """Prediction overlays (red: predicted, green outline: truth) for test images with a lesion first."""
    import torch

    from radimagenet.eval.figures import prediction_overlay_png

    model.eval()
    device = next(model.parameters()).device
    chosen: list[tuple] = []
    with torch.no_grad():
        for batch in downstream.test_batches(record, cfg, manifest):
            logits = model(batch.images.to(device)).float().cpu()
            chosen += [(batch.masks[i, 0].any().item(), batch.images[i], logits[i, 0] > 0, batch.masks[i, 0],
                        batch.keys[i]) for i in range(len(batch))]
            if sum(c[0] for c in chosen) >= cfg.eval.overlay_samples:
                break
    chosen.sort(key=lambda c: not c[0])
    for n, (_, image, pred, mask, key) in enumerate(chosen[: cfg.eval.overlay_samples]):
        prediction_overlay_png(image, pred, mask, os.path.join(out_dir, "overlays", f"segmentation_{n:03d}_{key}.png"),
                               scale=max(1, 256 // image.shape[-1]))
