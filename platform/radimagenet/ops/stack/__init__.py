"""The embedded local stack: SeaweedFS (S3), an MLflow tracking server and a Ray head, on 127.0.0.1.

    env = up()        # start what is not running yet, wait until each service answers
    status()          # [ServiceStatus(name="s3", address="http://127.0.0.1:8333", up=True, pid=...), ...]
    env()             # {"AWS_ENDPOINT_URL": ..., "MLFLOW_TRACKING_URI": ..., "RAY_ADDRESS": ..., ...}
    down()            # stop only the processes this home started (and their children)

All state lives in ``$RADIMAGENET_HOME`` (default ``./.radimagenet``): data, logs, pid files, the
chosen ports (``state.json``) and the generated secrets (``credentials.json``, mode 0600). S3
requests must be signed with the generated key; SeaweedFS's other ports (master, volume, filer, gRPC)
take only clients with a certificate from the stack's own CA, plus a signed token for reads and writes
(:mod:`.seaweed`, files in ``home/weed``); the Ray dashboard and Jobs API need the generated
token (``RAY_AUTH_MODE=token``). Ports come from ``RADIMAGENET_<NAME>_PORT`` variables, else from
``RADIMAGENET_PORT_BASE`` + an offset, else the services' usual defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from radimagenet.errors import StackError
from radimagenet.ops.stack.processes import _port_answers, _port_free, _service_pid, _stop_pid
from radimagenet.ops.stack.services import (
    _clean_weed_sockets,
    _log_tail,
    _mlflow_command,
    _ray_command,
    _ready,
    _s3_command,
    _service_cwd,
    _service_env,
)
from radimagenet.ops.stack.state import (
    BUCKET,
    HOST,
    PORTS,
    REGION,
    SERVICE_PORTS,
    SERVICES,
    _credentials,
    _load_state,
    _short_dir,
    _write_private,
    env,
    home_dir,
    resolve_ports,
)

__all__ = [
    "BUCKET",
    "HOST",
    "LOW_DISK_BYTES",
    "LOW_DISK_FRACTION",
    "PORTS",
    "REGION",
    "SERVICES",
    "SERVICE_PORTS",
    "STOP_GRACE_S",
    "ServiceStatus",
    "disk_warning",
    "down",
    "env",
    "home_dir",
    "resolve_ports",
    "status",
    "up",
]


STOP_GRACE_S = {"s3": 5.0, "mlflow": 10.0, "ray": 10.0}


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """One service of the stack: its name, the address clients use, whether it answers, its pid."""

    name: str
    address: str
    up: bool
    pid: int | None = None


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise up/down on one home across processes (e.g. parallel test workers)."""
    (home / "run").mkdir(parents=True, exist_ok=True)
    with open(home / "run" / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- public API


def up(home: Path | str | None = None, timeout_s: float | None = None,
       services: tuple[str, ...] = SERVICES) -> dict[str, str]:
    """Start the services of ``home`` that are not running, wait until all answer; return :func:`env`.
    ``services``: only these (e.g. ``("s3",)`` where MLflow and Ray are not installed)."""
    unknown = sorted(set(services) - set(SERVICES))
    if unknown:
        raise StackError(f"unknown stack services {unknown}; the stack has {', '.join(SERVICES)}")
    h = home_dir(home)
    for sub in ("run", "logs"):
        (h / sub).mkdir(parents=True, exist_ok=True)
    h.chmod(0o700)
    with _locked(h):
        return _up(h, timeout_s, [s for s in SERVICES if s in services])


def _up(h: Path, timeout_s: float | None, services: list[str]) -> dict[str, str]:
    running = {s: _service_pid(h, s) for s in SERVICES}
    state = _load_state(h)
    ports = state["ports"] if state and any(running.values()) else resolve_ports()
    to_start = [s for s in services if running[s] is None]
    wanted = [(s, k) for s in to_start for k in SERVICE_PORTS[s] if ports[k] is not None]
    for attempt in range(3):  # a process that just exited may release its ports a moment later
        busy = [(s, k) for s, k in wanted if not _port_free(ports[k])]
        if not busy or attempt == 2:
            break
        time.sleep(0.5)
    if busy:
        service, key = busy[0]
        raise StackError(f"port {ports[key]} ({key} of {service}) on {HOST} is already in use by another "
                         f"process; free it or choose other ports (RADIMAGENET_{key.upper()}_PORT or "
                         "RADIMAGENET_PORT_BASE)")
    _write_private(h / "state.json", json.dumps({"ports": ports}, indent=2))
    _credentials(h)
    _short_dir(h).mkdir(parents=True, exist_ok=True)
    commands = {"s3": _s3_command, "mlflow": _mlflow_command, "ray": _ray_command}
    for service in to_start:
        if service == "s3":
            _clean_weed_sockets(h, ports)
        cmd = commands[service](h, ports)
        with open(h / "logs" / f"{service}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=_service_env(h, service), cwd=_service_cwd(h, service),
                                    start_new_session=True, umask=0o077 if service == "s3" else -1)
        (h / "run" / f"{service}.pid").write_text(f"{proc.pid}\n")
        running[service] = proc.pid
    limit = timeout_s or float(os.environ.get("RADIMAGENET_STACK_TIMEOUT", "120"))
    deadline, waiting = time.monotonic() + limit, list(services)
    while waiting:
        for service in list(waiting):
            try:
                ready = _ready(h, service, ports)
            except StackError:  # it runs, but not safely (e.g. a weed port without TLS): never leave it so
                if (pid := _service_pid(h, service)) is not None:
                    _stop_pid(pid, STOP_GRACE_S[service])
                raise
            if ready:
                waiting.remove(service)
            elif _service_pid(h, service) is None:
                log = h / "logs" / f"{service}.log"
                raise StackError(f"{service} exited while starting; see {log}:\n{_log_tail(log)}")
        if waiting and time.monotonic() > deadline:
            raise StackError(f"{', '.join(waiting)} did not answer within {limit:.0f}s; logs in {h / 'logs'}")
        if waiting:
            time.sleep(0.5)
    return env(h)


LOW_DISK_BYTES = 2 * 1024**3
LOW_DISK_FRACTION = 0.08


def disk_warning(home: Path | str | None = None, usage: tuple[int, int, int] | None = None) -> str | None:
    """A warning when the disk holding the stack's state is nearly full, else None.

    SeaweedFS answers writes with a bare ``InternalError`` once its volumes cannot grow, well before the
    disk is completely full; ``usage`` is ``shutil.disk_usage``'s (total, used, free), read when None.
    """
    where = home_dir(home)
    while not where.exists():  # `up` creates the home (and its parents) later: judge the disk they land on
        where = where.parent
    total, _, free = usage or shutil.disk_usage(where)
    if free >= LOW_DISK_BYTES and free >= LOW_DISK_FRACTION * total:
        return None
    return (f"the disk holding {where} has {free / 1024**3:.1f} GiB free of {total / 1024**3:.0f} GiB: the local "
            f"S3 (SeaweedFS) refuses writes ('InternalError') when its volumes cannot grow; free space or "
            f"set RADIMAGENET_HOME to a folder on a larger disk")


def down(home: Path | str | None = None) -> list[str]:
    """Stop the services ``home`` started (Ray, MLflow, then S3); returns the names it stopped."""
    h = home_dir(home)
    if not h.is_dir():
        return []
    stopped = []
    with _locked(h):
        for service in reversed(SERVICES):
            pid = _service_pid(h, service)
            if pid is not None:
                _stop_pid(pid, STOP_GRACE_S[service])
                stopped.append(service)
            with contextlib.suppress(FileNotFoundError):
                (h / "run" / f"{service}.pid").unlink()
    return stopped


def status(home: Path | str | None = None) -> list[ServiceStatus]:
    """Each service of ``home``: its address, whether its process is ours and its port answers."""
    h = home_dir(home)
    state = _load_state(h)
    ports = state["ports"] if state else resolve_ports()
    main_port = {"s3": "s3", "mlflow": "mlflow", "ray": "dashboard"}
    out = []
    for service in SERVICES:
        pid = _service_pid(h, service)
        port = ports[main_port[service]]
        up_ = pid is not None and _port_answers(port)
        out.append(ServiceStatus(service, f"http://{HOST}:{port}", up_, pid))
    return out
