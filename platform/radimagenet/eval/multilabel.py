"""Multi-label evaluation: images that carry several findings, one sigmoid probability per label.

    t = choose_thresholds(y_val, p_val)                       # one operating point per label, on VALIDATION
    report = multilabel_report(y_test, p_test, t, patients=pts)  # {"test/auc": ..., "test/auc_class_3": ...}

``y`` is a multi-hot matrix [N, K] (1 where image n has label k), ``p`` the probabilities [N, K]. The
names mean what they mean for one label per image (:mod:`radimagenet.eval.metrics`):

* ``<split>/auc``: the macro AUC, the mean of the per-label AUCs over the labels that some images have
  and others lack (a label every image has, or none has, has no AUC: it is left out and counted in
  ``/n_labels_without_auc``); ``/auc_class_<k>`` each label's AUC.
* ``/auc_ci_low``/``_high``: a patient (cluster) bootstrap 95% interval of the macro AUC, every label
  scored on the same resampled patients; ``/auc_image_ci_*`` resamples images. A resample in which a
  scored label lost its positives or negatives is skipped, as for one label per image.
* ``/accuracy``: label-wise accuracy (the share of image x label decisions that are right) at the
  per-label thresholds; ``/subset_accuracy``: images whose every label is right; ``/sensitivity``,
  ``/specificity``: means over the scored labels.
* ``/ece``: calibration of every (image, label) probability as a binary prediction (top-label ECE of
  ``[1 - p, p]``), the same function as the single-label ECE; :func:`flat_binary` gives the diagram its inputs.

The AUC arithmetic is :func:`radimagenet.eval.metrics.weighted_auc` (one implementation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.eval.bootstrap import draws, percentile_ci
from radimagenet.eval.calibration import expected_calibration_error
from radimagenet.eval.metrics import choose_threshold, weighted_auc


def _inputs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a multi-hot [N, K] and scores [N, K] of the same shape."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape or y.shape[0] == 0:
        raise ConfigError(f"multi-label y_true and probs must be non-empty [N, K] of equal shape, got "
                          f"{y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError(f"multi-label y_true must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(p).all():
        raise ConfigError("scores contain NaN or infinity")
    return y.astype(bool), p


def scored_labels(y_true: Any) -> np.ndarray:
    """The label ids with both positive and negative images in ``y_true`` [N, K]: those with an AUC."""
    y = np.asarray(y_true).astype(bool)
    pos = y.sum(axis=0)
    return np.flatnonzero((pos > 0) & (pos < y.shape[0]))


def _label_aucs(y: np.ndarray, p: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                columns: np.ndarray | None = None) -> np.ndarray:
    """AUC of each of ``labels`` for each row of ``weights``: [R, len(labels)]."""
    return np.stack([weighted_auc(y[:, k], p[:, k], weights, columns) for k in labels], axis=1)


def label_aucs(y_true: Any, probs: Any) -> dict[int, float]:
    """``{label: AUC}`` for the labels that some images have and others lack."""
    y, p = _inputs(y_true, probs)
    labels = scored_labels(y)
    if labels.size == 0:
        return {}
    aucs = _label_aucs(y, p, labels, np.ones((1, y.shape[0])))[0]
    return {int(k): float(a) for k, a in zip(labels, aucs, strict=True)}


def macro_auc(probs: Any, y_true: Any) -> float:
    """The mean per-label AUC over the scored labels; NaN when no label has one."""
    aucs = label_aucs(y_true, probs)
    return float(np.mean(list(aucs.values()))) if aucs else math.nan


def auc_resamples(y_true: Any, probs: Any, n: int = 1000, seed: int = 0, *, patients: Any = None) -> np.ndarray:
    """The macro AUC of each of ``n`` bootstrap resamples [n] over the labels scored on the full set;
    with ``patients`` whole patients are resampled. NaN where a resample lost a scored label's class.
    The same inputs and ``seed`` draw the same resamples (paired across models)."""
    y, p = _inputs(y_true, probs)
    labels = scored_labels(y)
    if labels.size == 0:
        raise ConfigError("no label has both positive and negative images: the AUC is not defined")
    columns, chunks = draws(y.shape[0], n, seed, patients=patients)
    return np.concatenate([_label_aucs(y, p, labels, c, columns).mean(axis=1) for c in chunks])


def choose_thresholds(y_val: Any, p_val: Any, rule: str = "youden") -> np.ndarray:
    """One operating threshold per label [K], chosen on VALIDATION by ``rule`` (see
    :func:`radimagenet.eval.metrics.choose_threshold`); 0.5 for a label validation cannot score."""
    y, p = _inputs(y_val, p_val)
    out = np.full(y.shape[1], 0.5)
    for k in scored_labels(y):
        out[k] = choose_threshold(y[:, k], p[:, k], rule)
    return out


def flat_binary(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, label) pair as a binary prediction: ``([M, 2] probabilities, [M] 0/1 labels)``."""
    y, p = _inputs(y_true, probs)
    flat = p.reshape(-1)
    return np.stack([1 - flat, flat], axis=1), y.reshape(-1).astype(np.int64)


def multilabel_report(y_true: Any, probs: Any, thresholds: Any, *, patients: Any = None, n_boot: int = 1000,
                      seed: int = 0, prefix: str = "test") -> dict[str, Any]:
    """The multi-label test report (the names of the module doc); ``thresholds`` [K] from validation."""
    y, p = _inputs(y_true, probs)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.size != y.shape[1]:
        raise ConfigError(f"{t.size} thresholds given for {y.shape[1]} labels")
    aucs = label_aucs(y, p)
    if not aucs:
        raise ConfigError("no label has both positive and negative test images: the AUC is not defined")
    pts = np.arange(y.shape[0]) if patients is None else np.asarray(patients).reshape(-1)
    lo, hi = percentile_ci(auc_resamples(y, p, n_boot, seed, patients=pts))
    ilo, ihi = percentile_ci(auc_resamples(y, p, n_boot, seed))
    pred = p >= t
    scored = np.array(sorted(aucs))
    tp = (pred & y).sum(axis=0)[scored]
    tn = (~pred & ~y).sum(axis=0)[scored]
    pos = y.sum(axis=0)[scored]
    neg = y.shape[0] - pos
    x = prefix
    return {
        f"{x}/auc": float(np.mean(list(aucs.values()))),
        f"{x}/auc_ci_low": lo, f"{x}/auc_ci_high": hi, f"{x}/auc_image_ci_low": ilo, f"{x}/auc_image_ci_high": ihi,
        f"{x}/n_patients": int(np.unique(pts).size), f"{x}/n_images": int(y.shape[0]),
        f"{x}/n_labels": int(y.shape[1]), f"{x}/n_labels_without_auc": int(y.shape[1] - len(aucs)),
        f"{x}/accuracy": float((pred == y).mean()),
        f"{x}/subset_accuracy": float((pred == y).all(axis=1).mean()),
        f"{x}/sensitivity": float((tp / pos).mean()),
        f"{x}/specificity": float((tn / neg).mean()),
        f"{x}/ece": expected_calibration_error(*flat_binary(y, p)) if p.min() >= 0 and p.max() <= 1 else math.nan,
        **{f"{x}/auc_class_{k}": a for k, a in aucs.items()},
        **{f"{x}/threshold_class_{k}": float(t[k]) for k in range(t.size)},
    }
