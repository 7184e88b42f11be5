"""The completion record of a dataset (``manifest.json``, see docs/design.md) and its digest, built from
one small tally per shard (:class:`ShardTally`) that is made where the shard is written: with Ray
workers the driver never handles a shard's members.

    t = tally(record, dropped)                    # a shard task, or the driver for a journaled shard
    manifest = build_manifest(cfg, classes, tallies, status, reasons, fingerprint, has_masks)
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import sys
from datetime import UTC, datetime
from typing import Any, NamedTuple

from radimagenet.dataset.format import FORMAT, SPLITS, label_text, member_label_ids, split_unit_of
from radimagenet.dataset.writer import ShardRecord
from radimagenet.ingest.config import IngestConfig
from radimagenet.ingest.deid import count_dropped


class ShardTally(NamedTuple):
    """What the manifest needs from one finished shard."""

    split: str
    index: int
    entry: dict[str, Any]  # its manifest entry (ShardRecord.manifest_entry: url, samples, bytes, sha256)
    labels: dict[tuple[int, ...], int]  # label ids -> samples
    patients: list[str]  # its distinct patient pseudonyms
    patient_sources: list[str]  # its distinct patient sources (column, dicom, file)
    digest: list[str]  # its members' lines of the dataset digest (digest_line), sorted
    dropped: dict[str, int]  # field -> samples whose value was dropped

    @property
    def url(self) -> str:
        return self.entry["url"]


def digest_line(split: str, key: str, label_ids: tuple[int, ...]) -> str:
    """A sample's line in the dataset digest: ``split<TAB>key<TAB>labels`` (labels: ``label_text``).
    Sorting these lines sorts by (split, key): splits are no prefix of one another, keys are fixed-length
    hex, and a tab sorts before any character of either."""
    return f"{split}\t{key}\t{label_text(label_ids)}\n"


def tally(record: ShardRecord, dropped: dict[int, tuple[str, ...]] | dict[int, list[str]]) -> ShardTally:
    """The tally of a finished shard (``dropped``: input index -> dropped fields, for any inputs)."""
    labels = collections.Counter(map(member_label_ids, record.members))
    return ShardTally(
        split=record.split, index=record.index, entry=record.manifest_entry(), labels=dict(labels),
        patients=list({m["patient"] for m in record.members}),
        patient_sources=list({m.get("patient_source", "") for m in record.members}),
        digest=sorted(digest_line(record.split, m["key"], member_label_ids(m)) for m in record.members),
        dropped=count_dropped(dropped.get(m["index"], ()) for m in record.members),
    )


def dataset_digest(tallies: list[ShardTally], cfg: IngestConfig) -> str:
    """SHA-256 over the sorted (split, key, label_id) triples, image size and encoding (unlabeled: the
    third field is empty)."""
    h = hashlib.sha256(f"{cfg.image_size}:{cfg.encoding}\n".encode())
    h.update("".join(sorted(itertools.chain.from_iterable(t.digest for t in tallies))).encode())
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


def build_manifest(cfg: IngestConfig, classes: list[str], tallies: list[ShardTally],
                   status: dict[str, int], reasons: dict[str, int], fingerprint: dict, has_masks: bool, *,
                   origin: dict[str, Any] | None = None) -> dict:
    """The completion record of a dataset. ``tallies``: its shards', in any order; ``status``: the report
    lines per status (written, rejected, duplicate), ``reasons``: the rejects per reason. ``origin``: the
    pseudonyms of SOURCE, the labels file and the split files (never their paths). ``split_unit``:
    ``image`` when some written sample was its own patient."""
    tallies = sorted(tallies, key=lambda t: (SPLITS.index(t.split), t.index))
    splits: dict[str, Any] = {}
    for split in SPLITS:
        mine = [t for t in tallies if t.split == split]
        counts: collections.Counter = collections.Counter()
        for t in mine:
            for ids, n in t.labels.items():
                for i in ids:  # per distinct label set, not per sample
                    counts[classes[i]] += n
        splits[split] = {
            "samples": sum(t.entry["samples"] for t in mine),
            "classes": {c: counts.get(c, 0) for c in classes},
            "patients": len(set(itertools.chain.from_iterable(t.patients for t in mine))),
            "shards": [t.entry for t in mine],
        }
    sources = itertools.chain.from_iterable(t.patient_sources for t in tallies)
    unit = "image" if cfg.split_unit == "image" else split_unit_of(sources)
    dropped: collections.Counter = collections.Counter()
    for t in tallies:
        dropped.update(t.dropped)
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
            "dropped_fields": dict(sorted(dropped.items())),
            "classes_without_images": [c for c in classes if not any(s["classes"][c] for s in splits.values())],
        },
        "digest": dataset_digest(tallies, cfg),
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
