"""The embedded local stack against the real services: idempotent up, status, env, S3 auth, MLflow
artifacts into S3, Ray jobs with token auth, port conflicts, and a down that stops only our processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from radimagenet.cli import main
from radimagenet.ops import stack
from radimagenet.ops.stack import processes

pytestmark = pytest.mark.integration


CLIENT_VARS = ("AWS_", "MLFLOW_", "RAY_", "RADIMAGENET_")


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any stack client variables (as on a fresh shell), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_VARS)}
    env.update(extra)
    return env


def s3_client(**kwargs) -> object:
    return boto3.session.Session().client("s3", region_name="us-east-1", **kwargs)


def test_up_is_idempotent(stack_env):
    home = stack.home_dir(stack_env["RADIMAGENET_HOME"])
    before = {s.name: s.pid for s in stack.status(home)}
    t0 = time.monotonic()
    assert stack.up(home) == stack_env
    assert time.monotonic() - t0 < 10
    assert {s.name: s.pid for s in stack.status(home)} == before


def test_status_shows_all_up(stack_env, capsys):
    rows = stack.status(stack_env["RADIMAGENET_HOME"])
    assert [(s.name, s.up) for s in rows] == [("s3", True), ("mlflow", True), ("ray", True)]
    assert all(s.address.startswith("http://127.0.0.1:") and s.pid for s in rows)
    assert main(["stack", "status"]) == 0
    out = capsys.readouterr().out
    assert out.count(" up ") == 3 and stack_env["RAY_ADDRESS"] in out


def test_env_evals_in_a_shell_and_secrets_are_private(stack_env):
    home = Path(stack_env["RADIMAGENET_HOME"])
    script = 'eval "$("$PY" -m radimagenet stack env)" && env'
    out = subprocess.run(["bash", "-c", script], env=clean_env(PY=sys.executable, RADIMAGENET_HOME=str(home)),
                         capture_output=True, text=True, check=True).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE",
                "RAY_AUTH_TOKEN", "RADIMAGENET_HOME"):
        assert seen[key] == stack_env[key], key
    assert stack_env["AWS_DEFAULT_REGION"] == "us-east-1" and stack_env["RAY_AUTH_MODE"] == "token"
    for name in ("credentials.json", "s3_identities.json", "mlflow/basic_auth.ini"):
        assert (home / name).stat().st_mode & 0o077 == 0, name
    # Ray makes its temp dir 0777 itself (to share it between users); the folder holding it is 0700
    ray_temp = processes._short_dir(home) / "ray"
    assert ray_temp.is_dir() and ray_temp.parent.stat().st_mode & 0o077 == 0


def test_s3_with_env_buckets_and_objects(stack_env):
    c = s3_client()  # endpoint and credentials from the environment
    assert "radimagenet" in {b["Name"] for b in c.list_buckets()["Buckets"]}
    names = [f"extra-{uuid.uuid4().hex[:8]}-{i}" for i in range(5)]
    try:
        for name in names:
            c.create_bucket(Bucket=name)
            c.put_object(Bucket=name, Key="dir/hello.txt", Body=b"hello " + name.encode())
            assert c.get_object(Bucket=name, Key="dir/hello.txt")["Body"].read() == b"hello " + name.encode()
        assert set(names) <= {b["Name"] for b in c.list_buckets()["Buckets"]}
    finally:
        for name in names:
            try:
                c.delete_object(Bucket=name, Key="dir/hello.txt")
                c.delete_bucket(Bucket=name)
            except ClientError:
                pass


def test_s3_refuses_unsigned_and_wrong_secret(stack_env):
    s3_client().put_object(Bucket="radimagenet", Key="tests/auth-probe", Body=b"x")
    endpoint = stack_env["AWS_ENDPOINT_URL"]
    unsigned = s3_client(endpoint_url=endpoint, config=Config(signature_version=UNSIGNED))
    wrong = s3_client(endpoint_url=endpoint, aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key="not-the-secret")
    for client in (unsigned, wrong):
        for call in (lambda c: c.list_buckets(),
                     lambda c: c.get_object(Bucket="radimagenet", Key="tests/auth-probe"),
                     lambda c: c.put_object(Bucket="radimagenet", Key="tests/intruder", Body=b"x"),
                     lambda c: c.create_bucket(Bucket=f"intruder-{uuid.uuid4().hex[:8]}")):
            with pytest.raises(ClientError) as info:
                call(client)
            assert info.value.response["Error"]["Code"] in {"AccessDenied", "SignatureDoesNotMatch"}


def _mlflow_status(url: str, method: str = "GET", data: bytes | None = None, auth: str | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_mlflow_refuses_requests_without_credentials(stack_env):
    base, user = stack_env["MLFLOW_TRACKING_URI"], stack_env["MLFLOW_TRACKING_USERNAME"]
    api = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    artifact = f"{base}/api/2.0/mlflow-artifacts/artifacts/intruder/{uuid.uuid4().hex[:8]}.txt"
    assert _mlflow_status(api) == 401
    assert _mlflow_status(api, auth=f"{user}:not-the-password") == 401
    assert _mlflow_status(f"{base}/api/2.0/mlflow/experiments/create", "POST", b'{"name": "intruder"}') == 401
    assert _mlflow_status(artifact, "PUT", b"intruder") == 401
    assert _mlflow_status(artifact) == 401
    assert _mlflow_status(api, auth=f"{user}:{stack_env['MLFLOW_TRACKING_PASSWORD']}") == 200
    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="radimagenet", Prefix="mlflow/intruder")
            .get("Contents", [])]
    assert keys == []


def test_services_get_only_the_secrets_they_use(stack_env):
    from radimagenet.ops.stack import services

    home = Path(stack_env["RADIMAGENET_HOME"])
    s3, mlflow_env, ray = (services._service_env(home, s) for s in ("s3", "mlflow", "ray"))
    secrets = ("AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD")
    assert not any(k in s3 for k in secrets)
    assert "AWS_SECRET_ACCESS_KEY" in mlflow_env and "RAY_AUTH_TOKEN" not in mlflow_env
    assert "MLFLOW_TRACKING_PASSWORD" not in mlflow_env and "MLFLOW_FLASK_SERVER_SECRET_KEY" in mlflow_env
    assert all(k in ray for k in secrets) and "RAY_ADDRESS" not in ray


def test_mlflow_artifact_lands_in_s3(stack_env, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(stack_env["MLFLOW_TRACKING_URI"])
    exp_id = mlflow.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    (tmp_path / "note.txt").write_text("artifact through the proxy")
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_param("p", 1)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="radimagenet", Prefix="mlflow/")
            .get("Contents", [])]
    key = next(k for k in keys if run.info.run_id in k and k.endswith("note.txt"))
    body = s3_client().get_object(Bucket="radimagenet", Key=key)["Body"].read()
    assert body == b"artifact through the proxy"


def test_ray_job_runs_in_the_venv_with_the_token(stack_env):
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient().get_address() == stack_env["RAY_ADDRESS"]  # found from the env
    client = JobSubmissionClient(stack_env["RAY_ADDRESS"])
    job = client.submit_job(entrypoint='python -c "import radimagenet, sys; print(\'PREFIX=\' + sys.prefix)"')
    deadline = time.monotonic() + 90
    while (state := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                          JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {state}"
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert state == JobStatus.SUCCEEDED, logs
    assert f"PREFIX={sys.prefix}" in logs


def test_ray_refuses_requests_without_the_token(stack_env, tmp_path):
    url = f"{stack_env['RAY_ADDRESS']}/api/jobs/"
    for headers, code in (({}, 401), ({"Authorization": "Bearer wrong-token"}, 403)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert info.value.code == code
    probe = ("from ray.job_submission import JobSubmissionClient as C; import sys; "
             "C(sys.argv[1]).submit_job(entrypoint='echo should-not-run')")
    proc = subprocess.run([sys.executable, "-c", probe, stack_env["RAY_ADDRESS"]],
                          env=clean_env(HOME=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "401" in proc.stderr or "Authentication" in proc.stderr, proc.stderr[-2000:]


def test_port_conflict_names_the_port(stack_env, tmp_path, monkeypatch, capsys):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("RADIMAGENET_PORT_BASE", str(int(os.environ["RADIMAGENET_PORT_BASE"]) + 100))
        monkeypatch.setenv("RADIMAGENET_MLFLOW_PORT", str(port))
        assert main(["stack", "up", "--home", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if "warning:" not in line]  # e.g. a low-disk warning
    assert len(errors) == 1 and f"port {port} (mlflow" in errors[0] and "already in use" in errors[0], err
    assert not any(s.up or s.pid for s in stack.status(tmp_path / "other"))


def test_down_stops_only_our_processes(stack_env):
    home = stack.home_dir(stack_env["RADIMAGENET_HOME"])
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        ours = set()
        for s in stack.status(home):
            ours |= set(processes._process_tree(s.pid))
        assert len(ours) >= 5
        assert stack.down(home) == ["ray", "mlflow", "s3"]
        assert [p for p in ours if Path(f"/proc/{p}").exists() and processes._proc_stat(p)[0] != "Z"] == []
        assert bystander.poll() is None
        assert not any(s.up for s in stack.status(home))
        assert stack.down(home) == []
    finally:
        bystander.kill()
        bystander.wait()
        assert stack.up(home) == stack_env  # later tests in the session still get a stack


def test_up_refuses_unknown_services_before_starting_anything(tmp_path):
    from radimagenet.errors import StackError

    with pytest.raises(StackError, match=r"unknown stack services \['minio'\]"):
        stack.up(tmp_path / "home", services=("s3", "minio"))
    assert not (tmp_path / "home").exists()
