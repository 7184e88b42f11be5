"""Self-supervised pretraining against the local stack (issue 16): an unlabelled synthetic archive is
ingested with --unlabeled, each objective pretrains on it for a few steps on CPU (DINO on 2 Ray workers,
masked-image modelling on a ViT in-process), the backbone is registered with its objective and a
classifier is fine-tuned from it; supervised pretraining refuses the unlabelled dataset."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import helpers_shards
from helpers_assets import EXPERIMENT, SECRET, SIZE, assets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(stack_env, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The fine-tuning assets (a labelled downstream dataset) and an unlabelled archive."""
    from radimagenet.ingest import IngestConfig, ingest
    from radimagenet.ops.synth import synthesize

    out = dict(assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("ssl-assets"))))
    root = tmp_path_factory.mktemp("ssl-archive")
    synthesize(root / "archive", images=160, seed=7, task="pretrain", unlabeled=True)  # DICOM with patient ids
    prefix = f"s3://radimagenet/tests/ssl/{uuid.uuid4().hex[:8]}"
    helpers_shards.ensure_bucket(prefix)
    ingest(IngestConfig(source=str(root / "archive" / "images"), out=f"{prefix}/archive", image_size=SIZE,
                        shard_size=48 * 1024, workers=1, unlabeled=True), SECRET, progress=False)
    out["archive"] = f"{prefix}/archive"
    yield out
    import ray

    if ray.is_initialized():
        ray.shutdown()


def pretrain_config(data: dict, objective: str, run_name: str, **extra):
    from radimagenet.config import load_config
    from radimagenet.tasks.pretrain import PretrainConfig

    base = {"objective": objective, "data.manifest": data["archive"], "model.arch": "resnet10t",
            "data.num_workers": 0, "train.epochs": 1, "train.batch_size": 16, "train.lr": 1e-3,
            "train.optimizer": "adamw", "train.warmup_epochs": 0, "train.log_every": 2, "scaling.num_workers": 1,
            "ssl.out_dim": 256, "ssl.hidden_dim": 64, "ssl.bottleneck_dim": 32, "ssl.local_crops": 2,
            "tracking.experiment": f"{EXPERIMENT}-ssl", "tracking.run_name": run_name,
            "registry.name": f"test-{run_name}", "checkpoint.storage_path": "s3://radimagenet/test-checkpoints"}
    return load_config(PretrainConfig, None, [f"{k}={v}" for k, v in (base | extra).items()])


def test_the_archive_is_unlabeled_and_supervised_pretraining_refuses_it(data):
    from radimagenet.dataset.format import is_unlabeled, load_manifest
    from radimagenet.errors import ConfigError
    from radimagenet.tasks.pretrain import pretrain

    manifest = load_manifest(data["archive"])
    assert is_unlabeled(manifest) and manifest["classes"] == []
    assert manifest["splits"]["train"]["samples"] > 80 and manifest["splits"]["val"]["samples"] > 0
    with pytest.raises(ConfigError, match="has no labels.*objective=dino"):
        pretrain(pretrain_config(data, "supervised", f"sup-{uuid.uuid4().hex[:6]}"))


@pytest.mark.parametrize("objective", ["dino", "mae"])
def test_each_objective_pretrains_registers_and_a_classifier_fine_tunes_from_it(data, objective, tmp_path):
    from mlflow.tracking import MlflowClient

    from radimagenet.config import load_config
    from radimagenet.models import registry
    from radimagenet.tasks.finetune import finetune
    from radimagenet.tasks.finetune_config import FinetuneConfig
    from radimagenet.tasks.pretrain import pretrain

    run_name = f"{objective}-{uuid.uuid4().hex[:6]}"
    # DDP on 2 Ray workers: the DINO teacher's centre is averaged over ranks; every trainable parameter
    # must get a gradient (a mae ViT pools with an fc_norm that reconstruction never runs)
    arch = {"model.arch": "vit_small_patch16_224"} if objective == "mae" else {}  # as issue 16 asks
    result = pretrain(pretrain_config(data, objective, run_name, **{"scaling.num_workers": 2}, **arch))
    assert result.version == "1"
    m = result.metrics
    assert m["epoch"] == 1 and m["data/epoch_samples"] > 80 and 0 < m["val/embedding_std"] < 1, m
    assert "val/knn_accuracy" not in m  # the archive's validation images have no labels
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["radimagenet.objective"] == objective
    assert len(MlflowClient().get_metric_history(result.run_id, "train/loss")) >= 1

    info = registry.describe(f"test-{run_name}@candidate")
    assert info["record"].objective == objective and info["record"].num_classes == 0
    assert info["tags"]["objective"] == objective
    shown = subprocess.run([sys.executable, "-m", "radimagenet", "registry", "show", f"test-{run_name}@candidate"],
                           capture_output=True, text=True, env=os.environ.copy())
    assert shown.returncode == 0 and f"objective       {objective}" in shown.stdout, shown.stdout + shown.stderr

    model, record = registry.load(f"test-{run_name}@candidate", num_classes=2)
    assert record.objective == objective

    def downstream(protocol: str):
        return finetune(load_config(FinetuneConfig, None, [
            f"protocol={protocol}", f"data.manifest={data['downstream']}", f"backbone=test-{run_name}@candidate",
            f"model.arch={record.arch}", "data.num_workers=0", "train.epochs=1", "train.batch_size=32",
            "train.lr=1e-3", "eval.n_boot=50", "scaling.num_workers=1", f"tracking.experiment={EXPERIMENT}",
            f"tracking.run_name={protocol}-{run_name}", f"checkpoint.storage_path={tmp_path / protocol}",
            "registry.register=false"]), in_process=True)

    ft = downstream("finetune")
    assert 0 <= ft.metrics["test/auc_ci_low"] <= ft.metrics["test/auc"] <= ft.metrics["test/auc_ci_high"] <= 1
    assert ft.metrics["test/n_images"] > 0, ft.metrics
    if objective == "dino":  # the leaderboard: linear probe and k-NN beside fine-tuning, at two label shares
        leaderboard(data, f"test-{run_name}@candidate", record.arch, ft.metrics["test/n_images"], tmp_path)


def leaderboard(data: dict, backbone: str, arch: str, n_test: float, tmp_path) -> None:
    """``compare --protocols linear knn --label-fractions 0.5 1``: the SSL backbone against scratch, one seed,
    8 nested runs, the label-efficiency curve on the parent."""
    from mlflow.tracking import MlflowClient

    from radimagenet.cli import main
    from radimagenet.io import tracking

    name = f"board-{uuid.uuid4().hex[:6]}"
    argv = ["compare", "--backbones", backbone, "scratch", "--data", data["downstream"], "--protocols", "linear",
            "knn", "--label-fractions", "0.5", "1", "--seeds", "1", "--reference", "scratch", "--in-process",
            "--run-name", name, f"model.arch={arch}", "data.num_workers=0", "train.epochs=1", "train.batch_size=32",
            "train.lr=1e-3", "eval.n_boot=50", "eval.gradcam_samples=0", "eval.gradcam_max_images=0",
            "eval.log_model=false", "registry.register=false", f"tracking.experiment={EXPERIMENT}-board",
            f"checkpoint.storage_path={tmp_path / 'board'}"]
    assert main(argv) == 0
    c = MlflowClient()
    parent = tracking.find_run(tracking.tracking_uri(), f"{EXPERIMENT}-board", name)
    children = {r.data.tags["radimagenet.run_name"]: r for r in c.search_runs(
        [c.get_run(parent).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")}
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children.values())
    runs = {(r.data.params["init"], r.data.params["protocol"], float(r.data.params["data.label_fraction"])): r
            for r in children.values()}
    assert len(runs) == 8
    for (_, protocol, _), r in runs.items():
        m = r.data.metrics
        assert m["test/n_images"] == n_test and 0 <= m["test/auc_ci_low"] <= m["test/auc"] <= m["test/auc_ci_high"] <= 1
        if protocol == "linear":
            assert r.data.params["train.freeze"] == "all"
    knn_half, knn_all = (runs[("backbone", "knn", f)].data.metrics["train/n_images"] for f in (0.5, 1.0))
    assert 0 < knn_half < knn_all  # the vote's bank is the labelled share
    files = {a.path for a in c.list_artifacts(parent, "compare")}
    assert {"compare/label_efficiency.csv", "compare/label_efficiency.png", "compare/summary.md"} <= files, files
    text = tracking.download_text(tracking.tracking_uri(), parent, "compare/label_efficiency.csv")
    curve = list(csv.DictReader(io.StringIO(text)))
    assert len(curve) == 8 and {r["curve"] for r in curve} == {
        f"{init}, protocol={p}" for init in (backbone, "scratch") for p in ("linear", "knn")}, text
    row = next(r for r in curve if r["curve"] == f"{backbone}, protocol=knn" and float(r["label_fraction"]) == 0.5)
    knn = runs[("backbone", "knn", 0.5)].data.metrics
    assert float(row["auc_mean"]) == pytest.approx(knn["test/auc"]) and float(row["ci_low"]) == pytest.approx(
        knn["test/auc_ci_low"])
    summary = tracking.download_text(tracking.tracking_uri(), parent, "compare/summary.md")
    assert "## Label efficiency" in summary and "| 50% of labels | 100% of labels |" in summary
