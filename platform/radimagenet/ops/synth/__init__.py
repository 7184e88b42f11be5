"""A synthetic, PHI-laden DICOM corpus that stands in for real radiology data in tests and demos.

    info = synthesize(Path("corpus"), images=500, seed=0)            # pretrain: 11 classes
    info = synthesize(Path("corpus"), images=200, task="downstream") # lesion yes/no + masks
    info = synthesize(Path("corpus"), images=60, unlabeled=True)     # no labels.csv: ingest corpus/images --unlabeled

Layout of ``out``::

    images/00000.dcm ...     valid DICOM Part 10 (no PHI in any path)
    masks/00000.png ...      downstream only: 0/255 lesion mask in the image's own pixel grid
    labels.csv               path,label,patient_id[,mask]   (paths relative to ``out``; not written
                             with ``unlabeled``: the images' classes stay only in synth.json)
    synth.json               task, seed, images, classes, patients, phi (every planted PHI
                             string), planted (duplicates/blank/truncated paths), transfer_syntaxes

Everything is deterministic from the seed: each image draws from its own generator seeded by
``(seed, index)``; UIDs are hashed from the seed. Pixel content is anatomy-like (body outline,
organs, bone, vessels, speckle, noise, random pose) and the class signal is local and modest
(nodules vs reticulation vs none, a meniscal tear, a liver lesion, organ shapes), so a small CNN
must learn it. The pretraining classes include focal liver lesions (as RadImageNet's CT abdomen labels
include liver findings), so a backbone pretrained here transfers to the downstream task, which draws
its own patients and adds exact lesion masks.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from radimagenet.ops.synth.anatomy import generator_for
from radimagenet.ops.synth.dicom import _choose_syntax, _dataset, _syntax_name, _write
from radimagenet.ops.synth.plan import Patient, _plan, _planted_slots, _uid
from radimagenet.ops.synth.shapes import Pixels

__all__ = [
    "DOWNSTREAM_CLASSES",
    "PRETRAIN_CLASSES",
    "TASKS",
    "Patient",
    "Pixels",
    "generator_for",
    "synthesize",
]

TASKS = ("pretrain", "downstream")

PRETRAIN_CLASSES: tuple[str, ...] = (
    "CT/lung/normal",
    "CT/lung/nodule",
    "CT/lung/interstitial_lung_disease",
    "CT/abd/normal",
    "CT/abd/liver_lesion",
    "MR/knee/normal",
    "MR/knee/meniscal_tear",
    "MR/brain/normal",
    "US/thyroid",
    "US/gb",
    "US/kidney",
)

DOWNSTREAM_CLASSES: tuple[str, ...] = ("CT/abd/normal", "CT/abd/liver_lesion")
_MIN_PLANTED = 8  # corpus size needed to hold the planted quality problems


# ------------------------------------------------------------------------------------ public API


def synthesize(out: Path, images: int, seed: int = 0, task: str = "pretrain", clean: bool = False,
               unlabeled: bool = False) -> dict:
    """Write ``images`` DICOM files, labels.csv (none when ``unlabeled``) and synth.json under ``out``;
    return synth.json. The patients are in the files (PatientID), so ``out/images`` ingests with
    ``--unlabeled`` split by patient."""
    out = Path(out)
    _check_args(images, seed, task, clean)
    if unlabeled and task != "pretrain":
        raise ValueError("unlabeled corpora are pretraining corpora: use task='pretrain' (--task pretrain)")
    (out / "images").mkdir(parents=True, exist_ok=True)
    if task == "downstream":
        (out / "masks").mkdir(parents=True, exist_ok=True)
    classes = PRETRAIN_CLASSES if task == "pretrain" else DOWNSTREAM_CLASSES
    plan = _plan(images, seed, classes, task)
    plant = task == "pretrain" and not clean
    special = _planted_slots(images) if plant else {}
    rows, phi, syntaxes = [], set(), Counter()
    planted: dict[str, list[str]] = {"duplicates": [], "blank": [], "truncated": []}
    generated: dict[int, Pixels] = {}
    for index, (patient, label) in enumerate(plan):
        rel = f"images/{index:05d}.dcm"
        kind = special.get(index)
        pixels = _pixels_for(index, label, seed, task, kind, generated)
        generated[index] = pixels
        uid = _uid(seed, "sop", index)
        syntax = _choose_syntax(index, pixels, images, seed, kind)
        ds = _dataset(pixels, patient, uid, index, syntax)
        _write(ds, out / rel, truncate=kind == "truncated")
        syntaxes[_syntax_name(syntax)] += 1
        phi.update(patient.phi() + [uid])
        row = {"path": rel, "label": label, "patient_id": patient.patient_id}
        if task == "downstream":
            row["mask"] = _write_mask(out, index, pixels.mask)
        rows.append(row)
        if kind:
            planted["duplicates" if kind.startswith("duplicate") else kind].append(rel)
    if not unlabeled:
        _write_labels(out / "labels.csv", rows, task)
    info = {
        "format": "radimagenet-synth/1",
        "task": task,
        "seed": seed,
        "images": images,
        **({"unlabeled": True} if unlabeled else {}),
        "classes": dict(sorted(Counter(r["label"] for r in rows).items())),
        "patients": len({p.index for p, _ in plan}),
        "phi": sorted(phi),
        "planted": planted,
        "transfer_syntaxes": dict(sorted(syntaxes.items())),
    }
    (out / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _check_args(images: int, seed: int, task: str, clean: bool) -> None:
    """ValueError for arguments that cannot produce a corpus."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive integer, not {images!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if task == "pretrain" and not clean and images < _MIN_PLANTED:
        raise ValueError(
            f"a pretrain corpus with planted problems needs >= {_MIN_PLANTED} images (or clean=True, --clean)"
        )


def _pixels_for(
    index: int, label: str, seed: int, task: str, kind: str | None, done: dict[int, Pixels]
) -> Pixels:
    """The pixels of image ``index``: generated, or a planted duplicate/blank copy."""
    if kind == "duplicate_a" or kind == "duplicate_b":
        source = done[0 if kind == "duplicate_a" else 1]
        return source  # exact same stored pixels and header, new file/UIDs/patient
    rng = np.random.default_rng([seed, index])
    pixels = generator_for(label, task)(rng)
    if kind == "blank":
        return dataclasses.replace(pixels, array=np.full_like(pixels.array, pixels.array.flat[0]))
    return pixels


def _write_mask(out: Path, index: int, mask: np.ndarray | None) -> str:
    """A 0/255 PNG mask in the image's pixel grid; returns its path relative to ``out``."""
    from PIL import Image

    rel = f"masks/{index:05d}.png"
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(out / rel, optimize=False)
    return rel


def _write_labels(path: Path, rows: list[dict[str, str]], task: str) -> None:
    """labels.csv: path,label,patient_id[,mask]."""
    fields = ["path", "label", "patient_id"] + (["mask"] if task == "downstream" else [])
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
