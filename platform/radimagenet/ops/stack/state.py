"""Where the local stack lives and how clients reach it: the home folder, ports, generated secrets,
``state.json`` and the client environment (:func:`env`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from radimagenet.errors import ConfigError, StackError

HOST = "127.0.0.1"
BUCKET = "radimagenet"
REGION = "us-east-1"
SERVICES = ("s3", "mlflow", "ray")

# name -> (default port, offset from RADIMAGENET_PORT_BASE). A default of None means "the service's
# own choice" (weed gRPC: http port + 10000; Ray internals: Ray picks) unless a base or variable is set.
PORTS: dict[str, tuple[int | None, int]] = {
    "s3": (8333, 0),
    "mlflow": (5000, 1),
    "ray": (6379, 2),
    "dashboard": (8265, 3),
    "weed_master": (9333, 4),
    "weed_volume": (8080, 5),
    "weed_filer": (8888, 6),
    "weed_master_grpc": (None, 7),
    "weed_volume_grpc": (None, 8),
    "weed_filer_grpc": (None, 9),
    "s3_grpc": (None, 10),
    "ray_node_manager": (None, 11),
    "ray_object_manager": (None, 12),
    "ray_runtime_env_agent": (None, 13),
    "ray_dashboard_agent": (None, 14),
    "ray_dashboard_agent_grpc": (None, 15),
    "ray_metrics": (None, 16),
    "ray_client_server": (None, 17),
}

SERVICE_PORTS: dict[str, tuple[str, ...]] = {
    "s3": ("s3", "weed_master", "weed_volume", "weed_filer", "weed_master_grpc", "weed_volume_grpc",
           "weed_filer_grpc", "s3_grpc"),
    "mlflow": ("mlflow",),
    "ray": ("ray", "dashboard") + tuple(k for k in PORTS if k.startswith("ray_")),
}


# ---------------------------------------------------------------- paths, ports, secrets, state


def home_dir(home: Path | str | None = None) -> Path:
    """The stack's state folder: ``home``, else ``$RADIMAGENET_HOME``, else ``./.radimagenet`` (absolute)."""
    raw = home if home is not None else os.environ.get("RADIMAGENET_HOME") or ".radimagenet"
    return Path(raw).expanduser().resolve()


def _short_dir(home: Path) -> Path:
    """A folder for unix sockets: ``home/tmp`` when short enough (sockets are limited to ~107 bytes,
    Ray adds ~70), else ``$TMPDIR/rin-<hash of home>``."""
    candidate = home / "tmp"
    if len(str(candidate)) <= 36:
        return candidate
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"rin-{digest}"


def _env_port(var: str) -> int | None:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{var}={port} is outside 1..65535")
    return port


def resolve_ports() -> dict[str, int | None]:
    """Ports from ``RADIMAGENET_<NAME>_PORT``, else ``RADIMAGENET_PORT_BASE`` + offset, else defaults."""
    base = _env_port("RADIMAGENET_PORT_BASE")
    if base is not None and base + max(o for _, o in PORTS.values()) > 65535:
        raise ConfigError(f"RADIMAGENET_PORT_BASE={base} is too high (the stack uses base..base+17)")
    ports: dict[str, int | None] = {}
    for name, (default, offset) in PORTS.items():
        explicit = _env_port(f"RADIMAGENET_{name.upper()}_PORT")
        ports[name] = explicit if explicit is not None else (base + offset if base is not None else default)
    for grpc, http in (("weed_master_grpc", "weed_master"), ("weed_volume_grpc", "weed_volume"),
                       ("weed_filer_grpc", "weed_filer"), ("s3_grpc", "s3")):
        if ports[grpc] is None:
            ports[grpc] = int(ports[http] or 0) + 10000  # weed's own convention
    return ports


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _new_secrets() -> dict[str, str]:
    return {
        "s3_access_key": "RIN" + secrets.token_hex(8).upper(),
        "s3_secret_key": secrets.token_urlsafe(30),
        "ray_token": secrets.token_hex(32),
        "mlflow_username": "radimagenet",
        "mlflow_password": secrets.token_urlsafe(24),
        "mlflow_flask_secret": secrets.token_hex(32),
        # SeaweedFS's JWT signing keys (security.toml): volume writes and reads, filer writes and reads
        "weed_jwt_write": secrets.token_hex(32),
        "weed_jwt_read": secrets.token_hex(32),
        "weed_filer_jwt_write": secrets.token_hex(32),
        "weed_filer_jwt_read": secrets.token_hex(32),
    }


def _credentials(home: Path) -> dict[str, str]:
    """The stack's secrets, generated on first use and kept in ``home/credentials.json`` (0600); a
    file from an older version gets the secrets it lacks (e.g. MLflow's) added."""
    path = home / "credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    missing = {k: v for k, v in _new_secrets().items() if k not in creds}
    if missing:
        creds |= missing
        _write_private(path, json.dumps(creds, indent=2))
    return creds


def _load_state(home: Path) -> dict[str, Any] | None:
    path = home / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _require_state(home: Path) -> dict[str, Any]:
    state = _load_state(home)
    if state is None or not (home / "credentials.json").exists():
        raise StackError(f"no stack in {home}: run `radimagenet stack up` (or set RADIMAGENET_HOME)")
    return state


def env(home: Path | str | None = None) -> dict[str, str]:
    """What clients need to talk to the stack in ``home``, as environment variables."""
    h = home_dir(home)
    ports, creds = _require_state(h)["ports"], _credentials(h)
    s3 = f"http://{HOST}:{ports['s3']}"
    return {
        "RADIMAGENET_HOME": str(h),
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": creds["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["s3_secret_key"],
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        "MLFLOW_TRACKING_USERNAME": creds["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": creds["mlflow_password"],
        # The Jobs API address (what JobSubmissionClient and `ray job` use). ray.init() rejects an http
        # RAY_ADDRESS, so code that calls ray.init() runs inside a job, where Ray sets its own.
        "RAY_ADDRESS": f"http://{HOST}:{ports['dashboard']}",
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{ports['dashboard']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": creds["ray_token"],
    }
