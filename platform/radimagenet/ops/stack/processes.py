"""The stack's process bookkeeping from /proc: our service pids (guarded against pid reuse), process
trees, stopping a tree (SIGTERM, then SIGKILL), and whether a port is free or answers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from radimagenet.ops.stack.state import HOST, _short_dir


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
