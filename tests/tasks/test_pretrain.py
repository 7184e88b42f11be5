"""Pretraining against the local stack: Ray Train on 2 CPU workers, MLflow run + registry, S3 checkpoints.

A small learnable dataset (class-dependent stripes/disc/flat, 32 px) is written straight into shards;
a tiny timm ResNet must learn it well above chance. Faults: a worker SIGKILLed mid-epoch (the run
finishes from the last checkpoint, one MLflow run), a driver stopped and resubmitted (resumes), a
one-shard dataset on 2 x 2 readers, unreachable S3 or MLflow (clear errors, nothing written).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from helpers_shards import ensure_bucket, write_test_dataset  # noqa: E402
from radimagenet.io import storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARCH = "resnet10t"
NUM_CLASSES = 4


def learnable_image(split: str, index: int, size: int) -> np.ndarray:
    """Class ``index % 4``: horizontal stripes, vertical stripes, a bright disc, flat grey; plus noise.
    Each survives random crops and horizontal flips, so the classes are learnable in a few epochs."""
    rng = np.random.default_rng([sum(map(ord, split)), index, 7])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period, phase = rng.uniform(size / 6, size / 4), rng.uniform(0, 2 * np.pi)
    c = index % NUM_CLASSES
    if c == 0:
        img = 0.5 + 0.4 * np.sin(2 * np.pi * yy / period + phase)
    elif c == 1:
        img = 0.5 + 0.4 * np.sin(2 * np.pi * xx / period + phase)
    elif c == 2:
        cy, cx = rng.uniform(0.4, 0.6, 2) * size
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < (0.3 * size) ** 2, 0.9, 0.1)
    else:
        img = np.full((size, size), rng.uniform(0.3, 0.6), np.float32)
    img = img + rng.normal(0, 0.08, (size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_dataset(name: str, train: int = 384, val: int = 128, shard: int = 64) -> str:
    prefix = f"s3://radimagenet/tests/pretrain/{name}-{uuid.uuid4().hex[:6]}"
    ensure_bucket(prefix)
    write_test_dataset(prefix, {"train": train, "val": val}, shard_samples=shard, image_size=32,
                       num_classes=NUM_CLASSES, image_fn=learnable_image)
    return f"{prefix}/manifest.json"


@pytest.fixture(scope="module")
def manifest_uri(stack_env) -> str:
    return write_dataset("learnable")


def overrides(manifest: str, run_name: str, **extra) -> list[str]:
    base = {
        "data.manifest": manifest, "model.arch": ARCH, "data.num_workers": 1, "data.shuffle_buffer": 128,
        "train.epochs": 3, "train.batch_size": 32, "train.lr": 0.003, "train.optimizer": "adamw",
        "train.weight_decay": 0.01, "train.warmup_epochs": 0.5, "train.label_smoothing": 0.0,
        "train.log_every": 2, "scaling.num_workers": 2, "tracking.experiment": "test-pretrain",
        "tracking.run_name": run_name, "registry.name": f"test-{run_name}",
        "checkpoint.storage_path": "s3://radimagenet/test-checkpoints",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def config(manifest: str, run_name: str, **extra):
    from radimagenet.config import load_config
    from radimagenet.tasks.pretrain import PretrainConfig

    return load_config(PretrainConfig, None, overrides(manifest, run_name, **extra))


def runs_named(run_name: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name("test-pretrain")
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`radimagenet.run_name` = '{run_name}'")


def metric_history(run_id: str, key: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    return [m.value for m in MlflowClient().get_metric_history(run_id, key)]


def test_two_workers_learn_survive_a_killed_worker_and_register(manifest_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from radimagenet.models import registry as backbones
    from radimagenet.tasks.pretrain import pretrain

    run_name = f"kill-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "killed"
    # rank 1, epoch 2 (0-based, the last), batch 2: Ray Train registers a reported checkpoint
    # asynchronously, so the kill comes a whole epoch after the first checkpoint to resume from
    monkeypatch.setenv("RADIMAGENET_FAULT_KILL", "1:2:2")
    monkeypatch.setenv("RADIMAGENET_FAULT_MARKER", str(marker))
    result = pretrain(config(manifest_uri, run_name))

    assert marker.exists(), "the fault hook did not fire"
    assert result.metrics["val/accuracy"] > 0.6, result.metrics  # chance is 0.25
    assert result.metrics["val/auc"] > 0.8, result.metrics
    assert result.metrics["epoch"] == 3
    runs = runs_named(run_name)
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    resumed = metric_history(result.run_id, "train/resumed_from_epoch")
    assert resumed in ([1.0], [2.0]), resumed  # restarted from a checkpoint, not from scratch
    assert {"val/accuracy_CT", "val/accuracy_MR", "val/top5", "train/images_per_s"} <= set(run.data.metrics)
    assert run.data.params["model.arch"] == ARCH and run.data.params["train.epochs"] == "3"
    assert run.data.tags["radimagenet.dataset_digest"].startswith("sha256:")
    assert run.data.tags["radimagenet.split_unit"] == "unknown"  # a manifest without split_unit, no warning
    assert run.inputs.dataset_inputs, "dataset not logged as an input"
    assert "config/pretrain.yaml" in [a.path for a in MlflowClient().list_artifacts(result.run_id, "config")]

    # registry: version with alias candidate, everything needed to use it
    assert result.version == "1"
    mv = MlflowClient().get_model_version_by_alias(result.registry_name, "candidate")
    assert mv.version == "1" and mv.tags["arch"] == ARCH and mv.tags["input_size"] == "3x32x32"
    assert float(mv.tags["val/accuracy"]) > 0.6
    import glob
    import tempfile

    downloads = set(glob.glob(os.path.join(tempfile.gettempdir(), "radimagenet-backbone-*")))
    model, record = backbones.load(f"{result.registry_name}@candidate", num_classes=2)
    # the downloaded files are gone once the weights are in memory (each load used to leave a copy in /tmp)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "radimagenet-backbone-*"))) == downloads
    assert record.arch == ARCH and record.num_classes == NUM_CLASSES and len(record.classes) == NUM_CLASSES
    assert record.dataset_digest == run.data.tags["radimagenet.dataset_digest"]
    assert record.metrics["val/accuracy"] == pytest.approx(result.metrics["val/accuracy"])
    import torch

    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 2)
    out.sum().backward()  # trainable
    assert model.radimagenet_cfg is record
    # pretrained weights really loaded: the kept head reproduces the registered val accuracy ballpark
    full, _ = backbones.load(f"{result.registry_name}/1")
    assert full.get_classifier().out_features == NUM_CLASSES

    # promote, list
    from radimagenet.cli import main

    assert main(["registry", "promote", result.registry_name, "1", "--alias", "champion"]) == 0
    model2, _ = backbones.load(f"{result.registry_name}@champion", num_classes=3)
    assert model2.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    rows = backbones.list(result.registry_name)
    assert rows[0]["aliases"] == ["candidate", "champion"] and rows[0]["arch"] == ARCH and rows[0]["kind"] == "backbone"
    card = backbones.describe(f"{result.registry_name}/1")["card"]
    assert "pretrained backbone" in card and run.data.tags["radimagenet.dataset_digest"] in card and "val/accuracy" in card

    # re-running the finished job changes nothing: same run, no new version
    again = pretrain(config(manifest_uri, run_name))
    assert again.resumed and again.run_id == result.run_id and again.version == "1"
    assert len(runs_named(run_name)) == 1


def test_stop_and_resubmit_resumes(manifest_uri, tmp_path):
    from radimagenet.tasks.pretrain import pretrain

    run_name = f"stop-{uuid.uuid4().hex[:6]}"
    # Ray Train lists reported checkpoints in this snapshot: a resubmission resumes from what it holds
    snapshot = f"s3://radimagenet/test-checkpoints/{run_name}/checkpoint_manager_snapshot.json"
    cmd = [sys.executable, "-m", "radimagenet", "pretrain",
           *overrides(manifest_uri, run_name, **{"train.epochs": 4, "scaling.num_workers": 1})]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if storage.exists(snapshot):
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert storage.exists(snapshot), "no first checkpoint within the deadline"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C of the submitting terminal
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = runs_named(run_name)
    assert len(first) == 1 and first[0].info.status in ("KILLED", "FAILED", "RUNNING")

    result = pretrain(config(manifest_uri, run_name, **{"train.epochs": 4, "scaling.num_workers": 1}))
    assert result.resumed and result.run_id == first[0].info.run_id
    assert result.metrics["epoch"] == 4
    resumed = metric_history(result.run_id, "train/resumed_from_epoch")
    assert resumed and 1 <= resumed[-1] < 4
    assert len(runs_named(run_name)) == 1


def test_a_one_shard_dataset_trains_on_two_workers_with_two_loader_workers_each(stack_env):
    """Partitioned by sample: one shard serves 2 ranks x 2 loader workers (it used to need 4 shards)."""
    from radimagenet.tasks.pretrain import pretrain

    manifest = write_dataset("oneshard", train=96, val=32, shard=1000)  # one shard per split
    run_name = f"one-{uuid.uuid4().hex[:6]}"
    result = pretrain(config(manifest, run_name, **{"scaling.num_workers": 2, "data.num_workers": 2,
                                                    "train.epochs": 1, "train.batch_size": 16}))
    assert result.metrics["epoch"] == 1 and 0 <= result.metrics["val/accuracy"] <= 1
    runs = runs_named(run_name)
    assert [r.info.run_id for r in runs] == [result.run_id] and runs[0].info.status == "FINISHED"
    assert metric_history(result.run_id, "train/loss")  # 3 steps of 2 ranks x 16 samples, logged every 2


def test_unreachable_s3_or_mlflow_fails_fast_and_writes_nothing(manifest_uri, monkeypatch):
    from radimagenet.errors import StorageError
    from radimagenet.io.tracking import TrackingError
    from radimagenet.tasks.pretrain import pretrain

    run_name = f"down-{uuid.uuid4().hex[:6]}"
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
        t0 = time.time()
        with pytest.raises(TrackingError, match="cannot reach MLflow"):
            pretrain(config(manifest_uri, run_name))
        assert time.time() - t0 < 30
    assert storage.list_keys(f"s3://radimagenet/test-checkpoints/{run_name}") == []
    assert runs_named(run_name) == []

    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        with pytest.raises(StorageError, match="cannot reach S3"):
            pretrain(config(manifest_uri, run_name))
    assert runs_named(run_name) == []


def test_in_process_run_for_notebooks(manifest_uri, tmp_path, capsys):
    from radimagenet.tasks.pretrain import pretrain

    # the same shards under a manifest that says split_unit image: the run carries the warning tag
    image_split = manifest_uri.replace("/manifest.json", "-image/manifest.json")
    storage.write_json(image_split, storage.read_json(manifest_uri) | {"split_unit": "image"})
    run_name = f"inproc-{uuid.uuid4().hex[:6]}"
    result = pretrain(config(image_split, run_name, **{
        "train.epochs": 1, "scaling.num_workers": 1, "checkpoint.storage_path": str(tmp_path / "ckpt"),
        "registry.register": False, "tracking.system_metrics_interval": 1}), in_process=True)
    assert result.metrics["epoch"] == 1 and result.version is None
    assert (tmp_path / "ckpt" / run_name / "checkpoint_epoch-000000" / "model.safetensors").is_file()
    (run,) = runs_named(run_name)
    assert run.data.tags["radimagenet.split_unit"] == "image"
    assert run.data.tags["radimagenet.warning.split_unit"].startswith("dataset is split image by image")
    assert "[radimagenet] warning: dataset is split image by image" in capsys.readouterr().err
    # MLflow system metrics of the training process, sampled every second, and the curves drawn at the end
    from mlflow.tracking import MlflowClient

    cpu = MlflowClient().get_metric_history(result.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2 and all(0 <= m.value <= 100 for m in cpu), cpu
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    plots = {a.path for a in MlflowClient().list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/loss_curves.png", "plots/accuracy_curves.png"}, plots


# ------------------------------------------------------------------ exact mid-epoch resume (issue 15)

def submit_until_paused(manifest: str, run_name: str, pause: str, expect: str, marker, **extra) -> None:
    """``radimagenet pretrain`` as a user submits it, stopped by the engine's pause hook at ``pause``
    (rank:epoch:batch) once Ray Train lists the checkpoint ``expect``; then the driver is SIGKILLed."""
    snapshot = f"s3://radimagenet/test-checkpoints/{run_name}/checkpoint_manager_snapshot.json"
    env = os.environ | {"RADIMAGENET_FAULT_KILL": f"{pause}:pause", "RADIMAGENET_FAULT_MARKER": str(marker)}
    cmd = [sys.executable, "-m", "radimagenet", "pretrain", *overrides(manifest, run_name, **extra)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if marker.exists() and storage.exists(snapshot) and expect.encode() in storage.read_bytes(snapshot):
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert marker.exists() and expect.encode() in storage.read_bytes(snapshot), "no pause in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; Ray ends its workers with it
        proc.wait()
    time.sleep(5)


def final_weights(run_name: str, epoch: int) -> dict:
    from safetensors.torch import load

    return load(storage.read_bytes(f"s3://radimagenet/test-checkpoints/{run_name}/checkpoint_epoch-{epoch:06d}"
                                   "/model.safetensors"))


def epoch_figures(run_id: str, epochs: int) -> tuple[list[float], list[str]]:
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_run(run_id).data.tags
    return metric_history(run_id, "data/epoch_samples"), [tags.get(f"data.epoch_{e}_digest") for e in
                                                          range(1, epochs + 1)]


RESUME = {"train.epochs": 2, "train.deterministic": "true", "checkpoint.every_steps": 2, "registry.register": "false",
          "data.num_workers": 0}


def test_a_killed_driver_resubmitted_ends_bit_identical_to_an_uninterrupted_run(manifest_uri, tmp_path):
    """2 workers, CPU, train.deterministic: the driver is killed in epoch 2 (between two mid-epoch
    checkpoints) and the same command resubmitted: the same MLflow run, each epoch's every sample once,
    and the final weights equal to the last bit to those of a run never interrupted."""
    from radimagenet.tasks.pretrain import pretrain
    from radimagenet.train.resume import digest_text, key_digest

    whole = pretrain(config(manifest_uri, f"whole-{uuid.uuid4().hex[:6]}", **RESUME))
    run_name = f"cut-{uuid.uuid4().hex[:6]}"
    # 384 samples / (2 x 32) = 6 steps an epoch; epoch 1 (0-based), batch 2 is step 9: last checkpoint step 8
    submit_until_paused(manifest_uri, run_name, "1:1:2", "checkpoint_epoch-000001-step-000000008",
                        tmp_path / "paused", **RESUME)
    (first,) = runs_named(run_name)
    result = pretrain(config(manifest_uri, run_name, **RESUME))
    assert result.resumed and result.run_id == first.info.run_id and len(runs_named(run_name)) == 1
    assert metric_history(result.run_id, "train/resumed_at_sample") == [128.0]  # 2 steps x 64 into epoch 2
    expected = final_weights(whole.run_name, 1)
    for key, value in final_weights(run_name, 1).items():
        assert value.equal(expected[key]), key
    samples, digests = epoch_figures(result.run_id, 2)
    keys = [f"{s['__key__']}" for s in _train_keys(manifest_uri)]
    assert samples == [384.0, 384.0] and digests == [digest_text(key_digest(keys))] * 2
    assert epoch_figures(whole.run_id, 2) == (samples, digests)


def test_resumes_across_worker_counts_see_every_sample_once(manifest_uri, tmp_path):
    """2 workers killed mid-epoch 1, resubmitted on 1 worker, killed mid-epoch 2, finished on 4: each
    epoch counts 384 samples with the digest of the whole training split."""
    from radimagenet.tasks.pretrain import pretrain
    from radimagenet.train.resume import digest_text, key_digest

    run_name = f"widths-{uuid.uuid4().hex[:6]}"
    # 2 workers: 6 steps an epoch; stopped after the step-4 checkpoint (position 4 x 64 = 256)
    submit_until_paused(manifest_uri, run_name, "0:0:3", "checkpoint_epoch-000000-step-000000004",
                        tmp_path / "first", **RESUME)
    # 1 worker: epoch 1 ends at step 8; in epoch 2 (12 steps) batch 5 is step 14 (position 6 x 32 = 192)
    submit_until_paused(manifest_uri, run_name, "0:1:5", "checkpoint_epoch-000001-step-000000014",
                        tmp_path / "second", **RESUME, **{"scaling.num_workers": 1})
    result = pretrain(config(manifest_uri, run_name, **RESUME,
                             **{"scaling.num_workers": 4, "scaling.cpus_per_worker": 0.5}))
    assert result.resumed and len(runs_named(run_name)) == 1 and result.metrics["epoch"] == 2
    assert metric_history(result.run_id, "train/resumed_at_sample") == [256.0, 192.0]
    samples, digests = epoch_figures(result.run_id, 2)
    keys = [s["__key__"] for s in _train_keys(manifest_uri)]
    assert samples == [384.0, 384.0] and digests == [digest_text(key_digest(keys))] * 2


def _train_keys(manifest_uri: str) -> list[dict]:
    from radimagenet.dataset.format import load_manifest, split_shards
    from radimagenet.dataset.reader import read_shard

    return [s for shard in split_shards(load_manifest(manifest_uri), "train") for s in read_shard(shard.url)]
