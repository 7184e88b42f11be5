"""``radimagenet compare``: fine-tune several initialisations over several seeds and test the differences.

    result = compare(["radimagenet-resnet50@champion", "imagenet", "scratch"], "s3://radimagenet/datasets/thyroid",
                     seeds=3, overrides=["model.arch=resnet50", "train.epochs=20"])
    print(result.markdown)

Every (initialisation, seed) is one fine-tuning run (:func:`radimagenet.tasks.finetune.finetune`) nested under
one parent MLflow run. Seed ``i`` of every initialisation shares the data order and the test set, so the
tests are paired: a paired t-test over seeds on the test AUCs (training variability) and, on the
per-sample test predictions of each seed pair (test-set variability), a paired patient-level bootstrap
(patients resampled, so a patient's several images count once) and, for binary tasks, DeLong's test
(image-level), each combined conservatively across seeds (see :mod:`radimagenet.eval.stats`). The parent
run holds the table as Markdown and CSV (``compare/table.md``, ``compare/table.csv``,
``compare/pairwise.csv``, ``compare/runs.csv``) and ``<init>/test/auc_mean``, ``/test/auc_sd``,
``/test/auc_delta``, ``/p_ttest``, ``/p_bootstrap``, ``/p_delong`` metrics.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radimagenet.config import load_config
from radimagenet.errors import ConfigError
from radimagenet.io import tracking

SPECIAL_INITS = ("scratch", "imagenet")


def init_overrides(init: str) -> list[str]:
    """Config overrides that select one initialisation: ``scratch``, ``imagenet`` or a registry reference."""
    if not init:
        raise ConfigError("an initialisation is empty: use a registry reference, scratch or imagenet")
    if init in SPECIAL_INITS:
        return [f"init={init}", "backbone="]
    tracking.parse_ref(init)  # a malformed reference is a clear error before anything runs
    return ["init=backbone", f"backbone={init}"]


def slug(text: str) -> str:
    """A run-name and metric-key safe version of an initialisation name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "init"


def seed_list(seeds: int, base: int = 0) -> list[int]:
    """``seeds`` consecutive seeds starting at ``base`` (at least one)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    return [base + i for i in range(seeds)]


@dataclass
class CompareResult:
    parent_run_id: str
    run_name: str
    table: list[dict[str, Any]]
    pairwise: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (init, seed): run id, metrics
    markdown: str = ""


def child_configs(inits: list[str], data: str, seeds: list[int], config_path: str | None,
                  overrides: list[str], run_name: str) -> dict[str, list[Any]]:
    """The validated FinetuneConfig of every (init, seed), built before anything runs."""
    from radimagenet.tasks.finetune_config import FinetuneConfig, validate

    if len(set(inits)) != len(inits) or len(inits) < 2:
        raise ConfigError(f"compare needs at least 2 distinct initialisations, got {inits}")
    out: dict[str, list[Any]] = {}
    for init in inits:
        out[init] = [
            validate(load_config(FinetuneConfig, config_path, [
                *overrides, *init_overrides(init), f"data.manifest={data}", f"train.seed={seed}",
                f"tracking.run_name={run_name}-{slug(init)}-s{seed}"[:140]]))
            for seed in seeds
        ]
    return out


def compare(inits: list[str], data: str, *, seeds: int = 3, config_path: str | None = None,
            overrides: list[str] | None = None, reference: str | None = None, run_name: str = "",
            in_process: bool = False, base_seed: int = 0) -> CompareResult:
    """Fine-tune every initialisation with every seed, nested under one parent run; return the table."""
    from radimagenet.tasks import finetune as ft

    run_name = run_name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    configs = child_configs(inits, data, seed_list(seeds, base_seed), config_path, list(overrides or []), run_name)
    reference = reference or inits[0]
    if reference not in configs:
        raise ConfigError(f"--reference {reference!r} is not one of the initialisations {inits}")
    first = configs[inits[0]][0]
    for init in inits:  # every init checked (backbone exists, weights present) before the first run
        ft.preflight(configs[init][0])
    uri = tracking.tracking_uri(first.tracking.uri)
    parent, _ = tracking.start_or_resume_run(uri, first.tracking.experiment, run_name,
                                             tags={"radimagenet.kind": "compare", "radimagenet.task": first.task})
    try:
        tracking.log_params(uri, parent, {"inits": ",".join(inits), "seeds": seeds, "reference": reference,
                                          "data": data, "overrides": " ".join(overrides or [])[:5000]})
        runs = [_run_child(cfg, init, parent, uri, in_process) for init in inits for cfg in configs[init]]
        result = _tabulate(runs, inits, reference, parent, run_name)
        _log_parent(uri, parent, result)
    except BaseException:
        tracking.end_run(uri, parent, "FAILED")
        raise
    tracking.end_run(uri, parent, "FINISHED")
    return result


def _run_child(cfg: Any, init: str, parent: str, uri: str, in_process: bool) -> dict[str, Any]:
    """One nested fine-tuning run; returns its metrics and per-sample test predictions."""
    from radimagenet.tasks import finetune as ft
    from radimagenet.tasks.downstream import PREDICTIONS_FILE, read_predictions

    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, parent_run_id=parent))
    res = ft.finetune(cfg, in_process=in_process)
    pred = read_predictions(tracking.download_text(uri, res.run_id, PREDICTIONS_FILE))
    return {"init": init, "seed": cfg.train.seed, "run_id": res.run_id, "run_name": res.run_name,
            "backbone": res.backbone, "test_auc": float(res.metrics.get("test/auc", math.nan)),
            "metrics": res.metrics, "keys": pred.keys, "patients": pred.patients, "labels": pred.labels,
            "probs": pred.probs, "n_boot": cfg.eval.n_boot}


def _tabulate(runs: list[dict], inits: list[str], reference: str, parent: str, run_name: str) -> CompareResult:
    """Summary rows vs the reference and all pairwise tests (patient bootstrap; DeLong when binary)."""
    from radimagenet.eval import stats

    aucs = {init: [r["test_auc"] for r in runs if r["init"] == init] for init in inits}
    bad = [f"{r['init']} seed {r['seed']}" for r in runs if not math.isfinite(r["test_auc"])]
    if bad:
        raise ConfigError(f"no test AUC for {bad}: compare needs a classification task")
    y_true, scores = _test_inputs(runs, inits)
    kw = {"y_true": y_true, "scores": scores, "patients": runs[0]["patients"], "n_boot": runs[0]["n_boot"]}
    table = stats.compare(aucs, reference, **kw)
    pairwise = stats.pairwise(aucs, **kw)
    md = stats.comparison_markdown(table)
    if runs[0]["probs"].shape[1] != 2:
        md += "\nDeLong's test needs a binary task: the patient bootstrap compares macro AUCs.\n"
    return CompareResult(parent, run_name, table, pairwise, runs, md)


def _test_inputs(runs: list[dict], inits: list[str]) -> tuple[Any, Any]:
    """``(y_true, scores)`` for the test-set tests, every run on one test set (same keys and patients in
    the same order): binary, the 0/1 labels and positive-class probabilities; else the class ids and
    the probabilities [N, K]."""
    first = runs[0]
    for r in runs[1:]:
        if (r["keys"] != first["keys"] or not np.array_equal(r["labels"], first["labels"])
                or not np.array_equal(r["patients"], first["patients"])):
            raise ConfigError(f"run {r['run_name']} was tested on other samples than {first['run_name']}: "
                              "all runs of a comparison must share the dataset")
    if first["probs"].shape[1] != 2:
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
    raise ConfigError(f"run {run['run_name']}: its predictions do not reproduce its test AUC {run['test_auc']}")


def _log_parent(uri: str, parent: str, result: CompareResult) -> None:
    """Table artifacts and per-initialisation summary metrics on the parent run."""
    from radimagenet.eval import stats

    tmp = tempfile.mkdtemp(prefix="radimagenet-compare-")
    try:
        stats.write_csv(result.table, os.path.join(tmp, "table.csv"))
        stats.write_csv(result.pairwise, os.path.join(tmp, "pairwise.csv"))
        stats.write_csv([{k: v for k, v in r.items() if k in ("init", "seed", "run_id", "run_name", "backbone",
                                                                "test_auc")} for r in result.runs],
                        os.path.join(tmp, "runs.csv"))
        with open(os.path.join(tmp, "table.md"), "w") as f:
            f.write(result.markdown)
        tracking.log_artifacts(uri, parent, tmp, "compare")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    metrics: dict[str, float] = {}
    for row in result.table:
        s = slug(row["init"])
        metrics |= {f"{s}/test/auc_mean": row["auc_mean"], f"{s}/test/auc_sd": row["auc_sd"],
                    f"{s}/test/auc_delta": row["delta"], f"{s}/p_ttest": row["p_ttest"],
                    f"{s}/p_bootstrap": row["p_bootstrap"], f"{s}/p_delong": row["p_delong"]}
    tracking.log_metrics(uri, parent, metrics, 0)
