"""A synthetic, PHI-laden DICOM corpus that stands in for real radiology data in tests and demos.

    info = synthesize(Path("corpus"), images=500, seed=0)            # pretrain: 11 classes
    info = synthesize(Path("corpus"), images=200, task="downstream") # lesion yes/no + masks

Layout of ``out``::

    images/00000.dcm ...     valid DICOM Part 10 (no PHI in any path)
    masks/00000.png ...      downstream only: 0/255 lesion mask in the image's own pixel grid
    labels.csv               path,label,patient_id[,mask]   (paths relative to ``out``)
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
import functools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
_GIVEN_NAMES = ("Zebulon", "Xanthippe", "Quillon", "Bartholomew", "Ottoline", "Peregrine", "Ysolde")
_PRIVATE_CREATOR = "RADIMAGENET SYNTH PHI"
_MIN_PLANTED = 8  # corpus size needed to hold the planted quality problems


@dataclass(frozen=True)
class Patient:
    """One synthetic patient: PHI strings and the study that all its images belong to."""

    index: int
    name: str
    patient_id: str
    other_id: str
    birth_date: str
    address: str
    institution: str
    institution_address: str
    referrer: str
    accession: str
    study_date: str
    study_uid: str
    series_uid: str
    private_note: str

    def phi(self) -> list[str]:
        """Every identifying string this patient's files carry."""
        return [
            self.name,
            self.patient_id,
            self.other_id,
            self.birth_date,
            self.address,
            self.institution,
            self.institution_address,
            self.referrer,
            self.accession,
            self.study_date,
            self.study_uid,
            self.series_uid,
            self.private_note,
        ]


@dataclass(frozen=True)
class Pixels:
    """A generated image as stored: array plus the Image Pixel / VOI header it needs."""

    array: np.ndarray  # (H, W) or (H, W, 3), stored values
    modality: str
    body_part: str
    photometric: str
    bits_stored: int
    signed: bool
    spacing: float
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: tuple[float, float] | None = None  # (center, width)
    mask: np.ndarray | None = None


# ------------------------------------------------------------------------------------ public API


def synthesize(out: Path, images: int, seed: int = 0, task: str = "pretrain", clean: bool = False) -> dict:
    """Write ``images`` DICOM files, labels.csv and synth.json under ``out``; return synth.json."""
    out = Path(out)
    _check_args(images, seed, task, clean)
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
    _write_labels(out / "labels.csv", rows, task)
    info = {
        "format": "radimagenet-synth/1",
        "task": task,
        "seed": seed,
        "images": images,
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


# --------------------------------------------------------------------------------- corpus plan


def _plan(images: int, seed: int, classes: tuple[str, ...], task: str) -> list[tuple[Patient, str]]:
    """(patient, label) per image: 2-6 images per patient, classes balanced over patients.

    Pretrain patients have one class each (a study-level label); downstream patients mix lesion
    and normal slices (so a lesion label is not a patient label).
    """
    rng = np.random.default_rng([seed, 1_000_003])
    plan: list[tuple[Patient, str]] = []
    p = 0
    while len(plan) < images:
        patient = _patient(seed, p, rng)
        count = min(int(rng.integers(2, 7)), images - len(plan))
        for _ in range(count):
            if task == "downstream":
                label = classes[int(rng.integers(0, len(classes)))]
            else:
                label = classes[(p + seed) % len(classes)]
            plan.append((patient, label))
        p += 1
    return plan


def _patient(seed: int, p: int, rng: np.random.Generator) -> Patient:
    """A patient with distinctive, searchable PHI in every usual tag."""
    tag = "".join(chr(ord("A") + int(v)) for v in rng.integers(0, 26, 6))
    given = _GIVEN_NAMES[p % len(_GIVEN_NAMES)]
    birth = _date(rng, 1930, 2005)
    return Patient(
        index=p,
        name=f"PHI^{given}^Q{p}",
        patient_id=f"MRN-PHI-{p:04d}-{tag}",
        other_id=f"OLD-PHI-{p:04d}-{tag[::-1]}",
        birth_date=birth,
        address=f"{p + 1} PHI Lane, Zebtown {tag}",
        institution=f"PHI General Hospital {tag[:3]}",
        institution_address=f"PHI Campus Road {p + 7}, {tag}",
        referrer=f"PHI^Refdoc^{tag}",
        accession=f"ACC-PHI-{p:05d}{tag[:2]}"[:16],
        study_date=_date(rng, 2015, 2024),
        study_uid=_uid(seed, "study", p),
        series_uid=_uid(seed, "series", p),
        private_note=f"PHI-PRIVATE-NOTE-{tag}-{p}",
    )


def _date(rng: np.random.Generator, first_year: int, last_year: int) -> str:
    """A random valid DICOM date (DA) in the given year range."""
    year = int(rng.integers(first_year, last_year + 1))
    return f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"


def _uid(seed: int, kind: str, index: int) -> str:
    """A valid, deterministic UID (pydicom root, hashed from seed/kind/index)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["radimagenet-synth", str(seed), kind, str(index)]))


def _planted_slots(images: int) -> dict[int, str]:
    """Which image indices carry planted problems (the last four of the corpus)."""
    last = images - 1
    return {last - 3: "duplicate_a", last - 2: "duplicate_b", last - 1: "blank", last: "truncated"}


# ------------------------------------------------------------------------------ pixel generation


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


def _grid(rng: np.random.Generator, h: int, w: int, scale=(0.85, 1.1), rot=0.25, shift=0.08):
    """Canonical coordinates (u, v) of every pixel under a random pose (shift, scale, rotation)."""
    s = float(rng.uniform(*scale))
    theta = float(rng.uniform(-rot, rot))
    cx, cy = rng.uniform(-shift, shift, 2)
    half = max(h, w) / 2.0
    x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2.0) / half)[None, :]
    y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2.0) / half)[:, None]
    c, sn = math.cos(theta) / s, math.sin(theta) / s
    u = (x - cx) * c + (y - cy) * sn
    v = -(x - cx) * sn + (y - cy) * c
    return u.astype(np.float32), v.astype(np.float32)


def _ell(u, v, cx, cy, rx, ry, theta=0.0) -> np.ndarray:
    """Boolean ellipse in canonical coordinates."""
    du, dv = u - cx, v - cy
    if theta:
        c, s = math.cos(theta), math.sin(theta)
        du, dv = du * c + dv * s, -du * s + dv * c
    return (du / rx) ** 2 + (dv / ry) ** 2 <= 1.0


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth unit-variance-ish noise with feature size ~ h/cells (bicubic upsampled white noise)."""
    from PIL import Image

    ch, cw = max(2, cells), max(2, int(cells * w / h))
    small = rng.standard_normal((ch, cw)).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC))
    return big / max(float(big.std()), 1e-6)


def _pick(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int] | None:
    """A random pixel (row, col) inside ``mask``."""
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return None
    i = int(flat[int(rng.integers(0, flat.size))])
    return divmod(i, mask.shape[1])


def _disk(h: int, w: int, py: float, px: float, r: float) -> np.ndarray:
    """Boolean disk in pixel coordinates."""
    y = (np.arange(h, dtype=np.float32) - py)[:, None]
    x = (np.arange(w, dtype=np.float32) - px)[None, :]
    return y * y + x * x <= r * r


# ------------------------------------------------------------------------------------------- CT


def _ct_body(rng, h, w):
    """Air, table, body outline with subcutaneous fat; returns (hu, u, v, body)."""
    u, v = _grid(rng, h, w)
    hu = np.full((h, w), -1000.0, dtype=np.float32)
    rx, ry = rng.uniform(0.78, 0.9), rng.uniform(0.55, 0.66)
    body = _ell(u, v, 0, 0, rx, ry)
    hu[body] = -100.0
    hu[_ell(u, v, 0, 0, rx - 0.05, ry - 0.05)] = 45.0
    hu[(v > ry + 0.04) & (v < ry + 0.08) & (np.abs(u) < 0.95)] = 200.0  # table
    spine = _ell(u, v, 0, ry - 0.2, 0.1, 0.09)
    hu[spine] = 900.0
    hu[_ell(u, v, 0, ry - 0.2, 0.075, 0.065)] = 250.0
    return hu, u, v, body


def _ct_finish(rng, hu: np.ndarray, window: tuple[float, float] | None, part: str, mask=None) -> Pixels:
    """Noise, HU -> stored int16 with intercept -1024; some files carry no window tags."""
    h, w = hu.shape
    hu += rng.normal(0.0, rng.uniform(8.0, 20.0), hu.shape).astype(np.float32)
    stored = np.clip(np.rint(hu + 1024.0), -1024, 4095).astype(np.int16)
    has_window = rng.random() < 0.7
    spacing = float(rng.uniform(0.6, 0.9)) * 512 / max(h, w)
    return Pixels(
        array=stored,
        modality="CT",
        body_part=part,
        photometric="MONOCHROME2",
        bits_stored=16,
        signed=True,
        spacing=spacing,
        rescale=(1.0, -1024.0),
        window=window if has_window else None,
        mask=mask,
    )


def _ct_size(rng) -> int:
    """Most CT slices are 512 x 512, some 256."""
    return 512 if rng.random() < 0.75 else 256


def _ct_lung(rng, finding: str) -> Pixels:
    """Chest CT: lungs, heart, vessels; nodules or peripheral reticulation per ``finding``."""
    n = _ct_size(rng)
    hu, u, v, _ = _ct_body(rng, n, n)
    lungs = np.zeros((n, n), bool)
    for side in (-1, 1):
        lungs |= _ell(
            u, v, side * rng.uniform(0.3, 0.4), -0.03, rng.uniform(0.24, 0.32), rng.uniform(0.34, 0.44)
        )
    lungs &= ~_ell(u, v, rng.uniform(0.0, 0.1), 0.05, rng.uniform(0.16, 0.22), rng.uniform(0.18, 0.25))
    hu[lungs] = -860.0 + 25.0 * _noise(rng, n, n, 6)[lungs]
    vessels = lungs & (_noise(rng, n, n, 45) > rng.uniform(1.6, 1.9))
    hu[vessels] = 30.0
    if finding == "nodule":
        for _ in range(int(rng.integers(1, 4))):
            at = _pick(rng, lungs)
            if at:
                hu[_disk(n, n, at[0], at[1], n * rng.uniform(0.008, 0.022)) & lungs] = rng.uniform(0, 60)
    elif finding == "ild":
        inner = np.zeros((n, n), bool)
        for side in (-1, 1):
            inner |= _ell(u, v, side * 0.35, -0.03, 0.16, 0.24)
        periphery = lungs & ~inner
        reticular = periphery & (
            np.abs(_noise(rng, n, n, int(rng.integers(35, 55)))) < rng.uniform(0.12, 0.2)
        )
        hu[periphery] += 120.0 * np.clip(_noise(rng, n, n, 5)[periphery] + 0.5, 0, None)  # ground glass
        hu[reticular] = rng.uniform(-450, -250)
    return _ct_finish(rng, hu, (-600.0, 1500.0), "CHEST")


def _ct_abd(rng, lesion: bool | None = None) -> Pixels:
    """Abdominal CT: liver, spleen, kidneys, aorta, bowel gas; optional liver lesion + mask."""
    n = _ct_size(rng)
    hu, u, v, body = _ct_body(rng, n, n)
    liver = _ell(u, v, rng.uniform(-0.4, -0.25), -0.12, rng.uniform(0.32, 0.42), rng.uniform(0.28, 0.38), 0.3)
    liver &= body
    hu[liver] = 60.0 + 6.0 * _noise(rng, n, n, 8)[liver]
    hu[_ell(u, v, 0.5, -0.1, 0.13, 0.2, -0.4)] = 50.0
    for side in (-1, 1):
        kidney = _ell(u, v, side * 0.3, 0.22, 0.09, 0.13, side * 0.3)
        hu[kidney] = 160.0
        hu[_ell(u, v, side * 0.3, 0.22, 0.04, 0.06, side * 0.3)] = 20.0
    hu[_ell(u, v, 0.06, 0.22, 0.045, 0.045)] = 170.0
    free = body & ~liver & (hu < 100) & (hu > 0)
    for _ in range(int(rng.integers(3, 9))):
        at = _pick(rng, free)
        if at:
            hu[_disk(n, n, at[0], at[1], n * rng.uniform(0.008, 0.025)) & free] = -900.0
    mask = None
    if lesion is not None:
        mask = np.zeros((n, n), np.uint8)
        if lesion:
            mask = _liver_lesion(rng, hu, u, v, liver)
    return _ct_finish(rng, hu, (40.0, 400.0), "ABDOMEN", mask)


def _liver_lesion(rng, hu, u, v, liver) -> np.ndarray:
    """A textured hypodense ellipse inside the liver (about 1-3% of the image, 45-80 HU darker than
    the liver: visible at 64 px, but not trivially); returns its exact mask."""
    inner = liver & _ell(u, v, *_centroid(u, v, liver), 0.25, 0.22)
    at = _pick(rng, inner if inner.any() else liver)
    if at is None:
        return np.zeros(hu.shape, np.uint8)
    cu, cv = float(u[at]), float(v[at])
    rx, ry = rng.uniform(0.09, 0.17, 2)
    region = _ell(u, v, cu, cv, rx, ry, float(rng.uniform(0, math.pi))) & liver
    n = hu.shape[0]
    texture = 6.0 * _noise(rng, n, n, 30)[region]
    hu[region] += -float(rng.uniform(45.0, 80.0)) + texture
    return region.astype(np.uint8)


def _centroid(u, v, mask) -> tuple[float, float]:
    """Mean canonical coordinate of a mask."""
    return float(u[mask].mean()), float(v[mask].mean())


# ------------------------------------------------------------------------------------------- MR


def _mr_finish(rng, signal: np.ndarray, part: str) -> Pixels:
    """Bias field, Rician noise, 12-bit unsigned; some MONOCHROME1 (stored inverted), few windows."""
    h, w = signal.shape
    signal *= 1.0 + 0.15 * _noise(rng, h, w, 3)
    sigma = float(rng.uniform(15.0, 40.0))
    real = signal + rng.normal(0, sigma, signal.shape).astype(np.float32)
    imag = rng.normal(0, sigma, signal.shape).astype(np.float32)
    stored = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 4095).astype(np.uint16)
    photometric, center = "MONOCHROME2", 1000.0
    if rng.random() < 0.08:  # stored inverted; the display (after inversion) looks the same
        stored = (4095 - stored).astype(np.uint16)
        photometric, center = "MONOCHROME1", 4095.0 - center
    window = (center, 2200.0) if rng.random() < 0.3 else None
    return Pixels(stored, "MR", part, photometric, 12, False, float(rng.uniform(0.4, 0.9)), None, window)


def _mr_size(rng) -> int:
    """MR matrices vary."""
    return 256 if rng.random() < 0.6 else 320


def _mr_knee(rng, tear: bool) -> Pixels:
    """Sagittal knee: femur/tibia marrow, cartilage, dark meniscal wedges; tear = bright line."""
    n = _mr_size(rng)
    u, v = _grid(rng, n, n)
    s = np.zeros((n, n), np.float32)
    s[_ell(u, v, 0, 0, 0.62, 1.3)] = 1700.0
    s[_ell(u, v, 0, 0, 0.55, 1.25)] = 750.0 + 60 * _noise(rng, n, n, 10)[_ell(u, v, 0, 0, 0.55, 1.25)]
    gap = float(rng.uniform(0.05, 0.09))
    s[_ell(u, v, 0, -0.55 - gap, 0.34, 0.58)] = 120.0
    s[_ell(u, v, 0, -0.55 - gap, 0.3, 0.55)] = 1900.0
    s[_ell(u, v, 0, 0.55 + gap, 0.32, 0.52)] = 120.0
    s[_ell(u, v, 0, 0.55 + gap, 0.29, 0.5)] = 1850.0
    cartilage = _ell(u, v, 0, -0.55 - gap, 0.34, 0.6) & ~_ell(u, v, 0, -0.55 - gap, 0.34, 0.58) & (v > -0.1)
    s[cartilage] = 1100.0
    menisci = np.zeros((n, n), bool)
    for side in (-1, 1):
        du = side * u - 0.14
        menisci |= (du > 0) & (du < 0.2) & (np.abs(v) < gap * (0.4 + 4.0 * du))
    s[menisci] = 70.0
    if tear:
        side = 1 if rng.random() < 0.5 else -1
        angle = float(rng.uniform(-0.6, 0.6))
        line = np.abs((side * u - 0.25) * math.sin(angle) - v * math.cos(angle)) < 0.018
        s[line & menisci & (np.abs(side * u - 0.25) < 0.1)] = float(rng.uniform(1300, 1800))
    return _mr_finish(rng, s, "KNEE")


def _mr_brain(rng) -> Pixels:
    """Axial brain: scalp, skull, CSF, grey and white matter, ventricles."""
    n = _mr_size(rng)
    u, v = _grid(rng, n, n)
    s = np.zeros((n, n), np.float32)
    rx, ry = rng.uniform(0.68, 0.78), rng.uniform(0.82, 0.92)
    s[_ell(u, v, 0, 0, rx, ry)] = 1500.0
    s[_ell(u, v, 0, 0, rx - 0.04, ry - 0.04)] = 90.0
    s[_ell(u, v, 0, 0, rx - 0.08, ry - 0.08)] = 350.0
    grey = _ell(u, v, 0, 0, rx - 0.1, ry - 0.1)
    s[grey] = 1100.0 + 80 * _noise(rng, n, n, 20)[grey]
    white = _ell(u, v, 0, 0.02, rx - 0.22, ry - 0.25) & (_noise(rng, n, n, 12) > -1.2)
    s[white] = 1550.0
    tilt = float(rng.uniform(-0.2, 0.2))
    for side in (-1, 1):
        s[_ell(u, v, side * 0.08, -0.05, rng.uniform(0.04, 0.07), rng.uniform(0.16, 0.24), tilt)] = 300.0
    return _mr_finish(rng, s, "BRAIN")


# ------------------------------------------------------------------------------------------- US


def _us_sector(h: int, w: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fan-shaped field of view: (inside mask, depth 0..1, lateral -1..1) per pixel."""
    apex_x, apex_y = w / 2 + rng.uniform(-10, 10), -0.06 * h
    y = np.arange(h, dtype=np.float32)[:, None] - apex_y
    x = np.arange(w, dtype=np.float32)[None, :] - apex_x
    r = np.sqrt(x * x + y * y) / (1.02 * h)
    a = np.arctan2(x, y) / math.radians(float(rng.uniform(32, 40)))
    return (r > 0.08) & (r < 1.0) & (np.abs(a) < 1.0), r, a


def _us_finish(rng, echo: np.ndarray, inside: np.ndarray, depth: np.ndarray, part: str) -> Pixels:
    """Speckle (laterally elongated Rayleigh), attenuation, log compression; some RGB with overlay."""
    from PIL import Image

    h, w = echo.shape
    re = rng.standard_normal((h // 2, w // 5)).astype(np.float32)
    im = rng.standard_normal((h // 2, w // 5)).astype(np.float32)
    speckle = np.hypot(re, im)
    speckle = np.asarray(Image.fromarray(speckle, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    amp = echo * speckle * (1.0 - 0.45 * depth)
    img = 255.0 * np.log1p(8.0 * amp) / math.log1p(8.0 * 1.6)
    img = np.clip(img, 0, 255) * inside
    grey = img.astype(np.uint8)
    if rng.random() < 0.3:
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        y0, x0 = int(rng.integers(5, 30)), int(rng.integers(5, 60))
        rgb[y0 : y0 + 12, x0 : x0 + 40] = (230, 200, 40)  # UI marker outside the fan
        return Pixels(rgb, "US", part, "RGB", 8, False, 0.2)
    return Pixels(grey, "US", part, "MONOCHROME2", 8, False, 0.2)


def _us_frame(rng):
    """A fan on a 480 x 640 frame and canonical coordinates in it."""
    h, w = 480, 640
    inside, depth, lateral = _us_sector(h, w, rng)
    u, v = _grid(rng, h, w, scale=(0.8, 1.15), rot=0.3, shift=0.1)
    return h, w, inside, depth, u, v


def _us_thyroid(rng) -> Pixels:
    """Thyroid: two lobes with isthmus, strap muscles, anechoic carotids, tracheal shadow."""
    h, w, inside, depth, u, v = _us_frame(rng)
    e = np.full((h, w), 0.35, np.float32)
    e[(v > -0.55) & (v < -0.45)] = 0.22
    lobes = _ell(u, v, -0.28, -0.2, 0.22, 0.14) | _ell(u, v, 0.28, -0.2, 0.22, 0.14)
    lobes |= _ell(u, v, 0, -0.3, 0.12, 0.05)
    e[lobes] = 0.7
    for side in (-1, 1):
        e[_ell(u, v, side * 0.55, -0.18, 0.08, 0.08)] = 0.02
    trachea = _ell(u, v, 0, -0.12, 0.1, 0.08)
    e[trachea] = 1.2
    e[(np.abs(u) < 0.09) & (v > -0.05)] = 0.04
    return _us_finish(rng, e, inside, depth, "NECK")


def _us_gb(rng) -> Pixels:
    """Gallbladder: anechoic pear with bright wall in liver, posterior enhancement, maybe a stone."""
    h, w, inside, depth, u, v = _us_frame(rng)
    e = np.full((h, w), 0.45, np.float32) + 0.05 * _noise(rng, h, w, 6)
    theta = float(rng.uniform(-0.6, 0.6))
    cx, cy = float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.25, 0.05))
    rx, ry = float(rng.uniform(0.22, 0.32)), float(rng.uniform(0.09, 0.14))
    e[_ell(u, v, cx, cy, rx + 0.02, ry + 0.02, theta)] = 0.9
    lumen = _ell(u, v, cx, cy, rx, ry, theta)
    e[(np.abs(u - cx) < rx * 0.8) & (v > cy + ry)] *= 1.35
    e[lumen] = 0.02
    if rng.random() < 0.4:
        sx = cx + float(rng.uniform(-0.5, 0.5)) * rx
        e[_ell(u, v, sx, cy + ry * 0.5, 0.04, 0.03)] = 1.6
        e[(np.abs(u - sx) < 0.035) & (v > cy + ry * 0.5 + 0.03)] = 0.03
    return _us_finish(rng, e, inside, depth, "ABDOMEN")


def _us_kidney(rng) -> Pixels:
    """Kidney: hypoechoic cortex, dark pyramids, bright central sinus, echogenic fat rim."""
    h, w, inside, depth, u, v = _us_frame(rng)
    e = np.full((h, w), 0.4, np.float32) + 0.05 * _noise(rng, h, w, 6)
    theta = float(rng.uniform(-0.5, 0.5))
    rx, ry = float(rng.uniform(0.42, 0.55)), float(rng.uniform(0.2, 0.27))
    cy = float(rng.uniform(-0.15, 0.1))
    e[_ell(u, v, 0, cy, rx + 0.04, ry + 0.04, theta)] = 0.75
    e[_ell(u, v, 0, cy, rx, ry, theta)] = 0.28
    c, s = math.cos(theta), math.sin(theta)
    for k in range(int(rng.integers(4, 7))):
        t = (k + 0.5) / 6.0 * 2 * math.pi
        px, py = 0.62 * rx * math.cos(t), 0.6 * ry * math.sin(t)
        e[_ell(u, v, px * c - py * s, cy + px * s + py * c, 0.05, 0.04, t)] = 0.12
    e[_ell(u, v, 0, cy, rx * 0.5, ry * 0.35, theta) & (_noise(rng, h, w, 25) > -0.8)] = 0.9
    return _us_finish(rng, e, inside, depth, "KIDNEY")


_GENERATORS = {
    "CT/lung/normal": lambda rng: _ct_lung(rng, "normal"),
    "CT/lung/nodule": lambda rng: _ct_lung(rng, "nodule"),
    "CT/lung/interstitial_lung_disease": lambda rng: _ct_lung(rng, "ild"),
    "CT/abd/normal": lambda rng: _ct_abd(rng),
    "CT/abd/liver_lesion": lambda rng: _ct_abd(rng, lesion=True),
    "MR/knee/normal": lambda rng: _mr_knee(rng, False),
    "MR/knee/meniscal_tear": lambda rng: _mr_knee(rng, True),
    "MR/brain/normal": _mr_brain,
    "US/thyroid": _us_thyroid,
    "US/gb": _us_gb,
    "US/kidney": _us_kidney,
}
_DOWNSTREAM = {
    "CT/abd/normal": lambda rng: _ct_abd(rng, lesion=False),
    "CT/abd/liver_lesion": lambda rng: _ct_abd(rng, lesion=True),
}


def generator_for(label: str, task: str):
    """The pixel generator of a class for a task."""
    return (_DOWNSTREAM if task == "downstream" else _GENERATORS)[label]


# -------------------------------------------------------------------------------- DICOM writing


@functools.cache
def _encoders() -> dict[str, bool]:
    """Which lossless encoders are installed (pydicom's encoder availability API)."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    found = {}
    for uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        try:
            found[str(uid)] = bool(get_encoder(uid).is_available)
        except (NotImplementedError, ValueError):
            found[str(uid)] = False
    return found


def _choose_syntax(index: int, pixels: Pixels, images: int, seed: int, kind: str | None) -> str:
    """Transfer syntax of one file: mostly explicit VR LE, ~15% RLE, a few JPEG-LS/J2K/implicit/deflated."""
    from pydicom import uid

    if kind in ("truncated", "blank"):
        return str(uid.ExplicitVRLittleEndian)
    r = float(np.random.default_rng([seed, index, 7]).random())
    available = _encoders()
    rare = max(0.01, min(0.04, 4.0 / images))  # a handful per corpus (J2K is slow to encode)
    if r < rare and available.get(str(uid.JPEG2000Lossless)):
        return str(uid.JPEG2000Lossless)
    if r < 2 * rare and available.get(str(uid.JPEGLSLossless)):
        return str(uid.JPEGLSLossless)
    if r < 3 * rare:
        return str(uid.ImplicitVRLittleEndian)
    if r < 4 * rare:
        return str(uid.DeflatedExplicitVRLittleEndian)
    if r < 4 * rare + 0.15 and available.get(str(uid.RLELossless)):
        return str(uid.RLELossless)
    return str(uid.ExplicitVRLittleEndian)


_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}


def _dataset(px: Pixels, patient: Patient, sop_uid: str, index: int, syntax: str) -> Any:
    """A complete Part 10 dataset: patient/study/series/image modules, PHI, pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = _SOP_CLASSES[px.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = _SOP_CLASSES[px.modality]
    ds.SOPInstanceUID = sop_uid
    _patient_study_tags(ds, patient)
    ds.Modality = px.modality
    ds.BodyPartExamined = px.body_part
    ds.Manufacturer = "RadImageNet Synth"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if px.modality == "CT" else "OTHER"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.PixelSpacing = [round(px.spacing, 4), round(px.spacing, 4)]
    if px.rescale:
        ds.RescaleSlope, ds.RescaleIntercept = px.rescale
        ds.RescaleType = "HU"
    if px.window:
        ds.WindowCenter, ds.WindowWidth = px.window
    _image_pixel_tags(ds, px)
    _set_syntax(ds, px.array, syntax)
    return ds


def _patient_study_tags(ds: Any, p: Patient) -> None:
    """Patient, study and institution tags full of PHI, plus a private tag with PHI."""
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.OtherPatientIDs = p.other_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "O"
    ds.PatientAddress = p.address
    ds.InstitutionName = p.institution
    ds.InstitutionAddress = p.institution_address
    ds.ReferringPhysicianName = p.referrer
    ds.AccessionNumber = p.accession
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = p.study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.StudyInstanceUID = p.study_uid
    ds.SeriesInstanceUID = p.series_uid
    block = ds.private_block(0x0011, _PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", p.private_note)


def _image_pixel_tags(ds: Any, px: Pixels) -> None:
    """Image Pixel module for the stored array (native little endian bytes)."""
    arr = px.array
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = px.photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = px.bits_stored
    ds.HighBit = px.bits_stored - 1
    ds.PixelRepresentation = 1 if px.signed else 0
    ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _set_syntax(ds: Any, arr: np.ndarray, syntax: str) -> None:
    """Compress (RLE/JPEG-LS/J2K lossless) or just set the native transfer syntax."""
    from pydicom.uid import UID

    uid = UID(syntax)
    if uid.is_compressed:
        ds.compress(uid, arr, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid


def _syntax_name(syntax: str) -> str:
    """The transfer syntax's name (for synth.json)."""
    from pydicom.uid import UID

    return UID(syntax).name


def _write(ds: Any, path: Path, truncate: bool = False) -> None:
    """Save as Part 10; a planted truncated file is cut inside its pixel data."""
    ds.save_as(path, enforce_file_format=True)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - len(ds.PixelData) // 3])


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
