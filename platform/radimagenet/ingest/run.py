"""The ingest driver: under the output prefix's lease (``ingest/target.py``: one writer, the journal,
pre-flight checks), ordered (serial or Ray-parallel) processing, duplicates, then ``report.jsonl`` and
``manifest.json`` (``ingest/manifest.py``).

With Ray workers the driver handles small records only (``ingest/shards.py``): workers decode and keep
the samples' bytes; the driver takes their entries in input order (duplicates, patient splits, the
shard plan); shard tasks write, upload and journal the planned shards and return a tally of each; the
driver completes each upload. Serial and parallel ingests write the same samples to the same shards. A
shard's journal record (``_journal/``) is written before its upload completes and counts once the shard
exists; a re-run with the same arguments skips every input already in a journaled shard that exists.

Nothing on S3 names a source path: report lines and journal records name an input by its keyed
pseudonym (``src-...``), and the pseudonym -> path map is written locally, beside the secret.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radimagenet.dataset.format import SPLITS, Sample, manifest_uri
from radimagenet.dataset.writer import ShardRecord
from radimagenet.errors import ConfigError
from radimagenet.ingest import decode
from radimagenet.ingest.config import IngestConfig
from radimagenet.ingest.deid import (
    append_sources,
    read_source_map,
    record_sources,
    secret_fingerprint,
    source_map_path,
    source_pseudonym,
)
from radimagenet.ingest.manifest import build_manifest, tally
from radimagenet.ingest.process import Context, Reject, process_rows
from radimagenet.ingest.shards import (
    Entry,
    LocalShards,
    RayShards,
    chunk_size,
    commit_shard,
    connected,
    freeze_more,
    frozen_heap,
    get_result,
    pickle_rows,
    process_chunk,
    task_options,
    unpickle_entries,
)
from radimagenet.ingest.sources import InputRow, class_list, read_inputs
from radimagenet.ingest.splits import assign_splits, check_patient_identity, read_split_files
from radimagenet.ingest.target import check_target, clear_journal, preflight, remove_orphans
from radimagenet.ingest.textcheck import require_detector
from radimagenet.io import lease, storage

_json_str = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it (ensure_ascii)

# --- processing inputs -----------------------------------------------------------------------------

def fingerprint_of(cfg: IngestConfig, rows: list[InputRow], classes: list[str], secret: bytes,
                   split_files: dict[str, str] | None = None) -> dict:
    """Everything that must match for a re-run to continue an unfinished ingest (the inputs as an
    HMAC-SHA256 keyed with the secret: it goes to S3, and a plain hash of a short path list is guessable;
    ``split_files``: split -> HMAC of its ``--split-csv`` file's content, never its path)."""
    text = "\n".join(f"{r.source}\t{r.label}" for r in rows).encode("utf-8", "surrogateescape")
    inputs = hmac.new(secret, text, hashlib.sha256).hexdigest()
    return {
        **cfg.fingerprint_fields(),
        "inputs_sha256": inputs,
        "inputs": len(rows),
        "classes": classes,
        "split_csv": dict(sorted((split_files or {}).items())),
        "secret_fingerprint": secret_fingerprint(secret),
    }


# --- processing ------------------------------------------------------------------------------------

def _chunks(rows: list[InputRow], size: int) -> list[list[InputRow]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def run_chunks(chunks: list[list[InputRow]], ctx: Context, workers: int,
               options: dict[str, Any] | None = None) -> Iterator[tuple[list[Sample | Entry | Reject], Any]]:
    """``(results, parts)`` of each chunk, in chunk order: for 1 worker, in-process, the samples themselves
    (``parts`` None); else Ray tasks' entries, and ``parts``, the refs of their samples per split (the
    driver never fetches those). Ray must be connected for more than 1 worker."""
    if workers == 1:
        for chunk in chunks:
            yield process_rows(chunk, ctx), None
        return
    import ray

    task = ray.remote(process_chunk).options(num_cpus=1, max_retries=3, num_returns=1 + len(SPLITS),
                                             **(options or {}))
    ctx_ref = ray.put(ctx)
    pending = iter(chunks)
    inflight = collections.deque(task.remote(pickle_rows(c), ctx_ref) for c in _take(pending, 2 * workers))
    while inflight:
        refs = inflight.popleft()
        entries = unpickle_entries(get_result(refs[0]))
        inflight.extend(task.remote(pickle_rows(c), ctx_ref) for c in _take(pending, 1))
        yield entries, refs[1:]


def _take(it: Iterator, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


@dataclasses.dataclass
class _State:
    """Cross-file bookkeeping of the driver."""

    first_of_key: dict[str, tuple[str, str]]  # key -> (source pseudonym, split) of the written copy
    split_of_patient: dict[str, str]
    lines: dict[int, str]  # input index -> its report line (report_line's text)
    status: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # of the lines
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # of the rejects
    dropped: dict[int, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # written index -> fields

    @property
    def rejected(self) -> int:
        """Rejects so far (the progress bar's count, O(1) per chunk)."""
        return self.status["rejected"]

    def accept(self, results: list[Sample | Entry | Reject]) -> list[Sample | Entry]:
        """Account for a chunk's results, in input order; return those to be written (one loop per chunk,
        its names bound once: two method calls per file cost the driver as much as the rest)."""
        keep = []
        first_of_key, split_of_patient, lines, dropped = self.first_of_key, self.split_of_patient, self.lines, self.dropped
        for res in results:
            if isinstance(res, Reject):
                self._other(res.index, _line(res.source, "rejected", reason=f"{res.reason}: {res.detail}"))
                continue
            key, split, source = res.key, res.split, res.source
            if key in first_of_key:
                first, split = first_of_key[key]
                self._other(res.index, _line(source, "duplicate", key=key, split=split, duplicate_of=first))
                continue
            known = split_of_patient.setdefault(res.patient, split)
            if known != split:
                reason = f"split_conflict: this patient is already in {known!r}, this input is given {split!r}"
                self._other(res.index, _line(source, "rejected", reason=reason))
                continue
            fields = getattr(res, "dropped", ())
            if fields:  # before write: a full shard is journaled (with these) from the writer's thread
                dropped[res.index] = fields
            first_of_key[key] = (source, split)
            lines[res.index] = _written_line(source, key, split)
            keep.append(res)
        self.status["written"] += len(keep)
        return keep

    def written(self, index: int, source: str, key: str, split: str) -> None:
        """Account for an input written before (a journaled shard's member)."""
        self.first_of_key[key] = (source, split)
        self.lines[index] = _written_line(source, key, split)
        self.status["written"] += 1

    def _other(self, index: int, line: dict[str, Any]) -> None:
        self.lines[index] = report_line(line)
        self.status[line["status"]] += 1
        if line["status"] == "rejected":
            self.reasons[line["reason"].split(":")[0]] += 1


def _written_line(source: str, key: str, split: str) -> str:
    """``report_line(_line(source, "written", key, split))``, 2x faster."""
    j = _json_str
    return (f'{{"source": {j(source)}, "status": "written", "key": {j(key)}, "split": {j(split)}, '
            f'"reason": null, "duplicate_of": null}}\n')


def _line(source: str, status: str, key=None, split=None, reason=None, duplicate_of=None) -> dict:
    return {"source": source, "status": status, "key": key, "split": split, "reason": reason,
            "duplicate_of": duplicate_of}


def report_line(line: dict) -> str:
    """``json.dumps(line) + "\\n"`` for a line made by ``_line`` (the same text, built 4x faster)."""
    j = _json_str
    source, status, key, split, reason, duplicate_of = (line["source"], line["status"], line["key"], line["split"],
                                                        line["reason"], line["duplicate_of"])
    return (f'{{"source": {j(source)}, "status": {j(status)}, "key": {"null" if key is None else j(key)}, '
            f'"split": {"null" if split is None else j(split)}, "reason": {"null" if reason is None else j(reason)}, '
            f'"duplicate_of": {"null" if duplicate_of is None else j(duplicate_of)}}}\n')


# --- the driver ------------------------------------------------------------------------------------

def _record_origin(cfg: IngestConfig, secret: bytes, map_path: Path) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """Write SOURCE, the labels file and the split files to the local pseudonym -> path map; return their
    pseudonyms and the map's known entries (the inputs are added chunk by chunk: ``_SourceMap``)."""
    root = str(Path(cfg.source).expanduser().resolve())
    labels = str(Path(cfg.labels).expanduser().resolve()) if cfg.labels else None
    items = [("source", root, root)]
    if labels:
        items.append(("labels", labels, labels))
    split_files = {s: str(Path(f).expanduser().resolve()) for s, f in cfg.split_csv.items()}
    items += [("split_csv", f, f) for f in split_files.values()]
    known = read_source_map(map_path)
    record_sources(map_path, cfg.out.rstrip("/"), secret, items, known)
    origin = {"source": source_pseudonym(secret, root), "labels": labels and source_pseudonym(secret, labels),
              "split_csv": {s: source_pseudonym(secret, f) for s, f in sorted(split_files.items())}}
    return origin, known


@dataclasses.dataclass
class _SourceMap:
    """The local map, written a chunk at a time from the pseudonyms the workers computed (an HMAC per
    input was the driver's largest cost per file): before the driver plans a chunk's inputs into shards,
    so before anything on shared storage names them."""

    path: Path
    dataset: str
    known: set[tuple[str, str]]
    rows: dict[int, InputRow]

    def add(self, results: list[Sample | Entry | Reject]) -> None:
        self._append([(res.source, res.index) for res in results])

    def add_written(self, done: list[ShardRecord]) -> None:
        """The members of shards an earlier run wrote (a resume may use another map than that run did)."""
        self._append([(m["source"], m["index"]) for rec in done for m in rec.members])

    def _append(self, named: list[tuple[str, int]]) -> None:
        """``(pseudonym, input index)`` pairs, with their rows' paths."""
        rows = self.rows
        append_sources(self.path, self.dataset, self.known,
                       [("input", pseudonym, rows[i].source, rows[i].path) for pseudonym, i in named])


@frozen_heap()  # collections during the ingest walk only what it made (shards.frozen_heap)
def ingest(cfg: IngestConfig, secret: bytes, progress: bool | None = None, source_map: Path | None = None) -> dict:
    """Run (or finish) an ingest and return its manifest. The map from the source pseudonyms of the
    report back to paths is written locally to ``source_map`` (default: ``deid.source_map_path``)."""
    require_detector(cfg.text_check)  # --text-check without its extra stops here, before any work
    rows = read_inputs(cfg.source, cfg.labels, cfg.multi_label, cfg.unlabeled)
    files = read_split_files(cfg.split_csv, cfg.source, secret) if cfg.split_csv else None
    if files is not None:
        rows = assign_splits(rows, files)
    check_patient_identity(rows, cfg.split_unit, cfg.patient_from, cfg.source)
    classes = class_list(rows, cfg.multi_label)
    if not classes and not cfg.unlabeled:
        where = "in the labels file (--labels)" if cfg.labels else "under SOURCE (no file is inside a label folder)"
        raise ConfigError(f"no usable labels {where}")
    fingerprint = fingerprint_of(cfg, rows, classes, secret, files.digests if files else None)
    out = check_target(cfg)
    with lease.hold(lease.lease_uri(out), purpose="ingest", take_over=cfg.take_over) as held:
        done, dropped = preflight(cfg, fingerprint, held)
        return _write(cfg, rows, classes, secret, fingerprint, done, dropped, held, progress, source_map)


def _write(cfg: IngestConfig, rows: list[InputRow], classes: list[str], secret: bytes, fingerprint: dict,
           done: list[ShardRecord], dropped: dict[int, list[str]], held: lease.Lease,
           progress: bool | None, source_map: Path | None) -> dict:
    """Under the lease: process the inputs not yet written, then write the report and (last) the manifest."""
    out = storage.parse_uri(cfg.out)
    map_path = source_map or source_map_path(cfg.out)
    origin, known = _record_origin(cfg, secret, map_path)
    sources = _SourceMap(map_path, cfg.out.rstrip("/"), known, {r.index: r for r in rows})
    has_masks = any(r.mask for r in rows)
    ctx = Context(
        class_ids={c: i for i, c in enumerate(classes)},
        decode_cfg=decode.DecodeConfig(windows=dict(cfg.windows), multiframe=cfg.multiframe,
                                       max_megapixels=cfg.max_megapixels, allow_burned_in=cfg.allow_burned_in),
        image_size=cfg.image_size, encoding=cfg.encoding, secret=secret,
        fractions=tuple(cfg.split_fractions), patient_from=cfg.patient_from, text_check=cfg.text_check,
        multi_label=cfg.multi_label, unlabeled=cfg.unlabeled, source_root=str(Path(cfg.source).expanduser().resolve()),
    )
    state = _State(first_of_key={}, split_of_patient={}, lines={})
    state.dropped.update((i, tuple(fields)) for i, fields in dropped.items())
    for rec in done:
        for m in rec.members:
            state.split_of_patient[m["patient"]] = rec.split
            state.written(m["index"], m["source"], m["key"], rec.split)
    tallies = [tally(rec, state.dropped) for rec in done]
    sources.add_written(done)
    pending = [r for r in rows if r.index not in state.lines]
    first = {s: 1 + max((r.index for r in done if r.split == s), default=-1) for s in SPLITS}
    commit = functools.partial(commit_shard, held, tallies)
    bar = _progress(len(rows), len(rows) - len(pending), progress)
    with connected(cfg.workers):
        options = task_options()
        freeze_more()  # Ray's connection and the S3 client: made after ingest() froze the heap
        shards = (LocalShards(out, cfg.encoding, cfg.shard_size, first, commit, state.dropped) if cfg.workers == 1
                  else RayShards(out, cfg.encoding, cfg.shard_size, first, commit, cfg.workers, options))
        try:
            chunks = _chunks(pending, chunk_size(cfg, len(pending)))
            for results, parts in run_chunks(chunks, ctx, cfg.workers, options):
                held.check()  # a writer whose lease was taken over stops here, aborting its own uploads
                sources.add(results)
                shards.add(state.accept(results), parts)
                shards.poll()
                bar.update(len(results))
                bar.set_postfix(rejected=state.rejected)
            shards.finish()
        except BaseException:
            shards.abort()
            raise
        finally:
            bar.close()
    held.check()
    remove_orphans(out, [t.url for t in tallies])
    report = "".join([state.lines[r.index] for r in rows]).encode()
    storage.write_bytes(out.join("report.jsonl"), report, "application/x-ndjson")
    manifest = build_manifest(cfg, classes, tallies, state.status, state.reasons, fingerprint, has_masks, origin=origin)
    held.check()
    storage.write_json(manifest_uri(str(out)), manifest)
    clear_journal(out)
    return manifest


def _progress(total: int, initial: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    disable = None if enabled is None else not enabled
    return tqdm(total=total, initial=initial, unit="file", desc="ingest", disable=disable,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))
