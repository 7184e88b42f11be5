"""Multi-label metrics: per-label AUC as sklearn computes it, the macro AUC over the labels that have one,
a patient bootstrap that resamples whole patients for every label at once, thresholds from validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radimagenet.errors import ConfigError
from radimagenet.eval import multilabel as ml
from radimagenet.eval import stats as st
from radimagenet.eval.bootstrap import percentile_ci


def _data(n: int = 200, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.35).astype(int)
    p = np.clip(0.5 * y + rng.random((n, k)) * 0.7, 0, 1)
    return y, p


def test_per_label_and_macro_auc_match_sklearn():
    y, p = _data()
    y[:, 3] = 1  # every image has label 3: no AUC for it
    aucs = ml.label_aucs(y, p)
    assert sorted(aucs) == [0, 1, 2]
    for k in range(3):
        assert aucs[k] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
    assert ml.macro_auc(p, y) == pytest.approx(roc_auc_score(y[:, :3], p[:, :3], average="macro"))
    report = ml.multilabel_report(y, p, np.full(4, 0.5), n_boot=50)
    assert report["test/n_labels_without_auc"] == 1 and "test/auc_class_3" not in report
    assert report["test/auc"] == pytest.approx(ml.macro_auc(p, y))


def test_patient_bootstrap_hand_computed_small_case():
    # 3 patients, 2 images each; the bootstrap over all 27 equally likely patient draws, by hand
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [0, 1], [1, 0]])
    p = np.array([[.9, .2], [.3, .8], [.6, .7], [.4, .1], [.2, .6], [.7, .4]])
    patients = np.array(["a", "a", "b", "b", "c", "c"])
    by_patient = {q: np.flatnonzero(patients == q) for q in "abc"}
    expected = []
    for draw in itertools.product("abc", repeat=3):
        idx = np.concatenate([by_patient[q] for q in draw])
        yy, pp = y[idx], p[idx]
        ok = all(0 < yy[:, k].sum() < len(idx) for k in range(2))
        expected.append(np.mean([roc_auc_score(yy[:, k], pp[:, k]) for k in range(2)]) if ok else np.nan)
    values = ml.auc_resamples(y, p, 4000, seed=1, patients=patients)
    finite = values[np.isfinite(values)]
    want = np.array([e for e in expected if np.isfinite(e)])
    assert set(np.round(finite, 9)) <= set(np.round(want, 9))  # every resample is one of the 27 draws
    assert finite.mean() == pytest.approx(want.mean() * 1.0, abs=0.02)  # ... drawn with equal chance
    assert np.isnan(values).mean() == pytest.approx(np.isnan(expected).mean(), abs=0.03)


def test_patient_interval_wider_than_image_interval_with_repeated_patients():
    rng = np.random.default_rng(3)
    base_y = (rng.random((50, 3)) < 0.4).astype(int)
    base_p = np.clip(0.3 * base_y + rng.random((50, 3)) * 0.8, 0, 1)
    y, p = np.repeat(base_y, 8, axis=0), np.repeat(base_p, 8, axis=0) + rng.normal(0, 1e-3, (400, 3))
    patients = np.repeat(np.arange(50), 8)
    r = ml.multilabel_report(y, p.clip(0, 1), np.full(3, 0.5), patients=patients, n_boot=400)
    assert r["test/n_patients"] == 50 and r["test/n_images"] == 400
    assert (r["test/auc_ci_high"] - r["test/auc_ci_low"]) > 2 * (r["test/auc_image_ci_high"] - r["test/auc_image_ci_low"])
    lo, hi = percentile_ci(ml.auc_resamples(y, p.clip(0, 1), 400, 0, patients=patients))
    assert (lo, hi) == (r["test/auc_ci_low"], r["test/auc_ci_high"])


def test_thresholds_come_from_validation_and_set_the_operating_point():
    y, p = _data(seed=2)
    t = ml.choose_thresholds(y, p)
    assert t.shape == (4,) and ((t > 0) & (t < 1)).all()
    y0 = y.copy()
    y0[:, 1] = 0  # a label validation cannot score keeps 0.5
    assert ml.choose_thresholds(y0, p)[1] == 0.5
    r = ml.multilabel_report(y, p, t, n_boot=20)
    pred = p >= t
    assert r["test/accuracy"] == pytest.approx((pred == y.astype(bool)).mean())
    assert r["test/subset_accuracy"] == pytest.approx((pred == y.astype(bool)).all(1).mean())
    sens = [(pred[:, k] & (y[:, k] == 1)).sum() / y[:, k].sum() for k in range(4)]
    assert r["test/sensitivity"] == pytest.approx(np.mean(sens))
    assert 0 <= r["test/ece"] <= 1


def test_paired_patient_bootstrap_takes_multi_hot_labels():
    y, p = _data(seed=4)
    patients = np.repeat(np.arange(100), 2)
    same = st.paired_patient_bootstrap(y, p, p, patients, n=200)
    assert same["diff"] == 0 and same["p"] == 1
    worse = st.paired_patient_bootstrap(y, p, np.random.default_rng(0).random(p.shape), patients, n=200)
    assert worse["diff"] > 0.2 and worse["p"] < 0.01


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="equal shape"):
        ml.label_aucs(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="0/1"):
        ml.label_aucs(np.full((3, 2), 2), np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="no label"):
        ml.multilabel_report(np.ones((4, 2)), np.zeros((4, 2)), [0.5, 0.5])
