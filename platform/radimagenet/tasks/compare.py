"""``radimagenet compare``: initialisations x seeds, a preset of :mod:`radimagenet.tasks.sweep`.

    result = compare(["radimagenet-resnet50@champion", "imagenet", "scratch"], "s3://radimagenet/datasets/thyroid",
                     seeds=3, overrides=["model.arch=resnet50", "train.epochs=20"])
    print(result.markdown)

The grid is ``init`` x ``train.seed`` (x ``protocol`` x ``data.label_fraction`` with ``--protocols`` and
``--label-fractions``); every (initialisation, seed, ...) is one fine-tuning run nested under the parent
run ``--run-name``. Trials paired by seed share their protocol and label fraction; with several fractions
the parent also holds the label-efficiency curve (``compare/label_efficiency.csv``, ``.png``). Seed ``i``
of every initialisation shares the data order and the test set, so the tests are paired: a paired
t-test over seeds on the test AUCs (training variability) and, on the per-sample test predictions of
each seed pair (test-set variability), a paired patient-level bootstrap (patients resampled, so a
patient's several images count once) and, for binary tasks, DeLong's test (image-level), each combined
conservatively across seeds (:mod:`radimagenet.eval.stats`).
The parent run holds ``compare/table.md``, ``compare/table.csv``, ``compare/pairwise.csv``,
``compare/runs.csv`` (and the sweep's ``summary.md``, ``settings.csv``, ``auc.png``) and the metrics
``<init>/test/auc_mean``, ``/test/auc_sd``, ``/test/auc_delta``, ``/p_ttest``, ``/p_bootstrap``, ``/p_delong``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from radimagenet.errors import ConfigError
from radimagenet.io import tracking


@dataclass
class CompareResult:
    parent_run_id: str
    run_name: str
    table: list[dict[str, Any]]
    pairwise: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (init, seed): run id, metrics
    markdown: str = ""
    label_efficiency: list[dict[str, Any]] = field(default_factory=list)  # with several label fractions


def seed_list(seeds: int, base: int = 0) -> list[int]:
    """``seeds`` consecutive seeds starting at ``base`` (at least one)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    return [base + i for i in range(seeds)]


PROTOCOLS = ("finetune", "linear", "knn")


def compare_overrides(inits: list[str], data: str, seeds: list[int], reference: str | None, run_name: str,
                      in_process: bool, protocols: list[str] | None = None,
                      label_fractions: list[float] | None = None) -> list[str]:
    """The sweep overrides of a comparison: ``grid.init`` x ``grid.train.seed``, and with ``protocols`` /
    ``label_fractions`` also ``grid.protocol`` x ``grid.data.label_fraction``."""
    if len(set(inits)) != len(inits) or len(inits) < 2:
        raise ConfigError(f"compare needs at least 2 distinct initialisations, got {inits}")
    for init in inits:
        if not init:
            raise ConfigError("an initialisation is empty: use a registry reference, scratch or imagenet")
        if init not in ("scratch", "imagenet"):
            tracking.parse_ref(init)  # a malformed reference is a clear error before anything runs
    if reference is not None and reference not in inits:
        raise ConfigError(f"--reference {reference!r} is not one of the initialisations {inits}")
    grid = []
    if protocols:
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or len(set(protocols)) != len(protocols):
            raise ConfigError(f"--protocols takes distinct values among {', '.join(PROTOCOLS)}, got {protocols}")
        grid.append(f"grid.protocol={','.join(protocols)}")
    if label_fractions:
        bad_f = [f for f in label_fractions if not 0 < f <= 1]
        if bad_f or len(set(label_fractions)) != len(label_fractions):
            raise ConfigError(f"--label-fractions takes distinct shares in (0, 1], got {label_fractions}")
        grid.append(f"grid.data.label_fraction={','.join(_number(f) for f in sorted(label_fractions))}")
    return [f"data.manifest={data}", f"grid.init={','.join(inits)}", *grid,
            f"grid.train.seed={','.join(map(str, seeds))}", f"sweep.name={run_name}",
            f"sweep.reference={reference or inits[0]}", f"sweep.in_process={'true' if in_process else 'false'}"]


def _number(x: float) -> str:
    """A share as an override's text that parses back to the same float (no exponent: YAML reads 1e-05
    as a string): ``0.01``, ``1``, ``0.00001``."""
    return f"{x:.12f}".rstrip("0").rstrip(".")


def compare(inits: list[str], data: str, *, seeds: int = 3, config_path: str | None = None,
            overrides: list[str] | None = None, reference: str | None = None, run_name: str = "",
            in_process: bool = False, base_seed: int = 0, protocols: list[str] | None = None,
            label_fractions: list[float] | None = None) -> CompareResult:
    """Fine-tune every initialisation with every seed (and protocol and label fraction when given), nested
    under one parent run; return the tables (with several fractions, the label-efficiency curve too)."""
    from radimagenet.tasks.sweep import sweep
    from radimagenet.tasks.sweep_config import load_sweep

    run_name = run_name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = load_sweep(config_path, [*(overrides or []), *compare_overrides(
        inits, data, seed_list(seeds, base_seed), reference, run_name, in_process, protocols, label_fractions)])
    result = sweep(spec, artifact_prefix="compare")
    s = result.summary
    markdown = s["comparison"] + ("\n" + s["efficiency_markdown"] if s["efficiency_markdown"] else "")
    return CompareResult(result.parent_run_id, run_name, s["table"], s["pairwise"], result.results, markdown,
                         s["label_efficiency"])
