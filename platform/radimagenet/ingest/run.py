"""The ingest driver: under the output prefix's lease (``ingest/target.py``: one writer, the journal,
pre-flight checks), ordered (serial or Ray-parallel) processing, duplicates, then ``report.jsonl`` and
``manifest.json``.

With Ray workers the driver handles small records only (``ingest/shards.py``): workers decode and keep
the samples' bytes; the driver takes their entries in input order (duplicates, patient splits, the
shard plan); shard tasks write and upload the planned shards; the driver completes each upload and
journals it. Serial and parallel ingests write the same samples to the same shards. A shard is
journaled (``_journal/``) once its upload completes; a re-run with the same arguments skips every
input already in a journaled shard.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from radimagenet.dataset.format import (
    FORMAT,
    SPLITS,
    Sample,
    label_text,
    manifest_uri,
    member_label_ids,
    split_unit_of,
)
from radimagenet.dataset.writer import ShardRecord
from radimagenet.errors import ConfigError
from radimagenet.ingest import decode
from radimagenet.ingest.config import IngestConfig
from radimagenet.ingest.deid import (
    count_dropped,
    record_sources,
    secret_fingerprint,
    source_map_path,
    source_pseudonym,
)
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

    def handle(self, res: Sample | Entry | Reject) -> bool:
        """Account for one result, in input order; True when it is to be written."""
        if isinstance(res, Reject):
            self._other(res.index, _line(res.source, "rejected", reason=f"{res.reason}: {res.detail}"))
            return False
        key, split = res.key, res.split
        if key in self.first_of_key:
            source, split = self.first_of_key[key]
            self._other(res.index, _line(res.source, "duplicate", key=key, split=split, duplicate_of=source))
            return False
        known = self.split_of_patient.setdefault(res.patient, split)
        if known != split:
            reason = f"split_conflict: this patient is already in {known!r}, this input is given {split!r}"
            self._other(res.index, _line(res.source, "rejected", reason=reason))
            return False
        dropped = getattr(res, "dropped", ())
        if dropped:  # before write: a full shard is journaled (with these) from the writer's thread
            self.dropped[res.index] = dropped
        self.written(res.index, res.source, key, split)
        return True

    def written(self, index: int, source: str, key: str, split: str) -> None:
        """The line of a written input: ``report_line(_line(source, "written", key, split))``, 2x faster."""
        self.first_of_key[key] = (source, split)
        j = _json_str
        self.lines[index] = (f'{{"source": {j(source)}, "status": "written", "key": {j(key)}, "split": {j(split)}, '
                             f'"reason": null, "duplicate_of": null}}\n')
        self.status["written"] += 1

    def _other(self, index: int, line: dict[str, Any]) -> None:
        self.lines[index] = report_line(line)
        self.status[line["status"]] += 1
        if line["status"] == "rejected":
            self.reasons[line["reason"].split(":")[0]] += 1


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


# --- outputs ---------------------------------------------------------------------------------------

def dataset_digest(records: list[ShardRecord], cfg: IngestConfig) -> str:
    """SHA-256 over the sorted (split, key, label_id) triples, image size and encoding (unlabeled: the
    third field is empty)."""
    texts = {ids: label_text(ids) for ids in {member_label_ids(m) for r in records for m in r.members}}
    triples = sorted((r.split, m["key"], texts[member_label_ids(m)]) for r in records for m in r.members)
    h = hashlib.sha256(f"{cfg.image_size}:{cfg.encoding}\n".encode())
    h.update("".join(f"{t[0]}\t{t[1]}\t{t[2]}\n" for t in triples).encode())  # one update: the same hash
    return "sha256:" + h.hexdigest()


def software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("radimagenet", "pydicom", "numpy", "pillow", "pylibjpeg", "pylibjpeg-openjpeg",
                "pylibjpeg-rle", "pyjpegls", "webdataset", "ray", "rapidocr-onnxruntime", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_manifest(cfg: IngestConfig, classes: list[str], records: list[ShardRecord],
                   status: dict[str, int], reasons: dict[str, int], fingerprint: dict, has_masks: bool, *,
                   origin: dict[str, Any] | None = None, dropped_fields: dict[str, int] | None = None,
                   ) -> dict:
    """The completion record of a dataset (see docs/design.md). ``status``: the report lines per status
    (written, rejected, duplicate), ``reasons``: the rejects per reason. ``origin``: the pseudonyms of SOURCE,
    the labels file and the split files (never their paths); ``dropped_fields``: field -> samples whose
    value did not fit. ``split_unit``: ``image`` when some written sample was its own patient."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        recs = [r for r in records if r.split == split]
        counts: collections.Counter = collections.Counter()
        for ids, n in collections.Counter(map(member_label_ids, (m for r in recs for m in r.members))).items():
            for i in ids:  # per distinct label set, not per sample
                counts[classes[i]] += n
        splits[split] = {
            "samples": sum(r.samples for r in recs),
            "classes": {c: counts.get(c, 0) for c in classes},
            "patients": len({m["patient"] for r in recs for m in r.members}),
            "shards": [r.manifest_entry() for r in recs],
        }
    sources = (m.get("patient_source", "") for r in records for m in r.members)
    unit = "image" if cfg.split_unit == "image" else split_unit_of(sources)
    return {
        "format": FORMAT,
        "uri": cfg.out.rstrip("/"),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "classes": classes,
        "image_size": cfg.image_size,
        "channels": 1,
        "encoding": cfg.encoding,
        "has_masks": has_masks,
        "multi_label": cfg.multi_label,
        "unlabeled": cfg.unlabeled,
        "split_unit": unit,
        "splits": splits,
        "counts": {
            "inputs": sum(status.values()),
            "written": status.get("written", 0),
            "rejected": status.get("rejected", 0),
            "duplicates": status.get("duplicate", 0),
            "rejected_by_reason": dict(sorted(reasons.items())),
            "dropped_fields": dict(dropped_fields or {}),
            "classes_without_images": [c for c in classes if not any(s["classes"][c] for s in splits.values())],
        },
        "digest": dataset_digest(records, cfg),
        "ingest": {
            "source": (origin or {}).get("source"),
            "labels": (origin or {}).get("labels"),
            "split_csv": (origin or {}).get("split_csv") or {},
            "image_size": cfg.image_size,
            "encoding": cfg.encoding,
            "split_fractions": list(cfg.split_fractions),
            "shard_size": cfg.shard_size,
            "multiframe": cfg.multiframe,
            "windows": {k: list(v) for k, v in cfg.windows.items()},
            "patient_from": cfg.patient_from,
            "text_check": cfg.text_check,
            "secret_fingerprint": fingerprint["secret_fingerprint"],
            "inputs_sha256": fingerprint["inputs_sha256"],
        },
        "versions": software_versions(),
    }


# --- the driver ------------------------------------------------------------------------------------

def _record_sources(cfg: IngestConfig, rows: list[InputRow], secret: bytes, map_path: Path) -> dict[str, Any]:
    """Write the local pseudonym -> path map; return the pseudonyms of SOURCE, the labels file and the
    split files."""
    root = str(Path(cfg.source).expanduser().resolve())
    labels = str(Path(cfg.labels).expanduser().resolve()) if cfg.labels else None
    items = [("input", r.source, r.path) for r in rows] + [("source", root, root)]
    if labels:
        items.append(("labels", labels, labels))
    split_files = {s: str(Path(f).expanduser().resolve()) for s, f in cfg.split_csv.items()}
    items += [("split_csv", f, f) for f in split_files.values()]
    record_sources(map_path, cfg.out.rstrip("/"), secret, items)
    return {"source": source_pseudonym(secret, root), "labels": labels and source_pseudonym(secret, labels),
            "split_csv": {s: source_pseudonym(secret, f) for s, f in sorted(split_files.items())}}


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
    origin = _record_sources(cfg, rows, secret, source_map or source_map_path(cfg.out))
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
    records = list(done)
    pending = [r for r in rows if r.index not in state.lines]
    first = {s: 1 + max((r.index for r in done if r.split == s), default=-1) for s in SPLITS}
    commit = functools.partial(commit_shard, held, out, state.dropped, records)
    bar = _progress(len(rows), len(rows) - len(pending), progress)
    with connected(cfg.workers):
        options = task_options()
        freeze_more()  # Ray's connection and the S3 client: made after ingest() froze the heap
        shards = (LocalShards(out, cfg.encoding, cfg.shard_size, first, commit) if cfg.workers == 1 else
                  RayShards(out, cfg.encoding, cfg.shard_size, first, commit, cfg.workers, options))
        try:
            chunks = _chunks(pending, chunk_size(cfg, len(pending)))
            for results, parts in run_chunks(chunks, ctx, cfg.workers, options):
                held.check()  # a writer whose lease was taken over stops here, aborting its own uploads
                for res in results:
                    if state.handle(res):
                        shards.add(res, parts)
                shards.poll()
                bar.update(len(results))
                bar.set_postfix(rejected=state.rejected)
            shards.finish()
        except BaseException:
            shards.abort()
            raise
        finally:
            bar.close()
    records.sort(key=lambda r: (SPLITS.index(r.split), r.index))
    held.check()
    remove_orphans(out, records)
    report = "".join([state.lines[r.index] for r in rows]).encode()
    storage.write_bytes(out.join("report.jsonl"), report, "application/x-ndjson")
    dropped_fields = count_dropped(state.dropped.get(m["index"], ()) for r in records for m in r.members)
    manifest = build_manifest(cfg, classes, records, state.status, state.reasons, fingerprint, has_masks, origin=origin,
                              dropped_fields=dropped_fields)
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
