"""Reading back an ingested dataset: its manifest, report, a summary, and full verification."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile
from typing import Any

from radimagenet.errors import ConfigError, StorageError
from radimagenet.io import storage


def manifest_uri(uri: str) -> str:
    """Accept either the dataset prefix or its manifest.json."""
    uri = uri.rstrip("/")
    return uri if uri.endswith(".json") else uri + "/manifest.json"


def load_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a complete dataset; a clear error when it is missing (e.g. unfinished ingest)."""
    muri = manifest_uri(uri)
    if not storage.exists(muri):
        raise ConfigError(f"no dataset at {uri}: {muri} does not exist (an ingest not finished yet, or a wrong URI)")
    manifest = storage.read_json(muri)
    if manifest.get("format") != "radimagenet-dataset/1":
        raise ConfigError(f"{muri} is not a radimagenet dataset manifest (format {manifest.get('format')!r})")
    return manifest


def load_report(uri: str) -> list[dict[str, Any]]:
    """Every line of the dataset's report.jsonl."""
    base = manifest_uri(uri).rsplit("/", 1)[0]
    return [json.loads(line) for line in storage.read_bytes(base + "/report.jsonl").splitlines() if line.strip()]


def split_warnings(manifest: dict) -> list[str]:
    """Warnings for splits that were given a share of patients but received none.

    Each patient's split is drawn from its keyed hash, so it stays put when a dataset grows; the price is
    that a small cohort can leave a split empty (30 patients and a 0.1 share: about 4% of secrets).
    """
    shares = manifest.get("ingest", {}).get("split_fractions", [])
    fractions = dict(zip(("train", "val", "test"), shares, strict=False))
    splits = manifest.get("splits", {})
    patients = sum(v.get("patients", 0) for v in splits.values())
    out = []
    for split, fraction in fractions.items():
        if fraction > 0 and not splits.get(split, {}).get("samples"):
            out.append(
                f"split {split!r} is empty: its {fraction:g} share of {patients} patient(s) drew none "
                f"(the split is drawn per patient from the keyed hash, so a small cohort can miss one); "
                f"add a 'split' column to the labels file, or ingest more patients"
            )
    return out


def summary(manifest: dict[str, Any]) -> str:
    """A human-readable summary: splits, classes, counts, rejects by reason."""
    c = manifest["counts"]
    lines = [
        f"dataset   {manifest['uri']}",
        f"digest    {manifest['digest']}",
        f"created   {manifest['created']}   image {manifest['image_size']}px {manifest['encoding']}"
        + ("  with masks" if manifest.get("has_masks") else ""),
        f"inputs    {c['inputs']}: {c['written']} written, {c['rejected']} rejected, {c['duplicates']} duplicates",
    ]
    for reason, n in c.get("rejected_by_reason", {}).items():
        lines.append(f"  rejected {reason}: {n}")
    splits = manifest["splits"]
    lines.append("")
    lines.append(f"{'split':<6} {'samples':>8} {'patients':>9} {'shards':>7} {'MB':>9}")
    for name, s in splits.items():
        mb = sum(sh["bytes"] for sh in s["shards"]) / 1e6
        lines.append(f"{name:<6} {s['samples']:>8} {s.get('patients', 0):>9} {len(s['shards']):>7} {mb:>9.1f}")
    lines.append("")
    width = max(len(c) for c in manifest["classes"])
    lines.append(f"{'class':<{width}} " + " ".join(f"{n:>7}" for n in splits))
    for cls in manifest["classes"]:
        lines.append(f"{cls:<{width}} " + " ".join(f"{s['classes'].get(cls, 0):>7}" for s in splits.values()))
    lines.extend(f"warning: {w}" for w in split_warnings(manifest))
    return "\n".join(lines)


def verify(manifest: dict[str, Any]) -> list[str]:
    """Re-read every shard; return the problems found (empty list: the dataset is intact).

    Checks each shard's size and SHA-256, that it holds the stated number of samples, each with an
    image, a label and metadata, that labels agree with the metadata and split, and that no sample
    key appears twice and no patient appears in two splits.
    """
    problems: list[str] = []
    keys: set[str] = set()
    patient_split: dict[str, str] = {}
    n_classes = len(manifest["classes"])
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            try:
                data = storage.read_bytes(shard["url"])
            except StorageError as exc:
                problems.append(f"{shard['url']}: {exc}")
                continue
            if len(data) != shard["bytes"]:
                problems.append(f"{shard['url']}: {len(data)} bytes, manifest says {shard['bytes']}")
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                problems.append(f"{shard['url']}: sha256 differs from the manifest")
            samples = _samples(data)
            if len(samples) != shard["samples"]:
                problems.append(f"{shard['url']}: {len(samples)} samples, manifest says {shard['samples']}")
            for key, members in samples.items():
                problems.extend(_check_sample(shard["url"], split, key, members, manifest, n_classes,
                                              keys, patient_split))
        total = sum(s["samples"] for s in info["shards"])
        if total != info["samples"]:
            problems.append(f"split {split}: shards hold {total} samples, manifest says {info['samples']}")
    return problems


def _samples(data: bytes) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            out[key][ext] = tar.extractfile(member).read()
    return out


def _check_sample(url, split, key, members, manifest, n_classes, keys, patient_split) -> list[str]:
    problems = []
    where = f"{url}: sample {key}"
    if key in keys:
        problems.append(f"{where} appears more than once in the dataset")
    keys.add(key)
    if manifest["encoding"] not in members or "cls" not in members or "json" not in members:
        return problems + [f"{where} lacks members (has {sorted(members)})"]
    meta = json.loads(members["json"])
    label_id = int(members["cls"])
    if not 0 <= label_id < n_classes or meta.get("label_id") != label_id:
        problems.append(f"{where}: label id {label_id} is inconsistent")
    if meta.get("split") != split:
        problems.append(f"{where}: metadata says split {meta.get('split')!r}, shard is {split!r}")
    known = patient_split.setdefault(meta.get("patient"), split)
    if known != split:
        problems.append(f"{where}: patient {meta.get('patient')} is in both {known!r} and {split!r}")
    return problems
