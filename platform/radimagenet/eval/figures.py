"""Figures and image helpers: ROC curve, confusion matrix, reliability diagram, segmentation overlays,
training curves, PNG encoding.

    roc_curve_png(y_test, s_test, "roc.png", threshold=t)
    confusion_matrix_png(report["confusion_matrix"], ["neg", "pos"], "cm.png")
    reliability_diagram_png(probs_test, y_test, "reliability.png")
    prediction_overlay_png(image, pred_mask, true_mask, "seg.png")
    curves_png({"train/loss": [(step, value), ...]}, "loss_curves.png", ylabel="loss")
    label_efficiency_png({"scratch, protocol=linear": [(0.01, 0.71, 0.62, 0.80), ...]}, "label_efficiency.png")

Figures use matplotlib (Agg, no pyplot state) when it is installed and fall back to plain PIL drawing
otherwise. The image helpers (``as_grey_uint8``, ``mask_contour``, ``jet``, ``rgb_png``) are shared
with :mod:`radimagenet.eval.explain`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.eval.calibration import N_BINS, expected_calibration_error, reliability_bins
from radimagenet.eval.metrics import auc_score, roc_points

PathLike = str | Path


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


def reliability_diagram_png(
    probs: Any, labels: Any, path: PathLike | None = None, *, n_bins: int = N_BINS, title: str = "reliability"
) -> bytes:
    """PNG of the reliability diagram (accuracy against mean confidence per bin, the diagonal is perfect
    calibration, bar width the share of samples) with the ECE (:mod:`radimagenet.eval.calibration`)."""
    b = reliability_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    full = b["count"] > 0
    mids, share = (b["edges"][:-1] + b["edges"][1:]) / 2, b["count"] / b["count"].sum()
    if not _have_matplotlib():
        return _reliability_pil(b["confidence"][full], b["accuracy"][full], path)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.bar(mids[full], b["accuracy"][full], width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.bar(mids, share, width=1 / n_bins, color="grey", alpha=0.4, label="share of samples")
    ax.plot(b["confidence"][full], b["accuracy"][full], "o-", c="red", ms=3, label="mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", c="black", lw=1)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.01), title=f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize="small")
    return _figure_png(fig, path)


def _reliability_pil(conf: np.ndarray, acc: np.ndarray, path: PathLike | None) -> bytes:
    from PIL import Image, ImageDraw

    size, pad = 320, 30
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    draw.line([(pad, size - pad), (size - pad, pad)], fill="grey")
    for c, a in zip(conf, acc, strict=True):
        x, y = pad + c * (size - 2 * pad), size - pad - a * (size - 2 * pad)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _write(buf.getvalue(), path)


def prediction_overlay_png(
    image: Any, pred_mask: Any, true_mask: Any, path: PathLike | None = None, *, scale: int = 1
) -> bytes:
    """PNG of the grey image with the predicted mask tinted red and outlined, the true mask outlined green.

    Where they overlap the tint shows through the green outline: red fill alone is a false positive,
    a green outline around no tint a false negative.
    """
    grey = as_grey_uint8(image)
    masks = []
    for name, m in (("pred_mask", pred_mask), ("true_mask", true_mask)):
        a = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m).squeeze() > 0
        if a.shape != grey.shape:
            raise ConfigError(f"{name} {a.shape} and image {grey.shape} differ in shape")
        masks.append(a)
    pred, true = masks
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float64)
    rgb[pred] = 0.6 * rgb[pred] + 0.4 * np.array([255.0, 0.0, 0.0])
    rgb = rgb.round().astype(np.uint8)
    rgb[mask_contour(pred)] = (255, 0, 0)
    rgb[mask_contour(true)] = (0, 255, 0)
    return rgb_png(rgb, path, scale=scale)


def auc_intervals_png(labels: list[str], aucs: Any, lows: Any, highs: Any, path: PathLike | None = None, *,
                      title: str = "test AUC with patient-level 95% CI") -> bytes:
    """PNG of one row per setting: its test AUC as a point and its confidence interval as a bar."""
    from matplotlib.figure import Figure

    n = len(labels)
    fig = Figure(figsize=(7, 0.9 + 0.32 * n))
    ax = fig.subplots()
    y = np.arange(n)[::-1]
    a, lo, hi = (np.asarray(v, dtype=float) for v in (aucs, lows, highs))
    ax.errorbar(a, y, xerr=[np.nan_to_num(a - lo), np.nan_to_num(hi - a)], fmt="o", capsize=3, lw=1.5)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0.5, ls="--", c="grey", lw=1)
    ax.set(xlabel="test AUC", xlim=(min(0.45, float(np.nanmin(lo, initial=0.45))), 1.0), title=title)
    return _figure_png(fig, path)


def curves_png(series: dict[str, Sequence[tuple[int, float]]], path: PathLike | None = None, *,
               title: str = "", ylabel: str = "") -> bytes:
    """PNG of training curves: one line per metric, ``(step, value)`` points against the optimizer step
    (a series of one point is a marker); empty series are left out."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for name, points in series.items():
        if len(points):
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3, lw=1.2, label=name)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _figure_png(fig, path)


def label_efficiency_png(curves: dict[str, Sequence[tuple[float, float, float, float]]], path: PathLike | None = None,
                         *, title: str = "test AUC by share of training labels") -> bytes:
    """PNG of label-efficiency curves: per curve (an initialisation and protocol), ``(label fraction, AUC,
    CI low, CI high)`` points on a log fraction axis, the intervals as bars (none where a bound is NaN;
    curves nudged apart sideways)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 4.2))
    ax = fig.subplots()
    fractions = sorted({p[0] for points in curves.values() for p in points})
    n = max(len(curves), 1)
    for i, (name, points) in enumerate(curves.items()):
        f, a, lo, hi = (np.asarray(v, dtype=float) for v in zip(*sorted(points), strict=True))
        x = f * 1.04 ** (i - (n - 1) / 2)  # the same distance apart at every share on the log axis
        line = ax.plot(x, a, marker="o", ms=4, lw=1.3, label=name)[0]
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.errorbar(x[ok], a[ok], yerr=[np.clip(a - lo, 0, None)[ok], np.clip(hi - a, 0, None)[ok]], fmt="none",
                        capsize=3, lw=1.1, ecolor=line.get_color())
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.axhline(0.5, ls="--", c="grey", lw=1)
    ax.set(xlabel="share of the training split's labels", ylabel="test AUC (bars: patient-level 95% CI)",
           title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return _figure_png(fig, path)
