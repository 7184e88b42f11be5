"""Evaluation metrics: AUC (the only implementation in the package), its bootstrap interval, the
operating point, confusion matrix, loss and top-k accuracy from logits, and the reports that name
them per split (Dice: :mod:`radimagenet.eval.dice`).

    t = choose_threshold(y_val, s_val)                 # the operating point comes from VALIDATION
    report = binary_report(y_test, s_test, t)          # {"test/auc": ..., "test/auc_ci_low": ..., ...}
    tracking.log_metrics(uri, run_id, scalar_metrics(report))
    classification_metrics(logits, labels, classes)    # {"val/loss": ..., "val/accuracy": ..., "val/auc": ...}

Names are ``<split>/<name>`` and mean the same number everywhere: ``<split>/auc`` (macro one-vs-rest
for several classes), ``<split>/auc_ci_low``/``_high`` (patient bootstrap 95%), ``<split>/accuracy``,
``<split>/loss``, ``<split>/n_images``, ``<split>/n_patients``.

AUC is the rank (Mann-Whitney) statistic with ties counted one half, identical to
``sklearn.metrics.roc_auc_score``. A test set holds several images per patient, so the reported
``auc_ci_low``/``_high`` resample *patients* (cluster bootstrap), and ``auc_image_ci_low``/``_high``
resample images (too narrow when images of a patient are alike). The bootstrap draws resample
*multiplicities* (:mod:`radimagenet.eval.bootstrap`) and evaluates every resample's AUC in one
vectorised pass over the sorted scores: 2,000 patient resamples of 10,000 images take about 0.2 s
of CPU (``benchmarks/bootstrap.py``). Only numpy is needed. Calibration (``<split>/ece``) is
:mod:`radimagenet.eval.calibration`, figures :mod:`radimagenet.eval.figures`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from radimagenet.dataset.format import modality_of
from radimagenet.errors import ConfigError
from radimagenet.eval.bootstrap import draws, percentile_ci
from radimagenet.eval.calibration import expected_calibration_error

# ---------------------------------------------------------------------------------------------- inputs


def _binary_inputs(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (0/1 or bool) and scores to 1-D arrays of equal length."""
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape or y.size == 0:
        raise ConfigError(f"y_true ({y.size}) and scores ({s.size}) must be non-empty and of equal length")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError(f"binary labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ConfigError("scores contain NaN or infinity")
    return y.astype(bool), s


def _multiclass_inputs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert integer labels [N] in [0, K) and scores [N, K] (probabilities or logits)."""
    y = np.asarray(y_true).reshape(-1)
    pr = np.asarray(probs, dtype=np.float64)
    if pr.ndim != 2 or pr.shape[0] != y.size:
        raise ConfigError(f"probs must be [N, K] with N = len(y_true) = {y.size}, got {pr.shape}")
    k = pr.shape[1]
    if not np.isfinite(pr).all():
        raise ConfigError("probs contain NaN or infinity")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ConfigError(f"labels must be integers in [0, {k})")
    return y, pr


def _need_both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ConfigError("AUC needs both classes in y_true; this set has only one")


# ------------------------------------------------------------------------------------------------- AUC


def weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Mann-Whitney AUC of each row of ``weights`` [R, C] (multiplicities); sample i weighs
    ``weights[:, columns[i]]`` (by default column i). NaN where a row lost one class.

    The negatives are sorted once; each positive counts the weight of the negatives strictly below it
    plus half of those tied with it, read off the negatives' cumulative weight (exact for integer weights).
    """
    col = np.arange(y.size) if columns is None else columns
    neg = np.flatnonzero(~y)
    neg = neg[np.argsort(s[neg], kind="stable")]
    pos = np.flatnonzero(y)
    lo = np.searchsorted(s[neg], s[pos], "left")
    hi = np.searchsorted(s[neg], s[pos], "right")
    w = np.asarray(weights)
    acc = np.float64 if w.dtype.kind == "f" else np.int64
    cum = np.zeros((w.shape[0], neg.size + 1), dtype=acc)
    np.cumsum(w[:, col[neg]], axis=1, dtype=acc, out=cum[:, 1:])
    wp = w[:, col[pos]]
    below = 2 * cum[:, lo] if np.array_equal(lo, hi) else cum[:, lo] + cum[:, hi]  # twice: ties count 1/2
    n_pos, n_neg = wp.sum(axis=1, dtype=acc), cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * below).sum(axis=1, dtype=acc) / (2.0 * n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _ovr_auc(y: np.ndarray, probs: np.ndarray, classes: Sequence[int], weights: np.ndarray,
             columns: np.ndarray | None = None) -> np.ndarray:
    """One-vs-rest AUC of each of ``classes`` for each row of ``weights``: [R, len(classes)]."""
    return np.stack([weighted_auc(y == k, probs[:, k], weights, columns) for k in classes], axis=1)


def auc_score(y_true: Any, scores: Any) -> float:
    """Binary ROC AUC (equals ``sklearn.metrics.roc_auc_score``); ConfigError if only one class is present."""
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y)
    return float(weighted_auc(y, s, np.ones((1, y.size)))[0])


def macro_auc(probs: Any, labels: Any) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives.

    Classes absent from the evaluation set (or present in every sample) have no defined AUC and are
    skipped; NaN when no class qualifies. ``probs`` is [N, K] (probabilities or logits: only ranks count).
    """
    y, pr = _multiclass_inputs(labels, probs)
    counts = np.bincount(y, minlength=pr.shape[1]) if y.size else np.zeros(pr.shape[1], np.int64)
    classes = np.flatnonzero((counts > 0) & (counts < y.size))
    if classes.size == 0:
        return math.nan
    return float(_ovr_auc(y, pr, classes, np.ones((1, y.size)))[0].mean())


def auc_resamples(
    y_true: Any, scores: Any, n: int = 1000, seed: int = 0, *, patients: Any = None, stratified: bool = True
) -> np.ndarray:
    """The AUC of each of ``n`` bootstrap resamples, [n]; NaN where a resample lost a class.

    Binary ``scores`` [N] (labels 0/1), or the macro one-vs-rest AUC of ``scores`` [N, K] over the
    classes present in ``y_true`` (integer labels). With ``patients`` (one pseudonym per image) whole
    patients are resampled (cluster bootstrap, unstratified: a patient may hold both classes); without,
    images are, within their class (``stratified``, class sizes fixed as pROC does) or all together.
    The same labels, patients and ``seed`` draw the same resamples, so two models' values are paired.
    """
    multi = np.ndim(scores) == 2
    y, s = _multiclass_inputs(y_true, scores) if multi else _binary_inputs(y_true, scores)
    classes = np.unique(y)
    if classes.size < 2:
        raise ConfigError("AUC needs at least two classes in y_true; this set has only one")
    columns, chunks = draws(y.size, n, seed, patients=patients, strata=y if stratified else None)
    return np.concatenate([_ovr_auc(y, s, classes, c, columns).mean(axis=1) if multi
                           else weighted_auc(y, s, c, columns) for c in chunks])


def bootstrap_auc(
    y_true: Any, scores: Any, n: int = 1000, seed: int = 0, *, stratified: bool = True, patients: Any = None
) -> tuple[float, float, float]:
    """``(auc, ci_low, ci_high)``: the AUC and its percentile bootstrap 95% interval (:func:`auc_resamples`).

    With ``patients`` the interval resamples patients and ``stratified`` does not apply; otherwise
    ``stratified=False`` resamples the whole set. Resamples that lost a class are skipped.
    """
    auc = auc_score(y_true, scores)
    lo, hi = percentile_ci(auc_resamples(y_true, scores, n, seed, patients=patients, stratified=stratified))
    return auc, lo, hi


def bootstrap_macro_auc(
    y_true: Any, probs: Any, n: int = 1000, seed: int = 0, *, patients: Any = None
) -> tuple[float, float, float, dict[int, float]]:
    """``(macro auc, ci_low, ci_high, {class: auc})`` over the classes present in ``y_true`` (at least two).

    The percentile bootstrap 95% interval resamples patients when ``patients`` is given, else images
    within each class (stratified).
    """
    values = auc_resamples(y_true, probs, n, seed, patients=patients)
    by_class = _per_class_auc(*_multiclass_inputs(y_true, probs))
    return float(np.mean(list(by_class.values()))), *percentile_ci(values), by_class


def _per_class_auc(y: np.ndarray, probs: np.ndarray) -> dict[int, float]:
    """``{class: one-vs-rest AUC}`` for the classes present in ``y``."""
    present = np.unique(y)
    return {int(c): float(a) for c, a in zip(present, _ovr_auc(y, probs, present, np.ones((1, y.size)))[0],
                                             strict=True)}


# ------------------------------------------------------------------------------------- operating point


def roc_points(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for "positive if score >= threshold", thresholds descending from +inf."""
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y)
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1]
    tp = np.cumsum(y_desc)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s_desc[last]]


def choose_threshold(y_val: Any, s_val: Any, rule: str = "youden") -> float:
    """Operating threshold chosen on VALIDATION data (never on the test set); predict positive if score >= t.

    Rules: ``"youden"`` (max sensitivity + specificity - 1), ``"closest"`` (ROC point nearest (0, 1)),
    ``"sensitivity=0.9"`` (highest threshold reaching that sensitivity), ``"specificity=0.9"`` (lowest
    threshold keeping that specificity). The returned value is the midpoint between the chosen score
    and the next lower distinct score, so validation predictions are unchanged but the cut sits between them.
    """
    fpr, tpr, thr = roc_points(y_val, s_val)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the +inf "nothing positive" point
    name, _, value = rule.partition("=")
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))
    elif rule == "closest":
        i = int(np.argmin(fpr**2 + (1 - tpr) ** 2))
    elif name in ("sensitivity", "specificity") and value:
        try:
            target = float(value)
        except ValueError:
            raise ConfigError(f"threshold rule {rule!r}: {value!r} is not a number") from None
        if not 0.0 <= target <= 1.0:
            raise ConfigError(f"threshold rule {rule!r}: target must be in [0, 1]")
        ok = tpr >= target if name == "sensitivity" else (1 - fpr) >= target
        if not ok.any():
            raise ConfigError(f"no threshold reaches {name} {target} on the validation set")
        i = int(np.flatnonzero(ok)[0] if name == "sensitivity" else np.flatnonzero(ok)[-1])
    else:
        raise ConfigError(
            f"unknown threshold rule {rule!r}; use youden, closest, sensitivity=<x> or specificity=<x>"
        )
    below = thr[i + 1] if i + 1 < thr.size else None
    return float(thr[i] if below is None else (thr[i] + below) / 2)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``[K, K]`` int counts; rows are true classes, columns predicted classes."""
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ConfigError(f"y_true ({t.size}) and y_pred ({p.size}) differ in length")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


# ------------------------------------------------------------------------------------------ logits


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    topk = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


# ------------------------------------------------------------------------------------------ reports


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _intervals(y: np.ndarray, scores: np.ndarray, patients: Any, n_boot: int, seed: int, p: str) -> dict[str, Any]:
    """The patient-level AUC interval (``auc_ci_*``), the image-level one (``auc_image_ci_*``), the counts
    and, for probabilities, the ECE. Without ``patients`` every image is its own patient."""
    pts = np.arange(y.size) if patients is None else np.asarray(patients).reshape(-1)
    probs = np.stack([1 - scores, scores], axis=1) if scores.ndim == 1 else scores
    lo, hi = percentile_ci(auc_resamples(y, scores, n_boot, seed, patients=pts))
    ilo, ihi = percentile_ci(auc_resamples(y, scores, n_boot, seed))
    out = {f"{p}/auc_ci_low": lo, f"{p}/auc_ci_high": hi, f"{p}/auc_image_ci_low": ilo,
           f"{p}/auc_image_ci_high": ihi, f"{p}/n_patients": int(np.unique(pts).size), f"{p}/n_images": int(y.size)}
    if probs.min() >= 0 and probs.max() <= 1 and np.allclose(probs.sum(axis=1), 1, atol=1e-4):
        out[f"{p}/ece"] = expected_calibration_error(probs, y.astype(np.int64))
    return out


def binary_report(
    y_true: Any, scores: Any, threshold: float, *, patients: Any = None, n_boot: int = 1000, seed: int = 0,
    prefix: str = "test",
) -> dict[str, Any]:
    """AUC with bootstrap 95% CIs, and accuracy, sensitivity, specificity at ``threshold`` (from validation).

    Keys: ``{prefix}/auc``, ``/auc_ci_low``, ``/auc_ci_high`` (resampling ``patients``, one pseudonym
    per image; each image its own patient when None), ``/auc_image_ci_low``, ``/auc_image_ci_high``
    (resampling images within their class), ``/accuracy``, ``/sensitivity``, ``/specificity``,
    ``/threshold``, ``/n_patients``, ``/n_images``, ``/n_positive``, ``/ece`` (when ``scores`` are
    probabilities of the positive class) and ``confusion_matrix`` ([[tn, fp], [fn, tp]]).
    """
    y, s = _binary_inputs(y_true, scores)
    auc = auc_score(y, s)
    cm = confusion_matrix(y, s >= threshold, 2)
    (tn, fp), (fn, tp) = cm.tolist()
    p = prefix
    return {
        f"{p}/auc": auc,
        **_intervals(y, s, patients, n_boot, seed, p),
        f"{p}/accuracy": (tp + tn) / y.size,
        f"{p}/sensitivity": _ratio(tp, tp + fn),
        f"{p}/specificity": _ratio(tn, tn + fp),
        f"{p}/threshold": float(threshold),
        f"{p}/n_positive": int(y.sum()),
        "confusion_matrix": cm.tolist(),
    }


def multiclass_report(
    y_true: Any, probs: Any, *, patients: Any = None, n_boot: int = 1000, seed: int = 0, prefix: str = "test"
) -> dict[str, Any]:
    """Macro one-vs-rest AUC with bootstrap 95% CIs, accuracy, balanced accuracy, ECE, confusion matrix.

    ``probs`` is [N, K] (probabilities or logits: AUC only uses ranks, accuracy the argmax; ``/ece``
    only for probabilities). The intervals and counts are those of :func:`binary_report`. Classes
    absent from ``y_true`` are left out of the macro AUC and named under the ``warning`` key; per-class
    AUCs are ``{prefix}/auc_class_<k>``.
    """
    if np.asarray(y_true).size == 0:
        raise ConfigError(f"probs must be [N, K] with N = len(y_true) = 0, got {np.shape(probs)}")
    y, pr = _multiclass_inputs(y_true, probs)
    k = pr.shape[1]
    per_class = _per_class_auc(y, pr)
    cm = confusion_matrix(y, pr.argmax(axis=1), k)
    present = np.array(sorted(per_class))
    recall = np.diag(cm)[present] / cm.sum(axis=1)[present]
    p = prefix
    out: dict[str, Any] = {
        f"{p}/auc": float(np.mean(list(per_class.values()))),
        **_intervals(y, pr, patients, n_boot, seed, p),
        f"{p}/accuracy": float(np.trace(cm) / y.size),
        f"{p}/balanced_accuracy": float(recall.mean()),
        **{f"{p}/auc_class_{c}": a for c, a in per_class.items()},
        "confusion_matrix": cm.tolist(),
    }
    absent = sorted(set(range(k)) - set(per_class))
    if absent:
        out["warning"] = f"classes {absent} absent from y_true; macro AUC over {present.size} of {k} classes"
    return out


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    modalities: list[str] | None = None,
    prefix: str = "val",
) -> dict[str, float]:
    """The pretraining validation metrics of the *whole* split (gathered from all ranks first):
    ``{prefix}/loss``, ``/accuracy`` (top-1), ``/top5``, ``/auc`` (macro one-vs-rest), ``/n_images`` and
    ``/accuracy_<modality>`` (``val/accuracy_CT`` ...).

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
        f"{prefix}/loss": cross_entropy(logits, labels),
        f"{prefix}/accuracy": float((pred == labels).mean()),
        f"{prefix}/top5": topk_accuracy(logits, labels, 5),
        f"{prefix}/auc": macro_auc(softmax(logits), labels),
        f"{prefix}/n_images": float(len(labels)),
    }
    if modalities is None:
        modalities = [modality_of(classes[y]) for y in labels]
    mods = np.asarray(modalities)
    for m in sorted(set(mods.tolist())):
        sel = mods == m
        out[f"{prefix}/accuracy_{m}"] = float((pred[sel] == labels[sel]).mean())
    return out


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a report: what ``mlflow.log_metrics`` accepts."""
    return {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def summarize(metrics: dict[str, Any]) -> str:
    """One log line: ``val/accuracy=0.812 val/auc=0.973 ...``."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
