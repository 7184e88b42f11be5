"""Downstream classification metrics (AUC with a bootstrap 95% interval, operating point) and figures.

    t = choose_threshold(y_val, s_val)                 # the operating point comes from VALIDATION
    report = binary_report(y_test, s_test, t)          # {"test_auc": ..., "test_auc_ci_low": ..., ...}
    mlflow.log_metrics(scalar_metrics(report))
    roc_curve_png(y_test, s_test, "roc.png", threshold=t)

AUC is the rank (Mann-Whitney) statistic with ties counted one half, identical to
``sklearn.metrics.roc_auc_score``. The bootstrap draws resample *counts* (multinomial) and evaluates
every resample's AUC in one vectorised pass over the sorted scores, so 1,000 resamples of 2,000
samples take a few tens of milliseconds. Only numpy is needed; figures use matplotlib (Agg, no
pyplot state) when it is installed and fall back to plain PIL drawing otherwise. The image helpers at
the end (``as_grey_uint8``, ``mask_contour``, ``jet``, ``rgb_png``) are shared by ``explain`` and
``segment``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError

PathLike = str | Path


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


def _need_both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ConfigError("AUC needs both classes in y_true; this set has only one")


# ------------------------------------------------------------------------------------------------- AUC


def _weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of ``weights`` [R, N] (sample multiplicities); NaN where one class is absent.

    Scores are sorted once; per tie group the positive and negative weight are summed, and each
    positive counts the negatives strictly below it plus half of those tied with it.
    """
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = weights[:, order].astype(np.float64)
    pos = np.add.reduceat(w * y_sorted, starts, axis=1)
    neg = np.add.reduceat(w * ~y_sorted, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auc_score(y_true: Any, scores: Any) -> float:
    """Binary ROC AUC (equals ``sklearn.metrics.roc_auc_score``); ConfigError if only one class is present."""
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y)
    return float(_weighted_auc(y, s, np.ones((1, y.size)))[0])


def _resample_counts(groups: np.ndarray, n: int, rng: np.random.Generator, stratified: bool) -> np.ndarray:
    """[n, N] bootstrap multiplicities; stratified keeps each group's size fixed."""
    size = groups.size
    if not stratified:
        return rng.multinomial(size, np.full(size, 1.0 / size), size=n)
    counts = np.zeros((n, size), dtype=np.int64)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        counts[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n)
    return counts


def _percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_auc(
    y_true: Any, scores: Any, n: int = 1000, seed: int = 0, *, stratified: bool = True
) -> tuple[float, float, float]:
    """``(auc, ci_low, ci_high)``: the AUC and its percentile bootstrap 95% interval.

    ``stratified=True`` resamples positives and negatives separately (class sizes fixed, as pROC does);
    ``stratified=False`` resamples the whole set and skips resamples that lost a class.
    Deterministic for a given ``seed``.
    """
    if n < 1:
        raise ConfigError(f"bootstrap needs n >= 1 resamples, got {n}")
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y)
    auc = float(_weighted_auc(y, s, np.ones((1, y.size)))[0])
    counts = _resample_counts(y, n, np.random.default_rng(seed), stratified)
    lo, hi = _percentile_ci(_weighted_auc(y, s, counts))
    return auc, lo, hi


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


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


# ------------------------------------------------------------------------------------------- reports


def binary_report(
    y_true: Any, scores: Any, threshold: float, *, n_boot: int = 1000, seed: int = 0, prefix: str = "test"
) -> dict[str, Any]:
    """AUC with bootstrap 95% CI, and accuracy, sensitivity, specificity at ``threshold`` (from validation).

    Keys: ``{prefix}_auc``, ``_auc_ci_low``, ``_auc_ci_high``, ``_accuracy``, ``_sensitivity``,
    ``_specificity``, ``_threshold``, ``_n``, ``_n_pos``, and ``confusion_matrix`` ([[tn, fp], [fn, tp]]).
    """
    y, s = _binary_inputs(y_true, scores)
    auc, lo, hi = bootstrap_auc(y, s, n=n_boot, seed=seed)
    cm = confusion_matrix(y, s >= threshold, 2)
    (tn, fp), (fn, tp) = cm.tolist()
    p = prefix
    return {
        f"{p}_auc": auc,
        f"{p}_auc_ci_low": lo,
        f"{p}_auc_ci_high": hi,
        f"{p}_accuracy": (tp + tn) / y.size,
        f"{p}_sensitivity": _ratio(tp, tp + fn),
        f"{p}_specificity": _ratio(tn, tn + fp),
        f"{p}_threshold": float(threshold),
        f"{p}_n": int(y.size),
        f"{p}_n_pos": int(y.sum()),
        "confusion_matrix": cm.tolist(),
    }


def _macro_auc(y: np.ndarray, probs: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC over ``classes`` for each row of ``weights``; [R, len(classes)] per class."""
    return np.stack([_weighted_auc(y == k, probs[:, k], weights) for k in classes], axis=1)


def multiclass_report(
    y_true: Any, probs: Any, *, n_boot: int = 1000, seed: int = 0, prefix: str = "test"
) -> dict[str, Any]:
    """Macro one-vs-rest AUC (bootstrap 95% CI, stratified by class), accuracy, balanced accuracy, confusion matrix.

    ``probs`` is [N, K] (probabilities or logits: AUC only uses ranks, accuracy the argmax). Classes
    absent from ``y_true`` are left out of the macro AUC and named under the ``warning`` key; per-class
    AUCs are ``{prefix}_auc_class_<k>``.
    """
    y = np.asarray(y_true).reshape(-1)
    pr = np.asarray(probs, dtype=np.float64)
    if pr.ndim != 2 or pr.shape[0] != y.size or y.size == 0:
        raise ConfigError(f"probs must be [N, K] with N = len(y_true) = {y.size}, got {pr.shape}")
    k = pr.shape[1]
    if not np.isfinite(pr).all():
        raise ConfigError("probs contain NaN or infinity")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ConfigError(f"labels must be integers in [0, {k})")
    present = np.unique(y)
    if present.size < 2:
        raise ConfigError("multiclass AUC needs at least two classes present in y_true")
    per_class = _macro_auc(y, pr, present, np.ones((1, y.size)))[0]
    counts = _resample_counts(y, n_boot, np.random.default_rng(seed), stratified=True)
    lo, hi = _percentile_ci(_macro_auc(y, pr, present, counts).mean(axis=1))
    cm = confusion_matrix(y, pr.argmax(axis=1), k)
    recall = np.diag(cm)[present] / cm.sum(axis=1)[present]
    p = prefix
    out: dict[str, Any] = {
        f"{p}_auc": float(per_class.mean()),
        f"{p}_auc_ci_low": lo,
        f"{p}_auc_ci_high": hi,
        f"{p}_accuracy": float(np.trace(cm) / y.size),
        f"{p}_balanced_accuracy": float(recall.mean()),
        f"{p}_n": int(y.size),
        **{f"{p}_auc_class_{c}": float(a) for c, a in zip(present.tolist(), per_class, strict=True)},
        "confusion_matrix": cm.tolist(),
    }
    absent = sorted(set(range(k)) - set(present.tolist()))
    if absent:
        out["warning"] = f"classes {absent} absent from y_true; macro AUC over {present.size} of {k} classes"
    return out


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a report: what ``mlflow.log_metrics`` accepts."""
    return {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


# ------------------------------------------------------------------------------------ image helpers


def as_grey_uint8(image: Any) -> np.ndarray:
    """[H, W] uint8 from a uint8/float array or tensor shaped [H, W], [1, H, W], [C, H, W] or [H, W, C].

    uint8 input is kept; anything else is min-max scaled to 0..255 (so normalised tensors display).
    Several channels are averaged.
    """
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3:
        a = a.mean(axis=0 if a.shape[0] in (1, 3) else 2)
    if a.ndim != 2:
        raise ConfigError(f"expected an image [H, W], [C, H, W] or [H, W, C], got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    span = a.max() - a.min()
    return np.zeros(a.shape, np.uint8) if span == 0 else ((a - a.min()) / span * 255).round().astype(np.uint8)


def mask_contour(mask: Any) -> np.ndarray:
    """Boolean [H, W] outline (1 pixel, 4-neighbour) of a binary mask."""
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask).squeeze() > 0
    p = np.pad(m, 1, mode="constant")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def jet(values: np.ndarray) -> np.ndarray:
    """The classic jet colour map of values in [0, 1]: [..., 3] uint8 (no matplotlib needed)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def rgb_png(rgb: np.ndarray, path: PathLike | None = None, scale: int = 1) -> bytes:
    """Encode an [H, W, 3] uint8 array as PNG (nearest-neighbour upscaled by ``scale``); also write ``path``."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _write(buf.getvalue(), path)


def _write(data: bytes, path: PathLike | None) -> bytes:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure_png(fig: Any, path: PathLike | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return _write(buf.getvalue(), path)


# --------------------------------------------------------------------------------------------- figures


def roc_curve_png(
    y_true: Any,
    scores: Any,
    path: PathLike | None = None,
    *,
    threshold: float | None = None,
    title: str = "ROC",
) -> bytes:
    """PNG of the ROC curve with its AUC (and the operating point at ``threshold`` if given)."""
    fpr, tpr, thr = roc_points(y_true, scores)
    auc = auc_score(y_true, scores)
    point = None
    if threshold is not None:
        i = int(np.flatnonzero(thr >= threshold)[-1])
        point = (float(fpr[i]), float(tpr[i]))
    if not _have_matplotlib():
        return _roc_pil(fpr, tpr, point, path)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    if point is not None:
        ax.plot(*point, "o", c="red", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right")
    return _figure_png(fig, path)


def _roc_pil(
    fpr: np.ndarray, tpr: np.ndarray, point: tuple[float, float] | None, path: PathLike | None
) -> bytes:
    from PIL import Image, ImageDraw

    size, pad = 320, 30
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    xy = [
        (pad + x * (size - 2 * pad), size - pad - y * (size - 2 * pad)) for x, y in zip(fpr, tpr, strict=True)
    ]
    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    draw.line([(pad, size - pad), (size - pad, pad)], fill="grey")
    draw.line(xy, fill="blue", width=2)
    if point is not None:
        px, py = pad + point[0] * (size - 2 * pad), size - pad - point[1] * (size - 2 * pad)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill="red")
    draw.text((pad, 8), f"AUC = {float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)):.3f}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _write(buf.getvalue(), path)


def confusion_matrix_png(
    cm: Any, class_names: Sequence[str], path: PathLike | None = None, *, normalise: bool = False
) -> bytes:
    """PNG of a confusion matrix (rows true, columns predicted); ``normalise`` shows row fractions."""
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ConfigError(f"cm must be [K, K] with K = len(class_names) = {len(class_names)}, got {m.shape}")
    if normalise:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    labels = [[f"{v:.2f}" if normalise else f"{int(v)}" for v in row] for row in m]
    if not _have_matplotlib():
        return _cm_pil(m, labels, path)
    from matplotlib.figure import Figure

    k = len(class_names)
    fig = Figure(figsize=(1.5 + 0.6 * k, 1.2 + 0.6 * k))
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues", vmin=0)
    for i in range(k):
        for j in range(k):
            dark = m[i, j] > 0.6 * max(m.max(), 1e-12)
            ax.text(j, i, labels[i][j], ha="center", va="center", color="white" if dark else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    return _figure_png(fig, path)


def _cm_pil(m: np.ndarray, labels: list[list[str]], path: PathLike | None) -> bytes:
    from PIL import Image, ImageDraw

    k, cell = m.shape[0], 48
    img = Image.new("RGB", (k * cell, k * cell), "white")
    draw = ImageDraw.Draw(img)
    top = max(m.max(), 1e-12)
    for i in range(k):
        for j in range(k):
            shade = int(255 - 200 * m[i, j] / top)
            draw.rectangle(
                [j * cell, i * cell, (j + 1) * cell - 1, (i + 1) * cell - 1], fill=(shade, shade, 255)
            )
            draw.text((j * cell + 6, i * cell + 18), labels[i][j], fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _write(buf.getvalue(), path)
