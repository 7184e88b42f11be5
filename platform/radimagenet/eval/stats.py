"""Comparison statistics for ``radimagenet compare``: is one initialisation's AUC really better?

    aucs = {"imagenet": [0.81, 0.83, 0.80], "radimagenet": [0.84, 0.83, 0.85]}     # one per seed
    scores = {"imagenet": [s_seed0, s_seed1, s_seed2], "radimagenet": [...]}       # test scores per run
    table = compare(aucs, reference="imagenet", y_true=y_test, scores=scores)
    print(comparison_markdown(table)); write_csv(table, "compare.csv")

Two complementary tests, both paired (seed i of every initialisation shares split, order and test set):

* Paired t-test over seeds on the AUC differences: the training (seed) variability.
* DeLong's test (DeLong et al. 1988, fast algorithm of Sun & Xu 2014) for two correlated AUCs on the
  same test set: the test-set sampling variability, per seed. The seeds are combined conservatively:
  z = mean(ΔAUC_i) / mean(SE_i). Since sd(mean of X_i) <= mean(sd(X_i)) for any correlation between
  the X_i, this never overstates significance (Stouffer's sum of z's would, the seeds sharing one test set).

With several initialisations the vs-reference p-values are Holm-adjusted (``*_holm`` keys).
scipy's t distribution is used when installed; otherwise an exact pure-Python one (regularised
incomplete beta) gives the same numbers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError

# --------------------------------------------------------------------------- t and normal distributions


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
        return tail if t >= 0 else 1.0 - tail
    return float(student_t.sf(t, df))


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (inverse CDF), by scipy or by bisection on ``t_sf``."""
    if not 0.0 < q < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), got {q}")
    try:
        from scipy.stats import t as student_t
    except ImportError:
        lo, hi = -1e3, 1e3
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if 1.0 - t_sf(mid, df) < q else (lo, mid)
        return (lo + hi) / 2
    return float(student_t.ppf(q, df))


def normal_two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


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
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se < 1e-12:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = normal_two_sided_p(z)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, "z": z, "p": p}


def delong_across_seeds(y_true: Any, scores_a: Sequence[Any], scores_b: Sequence[Any]) -> dict[str, Any]:
    """DeLong per seed pair and the conservative combination z = mean(diff_i) / mean(se_i) (module docstring)."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ConfigError(
            f"need the same number (>0) of runs per initialisation, got {len(scores_a)}, {len(scores_b)}"
        )
    per_seed = [delong_test(y_true, a, b) for a, b in zip(scores_a, scores_b, strict=True)]
    diff = float(np.mean([r["diff"] for r in per_seed]))
    se = float(np.mean([r["se"] for r in per_seed]))
    if se < 1e-12:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = normal_two_sided_p(z)
    return {"diff": diff, "se": se, "z": z, "p": p, "p_per_seed": [r["p"] for r in per_seed]}


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
        got = delong_covariance(y, np.vstack([np.ravel(r) for r in runs]))[0]
        for i, (want, have) in enumerate(zip(aucs[name], got, strict=True)):
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
) -> dict[str, Any]:
    """Paired t-test columns, plus DeLong columns when both runs' scores are given (NaN otherwise)."""
    tt = paired_ttest(a, b)
    dl = (
        delong_across_seeds(y_true, scores_a, scores_b)
        if scores_a is not None and scores_b is not None
        else None
    )
    return {
        "delta": tt["diff"],
        "delta_ci_low": tt["ci_low"],
        "delta_ci_high": tt["ci_high"],
        "p_ttest": tt["p"],
        "p_delong": dl["p"] if dl else math.nan,
        "delong_z": dl["z"] if dl else math.nan,
        "p_delong_per_seed": dl["p_per_seed"] if dl else [],
    }


def _with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``p_ttest_holm`` and ``p_delong_holm`` over the rows' tests."""
    for key in ("p_ttest", "p_delong"):
        for row, adj in zip(rows, holm([r[key] for r in rows]), strict=True):
            row[f"{key}_holm"] = adj
    return rows


def _check_inputs(aucs: Mapping[str, Sequence[float]], y_true: Any, scores: Mapping[str, Any] | None) -> None:
    if (y_true is None) != (scores is None):
        raise ConfigError("DeLong needs both y_true and scores (or neither)")
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
) -> list[dict[str, Any]]:
    """One row per initialisation (reference first): AUC summary over seeds and tests against ``reference``.

    ``aucs[name][i]`` is the test AUC of seed i (paired across names). With ``y_true`` and
    ``scores[name][i]`` (that run's per-sample test scores, same test set and order) the DeLong columns
    are filled. Keys: init, n_seeds, auc_mean, auc_sd, auc_min, auc_max, auc_ci_low, auc_ci_high,
    delta, delta_ci_low, delta_ci_high, p_ttest, p_delong, delong_z, p_delong_per_seed, and the Holm
    adjusted p_ttest_holm, p_delong_holm (NaN/empty for the reference row, whose delta is 0).
    """
    if reference not in aucs:
        raise ConfigError(f"reference {reference!r} is not one of {sorted(aucs)}")
    _check_inputs(aucs, y_true, scores)
    rows = []
    for name in [reference] + [k for k in aucs if k != reference]:
        s = summarise(aucs[name])
        row = {"init": name, "n_seeds": s["n"]} | {f"auc_{k}": s[k] for k in ("mean", "sd", "min", "max")}
        row |= {"auc_ci_low": s["ci_low"], "auc_ci_high": s["ci_high"]}
        if name == reference:
            row |= {"delta": 0.0, "delta_ci_low": math.nan, "delta_ci_high": math.nan, "p_ttest": math.nan}
            row |= {"p_delong": math.nan, "delong_z": math.nan, "p_delong_per_seed": []}
        else:
            sa, sb = (scores[name], scores[reference]) if scores is not None else (None, None)
            row |= _tests(aucs[name], aucs[reference], y_true, sa, sb)
        rows.append(row)
    return _with_holm(rows)


def pairwise(
    aucs: Mapping[str, Sequence[float]],
    *,
    y_true: Any = None,
    scores: Mapping[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Paired t-test (and DeLong when scores are given) for every pair of initialisations, a minus b, Holm-adjusted."""
    _check_inputs(aucs, y_true, scores)
    names = list(aucs)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = (scores[a], scores[b]) if scores is not None else (None, None)
            rows.append({"a": a, "b": b} | _tests(aucs[a], aucs[b], y_true, sa, sb))
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
        "| p (paired t) | p (DeLong) |",
        "|---|---:|---|---|---|---:|---:|",
    ]
    for r in table:
        auc = f"{num(r['auc_mean'])} ± {num(r['auc_sd'])} ({num(r['auc_ci_low'])}–{num(r['auc_ci_high'])})"
        if r["init"] == ref:
            delta = "reference"
        else:
            delta = f"{r['delta']:+.{digits}f} ({num(r['delta_ci_low'])} to {num(r['delta_ci_high'])})"
        lines.append(
            f"| {r['init']} | {r['n_seeds']} | {auc} | {num(r['auc_min'])}–{num(r['auc_max'])} "
            f"| {delta} | {_fmt_p(r['p_ttest'])} | {_fmt_p(r['p_delong'])} |"
        )
    if len(table) > 2:
        lines.append(
            "\np-values unadjusted; Holm-adjusted values are in the CSV (p_ttest_holm, p_delong_holm)."
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
