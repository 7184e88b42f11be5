"""The pretraining config: presets, overrides, validation, derived defaults, pre-training checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from radimagenet.config import flatten, from_dict, load_config, to_dict
from radimagenet.errors import ConfigError
from radimagenet.io.storage import arrow_filesystem
from radimagenet.io.tracking import parse_ref
from radimagenet.tasks.pretrain import PretrainConfig, resolve, validate
from radimagenet.train.launch import check_shards

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
MANIFEST = {"classes": ["CT/a", "MR/b"], "image_size": 96, "digest": "sha256:x",
            "splits": {"train": {"samples": 400, "shards": [{"url": f"s3://b/t-{i}.tar", "samples": 100}
                                                            for i in range(4)]},
                       "val": {"samples": 50, "shards": [{"url": "s3://b/v-0.tar", "samples": 50}]}}}


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "inception_v3", "inception_resnet_v2"])
def test_architecture_presets_load_at_224(arch):
    cfg = validate(load_config(PretrainConfig, PIPELINES / f"pretrain-{arch}.yaml"))
    assert cfg.model.arch == arch and cfg.data.image_size == 224 and cfg.model.in_chans == 3
    assert cfg.checkpoint.storage_path == "s3://radimagenet/checkpoints"
    assert "num_classes" not in str(to_dict(cfg))  # the class count comes from the manifest


def test_demo_preset_is_small_and_cpu():
    cfg = validate(load_config(PretrainConfig, PIPELINES / "demo-pretrain.yaml"))
    assert cfg.scaling.use_gpu is False and cfg.scaling.num_workers == 2 and cfg.data.image_size <= 96


def test_overrides_and_round_trip():
    cfg = load_config(PretrainConfig, None, [
        "data.manifest=s3://b/ds", "model.arch=resnet18", "train.epochs=2", "train.lr=3e-4",
        "train.optimizer=adamw", "scaling.num_workers=2", "tracking.run_name=r-1"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.optimizer == "adamw"
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg
    flat = flatten(to_dict(cfg))
    assert flat["train.epochs"] == 2 and flat["model.arch"] == "resnet18"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(PretrainConfig, None, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(PretrainConfig, None, ["train.optimizer=lamb"])


def test_placement_strategy_is_one_of_rays():
    assert load_config(PretrainConfig, None, []).scaling.placement_strategy == "PACK"
    cfg = load_config(PretrainConfig, None, ["scaling.placement_strategy=STRICT_SPREAD"])
    assert cfg.scaling.placement_strategy == "STRICT_SPREAD"
    with pytest.raises(ConfigError, match="not one of"):
        load_config(PretrainConfig, None, ["scaling.placement_strategy=ANYWHERE"])


def test_validate_collects_problems():
    cfg = load_config(PretrainConfig, None, ["train.epochs=0", "train.label_smoothing=1.5",
                                             "tracking.run_name=bad name!", "data.std=[0.1, 0.2]"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    text = str(err.value)
    for needle in ("data.manifest", "train.epochs", "label_smoothing", "run_name", "data.std"):
        assert needle in text


def test_resolve_fills_derived_defaults():
    cfg = load_config(PretrainConfig, None, ["data.manifest=s3://b/ds", "model.arch=densenet121"])
    r = resolve(cfg, MANIFEST)
    assert r.data.manifest == "s3://b/ds/manifest.json" and r.data.image_size == 96
    assert r.registry.name == "radimagenet-densenet121" and r.tracking.run_name.startswith("pretrain-densenet121-")
    named = resolve(load_config(PretrainConfig, None, ["data.manifest=s3://b/ds/manifest.json",
                                                       "tracking.run_name=x", "registry.name=y"]))
    assert named.tracking.run_name == "x" and named.registry.name == "y"


def test_check_shards_lets_any_shard_count_serve_any_readers():
    ok = load_config(PretrainConfig, None, ["data.manifest=s3://b/ds", "scaling.num_workers=2",
                                            "data.num_workers=2", "train.batch_size=32"])
    check_shards(MANIFEST, ok)
    many_readers = load_config(PretrainConfig, None, ["data.manifest=s3://b/ds", "scaling.num_workers=4",
                                                      "data.num_workers=2"])  # 8 readers, 4 shards
    check_shards(MANIFEST, many_readers)
    one_shard = {**MANIFEST, "splits": {**MANIFEST["splits"], "train": {
        "samples": 400, "shards": [{"url": "s3://b/t-0.tar", "samples": 400}]}}}
    check_shards(one_shard, many_readers)  # partitioned by sample: one shard serves them all
    big_batch = load_config(PretrainConfig, None, ["data.manifest=s3://b/ds", "scaling.num_workers=2",
                                                   "data.num_workers=1", "train.batch_size=256"])
    with pytest.raises(ConfigError, match="batch_size"):
        check_shards(MANIFEST, big_batch)
    no_val = {**MANIFEST, "splits": {"train": MANIFEST["splits"]["train"]}}
    with pytest.raises(ConfigError, match="'val'"):
        check_shards(no_val, ok)


def test_backbone_references():
    assert parse_ref("radimagenet-resnet50@champion") == ("radimagenet-resnet50", None, "champion")
    assert parse_ref("radimagenet-resnet50/3") == ("radimagenet-resnet50", "3", None)
    assert parse_ref("models:/radimagenet-resnet50") == ("radimagenet-resnet50", None, None)
    for bad in ("@x", "name@", "a/b/c", ""):
        with pytest.raises(ValueError):
            parse_ref(bad)


def test_storage_filesystem_honours_aws_endpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    fs, path = arrow_filesystem("s3://radimagenet/checkpoints/")
    assert path == "radimagenet/checkpoints" and fs.type_name == "s3"
    assert "127.0.0.1:8333" in repr(fs.__reduce__())  # endpoint travels with the (pickled) fs
    local, lpath = arrow_filesystem(str(tmp_path))
    assert local.type_name == "local" and lpath == str(tmp_path)
