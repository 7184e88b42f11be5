"""The one Ray connection: which address ``ray.init`` gets, what workers inherit, and that ``io``
depends on nothing above it. No Ray is started here."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from radimagenet.errors import ConfigError
from radimagenet.io import cluster

IO = Path(cluster.__file__).resolve().parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("RAY_ADDRESS", "RADIMAGENET_HOME", cluster.SHIP_FLAG):
        monkeypatch.delenv(key, raising=False)


def test_no_address_starts_a_local_ray():
    assert cluster.ray_address() is None


@pytest.mark.parametrize("address", ["10.0.0.5:6379", "ray://head.example.org:10001"])
def test_a_cluster_address_is_used_as_it_is(monkeypatch, address):
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert cluster.ray_address() == address


def test_the_stacks_jobs_api_address_resolves_to_its_head(monkeypatch, tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"ports": {"ray": 27012, "dashboard": 27013}}))
    monkeypatch.setenv("RADIMAGENET_HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:27013")
    assert cluster.ray_address() == "127.0.0.1:27012"
    monkeypatch.setenv("RAY_ADDRESS", "https://localhost:27013/")
    assert cluster.ray_address() == "localhost:27012"


@pytest.mark.parametrize("state", [None, "{}", '{"ports": {"s3": 1}}', "not json", "[]"])
def test_a_jobs_api_address_without_a_stack_state_is_one_clear_error(monkeypatch, tmp_path, state):
    if state is not None:
        (tmp_path / "state.json").write_text(state)
    monkeypatch.setenv("RADIMAGENET_HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "http://198.51.100.7:8265")
    with pytest.raises(ConfigError, match="is a Jobs API address, not a Ray cluster"):
        cluster.ray_address()


def test_the_stack_home_defaults_to_the_current_folder(monkeypatch, tmp_path):
    (tmp_path / ".radimagenet").mkdir()
    (tmp_path / ".radimagenet" / "state.json").write_text(json.dumps({"ports": {"ray": 6380}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert cluster.ray_address() == "127.0.0.1:6380"


ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_ACCESS_KEY_ID": "AKIA0001", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "sess",
       "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_TRACKING_TOKEN": "mlflow-token",
       "RADIMAGENET_HOME": "/tmp/h", "RADIMAGENET_DEID_SECRET": "deid", "RAY_AUTH_TOKEN": "ray-token",
       "HOME": "/root", "PATH": "/usr/bin"}


def test_workers_get_settings_but_no_credentials_unless_shipped():
    env = cluster.worker_env(ENV)
    # loopback addresses and RADIMAGENET_HOME name the driver's machine: each node keeps its own
    assert env == {"AWS_DEFAULT_REGION": "us-east-1"}
    remote = cluster.worker_env(ENV | {"AWS_ENDPOINT_URL": "http://minio.internal:9000",
                                       "MLFLOW_TRACKING_URI": "https://mlflow.example.org"})
    assert remote == {"AWS_ENDPOINT_URL": "http://minio.internal:9000", "AWS_DEFAULT_REGION": "us-east-1",
                      "MLFLOW_TRACKING_URI": "https://mlflow.example.org"}
    for loopback in ("http://localhost:5000", "http://[::1]:5000", "http://127.0.0.2:5000"):
        assert "MLFLOW_TRACKING_URI" not in cluster.worker_env({"MLFLOW_TRACKING_URI": loopback})
    shipped = cluster.worker_env(ENV | {cluster.SHIP_FLAG: "1"})
    assert set(cluster.CREDENTIAL_ENV) & set(ENV) <= set(shipped)
    assert shipped["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and shipped[cluster.SHIP_FLAG] == "1"
    assert "RAY_AUTH_TOKEN" not in shipped and "HOME" not in shipped  # never: not a forwarded prefix
    assert "AWS_SECRET_ACCESS_KEY" not in cluster.worker_env(ENV | {cluster.SHIP_FLAG: "0"})


def test_worker_env_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.test:1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    env = cluster.worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://s3.test:1" and "AWS_SECRET_ACCESS_KEY" not in env


def _imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _calls_ray_init(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray" for node in ast.walk(tree))


def test_io_imports_nothing_above_it():
    for path in sorted(IO.glob("*.py")):
        mods = {m for m in _imports(ast.parse(path.read_text())) if m.split(".")[0] == "radimagenet"}
        bad = {m for m in mods if m != "radimagenet.errors" and not m.startswith("radimagenet.io")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_only_cluster_calls_ray_init_and_only_tracking_imports_mlflow():
    assert _calls_ray_init(ast.parse((IO / "cluster.py").read_text()))
    for path in sorted(IO.parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if path != IO / "cluster.py":
            assert not _calls_ray_init(tree), f"{path} calls ray.init: use radimagenet.io.cluster.connect()"
        # pyfunc.py: tracking's pyfunc model format; monitor.py: its system metrics
        if path not in (IO / "tracking.py", IO / "pyfunc.py", IO / "monitor.py"):
            mlflow = {m for m in _imports(tree) if m.split(".")[0] == "mlflow"}
            assert not mlflow, f"{path} imports {sorted(mlflow)}: MLflow goes through radimagenet.io.tracking"
