"""A stratified, patient-level share of a split, for label-efficiency curves (``data.label_fraction``).

    sub = label_subset(manifest, "train", fraction=0.1, seed=0)
    loader = make_loader(manifest, "train", ..., keep=sub.keys)   # only the kept samples, planned by their counts

Each patient is assigned to the class of most of its images (ties: the lowest label id; a multi-label
image counts for its first label); within each
class the patients are shuffled by an rng seeded with ``seed`` and the first ``round(fraction * n)``
(at least one) are kept, with all their images. The same seed gives nested shares: the patients of 10%
are among those of 20%. Finding the patients reads the split once (the shards' members, no decoding):
meant for fine-tuning datasets, not for a pretraining corpus.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass

from radimagenet.dataset.format import split_shards
from radimagenet.dataset.reader import parse_meta, read_shard, sample_label_ids
from radimagenet.errors import ConfigError


@dataclass(frozen=True)
class Subset:
    """The kept samples of a split: ``keys`` maps each shard URL to its kept sample keys."""

    keys: dict[str, frozenset[str]]
    images: int
    patients: int
    class_counts: tuple[int, ...]  # kept images per label id (multi-label: the kept images with each label)


def label_subset(manifest: dict, split: str, fraction: float, seed: int) -> Subset:
    """The stratified patient-level share ``fraction`` of ``split`` (see the module doc)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {fraction}")
    samples = []  # (shard url, key, patient, label ids)
    for shard in split_shards(manifest, split):
        for sample in read_shard(shard.url):
            patient = str(parse_meta(sample).get("patient") or sample["__key__"])
            samples.append((shard.url, sample["__key__"], patient, sample_label_ids(sample)))
    labels_of: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for _, _, patient, labels in samples:
        labels_of[patient][labels[0]] += 1
    strata: dict[int, list[str]] = collections.defaultdict(list)
    for patient in sorted(labels_of):
        counts = labels_of[patient]
        strata[min(counts, key=lambda c: (-counts[c], c))].append(patient)
    rng = random.Random(f"label_fraction/{seed}")
    kept: set[str] = set()
    for label in sorted(strata):
        patients = strata[label]
        rng.shuffle(patients)
        kept.update(patients[: max(1, round(fraction * len(patients)))])
    keys: dict[str, set[str]] = collections.defaultdict(set)
    class_counts = [0] * len(manifest.get("classes", []))
    images = 0
    for url, key, patient, labels in samples:
        if patient in kept:
            keys[url].add(key)
            images += 1
            for label in labels:
                if 0 <= label < len(class_counts):
                    class_counts[label] += 1
    return Subset({url: frozenset(k) for url, k in keys.items()}, images, len(kept), tuple(class_counts))
