"""The typed config loader: YAML + dotted overrides, strict keys and types."""

from dataclasses import dataclass, field

import pytest

from radimagenet.config import apply_overrides, flatten, from_dict, load_config, to_dict
from radimagenet.errors import ConfigError


@dataclass
class Train:
    lr: float = 0.1
    epochs: int = 2
    optimizer: str = "sgd"


@dataclass
class Cfg:
    name: str = "x"
    train: Train = field(default_factory=Train)
    sizes: tuple[int, ...] = (1, 2)
    note: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("name: demo\ntrain:\n  epochs: 5\n")
    cfg = load_config(Cfg, preset, ["train.lr=3e-4", "sizes=[4, 5]", "note=hello"])
    assert cfg.name == "demo" and cfg.train.epochs == 5
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.sizes == (4, 5) and cfg.note == "hello"


def test_round_trip_and_flatten():
    cfg = Cfg(train=Train(lr=0.5))
    assert from_dict(Cfg, to_dict(cfg)) == cfg
    assert flatten(to_dict(cfg))["train.lr"] == 0.5


def test_int_is_accepted_for_float_but_not_string_for_int():
    assert load_config(Cfg, None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        load_config(Cfg, None, ["train.epochs=many"])


def test_unknown_key_is_an_error_naming_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\]"):
        load_config(Cfg, None, ["train.lrr=0.1"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, bad)
