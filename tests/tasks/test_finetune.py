"""Fine-tuning against the local stack, on the synthetic downstream task (liver lesion yes/no + masks).

synthesize -> ingest (64 px, masks) -> shards on S3; a tiny backbone is pretrained on the synthetic
pretrain corpus with the pretraining API and registered. Then: classification on 2 Ray workers with
Grad-CAM and localisation scores, segmentation (U-Net on the registered encoder), the comparison of the
pretrained backbone against scratch over 5 seeds, and bad inputs that must fail before any run exists.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import helpers_shards
from helpers_assets import ARCH, EXPERIMENT, SIZE, assets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(stack_env, tmp_path_factory) -> Iterator[dict[str, str]]:
    yield assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("finetune-assets")))
    import ray

    if ray.is_initialized():  # disconnect before the stack stops: a driver whose GCS dies exits the process
        ray.shutdown()


def overrides(data: dict, run_name: str, tmp: Path, **extra) -> list[str]:
    base = {"data.manifest": data["downstream"], "backbone": data["backbone"], "model.arch": ARCH,
            "data.num_workers": 0, "train.epochs": 2, "train.batch_size": 32, "train.lr": 1e-3,
            "train.log_every": 2, "eval.n_boot": 200, "scaling.num_workers": 1,
            "tracking.experiment": EXPERIMENT, "tracking.run_name": run_name,
            "checkpoint.storage_path": str(tmp / "ckpt")}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def config(*args, **kw):
    from radimagenet.config import load_config
    from radimagenet.tasks.finetune_config import FinetuneConfig

    return load_config(FinetuneConfig, None, overrides(*args, **kw))


def runs_named(run_name: str, experiment: str = EXPERIMENT) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`radimagenet.run_name` = '{run_name}'")


def artifacts(run_id: str, path: str = "") -> list[str]:
    from mlflow.tracking import MlflowClient

    out = []
    for a in MlflowClient().list_artifacts(run_id, path):
        out += artifacts(run_id, a.path) if a.is_dir else [a.path]
    return out


def test_classification_on_two_ray_workers_with_gradcam(data, tmp_path, capsys):
    from radimagenet.tasks.finetune import finetune

    run_name = f"cls-{uuid.uuid4().hex[:6]}"
    result = finetune(config(data, run_name, tmp_path, **{
        "scaling.num_workers": 2, "checkpoint.storage_path": "s3://radimagenet/test-checkpoints/finetune",
        "eval.gradcam_samples": 4}))
    m = result.metrics
    assert 0 <= m["test/auc_ci_low"] <= m["test/auc"] <= m["test/auc_ci_high"] <= 1, m
    for key in ("test/accuracy", "test/sensitivity", "test/specificity", "test/threshold",
                "test/gradcam_energy_on_lesion", "test/gradcam_pointing_game", "test/gradcam_lesion_area_fraction"):
        assert key in m and np.isfinite(m[key]), key
    assert 1 <= m["best_epoch"] <= 2

    [run] = runs_named(run_name)
    assert run.info.status == "FINISHED" and run.info.run_id == result.run_id
    assert {"test/auc", "test/auc_ci_low", "test/gradcam_pointing_game", "val/loss", "train/epoch_loss"} <= set(
        run.data.metrics)
    assert run.data.metrics["val/n_images"] > 0  # gathered across both ranks: every val sample once
    name, version = result.backbone.split("/")
    tags, params = run.data.tags, run.data.params
    assert tags["radimagenet.backbone_version"] == version and tags["radimagenet.backbone_name"] == name
    assert tags["radimagenet.backbone_ref"] == data["backbone"] and params["resolved_backbone"] == result.backbone
    assert tags["radimagenet.dataset_digest"].startswith("sha256:") and run.inputs.dataset_inputs
    assert tags["radimagenet.split_unit"] == "patient" and "radimagenet.warning.split_unit" not in tags
    assert params["train.optimizer"] == "adam" and params["model.drop_rate"] == "0.5"
    files = artifacts(result.run_id)
    assert {"plots/roc.png", "plots/confusion_matrix.png", "predictions/test.csv", "config/finetune.yaml",
            "model/model.safetensors", "model/backbone.json"} <= set(files), files
    assert len([f for f in files if "gradcam" in f]) == 4 and "plots/reliability.png" in files
    check_statistics_from_predictions(result.run_id, m, run.data.metrics)
    # rank 0's system metrics, and the curves the driver drew at the end
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert {"plots/loss_curves.png", "plots/accuracy_curves.png"} <= set(files), files
    check_registered(data, result, tags, tmp_path, capsys)
    print(f"\n[classification] {result.metrics}")


def check_registered(data: dict, result, run_tags: dict, tmp_path: Path, capsys) -> None:
    """The run registered its model once, by the driver: a fine-tuned version with the backbone's record
    fields, its task, the fine-tuning dataset's decode settings, lineage and card; `registry show` and
    `list` print it apart from the backbones; `predict` runs it."""
    from mlflow.tracking import MlflowClient

    from helpers_models import mixed_inputs, probabilities, read_csv
    from radimagenet.cli import main
    from radimagenet.dataset.format import load_manifest
    from radimagenet.models import registry
    from radimagenet.models.record import decode_settings

    name, version = result.registry_name, result.version
    assert name == "radimagenet-ft-downstream-classification" and version, result  # the default name
    c = MlflowClient()
    rm = c.get_registered_model(name)
    assert rm.tags["radimagenet.kind"] == "finetuned" and rm.aliases["candidate"] == version
    mv = c.get_model_version(name, version)
    assert mv.run_id == result.run_id and mv.tags["backbone"] == result.backbone and mv.tags["task"] == "classification"
    assert mv.tags["backbone_dataset_digest"] == run_tags["radimagenet.backbone_dataset_digest"]
    assert mv.tags["dataset_digest"] == run_tags["radimagenet.dataset_digest"]
    assert float(mv.tags["test/auc"]) == pytest.approx(result.metrics["test/auc"], abs=1e-4)
    assert len([v for v in c.search_model_versions(f"name = '{name}'") if v.run_id == result.run_id]) == 1

    downstream = load_manifest(data["downstream"])
    info = registry.describe(f"{name}/{version}")
    rec = info["record"]
    assert (rec.task, rec.classes, rec.dataset_digest) == ("classification", downstream["classes"], downstream["digest"])
    assert rec.ingest == decode_settings(downstream) and rec.arch == ARCH and rec.input_size == (3, SIZE, SIZE)
    assert rec.source["backbone"] == result.backbone and rec.source["run_id"] == result.run_id
    assert rec.metrics["test/auc"] == pytest.approx(result.metrics["test/auc"])
    card = info["card"]
    assert card.startswith(f"# Model card: {name}") and "Research only: not a medical device" in card
    assert downstream["digest"] in card and mv.tags["backbone_dataset_digest"] in card and "split unit: **patient**" in card
    assert f"runs:/{result.run_id}/gradcam/gradcam_000_" in card and "**test AUC" in card
    backbone = registry.describe(data["backbone"])
    assert backbone["kind"] == "backbone" and "pretrained backbone" in backbone["card"]

    capsys.readouterr()
    assert main(["registry", "show", f"{name}/{version}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name} version {version} (finetuned, classification)")
    assert "lineage:" in out and re.search(rf"^  backbone\s+{re.escape(result.backbone)}$", out, re.M)
    assert re.search(r"^  test/auc_ci_low\s+0\.\d+", out, re.M)
    assert f"# Model card: {name}" in out
    assert main(["registry", "list"]) == 0
    backbones, finetuned = capsys.readouterr().out.split("Fine-tuned models:")
    assert "Backbones (pretrained):" in backbones and data["backbone"].split("@")[0] in backbones
    assert name not in backbones and re.search(rf"^{re.escape(name)}\s+{version}\s.*{re.escape(result.backbone)}",
                                               finetuned, re.M)

    folder, kinds = mixed_inputs(tmp_path / "predict", dicoms=3)
    out_csv = tmp_path / "predictions.csv"
    assert main(["predict", f"models:/{name}/{version}", str(folder), "--out", str(out_csv), "--no-progress"]) == 0
    rows = [r for r in read_csv(out_csv) if not r["error"]]
    assert len(rows) == len([k for k in kinds.values() if k != "broken"]) and rows[0]["predicted"] in rec.classes
    assert np.allclose(probabilities(rows, rec.classes).sum(axis=1), 1.0, atol=1e-5)


def check_statistics_from_predictions(run_id: str, m: dict, logged: dict) -> None:
    """Anyone can recompute the test statistics from predictions/test.csv: the logged patient-level CI is a
    patient bootstrap of that file (same resamples and seed), the image-level one an image bootstrap."""
    from radimagenet.eval import calibration, metrics
    from radimagenet.io import tracking
    from radimagenet.tasks.downstream import PREDICTIONS_FILE, read_predictions
    from radimagenet.tasks.finetune_config import positive_index

    pred = read_predictions(tracking.download_text(tracking.tracking_uri(), run_id, PREDICTIONS_FILE))
    pos = positive_index(pred.classes)
    y, s = pred.labels == pos, pred.probs[:, pos]
    want = {"test/auc": metrics.auc_score(y, s), "test/n_images": len(pred.keys),
            "test/n_patients": len(set(pred.patients.tolist())),
            "test/ece": calibration.expected_calibration_error(pred.probs, pred.labels)}
    _, want["test/auc_ci_low"], want["test/auc_ci_high"] = metrics.bootstrap_auc(y, s, 200, 0, patients=pred.patients)
    _, want["test/auc_image_ci_low"], want["test/auc_image_ci_high"] = metrics.bootstrap_auc(y, s, 200, 0)
    for key, value in want.items():
        assert m[key] == pytest.approx(value, abs=1e-6) and logged[key] == pytest.approx(value, abs=1e-6), key
    # the synthetic cohort has 2-6 images per patient: fewer patients than images
    assert 0 < want["test/n_patients"] < want["test/n_images"] and logged["val/n_patients"] < logged["val/n_images"]


def test_segmentation_unet_on_the_registered_encoder(data, tmp_path):
    from radimagenet.tasks.finetune import finetune

    run_name = f"seg-{uuid.uuid4().hex[:6]}"
    result = finetune(config(data, run_name, tmp_path, task="segmentation", **{
        "train.epochs": 1, "train.batch_size": 16, "eval.overlay_samples": 3, "registry.name": f"test-seg-{run_name}"}),
        in_process=True)
    m = result.metrics
    assert 0 <= m["test/dice"] <= 1 and m["test/n_images"] > 0 and "test/dice_lesion" in m, m
    [run] = runs_named(run_name)
    assert "test/dice" in run.data.metrics and run.data.tags["radimagenet.task"] == "segmentation"
    files = artifacts(result.run_id)
    assert len([f for f in files if f.startswith("overlays/segmentation_")]) == 3, files
    # registered as a segmentation model (named by registry.name); a re-run of the finished run adds no version
    name = f"test-seg-{run_name}"
    again = finetune(config(data, run_name, tmp_path, task="segmentation", **{
        "train.epochs": 1, "train.batch_size": 16, "eval.overlay_samples": 3, "registry.name": name}), in_process=True)
    assert again.resumed and again.run_id == result.run_id and result.version == "1" and again.version == "1"
    from radimagenet.models import registry

    assert [r["version"] for r in registry.list(name)] == ["1"] and registry.list(name)[0]["kind"] == "finetuned"
    info = registry.describe(f"{name}@candidate")
    assert info["record"].task == "segmentation" and "**test Dice" in info["card"]
    assert "## Prediction overlays" in info["card"] and f"runs:/{result.run_id}/overlays/segmentation_000_" in info["card"]
    print(f"\n[segmentation] {m}")


def test_compare_pretrained_backbone_against_scratch(data, tmp_path, capsys):
    """5 seeds x {pretrained backbone, scratch}: the table, nesting and tests, and the claim itself."""
    from mlflow.tracking import MlflowClient

    from radimagenet.cli import main

    run_name = f"cmp-{uuid.uuid4().hex[:6]}"
    argv = ["compare", "--backbones", data["backbone"], "scratch", "--data", data["downstream"], "--seeds", "5",
            "--in-process", "--run-name", run_name,
            *[o for o in overrides(data, run_name, tmp_path, **{
                "eval.gradcam_samples": 0, "eval.gradcam_max_images": 0, "eval.log_model": "false", "train.epochs": 1})
              if not o.startswith(("backbone=", "data.manifest=", "tracking.run_name="))]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| Initialisation |" in out and "scratch" in out and "p (DeLong)" in out

    [parent] = runs_named(run_name)
    c = MlflowClient()
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 10 and all(r.info.status == "FINISHED" for r in children)
    assert {"compare/table.md", "compare/table.csv", "compare/pairwise.csv", "compare/runs.csv"} <= set(
        artifacts(parent.info.run_id))
    pm = parent.data.metrics
    pre, scratch = data["backbone"].replace("@", "-"), "scratch"
    for init in (pre, scratch):
        assert 0 <= pm[f"{init}/test/auc_mean"] <= 1
    assert 0 <= pm[f"{scratch}/p_delong"] <= 1 and 0 <= pm[f"{scratch}/p_ttest"] <= 1
    assert 0 <= pm[f"{scratch}/p_bootstrap"] <= 1 and "p (patient bootstrap)" in out
    delta = pm[f"{pre}/test/auc_mean"] - pm[f"{scratch}/test/auc_mean"]
    print(f"\n[compare] pretrained {pm[f'{pre}/test/auc_mean']:.4f} ± {pm[f'{pre}/test/auc_sd']:.4f}, "
          f"scratch {pm[f'{scratch}/test/auc_mean']:.4f} ± {pm[f'{scratch}/test/auc_sd']:.4f}, "
          f"delta {delta:+.4f}\n{out}")
    # The synthetic pretraining corpus holds focal liver lesions among its 11 classes (as RadImageNet's
    # CT abdomen labels hold liver findings); the downstream task is a new cohort. Measured on 2 CPU
    # cores (64 px, one fine-tuning epoch of 8 steps, ~70 test images; 2026-12-06, since no sample is
    # dropped at an epoch's end): pretrained 0.922 +- 0.031 vs scratch 0.710 +- 0.118, paired t p = 0.015,
    # DeLong p = 0.002. (With two epochs scratch catches up to 0.873 and the gap, 0.091, is no longer
    # significant by the t-test.) Asserted with margin: a gap of at least 0.10 AUC, significant by both.
    assert delta >= 0.10, out
    assert pm[f"{scratch}/p_ttest"] < 0.05 and pm[f"{scratch}/p_delong"] < 0.05, out


def test_bad_inputs_fail_before_any_run(data, tmp_path, monkeypatch, capsys):
    from radimagenet.cli import main
    from radimagenet.errors import ConfigError
    from radimagenet.io.tracking import TrackingError
    from radimagenet.tasks.finetune import finetune

    def fails(exc, match, **extra):
        run_name = f"bad-{uuid.uuid4().hex[:6]}"
        with pytest.raises(exc, match=match):
            finetune(config(data, run_name, tmp_path, **extra), in_process=True)
        assert runs_named(run_name) == []

    fails(TrackingError, "no registered backbone named 'no-such-backbone'", backbone="no-such-backbone@champion")
    fails(ConfigError, "needs lesion masks", task="segmentation", **{"data.manifest": data["pretrain"]})
    fails(ConfigError, "eval.metrics=binary needs exactly 2 classes",
          **{"data.manifest": data["pretrain"], "eval.metrics": "binary"})

    one_class = f"s3://radimagenet/tests/finetune/one-{uuid.uuid4().hex[:6]}"
    helpers_shards.write_test_dataset(one_class, {"train": 64, "val": 16, "test": 16}, 32, image_size=SIZE,
                                      num_classes=1)
    fails(ConfigError, "at least 2 classes", **{"data.manifest": one_class})

    small = f"s3://radimagenet/tests/finetune/badmask-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(helpers_shards, "default_mask", lambda image: np.zeros((16, 16), np.uint8))
    helpers_shards.write_test_dataset(small, {"train": 64, "val": 16, "test": 16}, 32, image_size=SIZE,
                                      num_classes=2, masks=True)
    fails(ConfigError, r"mask of size \(16, 16\) but its image is \(64, 64\)", task="segmentation",
          **{"data.manifest": small})

    # the CLI prints one line, no traceback
    assert main(["finetune", *overrides(data, "bad-cli", tmp_path, backbone="no-such-backbone")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no registered backbone" in err[0], err
