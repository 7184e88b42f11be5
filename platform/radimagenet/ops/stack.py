"""The embedded local stack: SeaweedFS (S3), an MLflow tracking server and a Ray head, on 127.0.0.1.

    env = up()        # start what is not running yet, wait until each service answers
    status()          # [ServiceStatus(name="s3", address="http://127.0.0.1:8333", up=True, pid=...), ...]
    env()             # {"AWS_ENDPOINT_URL": ..., "MLFLOW_TRACKING_URI": ..., "RAY_ADDRESS": ..., ...}
    down()            # stop only the processes this home started (and their children)

All state lives in ``$RADIMAGENET_HOME`` (default ``./.radimagenet``): data, logs, pid files, the
chosen ports (``state.json``) and the generated secrets (``credentials.json``, mode 0600). S3
requests must be signed with the generated key; the Ray dashboard and Jobs API need the generated
token (``RAY_AUTH_MODE=token``). Ports come from ``RADIMAGENET_<NAME>_PORT`` variables, else from
``RADIMAGENET_PORT_BASE`` + an offset, else the services' usual defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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
STOP_GRACE_S = {"s3": 5.0, "mlflow": 10.0, "ray": 10.0}


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """One service of the stack: its name, the address clients use, whether it answers, its pid."""

    name: str
    address: str
    up: bool
    pid: int | None = None


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


def _credentials(home: Path) -> dict[str, str]:
    """The stack's secrets, generated on first use and kept in ``home/credentials.json`` (0600)."""
    path = home / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {
        "s3_access_key": "RIN" + secrets.token_hex(8).upper(),
        "s3_secret_key": secrets.token_urlsafe(30),
        "ray_token": secrets.token_hex(32),
    }
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


# ---------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, starttime) of ``pid`` from /proc, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _marker(home: Path, service: str) -> str:
    """A string only our process of ``service`` has in its command line (guards against pid reuse)."""
    return {"s3": f"-dir={home / 's3'}", "mlflow": str(home / "mlflow" / "mlflow.db"),
            "ray": f"--temp-dir={_short_dir(home) / 'ray'}"}[service]


def _service_pid(home: Path, service: str) -> int | None:
    """The live pid of our ``service`` process, from its pid file; None when it is not running."""
    try:
        pid = int((home / "run" / f"{service}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    info = _proc_stat(pid)
    if info is None or info[0] in "ZX" or _marker(home, service) not in _cmdline(pid):
        return None
    return pid


def _process_tree(root: int) -> dict[int, int]:
    """``root``, its descendants and the members of its process group -> their start times."""
    table: dict[int, tuple[str, int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = info
    tree = {root} | {pid for pid, info in table.items() if info[2] == root}
    frontier = list(tree)
    while frontier:
        parent = frontier.pop()
        for pid, info in table.items():
            if info[1] == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return {pid: table[pid][3] for pid in tree if pid in table}


def _alive(pids: dict[int, int]) -> dict[int, int]:
    """The processes of ``pids`` (pid -> start time) that still run or hold resources. A zombie
    leader counts until all its threads are gone (they still hold its sockets); ours get reaped."""
    out = {}
    for pid, start in pids.items():
        info = _proc_stat(pid)
        if info is None or info[3] != start:
            continue
        if info[0] in "ZX":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaping our own child removes its /proc entry
            if not _threads_running(pid):
                continue
        out[pid] = start
    return out


def _threads_running(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs (False once the process is gone from /proc)."""
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return any((t := _proc_stat(tid)) is not None and t[0] not in "ZX" for tid in tids)


def _stop_pid(root: int, grace_s: float) -> None:
    """SIGTERM ``root``; after ``grace_s`` SIGKILL whatever is left of its tree (only that tree)."""
    tree = _process_tree(root)
    with contextlib.suppress(ProcessLookupError):
        os.kill(root, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(tree):
        time.sleep(0.2)
    tree.update(_process_tree(root) if _proc_stat(root) else {})
    for pid in _alive(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(tree):
        time.sleep(0.1)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def _tool(name: str) -> str:
    """``name`` next to the running Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH "
                         f"(reinstall the project: pip install -e .)")
    return found


# ---------------------------------------------------------------- the three services


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
        # The Jobs API address (what JobSubmissionClient and `ray job` use). ray.init() rejects an http
        # RAY_ADDRESS, so code that calls ray.init() runs inside a job, where Ray sets its own.
        "RAY_ADDRESS": f"http://{HOST}:{ports['dashboard']}",
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{ports['dashboard']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": creds["ray_token"],
    }


def _s3_command(home: Path, ports: dict[str, Any]) -> list[str]:
    identities = {"identities": [{
        "name": "radimagenet",
        "credentials": [{"accessKey": (c := _credentials(home))["s3_access_key"],
                         "secretKey": c["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    _write_private(home / "s3_identities.json", json.dumps(identities, indent=2))
    sock = _short_dir(home) / "weed"
    sock.mkdir(parents=True, exist_ok=True)
    (home / "s3").mkdir(exist_ok=True)
    p = ports
    return [
        _tool("weed"), f"-logdir={sock}", "server",
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


def _mlflow_command(home: Path, ports: dict[str, Any]) -> list[str]:
    (home / "mlflow").mkdir(exist_ok=True)
    port = ports["mlflow"]
    return [
        sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
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
    return [
        _tool("ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={ports['ray']}", "--include-dashboard=true",
        f"--dashboard-host={HOST}", f"--dashboard-port={ports['dashboard']}", f"--num-cpus={num_cpus}",
        f"--temp-dir={_short_dir(home) / 'ray'}", "--min-worker-port=0", "--max-worker-port=0",
    ] + [f"{flag}={ports[key]}" for key, flag in flags.items() if ports[key] is not None]


def _service_env(home: Path, service: str) -> dict[str, str]:
    """The environment a service process runs with: ours, plus the stack's client variables."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    out.update(env(home))
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["PYTHONUNBUFFERED"] = "1"
    if service == "s3":
        out["TMPDIR"] = str(_short_dir(home) / "weed")
    if service == "mlflow":
        out["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else 7 huey workers, ~250 MB each
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
            return True
        if service == "mlflow":
            url, headers = f"{e['MLFLOW_TRACKING_URI']}/health", {}
        else:
            url, headers = f"{e['RAY_ADDRESS']}/api/jobs/", {"Authorization": f"Bearer {e['RAY_AUTH_TOKEN']}"}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise up/down on one home across processes (e.g. parallel test workers)."""
    (home / "run").mkdir(parents=True, exist_ok=True)
    with open(home / "run" / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- public API


def up(home: Path | str | None = None, timeout_s: float | None = None) -> dict[str, str]:
    """Start the services of ``home`` that are not running, wait until all answer; return :func:`env`."""
    h = home_dir(home)
    for sub in ("run", "logs"):
        (h / sub).mkdir(parents=True, exist_ok=True)
    h.chmod(0o700)
    with _locked(h):
        return _up(h, timeout_s)


def _up(h: Path, timeout_s: float | None) -> dict[str, str]:
    running = {s: _service_pid(h, s) for s in SERVICES}
    state = _load_state(h)
    ports = state["ports"] if state and any(running.values()) else resolve_ports()
    to_start = [s for s in SERVICES if running[s] is None]
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
                                    env=_service_env(h, service), cwd=h, start_new_session=True)
        (h / "run" / f"{service}.pid").write_text(f"{proc.pid}\n")
        running[service] = proc.pid
    limit = timeout_s or float(os.environ.get("RADIMAGENET_STACK_TIMEOUT", "120"))
    deadline, waiting = time.monotonic() + limit, list(SERVICES)
    while waiting:
        for service in list(waiting):
            if _ready(h, service, ports):
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
