"""S3 access through boto3, configured only by the standard variables.

``AWS_ENDPOINT_URL`` (SeaweedFS, MinIO; unset for AWS), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``. Nothing here knows about the local stack.
"""

from __future__ import annotations

import functools
import io
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from radimagenet.errors import StorageError

PART_SIZE = 8 * 1024 * 1024  # multipart part size (S3 minimum is 5 MiB except the last part)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)


def parse_uri(uri: str | S3Uri) -> S3Uri:
    """``s3://bucket/some/key`` -> ``S3Uri("bucket", "some/key")``; anything else is a clear error."""
    if isinstance(uri, S3Uri):
        return uri
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StorageError(f"{uri!r} is not an S3 URI (expected s3://BUCKET/PREFIX)")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name")
    return S3Uri(bucket, key.strip("/"))


def _config_key() -> tuple[str | int | None, ...]:
    """The environment a client was made for, and the process (boto3 clients are not fork-safe)."""
    return tuple(
        os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    ) + (os.getpid(),)


@functools.lru_cache(maxsize=8)
def _client_for(key: tuple[str | int | None, ...]) -> Any:
    import boto3
    from botocore.config import Config

    endpoint, _, _, region, _ = key
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        # Bodies are not hashed into the signature (botocore's default over HTTPS, now over HTTP
        # too): the headers stay signed, each body carries botocore's CRC32 checksum, and every
        # shard's SHA-256 is in the manifest. Hashing each 8 MiB part again cost 40% of the
        # client's upload CPU, on the core that ingests.
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or None, region_name=region or "us-east-1", config=config
    )


def client() -> Any:
    """A boto3 S3 client for the current environment (cached per configuration, thread-safe)."""
    return _client_for(_config_key())


def arrow_filesystem(path: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path within it)`` for a local directory or ``s3://bucket/prefix``.

    For S3 the filesystem is built from the same variables as boto3 (``AWS_ENDPOINT_URL`` for
    SeaweedFS/MinIO, keys, region), so Ray's checkpoint uploads go where our data lives.
    """
    import pyarrow.fs as pafs

    if not path.startswith("s3://"):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                      secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http")
    kwargs.update(connect_timeout=5, request_timeout=60)
    return pafs.S3FileSystem(**kwargs), path[len("s3://"):].rstrip("/")


def describe_error(exc: Exception, uri: str | S3Uri) -> str:
    """Turn a botocore error into one line a user can act on."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    if isinstance(exc, NoCredentialsError):
        return (
            f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f'(for the local stack: eval "$(radimagenet stack env)")'
        )
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach S3 at {endpoint} for {uri} (is the stack up? radimagenet stack status)"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return f"bucket {parse_uri(uri).bucket!r} does not exist at {endpoint} ({uri})"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return f"S3 at {endpoint} refused the credentials for {uri} ({code})"
        if code in ("NoSuchKey", "404"):
            return f"{uri} does not exist"
        if code == "InternalError":
            return (f"S3 at {endpoint} failed internally for {uri} (InternalError); for the local stack this "
                    f"is most often a full disk: radimagenet stack status warns about it")
        return f"S3 error for {uri}: {code or exc}"
    return f"S3 error for {uri}: {exc}"


def _wrap(exc: Exception, uri: str | S3Uri) -> StorageError:
    return StorageError(describe_error(exc, uri))


def check_bucket(uri: str | S3Uri) -> None:
    """Fail fast with a clear message when S3 is unreachable, refuses us, or lacks the bucket."""
    u = parse_uri(uri)
    try:
        client().head_bucket(Bucket=u.bucket)
    except Exception as exc:  # noqa: BLE001 - translated into one clear message
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            raise StorageError(f"bucket {u.bucket!r} does not exist ({uri})") from exc
        raise _wrap(exc, uri) from exc


def exists(uri: str | S3Uri) -> bool:
    """True when the object exists."""
    from botocore.exceptions import ClientError

    u = parse_uri(uri)
    try:
        client().head_object(Bucket=u.bucket, Key=u.key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _wrap(exc, uri) from exc
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, uri) from exc


def read_bytes(uri: str | S3Uri) -> bytes:
    """The whole object."""
    u = parse_uri(uri)
    try:
        return client().get_object(Bucket=u.bucket, Key=u.key)["Body"].read()
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, uri) from exc


def open_stream(uri: str | S3Uri) -> Any:
    """A streaming, file-like body of the object (for tar readers)."""
    u = parse_uri(uri)
    try:
        return client().get_object(Bucket=u.bucket, Key=u.key)["Body"]
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, uri) from exc


def write_bytes(uri: str | S3Uri, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Put a whole object (small objects: manifests, reports, journals)."""
    u = parse_uri(uri)
    try:
        client().put_object(Bucket=u.bucket, Key=u.key, Body=data, ContentType=content_type)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, uri) from exc


def read_json(uri: str | S3Uri) -> Any:
    """Parse a JSON object stored at ``uri``."""
    return json.loads(read_bytes(uri))


def write_json(uri: str | S3Uri, obj: Any) -> None:
    """Store ``obj`` as indented UTF-8 JSON."""
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False).encode(), "application/json")


def list_keys(prefix_uri: str | S3Uri) -> list[str]:
    """Every object URI under a prefix (a "folder": the prefix is treated as ending with /)."""
    u = parse_uri(prefix_uri)
    prefix = u.key + "/" if u.key else ""
    out: list[str] = []
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=prefix):
            out.extend(f"s3://{u.bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, prefix_uri) from exc
    return sorted(out)


def delete(uri: str | S3Uri) -> None:
    """Delete one object (no error when it is already gone)."""
    u = parse_uri(uri)
    try:
        client().delete_object(Bucket=u.bucket, Key=u.key)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, uri) from exc


def abort_multipart_uploads(prefix_uri: str | S3Uri) -> int:
    """Abort unfinished multipart uploads under a prefix (left by an interrupted writer)."""
    u = parse_uri(prefix_uri)
    c = client()
    n = 0
    try:
        resp = c.list_multipart_uploads(Bucket=u.bucket, Prefix=u.key + "/" if u.key else "")
        for up in resp.get("Uploads", []) or []:
            c.abort_multipart_upload(Bucket=u.bucket, Key=up["Key"], UploadId=up["UploadId"])
            n += 1
    except Exception:  # noqa: BLE001 - best effort: some S3 implementations do not list uploads
        return n
    return n


@dataclass(frozen=True)
class Staged:
    """A multipart upload whose parts are all uploaded but which is not completed: nothing is visible
    at ``uri`` until :func:`complete_upload` (plain data: one process uploads, another completes)."""

    uri: str
    upload_id: str
    parts: tuple[tuple[int, str], ...]  # (PartNumber, ETag)


def complete_upload(staged: Staged) -> None:
    """Make a staged upload's object visible (one request)."""
    u = parse_uri(staged.uri)
    parts = [{"PartNumber": n, "ETag": etag} for n, etag in staged.parts]
    try:
        client().complete_multipart_upload(Bucket=u.bucket, Key=u.key, UploadId=staged.upload_id,
                                           MultipartUpload={"Parts": parts})
    except Exception as exc:  # noqa: BLE001
        raise _wrap(exc, staged.uri) from exc


def abort_upload(staged: Staged) -> None:
    """Drop a staged upload (best effort: an upload left behind is invisible and costs only storage)."""
    u = parse_uri(staged.uri)
    try:
        client().abort_multipart_upload(Bucket=u.bucket, Key=u.key, UploadId=staged.upload_id)
    except Exception:  # noqa: BLE001
        pass


class S3Writer(io.RawIOBase):
    """A write-only file object that streams to S3 with a multipart upload.

    Use as a context manager: the object appears only when the block exits cleanly; on an
    exception the upload is aborted and nothing is left behind. Parts are uploaded by a background
    thread while the caller keeps writing (the request waits on the network, not the CPU); memory is
    bounded by two parts.
    """

    def __init__(self, uri: str | S3Uri, part_size: int = PART_SIZE):
        super().__init__()
        self.uri = parse_uri(uri)
        self.part_size = max(part_size, 5 * 1024 * 1024)
        self._chunks: list[bytes] = []  # this part's writes, joined once when it is sent
        self._buffered = 0
        self._parts: list[Any] = []  # futures of {"PartNumber", "ETag"}
        self._upload_id: str | None = None
        self._pool: Any = None
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"write to closed S3Writer for {self.uri}")
        self._chunks.append(data if isinstance(data, bytes) else bytes(data))
        self._buffered += len(data)
        self.bytes_written += len(data)
        if self._buffered >= self.part_size:
            self._flush_part()
        return len(data)

    def _take_buffer(self) -> bytes:
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        try:
            resp = client().upload_part(
                Bucket=self.uri.bucket, Key=self.uri.key, UploadId=self._upload_id, PartNumber=number, Body=body
            )
        except Exception as exc:  # noqa: BLE001
            raise _wrap(exc, self.uri) from exc
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _flush_part(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self._upload_id is None:
            try:
                self._upload_id = client().create_multipart_upload(Bucket=self.uri.bucket, Key=self.uri.key)[
                    "UploadId"
                ]
            except Exception as exc:  # noqa: BLE001
                raise _wrap(exc, self.uri) from exc
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-upload")
        if self._parts:
            self._parts[-1].result()  # at most one part in flight: bounded memory, errors surface early
        self._parts.append(self._pool.submit(self._upload_part, len(self._parts) + 1, self._take_buffer()))

    def commit(self) -> None:
        """Finish the upload (small objects are sent with one PUT)."""
        if self.closed:
            return
        try:
            if self._upload_id is None:
                try:
                    client().put_object(Bucket=self.uri.bucket, Key=self.uri.key, Body=self._take_buffer())
                except Exception as exc:  # noqa: BLE001
                    raise _wrap(exc, self.uri) from exc
            else:
                if self._buffered:
                    self._flush_part()
                parts = [f.result() for f in self._parts]
                try:
                    client().complete_multipart_upload(
                        Bucket=self.uri.bucket, Key=self.uri.key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                    )
                except Exception as exc:  # noqa: BLE001
                    raise _wrap(exc, self.uri) from exc
        except BaseException:
            self.abort()
            raise
        self._close()

    def stage(self) -> Staged:
        """Upload everything written as parts and return the upload without completing it (also a small
        object: a single part may be smaller than the 5 MiB minimum); on error the upload is aborted."""
        try:
            if self._buffered or self._upload_id is None:
                self._flush_part()
            parts = tuple((p["PartNumber"], p["ETag"]) for p in (f.result() for f in self._parts))
        except BaseException:
            self.abort()
            raise
        staged = Staged(str(self.uri), self._upload_id or "", parts)
        self._close()
        return staged

    def abort(self) -> None:
        """Drop everything written so far."""
        for f in self._parts:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._upload_id is not None:
            try:
                client().abort_multipart_upload(Bucket=self.uri.bucket, Key=self.uri.key, UploadId=self._upload_id)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        self._close()

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._chunks.clear()
        self._buffered = 0
        super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
