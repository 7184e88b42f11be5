"""The fine-tuning leakage check against the local stack: a backbone pretrained on the synthetic corpus,
a downstream dataset whose test split holds four of its pretraining images (and their patients), and the
real downstream cohort, which shares nothing with it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers_shards
from helpers_assets import ARCH, EXPERIMENT, SIZE, assets


def config(data: dict, tmp: Path, run_name: str, **extra):
    from radimagenet.config import load_config
    from radimagenet.tasks.finetune_config import FinetuneConfig

    base = {"data.manifest": data["downstream"], "backbone": data["backbone"], "model.arch": ARCH,
            "data.num_workers": 0, "train.epochs": 1, "train.batch_size": 32, "eval.n_boot": 50,
            "eval.gradcam_samples": 0, "eval.gradcam_max_images": 0, "eval.log_model": False,
            "scaling.num_workers": 1, "tracking.experiment": EXPERIMENT, "tracking.run_name": run_name,
            "checkpoint.storage_path": str(tmp / "ckpt")} | extra
    return load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in base.items()])


def test_data_overlap_takes_warn_error_or_off():
    from radimagenet.config import load_config
    from radimagenet.errors import ConfigError
    from radimagenet.tasks.finetune_config import FinetuneConfig

    assert load_config(FinetuneConfig, None, []).data.overlap == "warn"
    assert load_config(FinetuneConfig, None, ["data.overlap=error"]).data.overlap == "error"
    assert load_config(FinetuneConfig, None, ["data.overlap=off"]).data.overlap == "off"  # not YAML's False
    with pytest.raises(ConfigError, match="data.overlap"):
        load_config(FinetuneConfig, None, ["data.overlap=refuse"])


@pytest.fixture(scope="module")
def data(stack_env, tmp_path_factory) -> Iterator[dict[str, str]]:
    yield assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("finetune-assets")))
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def leaky(data) -> tuple[str, str]:
    """64 new training images, 16 validation, and a test split of 16 whose first 4 are pretraining
    images (pixels and patient pseudonyms copied from the pretraining dataset's train split); returns
    the dataset's URI and the overlap tag it must get."""
    from radimagenet.dataset.format import load_manifest
    from radimagenet.dataset.reader import iterate_samples
    from radimagenet.io import storage

    pretrain = load_manifest(data["pretrain"])
    seen = [sample for sample, _ in zip(iterate_samples(pretrain, "train"), range(4), strict=False)]
    uri = f"s3://radimagenet/tests/finetune/leaky-{uuid.uuid4().hex[:6]}"

    def image(split, i, size):
        return seen[i]["image"] if split == "test" and i < 4 else helpers_shards.default_image(split, i, size)

    def patient(split, i):
        return seen[i]["meta"]["patient"] if split == "test" and i < 4 else f"new-{split}-{i}"

    manifest = helpers_shards.write_test_dataset(uri, {"train": 64, "val": 16, "test": 16}, 32, image_size=SIZE,
                                                 num_classes=2, image_fn=image, patient_fn=patient)
    manifest["ingest"] = {"secret_fingerprint": pretrain["ingest"]["secret_fingerprint"]}  # same site secret
    storage.write_json(f"{uri}/manifest.json", manifest)
    patients = len({sample["meta"]["patient"] for sample in seen})  # a patient can have several images
    return uri, f"images_exact=4 images_near=0 patients={patients}"


def runs_named(run_name: str) -> list:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient().get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else MlflowClient().search_runs(
        [exp.experiment_id], filter_string=f"tags.`radimagenet.run_name` = '{run_name}'")


@pytest.mark.integration
@pytest.mark.slow
def test_a_test_split_holding_pretraining_images_is_tagged_or_refused(data, leaky, tmp_path, capsys):
    from radimagenet.errors import ConfigError
    from radimagenet.tasks.finetune import finetune

    leaky, leak = leaky
    refused = f"leak-refused-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError, match=f"data.overlap=error: the test split of .*leaky.* shares data with "
                                          f"backbone .*: {leak}"):
        finetune(config(data, tmp_path, refused, **{"data.manifest": leaky, "data.overlap": "error"}), in_process=True)
    assert runs_named(refused) == []

    warned = f"leak-warned-{uuid.uuid4().hex[:6]}"
    result = finetune(config(data, tmp_path, warned, **{"data.manifest": leaky}), in_process=True)
    [run] = runs_named(warned)
    assert run.info.run_id == result.run_id and run.data.tags["radimagenet.overlap"] == leak
    assert run.data.tags["radimagenet.backbone_dataset_uri"].startswith(data["pretrain"])
    err = capsys.readouterr().err
    assert f"[radimagenet] warning: the test split of {leaky}/manifest.json shares data" in err, err


@pytest.mark.integration
@pytest.mark.slow
def test_a_separate_cohort_shares_nothing_and_off_skips_the_check(data, tmp_path):
    from radimagenet.tasks.finetune import preflight

    *_, tags = preflight(config(data, tmp_path, "unused", **{"data.overlap": "error"}))
    assert tags["radimagenet.overlap"] == "images_exact=0 images_near=0 patients=0"  # two ingests, one secret
    *_, tags = preflight(config(data, tmp_path, "unused", **{"data.overlap": "off"}))
    assert "radimagenet.overlap" not in tags
    *_, tags = preflight(config(data, tmp_path, "unused", init="scratch", backbone=""))
    assert "radimagenet.overlap" not in tags
