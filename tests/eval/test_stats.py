"""Comparison statistics: t-test vs scipy, DeLong vs its O(mn) definition, the paired patient bootstrap."""

import csv
import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from radimagenet.errors import ConfigError
from radimagenet.eval import metrics as ev
from radimagenet.eval import stats as st


def _correlated(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = rng.normal(y * 1.0, 1.0)
    b = 0.6 * a + rng.normal(y * 0.3, 0.8)
    return y, np.round(a, 1), np.round(b, 1)  # rounding: ties


def _delong_by_definition(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) straight from the definition: psi kernel, O(m n) placement values."""
    v10, v01 = [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    return v10.mean(axis=1), np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


def test_delong_matches_definition_and_sklearn() -> None:
    for seed in range(3):
        y, a, b = _correlated(seed=seed)
        aucs, cov = st.delong_covariance(y, np.vstack([a, b]))
        want_aucs, want_cov = _delong_by_definition(y, np.vstack([a, b]))
        np.testing.assert_allclose(aucs, [roc_auc_score(y, a), roc_auc_score(y, b)])
        np.testing.assert_allclose(aucs, want_aucs)
        np.testing.assert_allclose(cov, want_cov, rtol=1e-10)


def test_delong_hand_example() -> None:
    # 2 positives (0.9, 0.4) and 2 negatives (0.5, 0.1): psi = [[1, 1], [0, 1]], AUC = 3/4.
    # V10 = (1, 1/2), V01 = (1/2, 1); var(V10) = var(V01) = 1/8 (n-1 denominator); Var(AUC) = 1/16 + 1/16.
    aucs, cov = st.delong_covariance([1, 1, 0, 0], [[0.9, 0.4, 0.5, 0.1]])
    assert aucs[0] == pytest.approx(0.75) and cov[0, 0] == pytest.approx(0.125)


def test_delong_variance_agrees_with_bootstrap() -> None:
    y, a, b = _correlated(600, 1)
    res = st.delong_test(y, a, b)
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def auc(labels: np.ndarray, s: np.ndarray) -> float:  # Mann-Whitney via scipy's ranks
        m, n = labels.sum(), labels.size - labels.sum()
        return (sps.rankdata(s)[labels == 1].sum() - m * (m + 1) / 2) / (m * n)

    diffs = []
    for _ in range(400):
        i = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        diffs.append(auc(y[i], a[i]) - auc(y[i], b[i]))
    assert res["se"] == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
    assert res["p"] == pytest.approx(math.erfc(abs(res["z"]) / math.sqrt(2)))


def test_delong_identical_and_clearly_different() -> None:
    y, a, _ = _correlated()
    same = st.delong_test(y, a, a)
    assert same["diff"] == 0 and same["p"] == 1.0
    rng = np.random.default_rng(3)
    better = st.delong_test(y, y + rng.normal(0, 0.5, y.size), rng.normal(size=y.size))
    assert better["diff"] > 0.3 and better["p"] < 1e-6
    with pytest.raises(ConfigError, match="2 positives"):
        st.delong_test([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def test_paired_ttest_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.80, 0.02, 5)
    b = a + rng.normal(0.01, 0.01, 5)
    res = st.paired_ttest(b, a)
    ref = sps.ttest_rel(b, a)
    assert res["t"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval()
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert st.paired_ttest([0.8, 0.8], [0.8, 0.8])["p"] == 1.0
    assert math.isnan(st.paired_ttest([0.8], [0.7])["p"])
    with pytest.raises(ConfigError, match="equal-length"):
        st.paired_ttest([0.8, 0.9], [0.7])


def test_holm() -> None:
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = st.holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def _runs(seeds: int = 3):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    strength = {"imagenet": 1.0, "radimagenet": 1.3, "random": 0.5}
    scores = {k: [y * v + rng.normal(0, 1, y.size) for _ in range(seeds)] for k, v in strength.items()}
    aucs = {k: [roc_auc_score(y, s) for s in runs] for k, runs in scores.items()}
    return y, aucs, scores


def test_compare_table_markdown_csv(tmp_path) -> None:
    y, aucs, scores = _runs()
    table = st.compare(aucs, "imagenet", y_true=y, scores=scores)
    assert [r["init"] for r in table] == ["imagenet", "radimagenet", "random"]
    ref, rad = table[0], table[1]
    assert ref["delta"] == 0 and math.isnan(ref["p_ttest"])
    assert rad["auc_mean"] == pytest.approx(np.mean(aucs["radimagenet"]))
    assert rad["auc_sd"] == pytest.approx(np.std(aucs["radimagenet"], ddof=1))
    assert rad["delta"] == pytest.approx(np.mean(np.subtract(aucs["radimagenet"], aucs["imagenet"])))
    assert rad["p_ttest"] == pytest.approx(sps.ttest_rel(aucs["radimagenet"], aucs["imagenet"]).pvalue)
    assert len(rad["p_delong_per_seed"]) == 3 and 0 <= rad["p_delong"] <= 1
    assert math.isnan(rad["p_bootstrap"]) and rad["p_bootstrap_per_seed"] == []  # no patients given
    assert rad["p_ttest_holm"] >= rad["p_ttest"]
    md = st.comparison_markdown(table)
    assert "| radimagenet | 3 |" in md and "Δ AUC vs imagenet" in md and "reference" in md
    path = st.write_csv(table, tmp_path / "out" / "compare.csv")
    rows = list(csv.DictReader(path.open()))
    assert rows[1]["init"] == "radimagenet" and float(rows[1]["auc_mean"]) == pytest.approx(rad["auc_mean"])
    pairs = st.pairwise(aucs, y_true=y, scores=scores)
    assert {(p["a"], p["b"]) for p in pairs} == {
        ("imagenet", "radimagenet"),
        ("imagenet", "random"),
        ("radimagenet", "random"),
    }


def test_compare_input_errors() -> None:
    y, aucs, scores = _runs()
    with pytest.raises(ConfigError, match="reference"):
        st.compare(aucs, "scratch")
    with pytest.raises(ConfigError, match="same seeds"):
        st.compare({"a": [0.8, 0.9], "b": [0.7]}, "a")
    swapped = dict(scores, radimagenet=scores["radimagenet"][::-1])
    with pytest.raises(ConfigError, match="seed order"):
        st.compare(aucs, "imagenet", y_true=y, scores=swapped)
    with pytest.raises(ConfigError, match="both y_true and scores"):
        st.compare(aucs, "imagenet", scores=scores)


def test_paired_patient_bootstrap() -> None:
    y, a, b = _correlated(600, 1)
    same = st.paired_patient_bootstrap(y, a, a, np.arange(y.size), n=300)
    assert same["diff"] == 0 and same["se"] == 0 and same["p"] == 1.0
    # one image per patient: the paired bootstrap's se agrees with DeLong's
    one = st.paired_patient_bootstrap(y, a, b, np.arange(y.size), n=2000)
    dl = st.delong_test(y, a, b)
    assert one["diff"] == pytest.approx(dl["diff"]) and one["se"] == pytest.approx(dl["se"], rel=0.15)
    assert one["ci_low"] < one["diff"] < one["ci_high"]
    # the same images as 6 near-copies per patient: DeLong's se shrinks by about sqrt(6), the patients' does not
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(y.size), 6)
    y6 = y[patients]
    a6, b6 = a[patients] + rng.normal(0, 0.01, y6.size), b[patients] + rng.normal(0, 0.01, y6.size)
    clustered = st.paired_patient_bootstrap(y6, a6, b6, patients, n=2000)
    assert clustered["se"] == pytest.approx(one["se"], rel=0.2)
    assert st.delong_test(y6, a6, b6)["se"] < 0.6 * clustered["se"]
    assert clustered["p"] > st.delong_test(y6, a6, b6)["p"]


def test_compare_with_patients_binary_and_multiclass() -> None:
    y, aucs, scores = _runs()
    patients = np.repeat(np.arange(100), 3)
    table = st.compare(aucs, "imagenet", y_true=y, scores=scores, patients=patients, n_boot=300)
    rad = table[1]
    assert 0 <= rad["p_bootstrap"] <= 1 and len(rad["p_bootstrap_per_seed"]) == 3
    assert rad["p_bootstrap_holm"] >= rad["p_bootstrap"] and math.isnan(table[0]["p_bootstrap"])
    md = st.comparison_markdown(table)
    assert "p (patient bootstrap)" in md and "resamples patients" in md
    pairs = st.pairwise(aucs, y_true=y, scores=scores, patients=patients, n_boot=300)
    assert all(0 <= p["p_bootstrap"] <= 1 for p in pairs)
    with pytest.raises(ConfigError, match="one patient per test image"):
        st.compare(aucs, "imagenet", y_true=y, scores=scores, patients=patients[:10])

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    probs = {k: [rng.dirichlet([1, 1, 1], 300) + np.eye(3)[labels] * v for _ in range(2)]
             for k, v in (("a", 0.2), ("b", 1.0))}
    probs = {k: [p / p.sum(axis=1, keepdims=True) for p in runs] for k, runs in probs.items()}
    macro = {k: [ev.macro_auc(p, labels) for p in runs] for k, runs in probs.items()}
    table = st.compare(macro, "a", y_true=labels, scores=probs, patients=patients, n_boot=300)
    assert table[1]["p_bootstrap"] < 0.01 and math.isnan(table[1]["p_delong"])  # DeLong: binary only
