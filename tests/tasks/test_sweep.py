"""`radimagenet sweep` through Ray Tune on the stack's Ray: 4 tiny trials (a registered backbone and scratch
x 2 seeds) under one parent run; one trial is killed, the sweep fails, and running it again skips the
finished trials, finishes the killed one and writes the summary."""

from __future__ import annotations

import os
import uuid

import pytest

from helpers_assets import ARCH, EXPERIMENT, assets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(stack_env, tmp_path_factory) -> dict[str, str]:
    return assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("finetune-assets")))


def test_a_sweep_resumed_after_a_killed_trial(data, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from radimagenet.cli import main
    from radimagenet.io import tracking

    name = f"sweep-{uuid.uuid4().hex[:6]}"
    argv = ["sweep", f"data.manifest={data['downstream']}", f"sweep.name={name}", f"backbone={data['backbone']}",
            "grid.init=backbone,scratch", "grid.train.seed=0,1", f"model.arch={ARCH}", "data.num_workers=0",
            "train.epochs=1", "train.batch_size=32", "train.lr=1e-3", "eval.n_boot=100", "eval.gradcam_samples=0",
            "eval.gradcam_max_images=0", "eval.log_model=false", "sweep.cpus_per_trial=1", "sweep.max_concurrent=1",
            f"tracking.experiment={EXPERIMENT}-sweep", f"checkpoint.storage_path={tmp_path / 'ckpt'}"]
    # the first trial to reach its second batch is SIGKILLed once (the marker file says it happened)
    monkeypatch.setenv("RADIMAGENET_FAULT_KILL", "0:0:1")
    monkeypatch.setenv("RADIMAGENET_FAULT_MARKER", str(tmp_path / "killed"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 trial(s) failed" in err and "run the same sweep again" in err, err
    assert (tmp_path / "killed").exists()

    c = MlflowClient()
    uri = tracking.tracking_uri()
    parent = tracking.find_run(uri, f"{EXPERIMENT}-sweep", name)
    exp = c.get_run(parent).info.experiment_id
    before = {r.data.tags["radimagenet.run_name"]: r for r in c.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")}
    finished = {n for n, r in before.items() if r.info.status == "FINISHED"}
    assert len(before) == 4 and len(finished) == 3, {n: r.info.status for n, r in before.items()}

    monkeypatch.delenv("RADIMAGENET_FAULT_KILL")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 finished before" in out and "## Test AUC per setting" in out and "p (patient bootstrap)" in out
    after = {r.data.tags["radimagenet.run_name"]: r for r in c.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")}
    assert len(after) == 4 and all(r.info.status == "FINISHED" for r in after.values())
    assert all(after[n].info.run_id == before[n].info.run_id for n in before)  # the killed one resumed its run
    for n in finished:  # skipped: not run again
        assert after[n].info.end_time == before[n].info.end_time

    run = c.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["radimagenet.kind"] == "sweep"
    files = {a.path for a in c.list_artifacts(parent, "sweep")}
    assert {"sweep/summary.md", "sweep/settings.csv", "sweep/runs.csv", "sweep/auc.png", "sweep/table.csv",
            "sweep/pairwise.csv"} <= files, files
    m = run.data.metrics
    backbone = data["backbone"].replace("@", "-")
    assert 0 <= m[f"{backbone}/test/auc_mean"] <= 1 and 0 <= m["scratch/test/auc_mean"] <= 1
    assert 0 <= m["scratch/p_bootstrap"] <= 1 and 0 <= m["scratch/p_ttest"] <= 1

    # the same sweep.name with another setting: its finished trials are not this grid's results
    changed = [a if a != "train.lr=1e-3" else "train.lr=1e-2" for a in argv]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "finished before with other settings" in err and "train.lr: 0.001 -> 0.01" in err, err
    assert c.get_run(parent).info.status == "FINISHED"  # refused before the parent run was touched


def test_changed_keys_compares_what_changes_a_result():
    from radimagenet.config import load_config
    from radimagenet.tasks.finetune_config import FinetuneConfig
    from radimagenet.tasks.sweep import changed_keys

    cfg = load_config(FinetuneConfig, None, ["data.manifest=s3://b/ds", "init=scratch", "train.lr=0.001",
                                             "scaling.num_workers=2", "data.num_workers=3"])
    params = {"data.manifest": "s3://b/ds/manifest.json", "train.lr": "0.001", "scaling.num_workers": "1",
              "data.num_workers": "0", "data.image_size": "64", "init": "scratch"}
    assert changed_keys(params, cfg) == []  # workers differ, image_size resolved at run time
    assert changed_keys(params | {"train.lr": "0.01"}, cfg) == ["train.lr: 0.01 -> 0.001"]
    assert changed_keys(params | {"data.manifest": "s3://b/other/manifest.json"}, cfg)[0].startswith("data.manifest")
    # what a protocol implies is compared as the run logged it (protocol=linear ran with train.freeze=all)
    linear = load_config(FinetuneConfig, None, ["data.manifest=s3://b/ds", "init=scratch", "protocol=linear"])
    assert changed_keys({"train.freeze": "all", "protocol": "linear"}, linear) == []
    knn = load_config(FinetuneConfig, None, ["data.manifest=s3://b/ds", "init=scratch", "protocol=knn"])
    assert changed_keys({"eval.log_model": "False", "registry.register": "False", "protocol": "knn"}, knn) == []
