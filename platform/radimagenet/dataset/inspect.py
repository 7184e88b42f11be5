"""Reading back an ingested dataset for people: its report, a summary, and split warnings.

The manifest is read with :func:`radimagenet.dataset.format.load_manifest`; full verification of
the shards is :func:`radimagenet.dataset.verify.verify`.
"""

from __future__ import annotations

import json
from typing import Any

from radimagenet.dataset.format import SPLITS, is_unlabeled, manifest_uri, split_unit
from radimagenet.io import storage


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
    fractions = dict(zip(SPLITS, shares, strict=False))
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


def split_unit_warnings(manifest: dict) -> list[str]:
    """One line when the dataset is split image by image (``split_unit`` image): a training run on it
    prints it and carries it as the tag ``radimagenet.warning.split_unit``."""
    if split_unit(manifest) != "image":
        return []
    given = bool((manifest.get("ingest") or {}).get("split_csv"))
    why = ("its splits come from the --split-csv files as given, and some images have no patient identity to "
           "check them by" if given else "each image was its own unit")
    return [f"dataset is split image by image (split_unit image: {why}): images of one patient may sit in "
            f"train and test, which inflates test metrics; re-ingest with a patient_id column for a "
            f"patient-level split"]


def class_warnings(manifest: dict) -> list[str]:
    """Warnings for classes that ended with no written image (every input of theirs was rejected or a
    duplicate at decode time). Label ids are fixed before shards are written, so such a class keeps
    its id and its place in ``classes``; a model trained on the dataset gets an output nothing trains."""
    splits = manifest.get("splits", {}).values()
    empty = [(i, c) for i, c in enumerate(manifest.get("classes", []))
             if not any(s.get("classes", {}).get(c) for s in splits)]
    return [
        f"class {c!r} (label id {i}) has no written image: every input with this label was rejected or a "
        f"duplicate (see report.jsonl); it keeps its id so that written shards need no renumbering. Fix or "
        f"drop those inputs and ingest again to remove it from the class list"
        for i, c in empty
    ]


_SPLIT_UNIT_NOTES = {
    "patient": " (every patient in one split)",
    "image": " (each image its own unit; see the warning below)",
    "unknown": " (written before split_unit was recorded; its ingest may have split image by image)",
}


def summary(manifest: dict[str, Any]) -> str:
    """A human-readable summary: splits, classes, counts, rejects by reason."""
    c = manifest["counts"]
    lines = [
        f"dataset   {manifest['uri']}",
        f"digest    {manifest['digest']}",
        f"created   {manifest['created']}   image {manifest['image_size']}px {manifest['encoding']}"
        + ("  with masks" if manifest.get("has_masks") else ""),
        f"inputs    {c['inputs']}: {c['written']} written, {c['rejected']} rejected, {c['duplicates']} duplicates",
        f"split by  {split_unit(manifest)}" + _SPLIT_UNIT_NOTES.get(split_unit(manifest), ""),
    ]
    for reason, n in c.get("rejected_by_reason", {}).items():
        lines.append(f"  rejected {reason}: {n}")
    if c.get("dropped_fields"):
        lines.append("fields    dropped (value did not fit the field): "
                     + ", ".join(f"{field} in {n} sample(s)" for field, n in c["dropped_fields"].items()))
    splits = manifest["splits"]
    lines.append("")
    lines.append(f"{'split':<6} {'samples':>8} {'patients':>9} {'shards':>7} {'MB':>9}")
    for name, s in splits.items():
        mb = sum(sh["bytes"] for sh in s["shards"]) / 1e6
        lines.append(f"{name:<6} {s['samples']:>8} {s.get('patients', 0):>9} {len(s['shards']):>7} {mb:>9.1f}")
    lines.append("")
    if is_unlabeled(manifest):
        lines.append("classes   none: an unlabeled dataset (ingest --unlabeled), for self-supervised pretraining")
    else:
        width = max(len(c) for c in manifest["classes"])
        lines.append(f"{'class':<{width}} " + " ".join(f"{n:>7}" for n in splits))
        for cls in manifest["classes"]:
            lines.append(f"{cls:<{width}} " + " ".join(f"{s['classes'].get(cls, 0):>7}" for s in splits.values()))
    warnings = split_unit_warnings(manifest) + split_warnings(manifest) + class_warnings(manifest)
    lines.extend(f"warning: {w}" for w in warnings)
    return "\n".join(lines)
