"""`radimagenet submit` / `radimagenet jobs` against the local stack's Ray head (token auth).

An ingest of a tiny synthetic corpus is submitted by relative path and followed to success; its
resubmission is a clear no-op. A failing job exits non-zero and its resubmission is attempt NAME-2.
A small pretraining job is followed to success and its backbone found in the MLflow registry; a second
submission while it runs is refused, a stopped attempt ends STOPPED, the next one resumes the run.
Credentials never show in job info (entrypoint, metadata, runtime env), job logs, or MLflow params/tags.
Errors: unknown job id, wrong or missing token, unreachable dashboard.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from radimagenet.commands.submit import parse_command
from radimagenet.io import storage
from radimagenet.ops import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


REPO = Path(__file__).resolve().parents[2]


def secrets_of(env: dict[str, str]) -> list[str]:
    return [env["AWS_SECRET_ACCESS_KEY"], env["AWS_ACCESS_KEY_ID"], env["RAY_AUTH_TOKEN"]]


def assert_no_secrets(stack_env, *texts) -> None:
    blob = json.dumps([str(t) for t in texts])
    for secret in secrets_of(stack_env):
        assert secret not in blob, "a credential leaked"


def assert_job_clean(stack_env, job_id: str) -> None:
    """Entrypoint, metadata, runtime env (what Ray shows anyone with the token) and logs: no credentials."""
    c = jobs.client()
    info = c.get_job_info(job_id)
    assert_no_secrets(stack_env, info.entrypoint, info.metadata, info.runtime_env, info.message,
                      c.get_job_logs(job_id))
    assert "AWS_SECRET_ACCESS_KEY" not in (info.runtime_env or {}).get("env_vars", {})


@pytest.fixture(scope="module")
def ingested(stack_env, tmp_path_factory):
    """A tiny dataset ingested by a followed job; (name, out, job id, captured stdout)."""
    from radimagenet.ops.synth import synthesize

    work = tmp_path_factory.mktemp("jobs")
    synthesize(work / "corpus", images=24, seed=0)
    # the patient split follows the de-identification secret: this one gives train 17 / val 3 samples
    (work / "deid-secret").write_text("radimagenet-jobs-test-secret-0")
    name = f"t{uuid.uuid4().hex[:6]}"
    out = f"s3://radimagenet/tests/jobs/{name}"
    argv = ["submit", "ingest", "--follow", "--name", name, "--num-cpus", "0.5", "--", "corpus", "--labels", "corpus/labels.csv",
            "--out", out, "--image-size", "32", "--split", "0.6,0.2,0.2", "--secret-file", "deid-secret",
            "--no-progress"]
    cwd = os.getcwd()
    os.chdir(work)  # relative SOURCE and --labels, as a user types them
    try:
        rc, text = run_cli(argv)
    finally:
        os.chdir(cwd)
    assert rc == 0, text
    return name, out, f"ingest-{name}", text, work


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``radimagenet ARGV`` in a subprocess (its own Ray token loader); (exit code, stdout+stderr)."""
    proc = subprocess.run([sys.executable, "-m", "radimagenet", *argv], capture_output=True, text=True,
                          timeout=400, env=os.environ.copy())
    return proc.returncode, proc.stdout + proc.stderr


def test_submitted_ingest_succeeds_reads_relative_paths_and_resubmits_as_a_noop(stack_env, ingested):
    name, out, job_id, text, work = ingested
    assert f"submitted {job_id}" in text and f"job {job_id} SUCCEEDED" in text
    assert "written" in text and "credentials not shipped" in text
    assert storage.exists(f"{out}/manifest.json")
    info = jobs.client().get_job_info(job_id)
    assert str(info.status) == "SUCCEEDED"  # (JobDetails does not show entrypoint_num_cpus)
    # folder names carry names and record numbers: the entrypoint everyone with the token sees names no path
    assert info.entrypoint == "python -m radimagenet ingest @radimagenet-args.txt"
    assert str(work) not in json.dumps([info.entrypoint, info.metadata, info.runtime_env])
    assert info.metadata["radimagenet.job"] == job_id
    assert_job_clean(stack_env, job_id)
    assert_no_secrets(stack_env, text)

    rc, again = run_cli(["submit", "ingest", "--follow", "--name", name, "--", str(work / "corpus"),
                         "--labels", str(work / "corpus" / "labels.csv"), "--out", out, "--image-size", "32",
                         "--split", "0.6,0.2,0.2", "--secret-file", str(work / "deid-secret"), "--no-progress"])
    assert rc == 0 and "already complete" in again and "no job submitted" in again, again
    ids = [r.submission_id for r in jobs.list_jobs()]
    assert job_id in ids and f"{job_id}-2" not in ids

    rc, table = run_cli(["jobs", "list"])
    assert rc == 0 and job_id in table and "SUCCEEDED" in table and "ENTRYPOINT" in table
    rc, log = run_cli(["jobs", "logs", job_id])
    assert rc == 0 and "manifest:" in log


def test_a_failed_job_exits_nonzero_and_the_next_attempt_gets_a_suffix(stack_env, ingested):
    _, _, _, _, work = ingested
    out = f"s3://radimagenet/tests/jobs/stray-{uuid.uuid4().hex[:6]}"
    storage.write_json(f"{out}/stray.json", {"not": "a dataset"})  # non-empty, no journal: ingest refuses
    name = f"f{uuid.uuid4().hex[:6]}"
    argv = ["submit", "ingest", "--follow", "--name", name, "--", str(work / "corpus"), "--out", out,
            "--no-progress"]
    rc, text = run_cli(argv)
    assert rc == 1, text
    assert "is not empty" in text and f"job ingest-{name} FAILED" in text
    rc, text = run_cli(argv)
    assert rc == 1 and f"submitted ingest-{name}-2" in text and f"previous: ingest-{name} (FAILED)" in text


def test_clear_errors(stack_env):
    rc, text = run_cli(["jobs", "logs", "no-such-job"])
    assert rc == 2 and "no job 'no-such-job'" in text, text
    rc, text = run_cli(["jobs", "stop", "no-such-job"])
    assert rc == 2 and "no job 'no-such-job'" in text, text

    env = os.environ.copy()
    env["RAY_AUTH_TOKEN"] = "0" * 64
    proc = subprocess.run([sys.executable, "-m", "radimagenet", "jobs", "list"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "refused the token" in proc.stderr, proc.stderr
    env.pop("RAY_AUTH_TOKEN")
    env["HOME"] = str(Path(env.get("TMPDIR", "/tmp")))  # no ~/.ray/auth_token to fall back on
    proc = subprocess.run([sys.executable, "-m", "radimagenet", "jobs", "list"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "requires a token" in proc.stderr, proc.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    rc, text = run_cli(["jobs", "--address", f"http://127.0.0.1:{port}", "list"])
    assert rc == 2 and "cannot reach the Ray dashboard" in text and time.time() - t0 < 30


def test_submitted_pretraining_registers_refuses_duplicates_stops_and_resumes(stack_env, ingested):
    from mlflow import MlflowClient

    _, out, _, _, _ = ingested
    name = f"p{uuid.uuid4().hex[:6]}"
    registry = f"test-jobs-{name}"
    args = ["--config", "pipelines/demo-pretrain.yaml", f"data.manifest={out}/manifest.json",
            "data.image_size=32", "train.epochs=1", "train.batch_size=4", "scaling.num_workers=1",
            "data.shuffle_buffer=16", "tracking.experiment=test-jobs", f"registry.name={registry}",
            "checkpoint.storage_path=s3://radimagenet/test-checkpoints"]
    cwd = os.getcwd()
    os.chdir(REPO)  # --config relative to the repository, as in the README
    try:
        sub = jobs.submit("pretrain", args, parse=parse_command, name=name)
        assert sub.submission_id == f"pretrain-{name}" and f"tracking.run_name={name}" in sub.entrypoint
        with pytest.raises(jobs.JobError, match="still (PENDING|RUNNING)"):
            jobs.submit("pretrain", args, parse=parse_command, name=name)
        rc, text = run_cli(["jobs", "logs", sub.submission_id, "--follow"])
        assert rc == 0, text[-3000:]
        assert f"run {name} (new)" in text and f"registered {registry} version 1" in text

        versions = MlflowClient().search_model_versions(f"name='{registry}'")
        assert [v.version for v in versions] == ["1"]
        run = MlflowClient().get_run(versions[0].run_id)
        assert run.data.tags["radimagenet.run_name"] == name
        assert_no_secrets(stack_env, run.data.params, run.data.tags, versions[0].tags)
        assert_job_clean(stack_env, sub.submission_id)

        stopped = jobs.submit("pretrain", args, parse=parse_command, name=name)  # attempt 2, stopped at once
        assert stopped.submission_id == f"pretrain-{name}-2"
        rc, text = run_cli(["jobs", "stop", stopped.submission_id])
        assert rc == 0 and "stop requested" in text, text
        assert str(jobs.wait(stopped.submission_id, timeout_s=120).status) == "STOPPED"

        rc, text = run_cli(["submit", "pretrain", "--name", name, "--follow", "--", *args])
    finally:
        os.chdir(cwd)
    assert rc == 0, text[-3000:]
    assert f"submitted pretrain-{name}-3" in text and f"run {name} (resumed)" in text
    assert [v.version for v in MlflowClient().search_model_versions(f"name='{registry}'")] == ["1"]
    assert_job_clean(stack_env, f"pretrain-{name}-3")


def test_remote_style_submission_ships_relative_config_files(stack_env, monkeypatch):
    """As for a remote cluster: `--config pipelines/...` travels in a working_dir, loopback endpoints
    stay home (the head's own environment serves the job)."""
    monkeypatch.setattr(jobs, "is_local_address", lambda address: False)
    monkeypatch.chdir(REPO)
    name = f"r{uuid.uuid4().hex[:6]}"
    sub = jobs.submit("pretrain", ["--config", "pipelines/demo-pretrain.yaml", "--print-config",
                                   "train.epochs=1"], parse=parse_command, name=name)
    assert sub.shipped_files == ["pipelines/demo-pretrain.yaml"]
    assert "--config pipelines/demo-pretrain.yaml" in sub.entrypoint
    assert "AWS_ENDPOINT_URL" not in sub.runtime_env["env_vars"] and any("loopback" in w for w in sub.warnings)
    chunks: list[str] = []
    info = jobs.follow(sub.submission_id, write=chunks.append)
    text = "".join(chunks)
    assert str(info.status) == "SUCCEEDED", text[-3000:]
    assert "arch: resnet10t" in text and f"run_name: {name}" in text
    assert (jobs.client().get_job_info(sub.submission_id).runtime_env or {}).get("working_dir", "").startswith("gcs://")
    assert_job_clean(stack_env, sub.submission_id)
