"""Comparison statistics for ``radimagenet compare``: is one initialisation's AUC really better?

    aucs = {"imagenet": [0.81, 0.83, 0.80], "radimagenet": [0.84, 0.83, 0.85]}     # one per seed
    scores = {"imagenet": [s_seed0, s_seed1, s_seed2], "radimagenet": [...]}       # test scores per run
    table = compare(aucs, reference="imagenet", y_true=y_test, scores=scores, patients=patient_of_each_image)
    print(comparison_markdown(table)); write_csv(table, "compare.csv")

Complementary tests, all paired (seed i of every initialisation shares split, order and test set):

* Paired t-test over seeds on the AUC differences: the training (seed) variability.
* The paired patient-level bootstrap of ΔAUC on the test set (with ``patients``): both models scored
  on the same resamples of whole patients, so the test-set sampling variability counts patients, not
  images (a patient's images are alike: resampling them as if independent makes intervals too
  narrow). Binary AUC or macro one-vs-rest AUC alike.
* DeLong's test (DeLong et al. 1988, fast algorithm of Sun & Xu 2014) for two correlated binary AUCs
  on the same test set: image-level, exact when every patient has one image.

The per-seed test-set tests are combined conservatively: z = mean(ΔAUC_i) / mean(SE_i). Since
sd(mean of X_i) <= mean(sd(X_i)) for any correlation between the X_i, this never overstates
significance (Stouffer's sum of z's would, the seeds sharing one test set). With several
initialisations the vs-reference p-values are Holm-adjusted (``*_holm`` keys). The t and normal
distributions are :mod:`radimagenet.eval.distributions`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.eval import multilabel
from radimagenet.eval.distributions import normal_two_sided_p, t_ppf, t_sf
from radimagenet.eval.metrics import auc_resamples, auc_score, macro_auc

# ------------------------------------------------------------------------------------------ summaries


def summarise(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """n, mean, sd (n-1), min, max and the t-interval of the mean (``ci_low``/``ci_high``; NaN for n < 2)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        raise ConfigError("need at least one finite value to summarise")
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    half = t_ppf(0.5 + level / 2, v.size - 1) * sd / math.sqrt(v.size) if v.size > 1 else math.nan
    mean = float(v.mean())
    return {
        "n": int(v.size),
        "mean": mean,
        "sd": sd,
        "min": float(v.min()),
        "max": float(v.max()),
        "ci_low": mean - half,
        "ci_high": mean + half,
    }


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t-test of mean(a - b) = 0: ``diff``, its 95% ``ci_low``/``ci_high``, ``t``, ``df``, ``p``.

    NaN p for fewer than two pairs; identical differences give p = 1 (all zero) or p = 0.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(
            f"paired test needs two equal-length lists (one value per seed), got {x.shape}, {y.shape}"
        )
    d = x - y
    n, mean = d.size, float(d.mean()) if d.size else math.nan
    if n < 2:
        return {
            "diff": mean,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "t": math.nan,
            "df": n - 1,
            "p": math.nan,
        }
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = t_ppf(0.975, n - 1) * se
    if se == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / se
        p = min(1.0, 2.0 * t_sf(abs(t), n - 1))
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half, "t": t, "df": n - 1, "p": p}


# -------------------------------------------------------------------------------------------- DeLong


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each row of ``x`` [k, N], ties given their average rank (O(N log N) per row)."""
    out = np.empty(x.shape, dtype=np.float64)
    for i, row in enumerate(x):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        out[i] = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return out


def delong_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [k] and their DeLong covariance [k, k] for ``scores`` [k, N] of k classifiers on one test set.

    Sun & Xu (2014): with m positives and n negatives, placement values come from midranks within the
    positives (T_x), negatives (T_y) and all samples (T_z): V10 = (T_z - T_x) / n over positives,
    V01 = 1 - (T_z - T_y) / m over negatives; AUC = mean(V10); Cov = S10 / m + S01 / n.
    """
    y = np.asarray(y_true).reshape(-1)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size or not np.isin(y, (0, 1)).all():
        raise ConfigError(f"scores must be [k, N] with N = len(y_true) = {y.size}, labels 0/1")
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ConfigError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    v10 = (tz[:, :m] - _midranks(pos)) / n
    v01 = 1.0 - (tz[:, m:] - _midranks(neg)) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y_true: Any, scores_a: Any, scores_b: Any) -> dict[str, float]:
    """DeLong's test of AUC(a) = AUC(b) for two score vectors on the same test set.

    Returns ``auc_a``, ``auc_b``, ``diff`` (a - b), ``se``, ``z`` and the two-sided ``p``. A zero standard
    error (e.g. identical scores) gives z = 0 and p = 1 when the AUCs are equal.
    """
    aucs, cov = delong_covariance(y_true, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]))
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, **_z_test(diff, se)}


def _z_test(diff: float, se: float) -> dict[str, float]:
    """``z`` = diff / se and its two-sided normal ``p``; a zero se gives p = 1 for equal AUCs, else 0."""
    if se < 1e-12:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
        return {"z": z, "p": p}
    return {"z": diff / se, "p": normal_two_sided_p(diff / se)}


def paired_patient_bootstrap(y_true: Any, scores_a: Any, scores_b: Any, patients: Any, *, n: int = 2000,
                             seed: int = 0) -> dict[str, float]:
    """AUC(a) = AUC(b) on one test set, resampling whole patients (the same resamples for both models).

    ``scores`` are [N] (binary, labels 0/1) or [N, K] (macro one-vs-rest AUC, integer labels; or, with a
    multi-hot ``y_true`` [N, K], the multi-label macro AUC of :mod:`radimagenet.eval.multilabel`);
    ``patients`` one pseudonym per image. Returns ``diff`` (a - b), ``se`` (the sd of the resampled
    differences), their 95% percentile ``ci_low``/``ci_high``, ``z`` = diff / se and the two-sided ``p``.
    """
    resamples = multilabel.auc_resamples if np.ndim(y_true) == 2 else auc_resamples
    boot = [resamples(y_true, s, n, seed, patients=patients) for s in (scores_a, scores_b)]
    d = boot[0] - boot[1]
    d = d[np.isfinite(d)]
    diff = _auc(y_true, scores_a) - _auc(y_true, scores_b)
    se = float(d.std(ddof=1)) if d.size > 1 else math.nan
    lo, hi = np.percentile(d, [2.5, 97.5]) if d.size else (math.nan, math.nan)
    return {"diff": diff, "se": se, "ci_low": float(lo), "ci_high": float(hi), **_z_test(diff, se)}


def _auc(y_true: Any, scores: Any) -> float:
    """Binary AUC of scores [N], the macro one-vs-rest AUC of scores [N, K], or (multi-hot ``y_true``
    [N, K]) the multi-label macro AUC."""
    if np.ndim(y_true) == 2:
        return multilabel.macro_auc(scores, y_true)
    return macro_auc(scores, y_true) if np.ndim(scores) == 2 else auc_score(y_true, scores)


def across_seeds(test: Any, y_true: Any, scores_a: Sequence[Any], scores_b: Sequence[Any],
                 **kw: Any) -> dict[str, Any]:
    """``test`` (:func:`delong_test` or :func:`paired_patient_bootstrap`) per seed pair and the conservative
    combination z = mean(diff_i) / mean(se_i) (module docstring)."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ConfigError(
            f"need the same number (>0) of runs per initialisation, got {len(scores_a)}, {len(scores_b)}"
        )
    per_seed = [test(y_true, a, b, **kw) for a, b in zip(scores_a, scores_b, strict=True)]
    diff = float(np.mean([r["diff"] for r in per_seed]))
    se = float(np.mean([r["se"] for r in per_seed]))
    return {"diff": diff, "se": se, **_z_test(diff, se), "p_per_seed": [r["p"] for r in per_seed]}


def delong_across_seeds(y_true: Any, scores_a: Sequence[Any], scores_b: Sequence[Any]) -> dict[str, Any]:
    """DeLong per seed pair, combined across seeds (:func:`across_seeds`)."""
    return across_seeds(delong_test, y_true, scores_a, scores_b)


# ------------------------------------------------------------------------------------------ the table


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok], kind="mergesort")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (ok.size - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _check_scores_match(
    aucs: Mapping[str, Sequence[float]], scores: Mapping[str, Sequence[Any]], y: Any
) -> None:
    """Each run's scores must reproduce its AUC: catches runs paired out of order or another test set."""
    for name, runs in scores.items():
        if len(runs) != len(aucs[name]):
            raise ConfigError(f"{name}: {len(aucs[name])} AUCs but {len(runs)} score vectors")
        for i, (want, run) in enumerate(zip(aucs[name], runs, strict=True)):
            have = _auc(y, run)
            if abs(want - have) > 1e-4:
                raise ConfigError(
                    f"{name} seed {i}: AUC {want:.4f} but its scores give {have:.4f} on y_true: "
                    "are the runs in seed order and scored on this test set?"
                )


def _tests(
    a: Sequence[float],
    b: Sequence[float],
    y_true: Any,
    scores_a: Sequence[Any] | None,
    scores_b: Sequence[Any] | None,
    patients: Any = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Paired t-test columns; with both runs' scores the patient bootstrap columns (given ``patients``)
    and the DeLong columns (binary scores), NaN otherwise."""
    tt = paired_ttest(a, b)
    both = scores_a is not None and scores_b is not None
    dl = delong_across_seeds(y_true, scores_a, scores_b) if both and np.ndim(scores_a[0]) == 1 else None
    bs = (across_seeds(paired_patient_bootstrap, y_true, scores_a, scores_b, patients=patients, n=n_boot)
          if both and patients is not None else None)
    return {
        "delta": tt["diff"],
        "delta_ci_low": tt["ci_low"],
        "delta_ci_high": tt["ci_high"],
        "p_ttest": tt["p"],
        "p_bootstrap": bs["p"] if bs else math.nan,
        "bootstrap_z": bs["z"] if bs else math.nan,
        "p_bootstrap_per_seed": bs["p_per_seed"] if bs else [],
        "p_delong": dl["p"] if dl else math.nan,
        "delong_z": dl["z"] if dl else math.nan,
        "p_delong_per_seed": dl["p_per_seed"] if dl else [],
    }


def _with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``p_ttest_holm``, ``p_bootstrap_holm`` and ``p_delong_holm`` over the rows' tests."""
    for key in ("p_ttest", "p_bootstrap", "p_delong"):
        for row, adj in zip(rows, holm([r[key] for r in rows]), strict=True):
            row[f"{key}_holm"] = adj
    return rows


def _check_inputs(aucs: Mapping[str, Sequence[float]], y_true: Any, scores: Mapping[str, Any] | None,
                  patients: Any = None) -> None:
    if (y_true is None) != (scores is None):
        raise ConfigError("the test-set tests need both y_true and scores (or neither)")
    if patients is not None and (y_true is None or np.size(patients) != np.size(y_true)):
        raise ConfigError("patients need y_true and scores, one patient per test image")
    lengths = {name: len(v) for name, v in aucs.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"every initialisation needs the same seeds (paired), got runs per init {lengths}")
    if scores is not None:
        if set(scores) != set(aucs):
            raise ConfigError(f"scores cover {sorted(scores)} but aucs cover {sorted(aucs)}")
        _check_scores_match(aucs, scores, y_true)


def compare(
    aucs: Mapping[str, Sequence[float]],
    reference: str,
    *,
    y_true: Any = None,
    scores: Mapping[str, Sequence[Any]] | None = None,
    patients: Any = None,
    n_boot: int = 2000,
) -> list[dict[str, Any]]:
    """One row per initialisation (reference first): AUC summary over seeds and tests against ``reference``.

    ``aucs[name][i]`` is the test AUC of seed i (paired across names). With ``y_true`` and
    ``scores[name][i]`` (that run's per-sample test scores [N], or probabilities [N, K] for a macro
    AUC; same test set and order) the DeLong columns are filled (binary), and with ``patients`` (one
    pseudonym per test image) the paired patient bootstrap columns (``n_boot`` resamples). Keys: init,
    n_seeds, auc_mean, auc_sd, auc_min, auc_max, auc_ci_low, auc_ci_high, delta, delta_ci_low,
    delta_ci_high, p_ttest, p_bootstrap, bootstrap_z, p_bootstrap_per_seed, p_delong, delong_z,
    p_delong_per_seed, and the Holm adjusted p_ttest_holm, p_bootstrap_holm, p_delong_holm (NaN/empty
    for the reference row, whose delta is 0).
    """
    if reference not in aucs:
        raise ConfigError(f"reference {reference!r} is not one of {sorted(aucs)}")
    _check_inputs(aucs, y_true, scores, patients)
    rows = []
    for name in [reference] + [k for k in aucs if k != reference]:
        s = summarise(aucs[name])
        row = {"init": name, "n_seeds": s["n"]} | {f"auc_{k}": s[k] for k in ("mean", "sd", "min", "max")}
        row |= {"auc_ci_low": s["ci_low"], "auc_ci_high": s["ci_high"]}
        if name == reference:
            row |= {"delta": 0.0, "delta_ci_low": math.nan, "delta_ci_high": math.nan, "p_ttest": math.nan}
            row |= {"p_bootstrap": math.nan, "bootstrap_z": math.nan, "p_bootstrap_per_seed": []}
            row |= {"p_delong": math.nan, "delong_z": math.nan, "p_delong_per_seed": []}
        else:
            sa, sb = (scores[name], scores[reference]) if scores is not None else (None, None)
            row |= _tests(aucs[name], aucs[reference], y_true, sa, sb, patients, n_boot)
        rows.append(row)
    return _with_holm(rows)


def pairwise(
    aucs: Mapping[str, Sequence[float]],
    *,
    y_true: Any = None,
    scores: Mapping[str, Sequence[Any]] | None = None,
    patients: Any = None,
    n_boot: int = 2000,
) -> list[dict[str, Any]]:
    """The tests of :func:`compare` for every pair of initialisations, a minus b, Holm-adjusted."""
    _check_inputs(aucs, y_true, scores, patients)
    names = list(aucs)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = (scores[a], scores[b]) if scores is not None else (None, None)
            rows.append({"a": a, "b": b} | _tests(aucs[a], aucs[b], y_true, sa, sb, patients, n_boot))
    return _with_holm(rows)


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def comparison_markdown(table: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """The paper-ready Markdown table of ``compare``'s rows: mean ± sd (95% CI), range, Δ vs reference, p-values."""
    if not table:
        raise ConfigError("empty comparison table")
    f = f"{{:.{digits}f}}"

    def num(v: float) -> str:
        return f.format(v) if math.isfinite(v) else "–"

    ref = table[0]["init"]
    lines = [
        f"| Initialisation | Seeds | AUC mean ± sd (95% CI) | Min–max | Δ AUC vs {ref} (95% CI) "
        "| p (paired t) | p (patient bootstrap) | p (DeLong) |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for r in table:
        auc = f"{num(r['auc_mean'])} ± {num(r['auc_sd'])} ({num(r['auc_ci_low'])}–{num(r['auc_ci_high'])})"
        if r["init"] == ref:
            delta = "reference"
        else:
            delta = f"{r['delta']:+.{digits}f} ({num(r['delta_ci_low'])} to {num(r['delta_ci_high'])})"
        lines.append(
            f"| {r['init']} | {r['n_seeds']} | {auc} | {num(r['auc_min'])}–{num(r['auc_max'])} "
            f"| {delta} | {_fmt_p(r['p_ttest'])} | {_fmt_p(r.get('p_bootstrap', math.nan))} "
            f"| {_fmt_p(r['p_delong'])} |"
        )
    if any(math.isfinite(r.get("p_bootstrap", math.nan)) for r in table):
        lines.append("\nThe patient bootstrap resamples patients; DeLong resamples images as if independent, "
                     "too optimistic when a patient has several images.")
    if len(table) > 2:
        lines.append(
            "\np-values unadjusted; Holm-adjusted values are in the CSV (p_ttest_holm, p_bootstrap_holm, "
            "p_delong_holm)."
        )
    return "\n".join(lines) + "\n"


def write_csv(table: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the rows (union of keys, first-seen order; lists joined by ';') to ``path``; returns the path."""
    keys: list[str] = []
    for row in table:
        keys += [k for k in row if k not in keys]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in table:
            writer.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
    return out
