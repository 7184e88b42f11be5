"""Downstream classification metrics: AUC against sklearn, bootstrap CI, operating point, figures."""

import builtins
import time

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_auc_score, roc_curve

from radimagenet.errors import ConfigError
from radimagenet.eval import metrics as ev


def _data(n: int = 2000, seed: int = 1, shift: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.normal(y * shift, 1.0), 1)  # rounding creates many ties


def test_auc_matches_sklearn_with_ties() -> None:
    for seed in range(5):
        y, s = _data(300, seed)
        assert ev.auc_score(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_known_cases() -> None:
    y = np.array([0, 0, 1, 1])
    assert ev.auc_score(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert ev.auc_score(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert ev.auc_score(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    y, _ = _data(5000, 3)
    assert ev.auc_score(y, np.random.default_rng(0).random(y.size)) == pytest.approx(0.5, abs=0.03)


def test_roc_points_match_sklearn() -> None:
    y, s = _data(500, 2)
    fpr, tpr, thr = ev.roc_points(y, s)
    f2, t2, th2 = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])


def test_bootstrap_auc_interval_fast_deterministic_and_covering() -> None:
    y, s = _data()
    t0 = time.perf_counter()
    auc, lo, hi = ev.bootstrap_auc(y, s, n=1000, seed=0)
    assert time.perf_counter() - t0 < 1.0
    assert lo < auc < hi and 0.02 < hi - lo < 0.08
    assert (auc, lo, hi) == ev.bootstrap_auc(y, s, n=1000, seed=0)
    _, lo2, hi2 = ev.bootstrap_auc(y, s, n=1000, seed=0, stratified=False)
    assert lo2 == pytest.approx(lo, abs=0.01) and hi2 == pytest.approx(hi, abs=0.01)
    # a resample's AUC equals sklearn's on the same duplicated sample
    rng = np.random.default_rng(5)
    counts = rng.multinomial(y.size, np.full(y.size, 1 / y.size), size=1)
    idx = np.repeat(np.arange(y.size), counts[0])
    assert ev._weighted_auc(y.astype(bool), s, counts)[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))


def test_plain_bootstrap_skips_one_class_resamples() -> None:
    y = np.array([0] * 9 + [1])
    s = np.arange(10.0)
    auc, lo, hi = ev.bootstrap_auc(y, s, n=200, seed=0, stratified=False)
    assert auc == 1.0 and lo == hi == 1.0  # resamples without the positive are skipped, not counted 0.5


def test_choose_threshold_rules() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert ev.choose_threshold(y, s) == pytest.approx(0.5)  # midpoint between the classes
    assert ev.choose_threshold(y, s, "closest") == pytest.approx(0.5)
    assert ev.choose_threshold(y, s, "sensitivity=1.0") == pytest.approx(0.5)
    assert ev.choose_threshold(y, s, "specificity=0.6") == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="unknown threshold rule"):
        ev.choose_threshold(y, s, "f1")
    with pytest.raises(ConfigError, match="both classes"):
        ev.choose_threshold([1, 1], [0.2, 0.3])


def test_binary_report_uses_given_threshold() -> None:
    y_val, s_val = _data(1000, 7)
    y, s = _data(1000, 8)
    t = ev.choose_threshold(y_val, s_val)
    r = ev.binary_report(y, s, t, n_boot=200)
    assert all("test_auc" in k for k in ("test_auc", "test_auc_ci_low", "test_auc_ci_high"))
    assert r["test_auc"] == pytest.approx(roc_auc_score(y, s))
    tn, fp, fn, tp = sk_confusion_matrix(y, s >= t).ravel()
    assert r["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert r["test_sensitivity"] == pytest.approx(tp / (tp + fn))
    assert r["test_specificity"] == pytest.approx(tn / (tn + fp))
    assert r["test_accuracy"] == pytest.approx((tp + tn) / y.size)
    metrics = ev.scalar_metrics(r)
    assert "confusion_matrix" not in metrics and metrics["test_n"] == 1000.0


def test_multiclass_report_macro_ovr_and_absent_class() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    probs = rng.dirichlet([1, 1, 1, 1], 400)
    probs[np.arange(400), y] += 0.3
    r = ev.multiclass_report(y, probs, n_boot=200)
    want = np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(3)])
    assert r["test_auc"] == pytest.approx(want)
    assert r["test_auc_ci_low"] < r["test_auc"] < r["test_auc_ci_high"]
    assert "class 3" not in r and "[3]" in r["warning"]
    assert r["test_accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert np.array(r["confusion_matrix"]).shape == (4, 4)
    # all classes present: no warning, equals sklearn's macro OvR on normalised probabilities
    p3 = rng.dirichlet([1, 1, 1], 400)
    r3 = ev.multiclass_report(y, p3, n_boot=50)
    assert "warning" not in r3
    assert r3["test_auc"] == pytest.approx(roc_auc_score(y, p3, multi_class="ovr", average="macro"))


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="equal length"):
        ev.auc_score([0, 1], [0.1])
    with pytest.raises(ConfigError, match="0/1"):
        ev.auc_score([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match="NaN"):
        ev.auc_score([0, 1], [0.1, float("nan")])
    with pytest.raises(ConfigError, match=r"\[N, K\]"):
        ev.multiclass_report([0, 1], [0.2, 0.8])
    with pytest.raises(ConfigError, match="K = len"):
        ev.confusion_matrix_png([[1, 2], [3, 4]], ["a"])


PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_matplotlib(tmp_path) -> None:
    y, s = _data(200, 4)
    data = ev.roc_curve_png(y, s, tmp_path / "roc.png", threshold=0.4)
    assert data.startswith(PNG) and (tmp_path / "roc.png").read_bytes() == data
    cm = ev.binary_report(y, s, 0.4, n_boot=10)["confusion_matrix"]
    assert ev.confusion_matrix_png(cm, ["neg", "pos"], tmp_path / "cm.png", normalise=True).startswith(PNG)


def test_figures_without_matplotlib(tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    y, s = _data(200, 4)
    assert ev.roc_curve_png(y, s, tmp_path / "roc.png", threshold=0.4).startswith(PNG)
    assert ev.confusion_matrix_png([[5, 1], [2, 7]], ["a", "b"], tmp_path / "cm.png").startswith(PNG)


def test_image_helpers() -> None:
    mask = np.zeros((8, 8))
    mask[2:6, 2:6] = 1
    outline = ev.mask_contour(mask)
    assert outline.sum() == 12 and not outline[3:5, 3:5].any()
    assert ev.jet(np.array([0.0, 1.0])).tolist() == [[0, 0, 128], [128, 0, 0]]
    grey = ev.as_grey_uint8(np.array([[-1.0, 1.0]]))
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 255]]
