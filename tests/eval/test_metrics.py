"""Metrics: AUC against sklearn, bootstrap CI, operating point, reports under `<split>/<name>`, Dice."""

import time

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

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
    assert ev.weighted_auc(y.astype(bool), s, counts)[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))


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
    assert set(r) == {"test/auc", "test/auc_ci_low", "test/auc_ci_high", "test/auc_image_ci_low",
                      "test/auc_image_ci_high", "test/accuracy", "test/sensitivity", "test/specificity",
                      "test/threshold", "test/n_patients", "test/n_images", "test/n_positive", "confusion_matrix"}
    assert r["test/auc"] == pytest.approx(roc_auc_score(y, s))
    assert r["test/auc_ci_low"] < r["test/auc"] < r["test/auc_ci_high"] and r["test/threshold"] == t
    tn, fp, fn, tp = sk_confusion_matrix(y, s >= t).ravel()
    assert r["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert r["test/sensitivity"] == pytest.approx(tp / (tp + fn))
    assert r["test/specificity"] == pytest.approx(tn / (tn + fp))
    assert r["test/accuracy"] == pytest.approx((tp + tn) / y.size)
    assert r["test/n_positive"] == int(y.sum())
    metrics = ev.scalar_metrics(r)
    assert "confusion_matrix" not in metrics and metrics["test/n_images"] == 1000.0
    assert set(ev.binary_report(y, s, t, n_boot=10, prefix="val")) - {"confusion_matrix"} == {
        k.replace("test/", "val/") for k in r if k != "confusion_matrix"}


def test_multiclass_report_macro_ovr_and_absent_class() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    probs = rng.dirichlet([1, 1, 1, 1], 400)
    probs[np.arange(400), y] += 0.3
    r = ev.multiclass_report(y, probs, n_boot=200)
    want = [roc_auc_score(y == k, probs[:, k]) for k in range(3)]
    assert r["test/auc"] == pytest.approx(np.mean(want))
    assert [r[f"test/auc_class_{k}"] for k in range(3)] == pytest.approx(want)
    assert "test/auc_class_3" not in r and "[3]" in r["warning"]
    assert r["test/auc_ci_low"] < r["test/auc"] < r["test/auc_ci_high"]
    assert r["test/accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    recall = [np.mean(probs[y == k].argmax(1) == k) for k in range(3)]
    assert r["test/balanced_accuracy"] == pytest.approx(np.mean(recall)) and r["test/n_images"] == 400
    assert np.array(r["confusion_matrix"]).shape == (4, 4)
    assert r["test/auc"] == ev.macro_auc(probs, y)  # one AUC: the report's and the validation metric's
    # all classes present: no warning, equals sklearn's macro OvR on normalised probabilities
    p3 = rng.dirichlet([1, 1, 1], 400)
    r3 = ev.multiclass_report(y, p3, n_boot=50)
    assert "warning" not in r3
    assert r3["test/auc"] == pytest.approx(roc_auc_score(y, p3, multi_class="ovr", average="macro"))


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="equal length"):
        ev.auc_score([0, 1], [0.1])
    with pytest.raises(ConfigError, match="0/1"):
        ev.auc_score([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match="NaN"):
        ev.auc_score([0, 1], [0.1, float("nan")])
    with pytest.raises(ConfigError, match=r"\[N, K\]"):
        ev.multiclass_report([0, 1], [0.2, 0.8])
    with pytest.raises(ConfigError, match=r"\[N, K\]"):
        ev.multiclass_report([], np.zeros((0, 2)))
    with pytest.raises(ConfigError, match="two classes"):
        ev.multiclass_report([1, 1], [[0.2, 0.8], [0.3, 0.7]])
    with pytest.raises(ConfigError, match="NaN"):
        ev.macro_auc([[0.2, 0.8], [float("nan"), 0.5]], [0, 1])
    with pytest.raises(ConfigError, match="integers in"):
        ev.macro_auc([[0.2, 0.8], [0.5, 0.5]], [0, 2])


def test_macro_auc_matches_sklearn_and_skips_undefined_classes() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    probs = np.round(rng.dirichlet([1, 1, 1, 1], 300), 2)  # ties
    assert ev.macro_auc(probs, y) == pytest.approx(np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(4)]))
    y3 = np.where(y == 3, 0, y)  # class 3 absent: left out, not counted 0.5
    want = np.mean([roc_auc_score(y3 == k, probs[:, k]) for k in range(3)])
    assert ev.macro_auc(probs, y3) == pytest.approx(want)
    assert np.isnan(ev.macro_auc(np.ones((3, 2)) / 2, np.zeros(3, int)))  # one class only: undefined
    assert np.isnan(ev.macro_auc(np.zeros((0, 2)), np.zeros(0, int)))


def test_classification_metrics_names_top_k_auc_and_modalities() -> None:
    classes = ["CT/lung/nodule", "CT/lung/normal", "MR/knee/acl", "US/thyroid"]
    labels = np.array([0, 1, 2, 2, 0])  # class 3 absent from this "val" set
    logits = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [3, 0, 2, 0], [0, 4, 3, 0]], float)
    m = ev.classification_metrics(logits, labels, classes)
    assert set(m) == {"val/loss", "val/accuracy", "val/top5", "val/auc", "val/n_images",
                      "val/accuracy_CT", "val/accuracy_MR"}
    assert m["val/loss"] == pytest.approx(log_loss(labels, ev.softmax(logits), labels=range(4)))
    assert m["val/accuracy"] == pytest.approx(3 / 5) and m["val/top5"] == 1.0 and m["val/n_images"] == 5.0
    assert m["val/accuracy_CT"] == pytest.approx(2 / 3) and m["val/accuracy_MR"] == pytest.approx(1 / 2)
    assert m["val/auc"] == pytest.approx(np.mean([roc_auc_score(labels == k, ev.softmax(logits)[:, k])
                                                  for k in range(3)]))
    assert ev.topk_accuracy(logits, labels, 2) == pytest.approx(4 / 5)
    by_meta = ev.classification_metrics(logits, labels, classes, modalities=["CT", "MR", "CT", "MR", "CT"])
    assert {k for k in by_meta if k.startswith("val/accuracy_")} == {"val/accuracy_CT", "val/accuracy_MR"}
    assert by_meta["val/accuracy_MR"] == pytest.approx(0.5)
    assert set(ev.classification_metrics(logits, labels, classes, prefix="train")) == {
        k.replace("val/", "train/") for k in m}
    with pytest.raises(ValueError, match="no evaluation samples"):
        ev.classification_metrics(np.zeros((0, 4)), np.zeros(0, int), classes)
    with pytest.raises(ValueError, match="does not match"):
        ev.classification_metrics(logits[:, :3], labels, classes)
    assert ev.summarize({"val/accuracy": 0.81234, "epoch": 2}) == "val/accuracy=0.8123 epoch=2"
