"""One writer per S3 prefix: a lease object taken with a conditional put.

A writer (an ingest) holds ``<prefix>/_lease.json`` while it writes. It is created with
``If-None-Match: *`` and read back after a moment (SeaweedFS does not always make concurrent conditional
creates atomic: two may both succeed, and the later body stays; the read-back tells the earlier writer it
lost), renewed by a heartbeat with
``If-Match: <etag>`` (a holder that lost its lease notices at the next beat), taken over with
``If-Match`` on the stale lease's etag, and released with a conditional delete. Ages are measured on
the S3 server's clock (the object's ``Last-Modified`` against the response's ``Date``), so clock skew
between machines does not matter.

    with lease.hold(out.join("_lease.json"), purpose="ingest") as held:
        ...; held.check()  # raises LeaseLost if another process took the lease over
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from radimagenet.errors import ConfigError, StorageError
from radimagenet.io import storage
from radimagenet.io.storage import S3Uri

LEASE_NAME = "_lease.json"
DEFAULT_TTL_S = 60.0  # a lease whose holder has not renewed it for this long may be taken over
SETTLE_S = 1.0  # how long after a successful conditional put a racing put must have landed


class LeaseHeld(ConfigError):
    """Another live process holds the lease."""


class LeaseLost(StorageError):
    """This process's lease was taken over (or could not be renewed in time)."""


@dataclass
class Stat:
    """What the server says about an object: its etag, its age on the server's clock, its body."""

    etag: str
    age_s: float
    body: dict


def _client_error_code(exc: Exception) -> str | None:
    from botocore.exceptions import ClientError

    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None


def _put(uri: S3Uri, body: dict, **condition: str) -> str | None:
    """Put ``body`` if ``condition`` (IfNoneMatch / IfMatch) holds; its new etag, or None when it did not."""
    try:
        resp = storage.client().put_object(Bucket=uri.bucket, Key=uri.key, Body=json.dumps(body, indent=2).encode(),
                                           ContentType="application/json", **condition)
    except Exception as exc:  # noqa: BLE001 - translated below
        if _client_error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return None
        raise StorageError(storage.describe_error(exc, uri)) from exc
    return resp["ETag"]


def stat(uri: S3Uri) -> Stat | None:
    """The lease object as the server sees it now (None when there is none)."""
    try:
        resp = storage.client().get_object(Bucket=uri.bucket, Key=uri.key)
    except Exception as exc:  # noqa: BLE001
        if _client_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise StorageError(storage.describe_error(exc, uri)) from exc
    raw = resp["Body"].read(65536)
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    date = resp["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    return Stat(etag=resp["ETag"], age_s=(now - resp["LastModified"]).total_seconds(), body=body)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def holder_is_dead(body: dict) -> bool:
    """True when the holder ran on this machine (same host, boot and PID namespace: containers sharing the
    host name have their own PIDs) and its process is gone."""
    if (body.get("host") != socket.gethostname() or body.get("boot_id") != _boot_id() or not _boot_id()
            or body.get("pid_ns") != _pid_namespace() or not _pid_namespace()):
        return False
    pid = body.get("pid")
    return isinstance(pid, int) and not _pid_alive(pid)


def describe(body: dict, age_s: float) -> str:
    """One line naming a lease's holder, for a refusal message."""
    ttl = float(body.get("ttl_s", DEFAULT_TTL_S))
    left = max(0.0, ttl - age_s)
    return (f"held by {body.get('holder', '?')} (pid {body.get('pid', '?')}, {body.get('purpose', 'a writer')} "
            f"started {body.get('started', '?')}, last heartbeat {age_s:.0f} s ago, expires in {left:.0f} s)")


@dataclass
class Lease:
    """A lease this process holds. ``previous`` is the body of the lease it took over (or None);
    ``previous_dead``: that holder's process was seen gone on this machine (its uploads may be aborted)."""

    uri: S3Uri
    body: dict
    etag: str
    previous: dict | None = None
    forced: bool = False
    previous_dead: bool = False
    _lost: str | None = None
    _last_ok: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def renew(self) -> None:
        """Rewrite the lease if it is still ours; remember the loss (see :meth:`check`) if not."""
        with self._lock:
            if self._lost:
                return
            body = dict(self.body, heartbeat=_now())
            etag = _put(self.uri, body, IfMatch=self.etag)
            if etag is None:
                now = stat(self.uri)
                if now is not None and now.body.get("lease_id") == self.body["lease_id"]:
                    etag = now.etag  # our own put went through and its response was lost; the retry got 412
                else:
                    self._lost = (f"the lease {self.uri} was taken over"
                                  + (f": now {describe(now.body, now.age_s)}" if now else " and released"))
                    return
            self.body, self.etag, self._last_ok = body, etag, time.monotonic()

    def check(self) -> None:
        """Raise :class:`LeaseLost` when another process took the lease over, or when it has not been
        renewed for half its time to live (another process may take it over soon)."""
        ttl = float(self.body.get("ttl_s", DEFAULT_TTL_S))
        if not self._lost and time.monotonic() - self._last_ok > ttl / 2:
            self._lost = f"the lease {self.uri} could not be renewed for {time.monotonic() - self._last_ok:.0f} s"
        if self._lost:
            raise LeaseLost(f"{self._lost}; this process stops writing (its own unfinished uploads are aborted)")

    def release(self) -> None:
        """Delete the lease if it is still ours (a conditional delete: never another holder's)."""
        with self._lock:
            if self._lost:
                return
            try:
                storage.client().delete_object(Bucket=self.uri.bucket, Key=self.uri.key, IfMatch=self.etag)
            except Exception as exc:  # noqa: BLE001 - a lease we cannot delete expires by itself
                if _client_error_code(exc) not in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    raise StorageError(storage.describe_error(exc, self.uri)) from exc
            self._lost = "the lease was released"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def acquire(uri: S3Uri, purpose: str, ttl_s: float = DEFAULT_TTL_S, take_over: bool = False) -> Lease:
    """Take the lease at ``uri`` or raise :class:`LeaseHeld` naming its holder.

    A lease is taken over when its holder stopped renewing it for ``ttl_s`` (its ``ttl_s``), when its
    holder ran on this machine and its process is gone, or when ``take_over`` is set."""
    body = {
        "holder": f"{getpass.getuser()}@{socket.gethostname()}", "host": socket.gethostname(),
        "boot_id": _boot_id(), "pid_ns": _pid_namespace(), "pid": os.getpid(), "purpose": purpose, "lease_id": uuid.uuid4().hex,
        "started": _now(), "heartbeat": _now(), "ttl_s": ttl_s,
    }
    for _ in range(5):  # a lease released or renewed between our calls: look again
        etag = _put(uri, body, IfNoneMatch="*")
        if etag is not None:
            etag = _confirm(uri, body)
            if etag is not None:
                return Lease(uri, body, etag)
        now = stat(uri)
        if now is None:
            continue
        if now.body.get("lease_id") == body["lease_id"]:  # our put went through; its retry got 412
            return Lease(uri, body, now.etag)
        dead = holder_is_dead(now.body)
        try:
            stale = dead or now.age_s > float(now.body.get("ttl_s", ttl_s))
        except (TypeError, ValueError):  # a lease object we cannot read is nobody's live lease
            stale = True
        if not (stale or take_over):
            raise LeaseHeld(
                f"another {now.body.get('purpose', 'writer')} is writing to {uri.bucket}/{uri.key.rsplit('/', 1)[0]}: "
                f"the lease {uri} is {describe(now.body, now.age_s)}; wait for it to finish, or, if it is "
                f"dead, re-run after the lease expires or pass --take-over"
            )
        etag = _put(uri, body, IfMatch=now.etag)
        if etag is not None:
            etag = _confirm(uri, body)
            if etag is not None:
                return Lease(uri, body, etag, previous=now.body, forced=not stale, previous_dead=dead)
    raise LeaseHeld(f"could not take the lease {uri}: it changed hands five times while we tried; try again")


def _confirm(uri: S3Uri, body: dict) -> str | None:
    """The lease's etag if, ``SETTLE_S`` after our successful put, the object is still ours; else None.

    A conditional put that the server reported as successful may still have raced another one."""
    time.sleep(SETTLE_S)
    now = stat(uri)
    return now.etag if now is not None and now.body.get("lease_id") == body["lease_id"] else None


@contextlib.contextmanager
def hold(uri: S3Uri, purpose: str, ttl_s: float = DEFAULT_TTL_S, take_over: bool = False) -> Iterator[Lease]:
    """Hold the lease at ``uri`` for the ``with`` block, renewed every ``ttl_s / 4`` seconds by a
    background thread; released at the end (also on error). Call ``check()`` before each commit."""
    held = acquire(uri, purpose, ttl_s, take_over)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl_s / 4):
            try:
                held.renew()
            except Exception as exc:  # noqa: BLE001 - S3 unreachable for a moment: check() says when it is too long
                if time.monotonic() - held._last_ok > ttl_s / 2:
                    held._lost = f"the lease {uri} could not be renewed for {ttl_s / 2:.0f} s ({exc})"
            if held._lost:
                return

    thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        try:
            held.release()
        except StorageError as exc:  # the lease expires by itself; never hide the outcome of the work
            print(f"radimagenet: warning: could not release {uri} ({exc}); it expires in {ttl_s:.0f} s",
                  file=sys.stderr)


def lease_uri(prefix: str | S3Uri) -> S3Uri:
    """Where the lease of a dataset prefix lives."""
    return storage.parse_uri(prefix).join(LEASE_NAME)

