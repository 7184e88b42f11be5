"""The sweep's summary on synthetic trial results (no server): per-setting rows, paired groups and the
label-efficiency curve of a grid over protocol x label fraction."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from radimagenet.eval.metrics import auc_score
from radimagenet.tasks.sweep_report import label_efficiency, summarise

N, PATIENTS = 60, 20


def _result(init: str, protocol: str, fraction: float, seed: int, skill: float) -> dict:
    rng = np.random.default_rng(zlib.crc32(repr((init, protocol, fraction, seed)).encode()))
    y = np.tile([0, 1], N // 2)
    p1 = np.clip(0.5 + skill * (y - 0.5) + rng.normal(0, 0.25, N), 0.01, 0.99)
    values = {"init": init, "protocol": protocol, "data.label_fraction": fraction, "train.seed": seed}
    setting = f"init={init},protocol={protocol},data.label_fraction={fraction}"
    auc = auc_score(y == 1, p1)
    return {"trial": f"s-{init}-{protocol}-{fraction}-{seed}", "setting": setting,
            "group": f"protocol={protocol},data.label_fraction={fraction}", "init": init, "seed": seed,
            "run_id": "r", "values": values, "test_auc": auc, "ci_low": auc - 0.1, "ci_high": min(1.0, auc + 0.1),
            "n_patients": PATIENTS, "n_images": N, "keys": [f"k{i}" for i in range(N)],
            "patients": np.array([f"p{i % PATIENTS}" for i in range(N)]), "labels": y,
            "probs": np.stack([1 - p1, p1], axis=1), "n_boot": 200}


def test_a_grid_over_protocols_and_label_fractions_gives_the_label_efficiency_curve():
    results = [_result(init, protocol, fraction, seed, skill=(0.5 if init == "ssl@candidate" else 0.1) * fraction ** 0.1)
               for init in ("ssl@candidate", "scratch") for protocol in ("linear", "knn")
               for fraction in (0.1, 1.0) for seed in (0, 1)]
    s = summarise(results, "scratch")
    curve = s["label_efficiency"]
    assert len(curve) == 8  # 2 inits x 2 protocols x 2 fractions, seeds averaged
    assert {r["curve"] for r in curve} == {"ssl@candidate, protocol=linear", "ssl@candidate, protocol=knn",
                                          "scratch, protocol=linear", "scratch, protocol=knn"}
    row = next(r for r in curve if r["curve"] == "ssl@candidate, protocol=knn" and r["label_fraction"] == 0.1)
    seeds = [r["test_auc"] for r in results if r["init"] == "ssl@candidate" and r["values"]["protocol"] == "knn"
             and r["values"]["data.label_fraction"] == 0.1]
    assert row["n_seeds"] == 2 and row["auc_mean"] == pytest.approx(np.mean(seeds))
    ref = next(r for r in curve if r["curve"] == "scratch, protocol=knn" and r["label_fraction"] == 0.1)
    assert row["delta"] == pytest.approx(row["auc_mean"] - ref["auc_mean"])  # paired within protocol and share
    assert 0 <= row["p_bootstrap"] <= 1 and np.isnan(ref["p_bootstrap"])
    md = s["efficiency_markdown"]
    assert "## Label efficiency" in md and "| initialisation | 10% of labels | 100% of labels |" in md
    assert f"{row['auc_mean']:.3f}" in md and md in s["markdown"]
    assert len(s["table"]) == 8  # 4 groups (protocol x share), 2 inits each


def test_no_curve_without_two_label_fractions():
    results = [_result(init, "finetune", 1.0, seed, 0.3) for init in ("a@x", "scratch") for seed in (0, 1)]
    s = summarise(results, "scratch")
    assert label_efficiency(results, s["rows"]) == [] and s["efficiency_markdown"] == ""
    assert "Label efficiency" not in s["markdown"]
