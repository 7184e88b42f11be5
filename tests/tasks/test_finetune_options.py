"""Fine-tuning options researchers expect, through a real (in-process) run: a label fraction, balanced
class weights, early stopping on a higher-is-better monitor."""

from __future__ import annotations

import os
import uuid

import pytest

from helpers_assets import ARCH, EXPERIMENT, assets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(stack_env, tmp_path_factory) -> dict[str, str]:
    return assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("finetune-assets")))


def test_label_fraction_class_weights_and_early_stopping(data, tmp_path):
    from mlflow.tracking import MlflowClient

    from radimagenet.config import load_config
    from radimagenet.data.subset import label_subset
    from radimagenet.dataset.format import load_manifest
    from radimagenet.tasks.finetune import finetune
    from radimagenet.tasks.finetune_config import FinetuneConfig

    run_name = f"opts-{uuid.uuid4().hex[:6]}"
    # a frozen model at a vanishing lr: val/auc never improves after epoch 1, so patience 1 stops at epoch 2
    cfg = load_config(FinetuneConfig, None, [
        f"data.manifest={data['downstream']}", "init=scratch", f"model.arch={ARCH}", "data.num_workers=0",
        "data.label_fraction=0.5", "train.class_weights=balanced", "train.monitor=val/auc", "train.patience=1",
        "train.freeze=all", "train.lr=1e-12", "train.epochs=5", "train.batch_size=16", "eval.n_boot=50",
        "eval.gradcam_samples=0", "scaling.num_workers=1", f"tracking.experiment={EXPERIMENT}",
        f"tracking.run_name={run_name}", f"checkpoint.storage_path={tmp_path / 'ckpt'}"])
    result = finetune(cfg, in_process=True)
    m = result.metrics
    assert m["best_epoch"] == 1 and m["early_stop_epoch"] == 2 and "val/best_auc" in m, m

    sub = label_subset(load_manifest(data["downstream"]), "train", 0.5, seed=0)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.metrics["train/n_images"] == sub.images and run.data.metrics["train/n_patients"] == sub.patients
    manifest = load_manifest(data["downstream"])
    assert sub.images < manifest["splits"]["train"]["samples"]
    assert run.data.params["data.label_fraction"] == "0.5" and run.data.params["train.class_weights"] == "balanced"
    history = MlflowClient().get_metric_history(result.run_id, "val/auc")
    assert len(history) == 2  # two epochs trained, then stopped
