"""The sweep's config: a fine-tuning config plus a ``sweep:`` section and a ``grid:`` of values to cross.

    spec = load_sweep("pipelines/sweep-paper.yaml", ["data.manifest=s3://radimagenet/datasets/thyroid",
                                                     "sweep.name=thyroid", "grid.train.seed=0,1,2"])
    for trial in spec.trials:  # trial.name, trial.values {"init": "scratch", "train.lr": 0.001, ...}, trial.config
        ...

Every fine-tuning key can be fixed (``train.epochs=20``) or given a list under ``grid.`` (YAML lists, or
``grid.train.lr=1e-3,1e-4`` on the command line). The trials are the cross product of the grid's keys,
in the order given, times ``grid.cases`` when present: a list of partial settings crossed as one axis
(the paper's freeze x learning-rate pairs are six cases, not a 3 x 3 product). ``grid.init`` takes
``backbone``, ``scratch``, ``imagenet`` or a registry reference (shorthand for ``init=backbone`` with
that ``backbone``); a fixed ``backbone=`` applies only to the trials whose init is ``backbone``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radimagenet.config import apply_overrides, flatten, from_dict, load_yaml, parse_override
from radimagenet.errors import ConfigError

SPECIAL_INITS = ("backbone", "scratch", "imagenet")


@dataclass
class SweepSection:
    name: str = ""  # the parent run; the same name again resumes it and skips the finished trials
    reference: str = ""  # the init the others are tested against (paired); default: the grid's first init
    cpus_per_trial: float = 1.0  # Ray Tune places each trial (one fine-tuning process) with these resources
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster's free resources allow
    in_process: bool = False  # run the trials one after another in this process (no Ray): notebooks, debugging


@dataclass
class Trial:
    """One setting of the grid: its run name, the values that vary, and its validated FinetuneConfig."""

    name: str
    values: dict[str, Any]
    config: Any
    setting: str = ""  # the values other than the seed: trials of one setting differ only by seed
    init: str = ""  # what it starts from, as given: a registry reference (NAME@alias), scratch or imagenet


@dataclass
class SweepSpec:
    sweep: SweepSection
    base: dict[str, Any]  # the fine-tuning config every trial starts from (plain dict)
    axes: dict[str, list[Any]]  # dotted key -> values (``cases`` -> list of dicts)
    trials: list[Trial] = field(default_factory=list)


def _split_values(key: str, value: Any) -> list[Any]:
    """A grid value as a list: YAML lists as given; ``"a,b"`` from the command line split and parsed."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [parse_override(f"v={part.strip()}")[1] for part in value.split(",") if part.strip()]
    return [value]


def _axes(grid: dict[str, Any]) -> dict[str, list[Any]]:
    cases = grid.pop("cases", None)
    axes = {key: _split_values(key, value) for key, value in flatten(grid).items()}
    if cases is not None:
        if not isinstance(cases, list) or not cases or not all(isinstance(c, dict) for c in cases):
            raise ConfigError("grid.cases must be a list of mappings of fine-tuning keys (e.g. "
                              "[{train.freeze: all, train.lr: 0.01}, ...])")
        axes["cases"] = [flatten(c) for c in cases]
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"grid.{key} has no values")
    return axes


def _init_values(value: Any) -> dict[str, Any]:
    """``grid.init`` / ``init`` value -> the fine-tuning keys it sets."""
    text = str(value)
    if text in ("scratch", "imagenet"):
        return {"init": text, "backbone": ""}
    if text == "backbone":
        return {"init": "backbone"}
    return {"init": "backbone", "backbone": text}  # a registry reference


def slug(text: str) -> str:
    """A run-name and metric-key safe version of a value."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def values_label(values: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``key=value,...`` of a trial's values, leaving out the keys in ``skip`` (settings, groups, curves)."""
    return ",".join(f"{k}={v}" for k, v in values.items() if k not in skip)


MAX_NAME = 128  # run names are cut there (tracking.run_name); a trial name never is


def trial_name(sweep_name: str, values: dict[str, Any]) -> str:
    """``<sweep>-<key_value>-...`` (short keys); longer than 128 characters: cut, with a hash of the whole."""
    parts = [slug(f"{k.rsplit('.', 1)[-1]}_{v}") for k, v in values.items()]
    name = "-".join([slug(sweep_name), *parts])
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:MAX_NAME - 11]}-{digest}"


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the grid, each with its validated FinetuneConfig (nothing runs)."""
    from radimagenet.tasks.finetune_config import FinetuneConfig, validate

    keys = list(spec.axes)
    for key in keys:
        values = spec.axes[key]
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"grid.{key} lists a value twice ({values}): drop the duplicate")
    trials, names = [], set()
    for combo in itertools.product(*(spec.axes[k] for k in keys)):
        values: dict[str, Any] = {}
        for key, value in zip(keys, combo, strict=True):
            values.update(value if key == "cases" else {key: value})
        overrides = dict(values)
        init = overrides.pop("init", spec.base.get("init", "backbone"))
        overrides |= _init_values(init)
        if overrides["init"] != "backbone":  # a scratch or imagenet trial ignores the backbone axis:
            overrides["backbone"] = ""  # one trial, not one per backbone
            values.pop("backbone", None)
        name = trial_name(spec.sweep.name, values)
        if name in names:
            continue
        names.add(name)
        data = apply_overrides(spec.base, [f"{k}={_yaml(v)}" for k, v in overrides.items()])
        data["tracking"]["run_name"] = name
        try:
            cfg = validate(from_dict(FinetuneConfig, data))
        except ConfigError as exc:
            raise ConfigError(f"trial {values_label(values)}: {exc}") from None
        trials.append(Trial(name, values, cfg, values_label(values, ("train.seed",)) or "all",
                            cfg.backbone if cfg.init == "backbone" else cfg.init))
    return trials


def _yaml(value: Any) -> str:
    """A value as the text of a ``key=value`` override (parsed back to the same value)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_sweep(path: str | Path | None, overrides: list[str]) -> SweepSpec:
    """The sweep from a YAML preset and ``key=value`` / ``grid.key=a,b`` / ``sweep.key=v`` overrides."""
    data = apply_overrides(load_yaml(path) if path else {}, overrides)
    sweep = from_dict(SweepSection, data.pop("sweep", None) or {})
    if not sweep.name:
        raise ConfigError("sweep.name is required: the parent run's name (the same name resumes the sweep)")
    if sweep.cpus_per_trial <= 0 or sweep.gpus_per_trial < 0 or sweep.max_concurrent < 0:
        raise ConfigError("sweep.cpus_per_trial must be > 0, sweep.gpus_per_trial and sweep.max_concurrent >= 0")
    scaling = (data.get("scaling") or {})
    if scaling.get("use_gpu") and not sweep.gpus_per_trial:  # each trial is one process on one device
        sweep = dataclasses.replace(sweep, gpus_per_trial=1.0)
    grid = data.pop("grid", None) or {}
    if not isinstance(grid, dict):
        raise ConfigError("grid must be a mapping of fine-tuning keys to lists of values")
    axes = _axes(grid)
    from radimagenet.config import to_dict
    from radimagenet.tasks.finetune_config import FinetuneConfig

    base = to_dict(from_dict(FinetuneConfig, data))  # unknown keys are errors here
    spec = SweepSpec(sweep, base, axes)
    spec.trials = expand(spec)
    inits = list(dict.fromkeys(init_of(t) for t in spec.trials))
    reference = base["backbone"] if sweep.reference == "backbone" else sweep.reference
    if reference and reference not in inits:
        raise ConfigError(f"sweep.reference={sweep.reference!r} is not an init of the grid ({', '.join(inits)})")
    spec.sweep = dataclasses.replace(sweep, reference=reference or inits[0])
    return spec


def init_of(trial: Trial) -> str:
    """What a trial starts from, as tables name it: the backbone reference as given, ``scratch`` or ``imagenet``."""
    return trial.init
