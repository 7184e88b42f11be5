"""The k-NN evaluation of a backbone (``radimagenet finetune protocol=knn``): no training at all.

    metrics = knn_evaluate(task, ctx)      # task: a ClassifyTask; returns the same test report as fine-tuning

Every training image (after ``data.label_fraction``) is embedded once with the backbone's pooled features
(no augmentation); each validation and test image is classified by the weighted vote of its ``eval.knn_k``
nearest training images (cosine similarity, DINO's ``exp(sim / 0.07)`` weights: :mod:`radimagenet.eval.knn`),
the vote shares being its class probabilities. The test report is the fine-tuning one (AUC with its
patient-level CI, the threshold chosen on validation, ``predictions/test.csv``), so ``compare`` and
``sweep`` pair and test k-NN runs as any other. It measures what the frozen features already separate,
with no head to fit: the quickest read of a self-supervised backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from radimagenet.eval.knn import knn_probs
from radimagenet.train.engine import metric_logger, predict


class KNNClassifier(nn.Module):
    """``log`` of the k-NN vote shares of each image among a bank of training embeddings."""

    def __init__(self, model: nn.Module, bank: np.ndarray, labels: np.ndarray, num_classes: int, k: int):
        super().__init__()
        self.model, self.bank, self.labels, self.num_classes, self.k = model, bank, labels, num_classes, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = embed(self.model, x).float().cpu().numpy()
        probs = knn_probs(self.bank, self.labels, feats, self.k, self.num_classes)
        return torch.log(torch.from_numpy(probs).clamp_min(1e-6)).to(x.device)


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled features a timm classifier feeds its head (its head is not used)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@dataclass
class _Embeddings:
    """The task's training-split batches, turned into embeddings by :func:`radimagenet.train.engine.predict`."""

    task: Any

    def loader(self, split: str, ctx: Any, *, epoch: int = 0, train: bool = False, start: int = 0) -> Any:
        return self.task.loader(split, ctx, train=False)  # the label_fraction subset, no augmentation

    def outputs(self, outputs: torch.Tensor, batch: Any) -> dict[str, np.ndarray]:
        return {"embedding": outputs.float().cpu().numpy(), "label": batch.labels.numpy()}


class _Embedder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.model, x)


def knn_evaluate(task: Any, ctx: Any) -> dict[str, float]:
    """Embed the training split, classify validation and test by k-NN, write the test report (rank 0)."""
    cfg = task.cfg
    torch.manual_seed(cfg.train.seed)
    model, record = task.build_model()
    model = model.to(ctx.device).eval()
    bank = predict(_Embedder(model), _Embeddings(task), "train", ctx)
    classifier = KNNClassifier(model, bank.arrays["embedding"], bank.arrays["label"], len(task.spec.classes),
                               cfg.eval.knn_k)
    metrics = task.finish(classifier, record, ctx, {"train/n_images": float(len(bank))})
    metric_logger(cfg.tracking, ctx)(metrics, 0)
    ctx.report(metrics, None, "final")
    return metrics
