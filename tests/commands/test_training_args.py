"""The training verbs take a preset plus key=value overrides: --help lists every key, --print-config
needs no manifest, no server and no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radimagenet.cli import build_parser, main
from radimagenet.commands._training import config_keys
from radimagenet.tasks.finetune_config import FinetuneConfig
from radimagenet.tasks.pretrain import PretrainConfig

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "compare"])
def test_help_lists_every_config_key(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser(verb).parse_args([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    cls = FinetuneConfig if verb in ("finetune", "compare") else PretrainConfig
    keys = [k for k, _ in config_keys(cls)]
    assert "train.accum_steps" in keys and "checkpoint.storage_path" in keys
    missing = [k for k in keys if f"  {k} = " not in out]
    assert not missing, missing


def test_keys_show_each_task_its_own_defaults():
    pre, fine = dict(config_keys(PretrainConfig)), dict(config_keys(FinetuneConfig))
    assert (pre["train.optimizer"], pre["train.schedule"], pre["train.lr"]) == ("sgd", "cosine", 0.1)
    assert (fine["train.optimizer"], fine["train.schedule"], fine["train.lr"]) == ("adam", "constant", 1e-4)
    assert fine["train.freeze"] == "none" and "train.freeze" not in pre


@pytest.mark.parametrize("verb, preset", [("pretrain", None), ("pretrain", "demo-pretrain.yaml"),
                                          ("finetune", None), ("finetune", "demo-finetune.yaml")])
def test_print_config_needs_no_manifest(verb, preset, capsys, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    argv = [verb, "--print-config", "data.manifest=", "train.epochs=2"] + (["--config", str(PIPELINES / preset)] if preset else [])
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 2 and printed["data"]["manifest"] == ""


def test_a_bad_key_is_one_clear_line(capsys):
    assert main(["pretrain", "--print-config", "train.epoch=2"]) == 2
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err


def test_print_config_still_checks_the_values(capsys):
    assert main(["pretrain", "--print-config", "train.epochs=-3"]) == 2
    assert "train.epochs must be >= 1" in capsys.readouterr().err


def test_compare_list_flags_give_back_the_overrides_they_swallow():
    from radimagenet.commands.compare import give_back_overrides
    from radimagenet.errors import ConfigError

    args = build_parser("compare").parse_args([
        "compare", "--data", "s3://b/ds", "--backbones", "a@x", "scratch", "model.arch=resnet50",
        "--protocols", "linear", "knn", "train.epochs=2", "--label-fractions", "0.01", "1", "train.lr=1e-3"])
    give_back_overrides(args)
    assert args.backbones == ["a@x", "scratch"] and args.protocols == ["linear", "knn"]
    assert args.label_fractions == [0.01, 1.0]
    assert args.overrides == ["model.arch=resnet50", "train.epochs=2", "train.lr=1e-3"]
    args = build_parser("compare").parse_args(["compare", "--data", "d", "--backbones", "a@x", "--label-fractions", "x"])
    with pytest.raises(ConfigError, match="--label-fractions takes numbers"):
        give_back_overrides(args)


def test_compare_label_fractions_round_trip_exactly():
    from radimagenet.tasks.compare import _number

    assert [_number(f) for f in (0.01, 0.1, 1.0, 1e-05, 0.25)] == ["0.01", "0.1", "1", "0.00001", "0.25"]
    assert yaml.safe_load(_number(1e-05)) == 1e-05
