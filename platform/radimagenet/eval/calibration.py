"""Calibration: does a predicted probability of 0.8 come true 80% of the time? The reliability bins and
the expected calibration error (the reliability diagram is :func:`radimagenet.eval.figures.reliability_diagram_png`).

    bins = reliability_bins(probs, labels)            # per bin: count, mean confidence, accuracy
    expected_calibration_error(probs, labels)         # test/ece

Top-label calibration (Guo et al. 2017): a sample's confidence is its largest class probability, and it
is correct when that class is its label; a binary task is the two columns [1 - p, p]. Confidences fall
into ``n_bins`` equal-width bins ((m - 1)/M, m/M] (a confidence of 0 joins the first), and
ECE = sum over bins of (n_bin / N) * |accuracy_bin - confidence_bin|.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radimagenet.errors import ConfigError

N_BINS = 15


def _top_label(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence [N], correct [N])`` from probabilities [N, K] and integer labels [N]."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.size or y.size == 0:
        raise ConfigError(f"probs must be [N, K] with N = len(labels) = {y.size} > 0, got {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ConfigError("calibration needs probabilities in [0, 1] (softmax outputs), not scores or logits")
    return p.max(axis=1), p.argmax(axis=1) == y


def reliability_bins(probs: Any, labels: Any, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin: ``edges`` [M + 1], ``count`` [M], mean ``confidence`` [M] and ``accuracy`` [M]
    (NaN for empty bins)."""
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _top_label(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """Top-label ECE in [0, 1]: the count-weighted mean gap between accuracy and confidence over the bins."""
    b = reliability_bins(probs, labels, n_bins)
    full = b["count"] > 0
    gap = np.abs(b["accuracy"][full] - b["confidence"][full])
    return float((b["count"][full] * gap).sum() / b["count"].sum())
