"""Ranged reads of S3 objects: bytes ``[start, end)`` with one GET, cheap enough to send per run of samples.

    data = read_range("s3://bucket/ds/train-000000.tar", 1536, 54784)   # one sample's tar members
    len(data) == 53248

The training loader reads runs of samples out of shards (:mod:`radimagenet.data.plan`), one request
per run. Through boto3's ``get_object`` a request costs about 1.4 ms of CPU and its body 0.4 ms per
MB; here it goes through a presigned URL (made by the same boto3 client, so ``AWS_ENDPOINT_URL`` and
the credentials apply; renewed at half its lifetime) and a kept-alive ``http.client`` connection per
thread: about 0.25 ms per request and 0.35 ms per MB (a 4 MiB GET: 1.6-1.8 ms against 3.2). With
``HTTP(S)_PROXY`` set, requests go through boto3 (which honours proxies) instead. Connections and URLs
are per process (forked DataLoader workers make their own). :func:`open_range` streams a body;
:func:`read_range` receives it straight into one buffer (over plain HTTP with a single ``MSG_WAITALL``
read).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from radimagenet.errors import StorageError
from radimagenet.io.storage import S3Uri, client, parse_uri

PRESIGN_TTL_S = 3600  # lifetime of a presigned URL; renewed after half of it
TIMEOUT_S = 60  # connect and read timeout of one request
_presigned: dict[tuple[Any, ...], tuple[str, float]] = {}
_local = threading.local()


def _process_key() -> tuple[str | int | None, ...]:
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE")
    return (*(os.environ.get(k) for k in names), os.getpid())


def _presign(u: S3Uri, fresh: bool) -> str:
    key = (*_process_key(), u.bucket, u.key)
    hit = _presigned.get(key)
    if hit is None or fresh or time.monotonic() - hit[1] > PRESIGN_TTL_S / 2:
        try:
            url = client().generate_presigned_url("get_object", Params={"Bucket": u.bucket, "Key": u.key},
                                                  ExpiresIn=PRESIGN_TTL_S)
        except Exception as exc:  # noqa: BLE001 - e.g. no credentials: one line
            raise StorageError(f"cannot sign a request for {u}: {exc}") from exc
        hit = _presigned[key] = (url, time.monotonic())
    return hit[0]


def _connection(scheme: str, netloc: str) -> http.client.HTTPConnection:
    """This thread's kept-alive connection to ``netloc`` (new ones after a fork)."""
    if getattr(_local, "pid", None) != os.getpid():
        _local.pid, _local.conns = os.getpid(), {}
    conn = _local.conns.get((scheme, netloc))
    if conn is None:
        if scheme == "https":
            from botocore.httpsession import get_cert_path

            context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True))
            conn = http.client.HTTPSConnection(netloc, timeout=TIMEOUT_S, context=context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT_S)
        _local.conns[(scheme, netloc)] = conn
    return conn


class BrokenRead(StorageError):
    """A body that broke off mid-read (a reset or timed-out connection): worth one more GET."""


class RangeBody:
    """The streaming body of one ranged GET: ``read(n)`` until ``b""``; a short body is a
    :class:`StorageError`. ``close()`` (or reading to the end) frees its connection for reuse."""

    def __init__(self, resp: Any, conn: Any, size: int, where: str):
        self.resp, self.conn, self.left, self.where = resp, conn, size, where

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        try:
            data = self.resp.read(self.left if n < 0 else min(n, self.left))
        except Exception as exc:  # noqa: BLE001 - a broken or timed-out connection: one line
            raise self._failed(exc) from exc
        self._got(len(data))
        return data

    def _failed(self, exc: Exception) -> BrokenRead:
        self.close()
        return BrokenRead(f"{self.where}: reading failed ({type(exc).__name__}: {exc})")

    def _got(self, n: int) -> None:
        """Count ``n`` bytes read; none means the body ended before the range did."""
        if not n:
            left = self.left  # close() zeroes it
            self.close()
            raise BrokenRead(f"{self.where}: the connection closed {left} bytes before the end")
        self.left -= n

    def readinto(self, view: memoryview) -> int:
        """Fill (the start of) ``view``; a :class:`StorageError` when the body ends first."""
        if self.left <= 0:
            raise StorageError(f"{self.where}: asked for more than the range")
        try:
            n = self.resp.readinto(view[: self.left]) if hasattr(self.resp, "readinto") else None
            if n is None:  # a boto3 body (through a proxy): read, then copy
                data = self.resp.read(min(len(view), self.left))
                n = len(data)
                view[:n] = data
        except Exception as exc:  # noqa: BLE001 - a broken or timed-out connection: one line
            raise self._failed(exc) from exc
        self._got(n or 0)
        return n

    def readall_into(self, view: memoryview) -> None:
        """Fill ``view`` (the whole body). Over plain HTTP the socket is read with ``MSG_WAITALL``: one
        system call (and one GIL round trip) for the body, not one per TCP segment; a reader thread
        otherwise spends more CPU than the parsing it feeds."""
        plain = type(self.conn) is http.client.HTTPConnection and self.conn.sock is not None
        if not plain or len(view) != self.left or getattr(self.resp, "fp", None) is None:
            got = 0
            while got < len(view):
                got += self.readinto(view[got:])
            return
        try:
            head = self.resp.fp.read1(len(view))  # what the header parsing already buffered (or one read)
            view[: len(head)] = head
            got = len(head)
            while 0 < got < len(view):
                n = self.conn.sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
                got = got + n if n else -1
        except Exception as exc:  # noqa: BLE001 - a broken or timed-out connection: one line
            raise self._failed(exc) from exc
        if got != len(view):
            self.close()
            raise BrokenRead(f"{self.where}: the connection closed before the end of the range")
        self.left = 0
        self.resp.length = 0
        self.resp.close()  # the body is consumed: the connection serves the next request

    def close(self) -> None:
        if self.left > 0 and self.conn is not None:
            self.conn.close()  # unread bytes: the connection cannot serve another request
        self.left = 0


def _open(url: str, start: int, end: int) -> tuple[int, Any, Any]:
    """``(status, response, connection)`` of one ranged GET through this thread's connection."""
    parts = urlsplit(url)
    conn = _connection(parts.scheme, parts.netloc)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers={"Range": f"bytes={start}-{end - 1}"})
        resp = conn.getresponse()
    except BaseException:
        conn.close()
        raise
    return resp.status, resp, conn


def _open_boto3(u: S3Uri, start: int, end: int) -> tuple[int, Any, Any]:
    from botocore.exceptions import ClientError

    try:
        return 206, client().get_object(Bucket=u.bucket, Key=u.key, Range=f"bytes={start}-{end - 1}")["Body"], None
    except ClientError as exc:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500), None, None


def open_range(uri: str | S3Uri, start: int, end: int, attempts: int = 4) -> RangeBody:
    """A streaming body of bytes ``[start, end)`` of an object (one GET).

    Connection errors, 5xx answers and a lapsed signature (403: signed again) are retried, ``attempts``
    tries in all with a short backoff; then, or at once for a missing object, a :class:`StorageError`.
    """
    u = parse_uri(uri)
    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
    error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(0.1 * 2**attempt, 2.0))
        try:
            status, resp, conn = _open_boto3(u, start, end) if proxied else \
                _open(_presign(u, attempt > 0), start, end)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors: retried
            error = f"{type(exc).__name__}: {exc}"
            continue
        if status == 206:
            return RangeBody(resp, conn, end - start, f"{u} bytes {start}-{end - 1}")
        if resp is not None:
            resp.read()  # the error document: keeps the connection usable
        if status == 404:
            raise StorageError(f"{u} does not exist")
        if status == 416:
            raise StorageError(f"{u} is shorter than byte {end} (asked for bytes {start}-{end - 1})")
        error = f"HTTP {status}" + (" (S3 refused the signed request: credentials?)" if status == 403 else "")
        if status < 500 and status != 403:
            break
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    raise StorageError(f"reading bytes {start}-{end - 1} of {u} at {endpoint} failed: {error}")


def read_range(uri: str | S3Uri, start: int, end: int) -> bytearray:
    """Bytes ``[start, end)`` of an object, with one GET (see :func:`open_range`), received straight
    into one buffer."""
    buf = bytearray(max(end - start, 0))
    if not buf:
        return buf
    body = open_range(uri, start, end)
    try:
        body.readall_into(memoryview(buf))
    finally:
        body.close()
    return buf
