"""Calibration: reliability bins and the expected calibration error on hand-computed cases."""

import numpy as np
import pytest

from radimagenet.errors import ConfigError
from radimagenet.eval import calibration as cal
from radimagenet.eval import metrics as ev


def _binary(p: list[float]) -> np.ndarray:
    p = np.asarray(p)
    return np.stack([1 - p, p], axis=1)


def test_ece_hand_computed() -> None:
    # 5 bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]; top-label confidence and correctness:
    #   p=.90 y=1: .90 right   p=.95 y=0: .95 wrong   -> bin 5: confidence .925, accuracy .5, gap .425
    #   p=.70 y=1: .70 right   p=.30 y=0: .70 right   -> bin 4: confidence .70,  accuracy 1,  gap .30
    #   p=.55 y=0: .55 wrong   p=.50 y=0: .50 right   -> bin 3: confidence .525, accuracy .5, gap .025
    # ECE = (2 * .425 + 2 * .30 + 2 * .025) / 6 = 0.25
    probs = _binary([0.9, 0.95, 0.7, 0.3, 0.55, 0.5])
    labels = np.array([1, 0, 1, 0, 0, 0])
    assert cal.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.25)
    b = cal.reliability_bins(probs, labels, n_bins=5)
    assert b["count"].tolist() == [0, 0, 2, 2, 2]
    np.testing.assert_allclose(b["confidence"][2:], [0.525, 0.7, 0.925])
    np.testing.assert_allclose(b["accuracy"][2:], [0.5, 1.0, 0.5])
    assert np.isnan(b["accuracy"][:2]).all()


def test_bin_edges_and_three_classes() -> None:
    # confidences 0.4 and 1.0 sit on the upper edges of bins 2 and 5; 3 classes, top label only
    probs = np.array([[0.4, 0.3, 0.3], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    labels = np.array([1, 1, 2])
    b = cal.reliability_bins(probs, labels, n_bins=5)
    assert b["count"].tolist() == [0, 1, 1, 0, 1]
    # gaps: .4 wrong -> .4; .6 right -> .4; 1.0 right -> 0; ECE = (.4 + .4 + 0) / 3
    assert cal.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.8 / 3)


def test_calibrated_and_overconfident_predictions() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(p.size) < p).astype(int)  # outcomes drawn with the stated probability
    assert cal.expected_calibration_error(_binary(p), y) < 0.02
    sharp = np.where(p > 0.5, 0.99, 0.01)  # same ranking, overconfident
    assert cal.expected_calibration_error(_binary(sharp), y) > 0.2
    r = ev.binary_report(y, p, 0.5, n_boot=10)
    assert r["test/ece"] == pytest.approx(cal.expected_calibration_error(_binary(p), y))


def test_calibration_needs_probabilities() -> None:
    with pytest.raises(ConfigError, match="probabilities"):
        cal.expected_calibration_error([[2.0, -1.0]], [0])
    with pytest.raises(ConfigError, match=r"\[N, K\]"):
        cal.reliability_bins([0.2, 0.8], [1])
    assert "test/ece" not in ev.binary_report([0, 1, 1], [-2.0, 0.5, 3.0], 0.0, n_boot=10)  # scores, not probabilities
