"""data.label_fraction: a stratified, patient-level, seeded, nested share of a split, and a loader that
reads only it (planned by the kept counts)."""

from __future__ import annotations

import collections
import uuid

import pytest

from helpers_shards import ensure_bucket, write_test_dataset
from radimagenet.data.loader import make_loader
from radimagenet.data.subset import label_subset
from radimagenet.dataset.reader import iterate_samples
from radimagenet.errors import ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(stack_env) -> dict:
    """120 train images of 40 patients (3 each, one label per patient), 4 classes of 10 patients."""
    uri = f"s3://radimagenet/tests/subset-{uuid.uuid4().hex[:8]}"
    ensure_bucket(uri)
    # sample i has label i % 4; patient (i // 12) * 4 + i % 4 holds 3 images of one label
    return write_test_dataset(uri, {"train": 120, "val": 8}, 16,
                              patient_fn=lambda split, i: f"{split}-p{(i // 12) * 4 + i % 4:03d}")


def _rows(manifest: dict) -> list[tuple[str, str, int]]:
    return [(s["key"], s["meta"]["patient"], s["label_id"]) for s in iterate_samples(manifest, "train")]


def test_the_share_is_stratified_by_class_whole_patients_seeded_and_nested(dataset):
    rows = _rows(dataset)
    sub = label_subset(dataset, "train", 0.3, seed=0)
    kept = {k for keys in sub.keys.values() for k in keys}
    patients = {p for k, p, _ in rows if k in kept}
    assert sub.patients == len(patients) == 12  # round(0.3 * 10) patients in each of 4 classes
    per_class = collections.Counter(y for k, _, y in rows if k in kept)
    assert per_class == {0: 9, 1: 9, 2: 9, 3: 9} and sub.class_counts == (9, 9, 9, 9) and sub.images == 36
    assert all(k in kept for k, p, _ in rows if p in patients)  # whole patients, never part of one
    assert label_subset(dataset, "train", 0.3, seed=0) == sub
    other = label_subset(dataset, "train", 0.3, seed=1)
    assert other.keys != sub.keys
    bigger = label_subset(dataset, "train", 0.6, seed=0)
    assert kept <= {k for keys in bigger.keys.values() for k in keys}  # nested: 30% within 60%
    tiny = label_subset(dataset, "train", 0.01, seed=0)
    assert tiny.patients == 4 and tiny.class_counts == (3, 3, 3, 3)  # at least one patient per class
    with pytest.raises(ConfigError, match="label_fraction"):
        label_subset(dataset, "train", 0.0, seed=0)


def test_the_loader_reads_only_the_share_and_plans_by_its_size(dataset):
    sub = label_subset(dataset, "train", 0.5, seed=3)
    kept = {k for keys in sub.keys.values() for k in keys}
    loader = make_loader(dataset, "train", batch_size=4, num_workers=0, train=False, keep=sub.keys)
    seen = [k for batch in loader for k in batch.keys]
    assert sorted(seen) == sorted(kept) and len(seen) == sub.images == 60
    train = make_loader(dataset, "train", batch_size=4, num_workers=0, train=True, keep=sub.keys)
    assert len(train) == 60 // 4
    assert {k for batch in train for k in batch.keys} <= kept
