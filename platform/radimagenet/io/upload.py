"""Multipart uploads to S3: a streaming writer (:class:`S3Writer`), and uploads staged by one process
and completed (made visible) or aborted by another (:class:`Staged`), as an ingest's workers and driver do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from radimagenet.io import storage

PART_SIZE = 8 * 1024 * 1024  # multipart part size (S3 minimum is 5 MiB except the last part)


def abort_multipart_uploads(prefix_uri: str | storage.S3Uri) -> int:
    """Abort unfinished multipart uploads under a prefix (left by an interrupted writer)."""
    u = storage.parse_uri(prefix_uri)
    c = storage.client()
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
    u = storage.parse_uri(staged.uri)
    parts = [{"PartNumber": n, "ETag": etag} for n, etag in staged.parts]
    try:
        storage.client().complete_multipart_upload(Bucket=u.bucket, Key=u.key, UploadId=staged.upload_id,
                                           MultipartUpload={"Parts": parts})
    except Exception as exc:  # noqa: BLE001
        raise storage.wrap_error(exc, staged.uri) from exc


def abort_upload(staged: Staged) -> None:
    """Drop a staged upload (best effort: an upload left behind is invisible and costs only storage)."""
    u = storage.parse_uri(staged.uri)
    try:
        storage.client().abort_multipart_upload(Bucket=u.bucket, Key=u.key, UploadId=staged.upload_id)
    except Exception:  # noqa: BLE001
        pass


class S3Writer(io.RawIOBase):
    """A write-only file object that streams to S3 with a multipart upload.

    Use as a context manager: the object appears only when the block exits cleanly; on an
    exception the upload is aborted and nothing is left behind. Parts are uploaded by a background
    thread while the caller keeps writing (the request waits on the network, not the CPU); memory is
    bounded by two parts.
    """

    def __init__(self, uri: str | storage.S3Uri, part_size: int = PART_SIZE):
        super().__init__()
        self.uri = storage.parse_uri(uri)
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
            resp = storage.client().upload_part(
                Bucket=self.uri.bucket, Key=self.uri.key, UploadId=self._upload_id, PartNumber=number, Body=body
            )
        except Exception as exc:  # noqa: BLE001
            raise storage.wrap_error(exc, self.uri) from exc
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _flush_part(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self._upload_id is None:
            try:
                self._upload_id = storage.client().create_multipart_upload(Bucket=self.uri.bucket, Key=self.uri.key)[
                    "UploadId"
                ]
            except Exception as exc:  # noqa: BLE001
                raise storage.wrap_error(exc, self.uri) from exc
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
                    storage.client().put_object(Bucket=self.uri.bucket, Key=self.uri.key, Body=self._take_buffer())
                except Exception as exc:  # noqa: BLE001
                    raise storage.wrap_error(exc, self.uri) from exc
            else:
                if self._buffered:
                    self._flush_part()
                parts = [f.result() for f in self._parts]
                try:
                    storage.client().complete_multipart_upload(
                        Bucket=self.uri.bucket, Key=self.uri.key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                    )
                except Exception as exc:  # noqa: BLE001
                    raise storage.wrap_error(exc, self.uri) from exc
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
                storage.client().abort_multipart_upload(Bucket=self.uri.bucket, Key=self.uri.key, UploadId=self._upload_id)
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
