"""Multi-label classification end to end on the local stack: several findings per image in a labels CSV
(``radimagenet ingest --multi-label``), a sigmoid head fine-tuned on it, per-label and macro AUC with a
patient-level interval that the predictions file reproduces, and the model's predictions in use."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers_shards
from helpers_assets import ARCH, EXPERIMENT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINDINGS = ("blob_left", "blob_top", "stripe")


def _image(rng: np.random.Generator, labels: set[str]) -> np.ndarray:
    """A 64 px grey image with a bright blob in the left half, the top half and/or a stripe per label."""
    img = rng.normal(60, 12, (64, 64)).clip(0, 255)
    if "blob_left" in labels:
        img[24:40, 4:20] += 140
    if "blob_top" in labels:
        img[4:20, 36:52] += 140
    if "stripe" in labels:
        img[52:56, :] += 120
    return img.clip(0, 255).astype(np.uint8)


def write_corpus(root: Path, patients: int = 60, per_patient: int = 3, seed: int = 0) -> Path:
    """PNGs and a labels CSV with ``path,label,patient_id``; every image has one to three findings."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        for i in range(per_patient):
            labels = {f for f in FINDINGS if rng.random() < 0.45} or {FINDINGS[int(rng.integers(3))]}
            name = f"img/p{p:03d}_{i}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, labels)).save(root / name)
            rows.append([name, " | ".join(sorted(labels, reverse=True)), f"patient-{p}"])
    rows.append(["img/p000_0.png", "stripe||blob_top", "patient-0"])  # an empty name: refused bad_label
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "patient_id"], *rows])
    return root / "labels.csv"


@pytest.fixture(scope="module")
def dataset(stack_env, tmp_path_factory) -> str:
    from radimagenet.cli import main

    root = tmp_path_factory.mktemp("multilabel")
    labels = write_corpus(root)
    secret = root / "secret"
    secret.write_bytes(os.urandom(32))
    out = f"s3://radimagenet/tests/multilabel/{uuid.uuid4().hex[:8]}"
    helpers_shards.ensure_bucket(out)
    rc = main(["ingest", str(root), "--labels", str(labels), "--multi-label", "--out", out, "--image-size", "64",
               "--split", "0.6,0.2,0.2", "--secret-file", str(secret), "--no-progress"])
    assert rc == 0
    yield out
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_ingest_keeps_every_label(dataset):
    from radimagenet.dataset.format import is_multi_label, load_manifest
    from radimagenet.dataset.reader import iterate_samples
    from radimagenet.dataset.verify import verify
    from radimagenet.io import storage

    manifest = load_manifest(dataset)
    assert is_multi_label(manifest) and manifest["classes"] == sorted(FINDINGS)
    assert manifest["counts"]["rejected_by_reason"] == {"bad_label": 1}
    per_label = {c: sum(s["classes"][c] for s in manifest["splits"].values()) for c in FINDINGS}
    samples = [s for split in ("train", "val", "test") for s in iterate_samples(manifest, split)]
    assert len(samples) == manifest["counts"]["written"] == 180
    assert sum(len(s["label_ids"]) > 1 for s in samples) > 40  # many images carry several findings
    for c, n in per_label.items():  # class counts count every label an image carries
        assert n == sum(manifest["classes"].index(c) in s["label_ids"] for s in samples)
    for s in samples:
        assert list(s["label_ids"]) == s["meta"]["label_ids"] and s["label_id"] == s["label_ids"][0]
        assert s["meta"]["label"] == "|".join(manifest["classes"][i] for i in s["label_ids"])
    assert verify(manifest) == []
    report = storage.read_bytes(f"{dataset}/report.jsonl").decode()
    assert "an empty name in the multi-label cell" in report


def test_finetune_multilabel_reports_per_label_auc_and_patient_ci(dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from radimagenet.config import load_config
    from radimagenet.eval import multilabel
    from radimagenet.eval.bootstrap import percentile_ci
    from radimagenet.models.inference import load_predictor
    from radimagenet.tasks.downstream import PREDICTIONS_FILE, read_predictions
    from radimagenet.tasks.finetune import finetune
    from radimagenet.tasks.finetune_config import FinetuneConfig

    run_name = f"multilabel-{uuid.uuid4().hex[:6]}"
    cfg = load_config(FinetuneConfig, None, [
        f"data.manifest={dataset}", "init=scratch", f"model.arch={ARCH}", "data.num_workers=0",
        "train.epochs=4", "train.batch_size=16", "train.lr=3e-3", "train.class_weights=balanced",
        "train.monitor=val/auc", "eval.n_boot=300", "eval.gradcam_samples=2", "scaling.num_workers=1",
        f"tracking.experiment={EXPERIMENT}", f"tracking.run_name={run_name}",
        f"checkpoint.storage_path={tmp_path / 'ckpt'}"])
    result = finetune(cfg, in_process=True)
    m = result.metrics
    aucs = [m[f"test/auc_class_{k}"] for k in range(3)]
    assert m["test/auc"] == pytest.approx(np.mean(aucs)), m
    assert m["test/auc"] > 0.7, m  # the findings are plain to see: the head learns them
    assert 0 <= m["test/auc_ci_low"] <= m["test/auc"] <= m["test/auc_ci_high"] <= 1, m
    for key in ("test/ece", "test/subset_accuracy", "test/sensitivity", "test/specificity", "test/n_patients",
                "test/threshold_class_0", "test/auc_image_ci_low"):
        assert key in m, key

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["radimagenet.metrics"] == "multilabel"
    text = Path(client.download_artifacts(result.run_id, PREDICTIONS_FILE, str(tmp_path))).read_text()
    pred = read_predictions(text, multi_label=True)
    assert pred.labels.shape == pred.probs.shape == (m["test/n_images"], 3)
    assert any("|" in line.split(",")[2] for line in text.splitlines()[1:])  # several labels in one cell
    assert not np.allclose(pred.probs.sum(1), 1)  # a sigmoid per label, not a softmax
    # the logged patient-level interval is what anyone recomputes from the predictions file
    lo, hi = percentile_ci(multilabel.auc_resamples(pred.labels, pred.probs, 300, seed=0, patients=pred.patients))
    assert (lo, hi) == pytest.approx((m["test/auc_ci_low"], m["test/auc_ci_high"]), abs=1e-6)
    assert multilabel.macro_auc(pred.probs, pred.labels) == pytest.approx(m["test/auc"], abs=1e-6)

    model_dir = client.download_artifacts(result.run_id, "model", str(tmp_path / "dl"))
    predictor = load_predictor(model_dir)
    assert predictor.record.multi_label
    img = _image(np.random.default_rng(5), {"blob_left", "stripe"})
    probs = predictor.run([predictor.stored(img)])[0]
    assert probs.shape == (3,) and 0 <= probs.min() and probs.max() <= 1
    # every label at p >= 0.5, joined by |; empty when none is (an untrained-enough head may say so)
    expected = [c for c, p in zip(predictor.classes, probs, strict=True) if p >= 0.5]
    assert predictor.predicted(probs) == "|".join(expected) and set(expected) <= set(FINDINGS)


def test_multilabel_dataset_refuses_softmax_settings(dataset):
    from radimagenet.config import load_config
    from radimagenet.dataset.format import load_manifest
    from radimagenet.errors import ConfigError
    from radimagenet.tasks.finetune_config import FinetuneConfig, check_task

    manifest = load_manifest(dataset)
    cfg = load_config(FinetuneConfig, None, [f"data.manifest={dataset}", "init=scratch", "eval.metrics=multiclass"])
    with pytest.raises(ConfigError, match="multi-label"):
        check_task(cfg, manifest)
    cfg = load_config(FinetuneConfig, None, [f"data.manifest={dataset}", "init=scratch"])
    assert check_task(cfg, manifest).mode == "multilabel"
