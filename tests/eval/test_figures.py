"""Figures (matplotlib and the PIL fallback) and the image helpers shared with Grad-CAM."""

import builtins

import numpy as np
import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.eval import figures as fig
from radimagenet.eval import metrics as ev


def _data(n: int, seed: int, shift: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.normal(y * shift, 1.0), 1)


PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_matplotlib(tmp_path) -> None:
    y, s = _data(200, 4)
    data = fig.roc_curve_png(y, s, tmp_path / "roc.png", threshold=0.4)
    assert data.startswith(PNG) and (tmp_path / "roc.png").read_bytes() == data
    cm = ev.binary_report(y, s, 0.4, n_boot=10)["confusion_matrix"]
    assert fig.confusion_matrix_png(cm, ["neg", "pos"], tmp_path / "cm.png", normalise=True).startswith(PNG)
    probs = np.stack([1 - ev.softmax(np.stack([s, -s], 1))[:, 0], ev.softmax(np.stack([s, -s], 1))[:, 0]], 1)
    assert fig.reliability_diagram_png(probs, y, tmp_path / "rel.png").startswith(PNG)


def test_figures_without_matplotlib(tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    y, s = _data(200, 4)
    assert fig.roc_curve_png(y, s, tmp_path / "roc.png", threshold=0.4).startswith(PNG)
    assert fig.confusion_matrix_png([[5, 1], [2, 7]], ["a", "b"], tmp_path / "cm.png").startswith(PNG)
    assert fig.reliability_diagram_png([[0.9, 0.1], [0.3, 0.7]], [0, 0], tmp_path / "rel.png").startswith(PNG)


def test_image_helpers() -> None:
    mask = np.zeros((8, 8))
    mask[2:6, 2:6] = 1
    outline = fig.mask_contour(mask)
    assert outline.sum() == 12 and not outline[3:5, 3:5].any()
    assert fig.jet(np.array([0.0, 1.0])).tolist() == [[0, 0, 128], [128, 0, 0]]
    grey = fig.as_grey_uint8(np.array([[-1.0, 1.0]]))
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 255]]


def test_confusion_matrix_png_checks_its_shape() -> None:
    with pytest.raises(ConfigError, match="K = len"):
        fig.confusion_matrix_png([[1, 2], [3, 4]], ["a"])


def test_prediction_overlay(tmp_path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    true = np.zeros((16, 16))
    true[4:12, 4:12] = 1
    pred = torch.zeros(1, 16, 16)
    pred[0, 6:14, 6:14] = 1
    data = fig.prediction_overlay_png(img, pred, true, tmp_path / "seg.png", scale=2)
    assert data.startswith(b"\x89PNG") and (tmp_path / "seg.png").read_bytes() == data
    from PIL import Image

    rgb = np.asarray(Image.open(tmp_path / "seg.png"))
    assert tuple(rgb[8, 8]) == (0, 255, 0)  # true outline at (4, 4) -> pixel (8, 8) at scale 2
    with pytest.raises(ConfigError, match="differ in shape"):
        fig.prediction_overlay_png(img, pred[:, :8], true)


def test_training_curves(tmp_path) -> None:
    from PIL import Image

    series = {"train/loss": [(s, 2.0 / (1 + s)) for s in range(0, 60, 2)], "val/loss": [(30, 0.4), (60, 0.3)],
              "val/auc": []}
    data = fig.curves_png(series, tmp_path / "loss.png", title="loss by optimizer step", ylabel="loss")
    assert data.startswith(PNG) and (tmp_path / "loss.png").read_bytes() == data
    with Image.open(tmp_path / "loss.png") as im:
        assert im.width > 300 and im.height > 200
    assert fig.curves_png({}, None).startswith(PNG)  # nothing logged yet: an empty frame, no error


def test_label_efficiency_curves(tmp_path) -> None:
    from radimagenet.eval.figures import label_efficiency_png

    png = label_efficiency_png({"scratch, protocol=linear": [(1.0, 0.8, 0.7, 0.9), (0.01, 0.6, 0.5, 0.7)],
                                "ssl@candidate, protocol=linear": [(0.01, 0.75, float("nan"), 0.8), (1.0, 0.9, 0.85, 0.95)],
                                "outside": [(0.01, 0.7, 0.72, 0.8), (1.0, 0.8, 0.7, 0.79)]},  # a bound past the point
                               tmp_path / "curve.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "curve.png").read_bytes() == png
