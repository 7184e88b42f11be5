"""WebDataset tar shards streamed to S3: ``<split>-000000.tar``, ``<split>-000001.tar``, ...

Tar members are plain ustar entries written directly (see :mod:`radimagenet.dataset.tar`).
A :class:`ShardWriter` is a context manager (mosaicml/streaming style). Each shard is one multipart
upload that becomes visible only when the shard is complete; ``on_shard`` is called after that with
the shard's record (``stage=True``: the upload is left uncompleted in ``staged`` and ``on_shard`` runs
once it is staged, for the caller to journal the shard and complete it: workers upload, the lease holder
makes shards visible).
Completing a shard (its last part, the completion request, ``on_shard``) runs on a background thread
while the caller fills the next shard; ``close`` waits for all of them and raises the first error.
Tar members are written deterministically (fixed mtime, owner and mode) so equal samples give
byte-identical shards. Each record carries the shard's sample index (``offsets``, with the members'
keys), written to ``_index/`` right after the shard's upload (:mod:`radimagenet.dataset.index`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from radimagenet.dataset.format import UNLABELED, Sample, shard_name
from radimagenet.dataset.index import write_index
from radimagenet.dataset.tar import END_OF_ARCHIVE, encode_sample
from radimagenet.io.storage import S3Uri
from radimagenet.io.upload import S3Writer, Staged


@dataclass
class ShardRecord:
    """What the manifest and the journal keep about one finished shard."""

    split: str
    index: int
    url: str
    samples: int
    bytes: int
    sha256: str
    # index, source, key, label_id (none when unlabeled), patient, patient_source (per member)
    members: list[dict[str, Any]] = field(default_factory=list)
    # the shard's sample index (dataset/index.py): sample i is bytes [offsets[i], offsets[i + 1])
    offsets: list[int] = field(default_factory=list)

    def manifest_entry(self) -> dict[str, Any]:
        """The shard's entry in ``manifest["splits"][split]["shards"]``."""
        return {"url": self.url, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256}


MAX_PENDING_COMMITS = 2  # finished shards still uploading, per writer


class _HashingSink(io.RawIOBase):
    """Forwards writes to S3 while computing the SHA-256 of everything written."""

    def __init__(self, target: S3Writer):
        super().__init__()
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)


class ShardWriter:
    """Write samples of one split into size-bounded tar shards under ``prefix``."""

    def __init__(
        self,
        prefix: S3Uri,
        split: str,
        encoding: str,
        target_bytes: int,
        first_index: int = 0,
        on_shard: Callable[[ShardRecord], None] | None = None,
        stage: bool = False,
    ):
        self.prefix, self.split, self.encoding = prefix, split, encoding
        self.stage = stage  # True: uploads are left uncompleted in ``staged`` for the caller to complete
        self.staged: dict[int, Staged] = {}  # shard index -> its staged upload (``stage=True``)
        self.target_bytes = target_bytes
        self.next_index = first_index
        self.on_shard = on_shard
        self.records: list[ShardRecord] = []
        self._open: tuple[S3Writer, _HashingSink, ShardRecord] | None = None
        self._pending: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None

    def _start(self) -> None:
        url = self.prefix.join(shard_name(self.split, self.next_index))
        s3 = S3Writer(url)
        record = ShardRecord(self.split, self.next_index, str(url), 0, 0, "")
        self._open = (s3, _HashingSink(s3), record)
        self.next_index += 1

    def write(self, sample: Sample) -> None:
        """Append one sample; finishes the shard once it passes the target size."""
        if self._open is None:
            self._start()
        s3, sink, record = self._open
        record.offsets.append(sink.size)
        sink.write(encode_sample(sample, self.encoding))
        record.samples += 1
        record.members.append(
            {"index": sample.index, "source": sample.source, "key": sample.key,
             **({"label_id": sample.label_id} if sample.label_id != UNLABELED else {}),
             "patient": sample.patient, "patient_source": sample.patient_source,
             **({"label_ids": list(sample.label_ids)} if sample.label_ids else {})}
        )
        if sink.size >= self.target_bytes:
            self.finish_shard()

    def finish_shard(self) -> None:
        """Close the open shard (if any); its upload completes, then ``on_shard`` runs, in the background."""
        if self._open is None:
            return
        while len(self._pending) >= MAX_PENDING_COMMITS:  # bounded memory: each holds a part
            self._pending.pop(0).result()  # an error here leaves this shard open for abort()
        s3, sink, record = self._open
        self._open = None
        record.offsets.append(sink.size)  # where the last sample ends
        sink.write(END_OF_ARCHIVE)
        record.bytes, record.sha256 = sink.size, sink.sha.hexdigest()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shards-{self.split}")
        self._pending.append(self._pool.submit(self._commit, s3, record))

    def _commit(self, s3: S3Writer, record: ShardRecord) -> None:
        if self.stage:  # the caller completes it (an ingest's driver, under the prefix's lease)
            self.staged[record.index] = s3.stage()
        else:
            s3.commit()
        write_index(record.url, record.sha256, [m["key"] for m in record.members], record.offsets)
        self.records.append(record)
        if self.on_shard:
            self.on_shard(record)

    def close(self) -> None:
        """Finish the open shard and wait until every shard is uploaded and reported."""
        self.finish_shard()
        self._drain(raise_errors=True)

    def abort(self) -> None:
        """Drop the open shard (its multipart upload is aborted, nothing half-written remains) after
        the shards already finished are uploaded and reported, so a re-run does not redo them."""
        if self._open is not None:
            self._open[0].abort()
            self._open = None
        self._drain(raise_errors=False)

    def _drain(self, raise_errors: bool) -> None:
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - report the first, after waiting for all
                errors.append(exc)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if errors and raise_errors:
            raise errors[0]

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
