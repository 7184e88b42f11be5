"""Evaluation metrics from gathered logits and labels: pure NumPy/scikit-learn, no distributed code.

``classification_metrics`` works on the *whole* validation set; :func:`gather_eval` (in
``radimagenet.train.engine``) collects it from all ranks first so every sample is counted once.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from radimagenet.models.factory import modality_of


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives.

    Classes absent from the evaluation set (or present in every sample) have no defined AUC and are
    skipped; NaN when no class qualifies.
    """
    from sklearn.metrics import roc_auc_score

    aucs = []
    for c in range(probs.shape[1]):
        positives = labels == c
        if positives.any() and not positives.all():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                aucs.append(roc_auc_score(positives, probs[:, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    topk = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    modalities: list[str] | None = None,
    prefix: str = "val/",
) -> dict[str, float]:
    """loss, top-1, top-5, macro AUC and accuracy per modality (``val/acc_CT`` ...).

    ``modalities`` gives each sample's modality (from its metadata); by default it is the first path
    component of the sample's class name (``CT/lung/nodule`` -> ``CT``).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no evaluation samples (is the val split empty?)")
    if logits.shape != (len(labels), len(classes)):
        raise ValueError(f"logits shape {logits.shape} does not match {len(labels)} labels x {len(classes)} classes")
    pred = logits.argmax(axis=1)
    out: dict[str, float] = {
        f"{prefix}loss": cross_entropy(logits, labels),
        f"{prefix}top1": float((pred == labels).mean()),
        f"{prefix}top5": topk_accuracy(logits, labels, 5),
        f"{prefix}auc_macro": macro_auc(softmax(logits), labels),
        f"{prefix}samples": float(len(labels)),
    }
    mods = np.asarray(modalities if modalities is not None else [modality_of(classes[y]) for y in labels])
    for m in sorted(set(mods.tolist())):
        sel = mods == m
        out[f"{prefix}acc_{m}"] = float((pred[sel] == labels[sel]).mean())
    return out


def summarize(metrics: dict[str, Any]) -> str:
    """One log line: ``val/top1=0.812 val/auc_macro=0.973 ...``."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
