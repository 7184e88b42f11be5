"""The sweep's grid without servers: crossing, cases, inits, names, validation, the paper's preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from radimagenet.errors import ConfigError
from radimagenet.tasks.sweep_config import init_of, load_sweep, trial_name

PAPER = Path(__file__).resolve().parents[2] / "pipelines" / "sweep-paper.yaml"
BASE = ["data.manifest=s3://b/ds", "sweep.name=thy", "model.arch=resnet10t"]


def test_the_grid_is_the_cross_product_in_the_order_given():
    spec = load_sweep(None, [*BASE, "backbone=bb@champion", "grid.init=backbone,scratch",
                             "grid.train.lr=1e-3,1e-4", "grid.train.seed=0,1,2"])
    assert len(spec.trials) == 12
    first = spec.trials[0]
    assert first.values == {"init": "backbone", "train.lr": "1e-3", "train.seed": 0}
    assert first.config.backbone == "bb@champion" and first.config.train.lr == 1e-3
    assert first.name == "thy-init_backbone-lr_1e-3-seed_0" == first.config.tracking.run_name
    scratch = [t for t in spec.trials if t.config.init == "scratch"]
    assert len(scratch) == 6 and all(t.config.backbone == "" for t in scratch)  # backbone= applies to backbone trials
    assert {init_of(t) for t in spec.trials} == {"bb@champion", "scratch"} and spec.sweep.reference == "bb@champion"
    assert len({t.setting for t in spec.trials}) == 4  # settings differ by more than the seed
    assert len({t.name for t in spec.trials}) == 12


def test_a_registry_reference_in_grid_init_and_an_explicit_reference():
    spec = load_sweep(None, [*BASE, "grid.init=a@champion,b/3,imagenet", "sweep.reference=imagenet"])
    assert [(t.config.init, t.config.backbone) for t in spec.trials] == [
        ("backbone", "a@champion"), ("backbone", "b/3"), ("imagenet", "")]
    assert spec.sweep.reference == "imagenet"
    with pytest.raises(ConfigError, match="sweep.reference='nope' is not an init"):
        load_sweep(None, [*BASE, "grid.init=a@champion,scratch", "sweep.reference=nope"])


def test_the_papers_24_settings():
    spec = load_sweep(PAPER, ["data.manifest=s3://b/ds", "sweep.name=paper"])
    assert len(spec.trials) == 24
    pairs = {(t.config.train.freeze, t.config.train.lr) for t in spec.trials}
    assert pairs == {("none", 1e-3), ("none", 1e-4), ("all", 1e-2), ("all", 1e-3), ("top10", 1e-2), ("top10", 1e-3)}
    assert len({t.config.backbone for t in spec.trials}) == 4 and all(t.config.init == "backbone" for t in spec.trials)
    assert len(load_sweep(PAPER, ["data.manifest=s3://b/ds", "sweep.name=p", "grid.train.seed=0,1,2"]).trials) == 72


def test_label_fractions_and_every_key_can_be_a_grid_axis():
    spec = load_sweep(None, [*BASE, "init=scratch", "grid.data.label_fraction=0.1,0.5,1.0", "grid.train.freeze=none,all"])
    assert [t.config.data.label_fraction for t in spec.trials] == [0.1, 0.1, 0.5, 0.5, 1.0, 1.0]
    assert [t.config.train.freeze for t in spec.trials[:2]] == ["none", "all"]


def test_clear_errors():
    with pytest.raises(ConfigError, match="sweep.name is required"):
        load_sweep(None, ["data.manifest=s3://b/ds", "init=scratch"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_sweep(None, [*BASE, "init=scratch", "trian.lr=1"])
    with pytest.raises(ConfigError, match=r"trial train.lr=-1.*train.lr"):
        load_sweep(None, [*BASE, "init=scratch", "grid.train.lr=1e-3,-1"])
    with pytest.raises(ConfigError, match="grid.cases must be a list"):
        load_sweep(None, [*BASE, "init=scratch", "grid.cases=3"])
    with pytest.raises(ConfigError, match="grid.train.seed lists a value twice"):
        load_sweep(None, [*BASE, "init=scratch", "grid.train.seed=1,1"])


def test_scratch_trials_are_not_repeated_per_backbone_and_gpu_trials_get_a_gpu():
    spec = load_sweep(PAPER, ["data.manifest=s3://b/ds", "sweep.name=p", "grid.init=backbone,scratch"])
    scratch = [t for t in spec.trials if t.config.init == "scratch"]
    assert len(scratch) == 6 and len(spec.trials) == 30  # 24 backbone settings + 6 cases from scratch
    assert all("backbone" not in t.values for t in scratch)
    assert spec.sweep.gpus_per_trial == 1.0  # the preset trains with scaling.use_gpu


def test_long_trial_names_are_cut_with_a_hash():
    name = trial_name("s" * 100, {"a.b": "x" * 50, "c": 1})
    assert len(name) <= 128 and name != trial_name("s" * 100, {"a.b": "x" * 50, "c": 2})
