"""The Ray Jobs API from this machine: the dashboard address, a connected client with the cluster's
token, clear errors for its failures, redaction of local secrets, and list/logs/follow/wait/stop."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import ipaddress
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

from radimagenet.errors import RadImageNetError
from radimagenet.io.cluster import CREDENTIAL_ENV

ACTIVE = ("PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: Secrets (``CREDENTIAL_ENV``) travel only with ``ship_credentials=True``, then flagged by ``SHIP_FLAG``.
#: Also redacted from anything we print (the cluster token).
_REDACT_ENV = CREDENTIAL_ENV + ("RAY_AUTH_TOKEN",)
CONNECT_TIMEOUT_S = 5.0


class JobError(RadImageNetError):
    """The Ray Jobs API is unreachable, refuses us, or has no such job; or a job cannot be submitted."""


@dataclasses.dataclass(frozen=True)
class JobRow:
    submission_id: str
    status: str
    entrypoint: str  # sanitised
    start: str
    end: str
    message: str
    type: str


# ---------------------------------------------------------------- addresses and the client


def resolve_address(address: str | None = None) -> str:
    """The Jobs API (dashboard) URL: ``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``."""
    raw = (address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "").strip()
    if not raw:
        raise JobError("no Ray cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS "
                       "(for the local stack: eval \"$(radimagenet stack env)\")")
    if raw == "auto" or raw.startswith(("ray://", "anyscale://")):
        raise JobError(f"Ray address {raw!r} is not a Jobs API address: use the dashboard URL, "
                       "e.g. --address http://HEAD:8265")
    if "://" not in raw:
        raw = f"http://{raw}"
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobError(f"Ray address {raw!r} is not an http(s) dashboard URL like http://HEAD:8265")
    return raw.rstrip("/")


def is_local_address(address: str) -> bool:
    """Whether the cluster at ``address`` runs on this machine (loopback, our host name or address)."""
    host = (urlparse(address).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return True
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    if host in names:
        return True
    try:
        mine = {info[4][0] for n in names for info in socket.getaddrinfo(n, None)}
        theirs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(mine & theirs)


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_reachable(address: str) -> None:
    """Fail in seconds (not a TCP timeout of minutes) when nothing listens at ``address``."""
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise JobError(f"cannot reach the Ray dashboard at {address} ({exc.strerror or exc}): is the cluster "
                       "up (`radimagenet stack status`) and the address right?") from None


def _translate(exc: BaseException, address: str, job_id: str | None = None) -> JobError | None:
    """A clear JobError for a failure of a Jobs API call, or None when it is not one we know."""
    text = str(exc)
    name = type(exc).__name__
    if name == "AuthenticationError" or "status code 401" in text or "status code 403" in text:
        if "401" in text or "Authentication required" in text or "couldn't find" in text:
            return JobError(f"the Ray dashboard at {address} requires a token and none was found: set "
                            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); the local stack's is in "
                            "`radimagenet stack env`")
        return JobError(f"the Ray dashboard at {address} refused the token in RAY_AUTH_TOKEN: it is not this "
                        "cluster's token")
    if job_id is not None and ("status code 404" in text or "does not exist" in text):
        return JobError(f"no job {job_id!r} on {address}; `radimagenet jobs list` shows the jobs there")
    if isinstance(exc, ConnectionError) or "ConnectionError" in name or "Failed to connect" in text:
        return JobError(f"cannot reach the Ray dashboard at {address}: is the cluster up and the address right?")
    return None


@contextlib.contextmanager
def _api(address: str, job_id: str | None = None) -> Iterator[None]:
    try:
        yield
    except RadImageNetError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray and requests raise many types; we map the known ones
        mapped = _translate(exc, address, job_id)
        if mapped is None:
            raise JobError(f"the Ray Jobs API at {address} failed: {sanitise(text_of(exc), options=False)}") from exc
        raise mapped from None


def text_of(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def client(address: str | None = None):
    """A connected ``JobSubmissionClient`` (with the token of ``RAY_AUTH_TOKEN``), or a clear JobError."""
    from ray.job_submission import JobSubmissionClient

    addr = resolve_address(address)
    _check_reachable(addr)
    with _api(addr):
        c = JobSubmissionClient(addr, headers=_auth_headers())
    c.radimagenet_address = addr  # type: ignore[attr-defined]
    return c


def _addr(c) -> str:
    return getattr(c, "radimagenet_address", "the Ray dashboard")


# ---------------------------------------------------------------- secrets


def secret_values(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Local secret values worth redacting (name -> value), ignoring ones too short to mean anything
    and user names (not secret: the stack's MLflow user is "radimagenet", a word in every bucket URI)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in _REDACT_ENV if len(env.get(k, "")) >= 6 and not k.endswith("_USERNAME")}


_SECRET_OPT = re.compile(
    r"(?i)((?:--?[\w.-]*(?:secret|password|passwd|token|access[_-]?key|api[_-]?key|credential)[\w.-]*[= ])"
    r"|(?:\b[\w.]*(?:secret|password|token|access_key|api_key)[\w.]*=))(\S+)")


def sanitise(text: str, environ: dict[str, str] | None = None, options: bool = True) -> str:
    """``text`` with local secret values replaced by <redacted>; with ``options`` (command lines, not
    logs) also the values of secret-looking options (``--secret-key X``) and assignments (``TOKEN=X``)."""
    for value in secret_values(environ).values():
        text = text.replace(value, "<redacted>")
    return _SECRET_OPT.sub(lambda m: m.group(1) + "<redacted>", text) if options else text


# ---------------------------------------------------------------- list, logs, follow, stop


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def list_jobs(address: str | None = None, include_drivers: bool = False) -> list[JobRow]:
    """The cluster's jobs, oldest first: submitted jobs (and with ``include_drivers``, plain drivers)."""
    c = client(address)
    with _api(_addr(c)):
        details = c.list_jobs()
    rows = []
    for d in sorted(details, key=lambda d: d.start_time or 0):
        sid = d.submission_id or ""
        if not sid and not include_drivers:
            continue
        rows.append(JobRow(sid or (d.job_id or "?"), str(d.status), sanitise(d.entrypoint or ""),
                           _time(d.start_time), _time(d.end_time), sanitise(d.message or "", options=False),
                           str(getattr(d.type, "value", d.type))))
    return rows


def job_info(job_id: str, address: str | None = None, c=None):
    """The job's ``JobDetails``; a clear JobError for an unknown id."""
    c = c or client(address)
    with _api(_addr(c), job_id):
        return c.get_job_info(job_id)


def logs(job_id: str, address: str | None = None) -> str:
    """The job's log so far, with local secret values redacted."""
    c = client(address)
    job_info(job_id, c=c)
    with _api(_addr(c), job_id):
        return sanitise(c.get_job_logs(job_id), options=False)


def follow(job_id: str, address: str | None = None, write: Callable[[str], Any] | None = None,
           poll_s: float = 1.0) -> Any:
    """Write the job's log (from its start) until it ends; return its final ``JobDetails``."""
    import asyncio

    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    c = client(address)
    job_info(job_id, c=c)
    written = 0

    async def tail() -> None:
        nonlocal written
        async for chunk in c.tail_job_logs(job_id):
            write(sanitise(chunk, options=False))
            written += len(chunk)

    try:
        asyncio.run(tail())
    except Exception:  # noqa: BLE001 - the websocket dropped: poll the log instead
        pass
    # catch up (and poll while the job still runs, when the websocket ended early)
    while True:
        info = job_info(job_id, c=c)
        with _api(_addr(c), job_id):
            text = c.get_job_logs(job_id)
        if len(text) > written:
            write(sanitise(text[written:], options=False))
            written = len(text)
        if str(info.status) in TERMINAL:
            return info
        time.sleep(poll_s)


def wait(job_id: str, address: str | None = None, timeout_s: float = 600, poll_s: float = 1.0) -> Any:
    """Wait (without printing) until the job ends; its final ``JobDetails``."""
    c = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(job_id, c=c)
        if str(info.status) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(poll_s)


def stop(job_id: str, address: str | None = None) -> tuple[bool, str]:
    """Ask the job to stop; ``(stop requested, status before)``; an ended job is left as it is."""
    c = client(address)
    info = job_info(job_id, c=c)
    if str(info.status) in TERMINAL:
        return False, str(info.status)
    with _api(_addr(c), job_id):
        return bool(c.stop_job(job_id)), str(info.status)
