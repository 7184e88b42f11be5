"""The corpus plan: synthetic patients with distinctive PHI, their images' labels, the planted
problem slots and deterministic UIDs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GIVEN_NAMES = ("Zebulon", "Xanthippe", "Quillon", "Bartholomew", "Ottoline", "Peregrine", "Ysolde")


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
