"""The sweep's summary: per-trial results read back from MLflow, per-setting rows, paired tests against
the reference init, and the parent run's artifacts (``sweep/summary.md``, ``settings.csv``, ``runs.csv``,
``auc.png``; with paired tests ``table.md``, ``table.csv``, ``pairwise.csv``; with several
``data.label_fraction`` values ``label_efficiency.csv`` and ``label_efficiency.png``) and metrics
(``<init>/test/auc_mean``, ... , prefixed by the group when there are several).

Trials that differ only in their init (and seed) form a *group*; within a group, seed ``i`` of every
init shares the data order and the test set, so the tests are paired: a paired t-test over seeds on the
test AUCs, and per seed pair a paired patient-level bootstrap and (binary) DeLong's test, combined across
seeds (:func:`radimagenet.eval.stats.compare`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.io import tracking
from radimagenet.tasks.sweep_config import Trial, init_of, slug, values_label

GROUP_SKIP = ("init", "backbone", "train.seed")  # what varies inside a group of paired trials


def trial_result(uri: str, trial: Trial, run_id: str) -> dict[str, Any]:
    """A finished trial's test metrics and per-image predictions (``predictions/test.csv``)."""
    from radimagenet.tasks.downstream import PREDICTIONS_FILE, read_predictions

    run = tracking.get_run(uri, run_id)
    metrics, multi = run.data.metrics, run.data.tags.get("radimagenet.metrics") == "multilabel"
    pred = read_predictions(tracking.download_text(uri, run_id, PREDICTIONS_FILE), multi_label=multi)
    group = values_label(trial.values, GROUP_SKIP) or "all"
    return {"trial": trial.name, "setting": trial.setting, "group": group, "init": init_of(trial),
            "seed": trial.config.train.seed, "run_id": run_id, "values": trial.values,
            "test_auc": float(metrics.get("test/auc", math.nan)),
            "ci_low": float(metrics.get("test/auc_ci_low", math.nan)),
            "ci_high": float(metrics.get("test/auc_ci_high", math.nan)),
            "n_patients": metrics.get("test/n_patients"), "n_images": metrics.get("test/n_images"),
            "keys": pred.keys, "patients": pred.patients, "labels": pred.labels, "probs": pred.probs,
            "n_boot": trial.config.eval.n_boot}


def paired_tests(runs: list[dict], reference: str) -> tuple[list[dict], list[dict], str]:
    """``(table, pairwise, markdown)`` of one group: a row per init vs ``reference``, all pairs."""
    from radimagenet.eval import stats

    inits = list(dict.fromkeys(r["init"] for r in runs))
    aucs = {init: [r["test_auc"] for r in runs if r["init"] == init] for init in inits}
    bad = [f"{r['init']} seed {r['seed']}" for r in runs if not math.isfinite(r["test_auc"])]
    if bad:
        raise ConfigError(f"no test AUC for {bad}: a sweep's tests need a classification task")
    y_true, scores = _test_inputs(runs, inits)
    kw = {"y_true": y_true, "scores": scores, "patients": runs[0]["patients"], "n_boot": runs[0]["n_boot"]}
    table = stats.compare(aucs, reference, **kw)
    pairwise = stats.pairwise(aucs, **kw)
    md = stats.comparison_markdown(table)
    if runs[0]["probs"].shape[1] != 2 or runs[0]["labels"].ndim == 2:
        md += "\nDeLong's test needs a binary task: the patient bootstrap compares macro AUCs.\n"
    return table, pairwise, md


def _test_inputs(runs: list[dict], inits: list[str]) -> tuple[Any, Any]:
    """``(y_true, scores)`` for the test-set tests, every run on one test set (same keys and patients in
    the same order): binary, the 0/1 labels and positive-class probabilities; else the class ids and
    the probabilities [N, K] (multi-label: the multi-hot labels [N, K] and the probabilities)."""
    first = runs[0]
    for r in runs[1:]:
        if (r["keys"] != first["keys"] or not np.array_equal(r["labels"], first["labels"])
                or not np.array_equal(r["patients"], first["patients"])):
            raise ConfigError(f"trial {r['trial']} was tested on other samples than {first['trial']}: "
                              "all trials of a comparison must share the dataset")
    if first["probs"].shape[1] != 2 or first["labels"].ndim == 2:
        return first["labels"], {init: [r["probs"] for r in runs if r["init"] == init] for init in inits}
    pos = _positive_column(first)
    y = (first["labels"] == pos).astype(int)
    return y, {init: [r["probs"][:, pos] for r in runs if r["init"] == init] for init in inits}


def _positive_column(run: dict) -> int:
    """The positive class of a binary run: the column whose AUC is the reported test AUC."""
    from radimagenet.eval.metrics import auc_score

    for col in (1, 0):
        if abs(auc_score(run["labels"] == col, run["probs"][:, col]) - run["test_auc"]) < 1e-6:
            return col
    raise ConfigError(f"trial {run['trial']}: its predictions do not reproduce its test AUC {run['test_auc']}")


def summarise(results: list[dict], reference: str) -> dict[str, Any]:
    """Per-setting rows (mean test AUC over seeds, mean patient-level CI bounds, the paired tests against
    ``reference`` within its group), each group's comparison table and all pairwise tests, with Markdown."""
    rows, table, pairwise, sections = [], [], [], []
    groups = list(dict.fromkeys(r["group"] for r in results))
    for group in groups:
        runs = [r for r in results if r["group"] == group]
        tests: dict[str, dict] = {}
        inits = list(dict.fromkeys(r["init"] for r in runs))
        if reference in inits and len(inits) > 1:
            rows_g, pairs, md = paired_tests(runs, reference)
            tests = {row["init"]: row for row in rows_g}
            table += [{"group": group, **row} for row in rows_g]
            pairwise += [{"group": group, **p} for p in pairs]
            sections.append(md if len(groups) == 1 else f"### {group}\n\n{md}")
        for setting in dict.fromkeys(r["setting"] for r in runs):
            trials = [r for r in runs if r["setting"] == setting]
            aucs = np.array([r["test_auc"] for r in trials])
            t = tests.get(trials[0]["init"], {})
            rows.append({"setting": setting, "group": group, "init": trials[0]["init"], "n_seeds": len(trials),
                         "auc_mean": float(aucs.mean()), "auc_sd": float(aucs.std(ddof=1)) if len(aucs) > 1 else math.nan,
                         "ci_low": float(np.mean([r["ci_low"] for r in trials])),
                         "ci_high": float(np.mean([r["ci_high"] for r in trials])),
                         "n_patients": trials[0]["n_patients"],
                         **{k: t.get(k, math.nan) for k in ("delta", "p_ttest", "p_bootstrap", "p_delong")}})
    curve = label_efficiency(results, rows)
    efficiency = efficiency_markdown(curve, reference)
    return {"rows": rows, "table": table, "pairwise": pairwise, "comparison": "\n".join(sections),
            "markdown": _markdown(rows, reference) + ("\n" + "\n".join(sections) if sections else "")
            + ("\n" + efficiency if efficiency else ""),
            "single_group": len(groups) == 1, "label_efficiency": curve, "efficiency_markdown": efficiency}


FRACTION = "data.label_fraction"


def label_efficiency(results: list[dict], rows: list[dict]) -> list[dict]:
    """The label-efficiency curve when the trials vary ``data.label_fraction``: one row per (curve, fraction),
    a curve being an init with the other values that are not the seed (e.g. ``protocol=linear``), with the
    setting's mean test AUC over seeds, its mean patient-level CI and its paired tests against the
    reference at the same fraction. Empty when fewer than two fractions were run."""
    if len({float(r["values"][FRACTION]) for r in results if FRACTION in r["values"]}) < 2:
        return []
    by_setting = {(row["group"], row["setting"]): row for row in rows}
    out, seen = [], set()
    for r in results:
        if FRACTION not in r["values"] or (r["group"], r["setting"]) in seen:
            continue
        seen.add((r["group"], r["setting"]))
        rest = values_label(r["values"], (*GROUP_SKIP, FRACTION))
        row = by_setting[(r["group"], r["setting"])]
        out.append({"curve": f"{r['init']}, {rest}" if rest else r["init"], "init": r["init"],
                    "label_fraction": float(r["values"][FRACTION]),
                    **{k: row[k] for k in ("n_seeds", "auc_mean", "auc_sd", "ci_low", "ci_high", "n_patients",
                                           "delta", "p_ttest", "p_bootstrap", "p_delong")}})
    return out


def efficiency_markdown(curve: list[dict], reference: str) -> str:
    """The label-efficiency table: a row per curve, a column per label fraction (AUC and CI)."""
    if not curve:
        return ""
    fractions = sorted({r["label_fraction"] for r in curve})
    cells: dict[str, dict[float, str]] = {}
    for r in curve:
        mark = "*" if isinstance(r["p_bootstrap"], float) and r["p_bootstrap"] < 0.05 else ""
        cells.setdefault(r["curve"], {})[r["label_fraction"]] = (
            f"{_fmt(r['auc_mean'])}{mark} ({_fmt(r['ci_low'])}-{_fmt(r['ci_high'])})")
    head = "| initialisation | " + " | ".join(f"{100 * f:g}% of labels" for f in fractions) + " |\n"
    head += "|---" * (len(fractions) + 1) + "|\n"
    body = "".join(f"| {name} | " + " | ".join(row.get(f, "") for f in fractions) + " |\n"
                   for name, row in cells.items())
    return ("## Label efficiency\n\nTest AUC, mean over seeds (the mean patient-level 95% CI), by the share of "
            f"the training split's labels used; `*`: differs from `{reference}` with the same protocol and share "
            "(paired patient bootstrap, p < 0.05, not adjusted for the number of cells).\n\n" + head + body)


def _fmt(x: Any, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _markdown(rows: list[dict], reference: str) -> str:
    head = ("| setting | seeds | test AUC mean (sd) | patient-level 95% CI | delta vs " + reference
            + " | p (t-test) | p (patient bootstrap) | p (DeLong) |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['setting']} | {r['n_seeds']} | {_fmt(r['auc_mean'])} ({_fmt(r['auc_sd'])}) | "
        f"{_fmt(r['ci_low'])}-{_fmt(r['ci_high'])} | {_fmt(r['delta'])} | {_fmt(r['p_ttest'], 4)} | "
        f"{_fmt(r['p_bootstrap'], 4)} | {_fmt(r['p_delong'], 4)} |\n" for r in rows)
    return ("## Test AUC per setting\n\nCI: the mean over seeds of each run's patient-level bootstrap bounds; "
            f"tests: paired against `{reference}` within each group (the same values but the init).\n\n"
            + head + body)


def log_summary(uri: str, parent: str, results: list[dict], summary: dict[str, Any], prefix: str = "sweep") -> None:
    """The summary under ``prefix/`` on the parent run (``summary.md``, ``settings.csv``, ``runs.csv``,
    ``auc.png``; with paired tests ``table.md``, ``table.csv``, ``pairwise.csv``; with a label-efficiency
    curve ``label_efficiency.csv``, ``label_efficiency.png``) and its metrics:
    ``<init>/test/auc_mean``, ``/test/auc_sd``, ``/test/auc_delta``, ``/p_ttest``, ``/p_bootstrap``,
    ``/p_delong`` (prefixed by the group when several groups are compared)."""
    from radimagenet.eval import stats
    from radimagenet.eval.figures import auc_intervals_png, label_efficiency_png

    tmp = tempfile.mkdtemp(prefix="radimagenet-sweep-")
    try:
        stats.write_csv(summary["rows"], os.path.join(tmp, "settings.csv"))
        stats.write_csv([{k: r[k] for k in ("trial", "setting", "init", "seed", "run_id", "test_auc", "ci_low",
                                            "ci_high", "n_patients", "n_images")} for r in results],
                        os.path.join(tmp, "runs.csv"))
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(summary["markdown"])
        if summary["table"]:
            stats.write_csv(summary["table"], os.path.join(tmp, "table.csv"))
            stats.write_csv(summary["pairwise"], os.path.join(tmp, "pairwise.csv"))
            with open(os.path.join(tmp, "table.md"), "w") as f:
                f.write(summary["comparison"])
        if summary["label_efficiency"]:
            curve = summary["label_efficiency"]
            stats.write_csv(curve, os.path.join(tmp, "label_efficiency.csv"))
            points: dict[str, list[tuple[float, float, float, float]]] = {}
            for r in curve:
                points.setdefault(r["curve"], []).append((r["label_fraction"], r["auc_mean"], r["ci_low"], r["ci_high"]))
            label_efficiency_png(points, os.path.join(tmp, "label_efficiency.png"))
        rows = summary["rows"]
        auc_intervals_png([r["setting"] for r in rows], [r["auc_mean"] for r in rows], [r["ci_low"] for r in rows],
                          [r["ci_high"] for r in rows], os.path.join(tmp, "auc.png"))
        tracking.log_artifacts(uri, parent, tmp, prefix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    metrics: dict[str, float] = {}
    for row in summary["table"]:
        s = slug(row["init"]) if summary["single_group"] else f"{slug(row['group'])[:100]}/{slug(row['init'])}"
        values = {"test/auc_mean": row["auc_mean"], "test/auc_sd": row["auc_sd"], "test/auc_delta": row["delta"],
                  "p_ttest": row["p_ttest"], "p_bootstrap": row["p_bootstrap"], "p_delong": row["p_delong"]}
        metrics |= {f"{s}/{k}": v for k, v in values.items() if isinstance(v, float) and not math.isnan(v)}
    tracking.log_metrics(uri, parent, metrics, 0)
