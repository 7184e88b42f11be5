"""Bootstrap resampling and the patient (cluster) bootstrap of the AUC: a hand-computed case, the exact
reductions to the image bootstrap, and a patient interval wider than the image one when images repeat."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radimagenet.errors import ConfigError
from radimagenet.eval import bootstrap as bs
from radimagenet.eval import metrics as ev


def test_resample_rows_strata_and_determinism() -> None:
    rows = np.concatenate(list(bs.resample(5, 7, seed=3)))
    assert rows.shape == (7, 5) and (rows.sum(axis=1) == 5).all()
    assert np.array_equal(rows, np.concatenate(list(bs.resample(5, 7, seed=3))))
    strata = np.array([0, 0, 1, 1, 1, 2])
    for chunk in bs.resample(6, 50, seed=0, strata=strata):
        assert (chunk[:, :2].sum(axis=1) == 2).all() and (chunk[:, 2:5].sum(axis=1) == 3).all()
        assert (chunk[:, 5] == 1).all()
    big = list(bs.resample(bs.CHUNK_ENTRIES // 100, 250, seed=1))  # several chunks
    assert len(big) == 3 and sum(len(c) for c in big) == 250
    with pytest.raises(ConfigError, match="n >= 1"):
        next(bs.resample(3, 0))


def test_patient_columns_number_patients_by_first_appearance() -> None:
    columns, n = bs.patient_columns(["p9", "p2", "p9", "p5", "p2"])
    assert n == 3 and columns.tolist() == [0, 1, 0, 2, 1]
    with pytest.raises(ConfigError, match="one per image"):
        ev.bootstrap_auc([0, 1, 1], [0.1, 0.2, 0.3], patients=["a", "b"])


# Three patients: A holds a positive (0.9) and a negative (0.2), B a positive (0.4), C a negative (0.6).
# A resample draws patients with multiplicities (a, b, c), a + b + c = 3. The positive-negative pairs
# A+>A-, A+>C-, B+>A- are won and B+<C- lost, so AUC = (a*a + a*c + b*a) / ((a + b)(a + c)) = 3a / ((a+b)(a+c)),
# undefined when a class is missing. Over the 10 multiplicity vectors (multinomial probabilities /27):
#   (3,0,0) 1/27 -> 1      (2,1,0) (2,0,1) (1,2,0) (1,0,2) 3/27 each -> 1
#   (1,1,1) 6/27 -> 3/4    (0,2,1) (0,1,2) 3/27 each -> 0      (0,3,0) (0,0,3) 1/27 each -> undefined
HAND_Y = np.array([1, 0, 1, 0])
HAND_S = np.array([0.9, 0.2, 0.4, 0.6])
HAND_PATIENTS = np.array(["A", "A", "B", "C"])
HAND_DISTRIBUTION = {1.0: 13 / 27, 0.75: 6 / 27, 0.0: 6 / 27, "undefined": 2 / 27}


def test_patient_bootstrap_hand_computed_case() -> None:
    # the hand table, checked by brute force over the 27 equally likely ordered draws (sklearn's AUC)
    exact: dict[object, float] = {}
    groups = {p: np.flatnonzero(HAND_PATIENTS == p) for p in "ABC"}
    for draw in itertools.product("ABC", repeat=3):
        idx = np.concatenate([groups[p] for p in draw])
        y = HAND_Y[idx]
        value = roc_auc_score(y, HAND_S[idx]) if 0 < y.sum() < y.size else "undefined"
        exact[value] = exact.get(value, 0) + 1 / 27
    assert exact.keys() == HAND_DISTRIBUTION.keys()
    assert all(exact[k] == pytest.approx(v) for k, v in HAND_DISTRIBUTION.items())

    values = ev.auc_resamples(HAND_Y, HAND_S, 20_000, seed=0, patients=HAND_PATIENTS)
    found = {1.0: np.mean(values == 1), 0.75: np.mean(values == 0.75), 0.0: np.mean(values == 0),
             "undefined": np.mean(np.isnan(values))}
    for k, p in HAND_DISTRIBUTION.items():  # 20,000 draws: sd of a frequency <= 0.0036
        assert found[k] == pytest.approx(p, abs=0.015), (k, found)
    assert sum(found.values()) == pytest.approx(1.0)
    # the percentile interval of the defined values (P(0) = 6/25 > 2.5%, P(1) = 13/25 > 2.5%)
    assert ev.bootstrap_auc(HAND_Y, HAND_S, 2000, patients=HAND_PATIENTS) == (0.75, 0.0, 1.0)


def test_one_image_per_patient_is_the_image_bootstrap() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y, 1.0), 1)
    patients = [f"p{i:04d}" for i in rng.permutation(300)]  # any pseudonyms, one image each
    a = ev.auc_resamples(y, s, 500, seed=7, patients=patients)
    b = ev.auc_resamples(y, s, 500, seed=7, stratified=False)
    assert np.array_equal(a, b, equal_nan=True)
    assert ev.bootstrap_auc(y, s, 500, 7, patients=patients) == ev.bootstrap_auc(y, s, 500, 7, stratified=False)


def test_identical_images_of_a_patient_count_once() -> None:
    """m identical copies of every patient's image: the patient interval is the image interval of one
    image per patient (same seed), exactly; the image interval over all copies is far too narrow."""
    rng = np.random.default_rng(5)
    y1 = rng.integers(0, 2, 80)
    s1 = rng.normal(y1 * 0.8, 1.0)
    m = 5
    order = rng.permutation(80 * m)
    y, s, patients = np.repeat(y1, m)[order], np.repeat(s1, m)[order], np.repeat(np.arange(80), m)[order]
    first = np.sort(np.unique(patients, return_index=True)[1])  # one image per patient, in first-appearance order
    want = ev.bootstrap_auc(y[first], s[first], 1000, seed=2, stratified=False)
    got = ev.bootstrap_auc(y, s, 1000, seed=2, patients=patients)
    assert got == want
    _, lo, hi = ev.bootstrap_auc(y, s, 1000, seed=2)
    assert hi - lo < 0.6 * (got[2] - got[1])


def test_image_interval_narrower_than_patient_interval_with_repeated_patients() -> None:
    """60 patients with 10 near-duplicate images each (the patient's score plus small noise)."""
    rng = np.random.default_rng(6)
    y_pat = rng.integers(0, 2, 60)
    s_pat = rng.normal(y_pat * 1.0, 1.0)
    patients = np.repeat(np.arange(60), 10)
    y = y_pat[patients]
    s = s_pat[patients] + rng.normal(0, 0.05, patients.size)
    r = ev.binary_report(y, 1 / (1 + np.exp(-s)), 0.5, patients=patients.astype(str), n_boot=2000)
    patient_width = r["test/auc_ci_high"] - r["test/auc_ci_low"]
    image_width = r["test/auc_image_ci_high"] - r["test/auc_image_ci_low"]
    assert r["test/n_patients"] == 60 and r["test/n_images"] == 600
    assert r["test/auc_ci_low"] < r["test/auc"] < r["test/auc_ci_high"]
    assert image_width < 0.6 * patient_width, (image_width, patient_width)  # about 1/sqrt(10) in theory


def test_macro_auc_patient_bootstrap() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 240)
    probs = rng.dirichlet([1, 1, 1], 240)
    probs[np.arange(240), y] += 0.4
    probs /= probs.sum(axis=1, keepdims=True)
    patients = np.repeat(np.arange(60), 4).astype(str)
    auc, lo, hi, by_class = ev.bootstrap_macro_auc(y, probs, 500, patients=patients)
    assert lo < auc < hi and auc == pytest.approx(np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(3)]))
    assert sorted(by_class) == [0, 1, 2]
    r = ev.multiclass_report(y, probs, patients=patients, n_boot=500)
    assert (r["test/auc_ci_low"], r["test/auc_ci_high"]) == (lo, hi) and r["test/n_patients"] == 60
    assert 0 <= r["test/ece"] <= 1 and math.isfinite(r["test/auc_image_ci_low"])
