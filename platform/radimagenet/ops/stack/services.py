"""The three services of the stack (SeaweedFS S3, MLflow, Ray head): their command lines, process
environment and readiness checks."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from radimagenet.errors import StackError
from radimagenet.ops.stack import seaweed
from radimagenet.ops.stack.state import BUCKET, HOST, REGION, _credentials, _short_dir, _write_private, env


def _tool(name: str) -> str:
    """``name`` next to the running Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH "
                         f"(reinstall the project: pip install -e .)")
    return found


def _s3_command(home: Path, ports: dict[str, Any]) -> list[str]:
    identities = {"identities": [{
        "name": "radimagenet",
        "credentials": [{"accessKey": (c := _credentials(home))["s3_access_key"],
                         "secretKey": c["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    _write_private(home / "s3_identities.json", json.dumps(identities, indent=2))
    sock = _short_dir(home) / "weed"  # weed's unix sockets (filer: plain HTTP, behind JWT) and logs
    sock.mkdir(parents=True, exist_ok=True)
    sock.chmod(0o700)
    (home / "s3").mkdir(exist_ok=True)
    conf = seaweed.configure(home)  # mTLS + JWT on every port but S3's (our security.toml, no other)
    p = ports
    return [
        _tool("weed"), f"-config_dir={conf}", f"-logdir={sock}", "server",
        f"-ip={HOST}", f"-ip.bind={HOST}", f"-dir={home / 's3'}", "-master.telemetry=false",
        f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
        # Small volumes + "as many as the disk holds": the defaults (30 GB volumes, max 8) run out of
        # volumes after one bucket ("no free volumes"); each bucket grows 7 volumes on first write.
        "-master.volumeSizeLimitMB=256", "-volume.max=0", "-volume.preStopSeconds=0",
        f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
        "-filer", f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
        f"-filer.localSocket={sock / 'filer.sock'}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.config={home / 's3_identities.json'}",
        f"-s3.localSocket={sock / 's3.sock'}",
    ]


def _clean_weed_sockets(home: Path, ports: dict[str, Any]) -> None:
    """Remove stale unix sockets weed keys by port (in our socket dir and the system temp dir);
    called only after the ports were found free, so no live server owns them."""
    names = [f"seaweedfs-{kind}-grpc-{ports[key]}.sock" for kind, key in (
        ("master", "weed_master_grpc"), ("volume", "weed_volume_grpc"),
        ("filer", "weed_filer_grpc"), ("s3", "s3_grpc"))]
    sock = _short_dir(home) / "weed"
    candidates = [Path("/tmp") / n for n in names] + [sock / "filer.sock", sock / "s3.sock"]
    for path in candidates:
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
                path.unlink()


def _mlflow_auth_config(home: Path) -> Path:
    """MLflow's basic-auth app configuration (0600): users in their own SQLite database, the stack's
    user as admin (created on the first start; every request must carry its credentials)."""
    creds = _credentials(home)
    path = home / "mlflow" / "basic_auth.ini"
    _write_private(path, "\n".join([
        "[mlflow]", "default_permission = NO_PERMISSIONS",
        f"database_uri = sqlite:///{home / 'mlflow' / 'auth.db'}",
        f"admin_username = {creds['mlflow_username']}", f"admin_password = {creds['mlflow_password']}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false", ""]))
    return path


def _mlflow_command(home: Path, ports: dict[str, Any]) -> list[str]:
    (home / "mlflow").mkdir(exist_ok=True)
    port = ports["mlflow"]
    return [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--workers", "1",
        "--allowed-hosts", f"{HOST},{HOST}:{port},localhost,localhost:{port}",
    ]


def _ray_command(home: Path, ports: dict[str, Any]) -> list[str]:
    flags = {"ray_node_manager": "--node-manager-port", "ray_object_manager": "--object-manager-port",
             "ray_runtime_env_agent": "--runtime-env-agent-port",
             "ray_dashboard_agent": "--dashboard-agent-listen-port",
             "ray_dashboard_agent_grpc": "--dashboard-agent-grpc-port",
             "ray_metrics": "--metrics-export-port", "ray_client_server": "--ray-client-server-port"}
    num_cpus = os.environ.get("RADIMAGENET_RAY_NUM_CPUS") or str(os.cpu_count() or 1)
    # Ray's sessions, logs and sockets: Ray makes its temp dir 0777, so the folder holding it is 0700
    (_short_dir(home) / "ray").mkdir(parents=True, exist_ok=True)
    _short_dir(home).chmod(0o700)
    return [
        _tool("ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={ports['ray']}", "--include-dashboard=true",
        f"--dashboard-host={HOST}", f"--dashboard-port={ports['dashboard']}", f"--num-cpus={num_cpus}",
        f"--temp-dir={_short_dir(home) / 'ray'}", "--min-worker-port=0", "--max-worker-port=0",
    ] + [f"{flag}={ports[key]}" for key, flag in flags.items() if ports[key] is not None]


# The stack's client variables each service needs: S3 none; MLflow the S3 ones (it proxies artifacts);
# Ray all of them (its workers train, read S3 and log to MLflow).
_SERVICE_ENV_PREFIXES = {"s3": (), "mlflow": ("AWS_", "MLFLOW_S3_"), "ray": ("AWS_", "MLFLOW_", "RAY_", "RADIMAGENET_")}


def _service_cwd(home: Path, service: str) -> Path:
    """Where a service runs: weed in its configuration folder (it reads ./security.toml too)."""
    return seaweed.conf_dir(home) if service == "s3" else home


def _service_env(home: Path, service: str) -> dict[str, str]:
    """The environment a service process runs with: ours (less any client secrets), plus only the
    stack's client variables the service uses (no S3 key in SeaweedFS, no Ray token in MLflow)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_", "WEED_"))
           and (service == "ray" or k != "RADIMAGENET_DEID_SECRET")}
    out.update({k: v for k, v in env(home).items() if k.startswith(_SERVICE_ENV_PREFIXES[service])})
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["PYTHONUNBUFFERED"] = "1"
    if service == "s3":  # WEED_* variables would override security.toml; so would ~/.seaweedfs/
        out["TMPDIR"] = str(_short_dir(home) / "weed")
        out["HOME"] = str(seaweed.conf_dir(home))
    if service == "mlflow":
        out["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else 7 huey workers, ~250 MB each
        out["MLFLOW_AUTH_CONFIG_PATH"] = str(_mlflow_auth_config(home))
        out["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _credentials(home)["mlflow_flask_secret"]
    if service == "ray":
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # the head must not join what it serves
            out.pop(key)
        out["RAY_USAGE_STATS_ENABLED"] = "0"
        out["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return out


def _ready(home: Path, service: str, ports: dict[str, Any]) -> bool:
    """Whether ``service`` answers a real request (S3 also gets its bucket here)."""
    e = env(home)
    try:
        if service == "s3":
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3", endpoint_url=e["AWS_ENDPOINT_URL"], aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name=REGION,
                config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if BUCKET not in names:
                client.create_bucket(Bucket=BUCKET)
            probe = secrets.token_bytes(16)  # a signed put/get round trip, not just a listing
            client.put_object(Bucket=BUCKET, Key="_stack/ready", Body=probe)
            if client.get_object(Bucket=BUCKET, Key="_stack/ready")["Body"].read() != probe:
                return False
            seaweed.check_locked(home, ports)  # up, and its other ports refuse clients without our certificate
            return True
        if service == "mlflow":  # an authenticated call: the auth app is up and knows our user
            token = base64.b64encode(f"{e['MLFLOW_TRACKING_USERNAME']}:{e['MLFLOW_TRACKING_PASSWORD']}".encode())
            url = f"{e['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
            headers = {"Authorization": f"Basic {token.decode()}"}
        else:
            url, headers = f"{e['RAY_ADDRESS']}/api/jobs/", {"Authorization": f"Bearer {e['RAY_AUTH_TOKEN']}"}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status == 200
    except StackError:
        raise
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
