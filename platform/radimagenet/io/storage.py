"""S3 access through boto3, configured only by the standard variables.

``AWS_ENDPOINT_URL`` (SeaweedFS, MinIO; unset for AWS), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``. Nothing here knows about the local stack.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from radimagenet.errors import StorageError


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


def wrap_error(exc: Exception, uri: str | S3Uri) -> StorageError:
    """A botocore error as a one-line :class:`StorageError` (``describe_error``)."""
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
        raise wrap_error(exc, uri) from exc


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
        raise wrap_error(exc, uri) from exc
    except Exception as exc:  # noqa: BLE001
        raise wrap_error(exc, uri) from exc


def read_bytes(uri: str | S3Uri) -> bytes:
    """The whole object."""
    u = parse_uri(uri)
    try:
        return client().get_object(Bucket=u.bucket, Key=u.key)["Body"].read()
    except Exception as exc:  # noqa: BLE001
        raise wrap_error(exc, uri) from exc


def open_stream(uri: str | S3Uri) -> Any:
    """A streaming, file-like body of the object (for tar readers)."""
    u = parse_uri(uri)
    try:
        return client().get_object(Bucket=u.bucket, Key=u.key)["Body"]
    except Exception as exc:  # noqa: BLE001
        raise wrap_error(exc, uri) from exc


def write_bytes(uri: str | S3Uri, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Put a whole object (small objects: manifests, reports, journals)."""
    u = parse_uri(uri)
    try:
        client().put_object(Bucket=u.bucket, Key=u.key, Body=data, ContentType=content_type)
    except Exception as exc:  # noqa: BLE001
        raise wrap_error(exc, uri) from exc


def read_json(uri: str | S3Uri) -> Any:
    """Parse a JSON object stored at ``uri``."""
    return json.loads(read_bytes(uri))


def write_json(uri: str | S3Uri, obj: Any) -> None:
    """Store ``obj`` as indented UTF-8 JSON."""
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False).encode(), "application/json")


def list_keys(prefix_uri: str | S3Uri) -> list[str]:
    """Every object URI under a prefix (a "folder": the prefix is treated as ending with /)."""
    return sorted(list_objects(prefix_uri))


def list_objects(prefix_uri: str | S3Uri) -> dict[str, int]:
    """Every object under a prefix (as :func:`list_keys`): URI -> size in bytes."""
    u = parse_uri(prefix_uri)
    prefix = u.key + "/" if u.key else ""
    out: dict[str, int] = {}
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=prefix):
            out.update((f"s3://{u.bucket}/{obj['Key']}", obj["Size"]) for obj in page.get("Contents", []))
    except Exception as exc:  # noqa: BLE001
        raise wrap_error(exc, prefix_uri) from exc
    return out


def delete_many(uris: list[str]) -> None:
    """Delete objects, a thousand per request (S3's ``DeleteObjects``; no error for one already gone)."""
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        u = parse_uri(uri)
        by_bucket.setdefault(u.bucket, []).append(u.key)
    for bucket, keys in by_bucket.items():
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            try:
                resp = client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                      "Quiet": True})
            except Exception as exc:  # noqa: BLE001
                raise wrap_error(exc, f"s3://{bucket}/{batch[0]}") from exc
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise StorageError(f"S3 could not delete s3://{bucket}/{err.get('Key')}: {err.get('Code')} "
                                   f"{err.get('Message', '')} ({len(resp['Errors'])} objects not deleted)")
