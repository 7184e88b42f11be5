"""``verify`` on shards held in memory (storage is faked): every check, and its message."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from radimagenet.dataset.format import FORMAT, UNLABELED, Sample, shard_name
from radimagenet.dataset.tar import END_OF_ARCHIVE, encode_sample, tar_bytes
from radimagenet.dataset.verify import verify
from radimagenet.errors import StorageError
from radimagenet.io import storage

PREFIX = "s3://b/ds"
CLASSES = ["CT/a", "CT/b", "MR/c"]


def _sample(i: int, shard_split: str, patient: str | None = None, **meta) -> Sample:
    """Sample ``i`` written to a ``shard_split`` shard; ``meta`` overrides its metadata fields."""
    label = i % len(CLASSES)
    fields = {"label_id": label, "split": shard_split, "patient": patient or f"p{i}"} | meta
    return Sample(index=i, source=f"{i}.dcm", key=f"{i:032x}", split=shard_split, patient=fields["patient"],
                  label_id=label, image=bytes([i]) * 100, meta=json.dumps(fields).encode())


def _dataset(shards: dict[str, list[list[Sample]]]) -> tuple[dict, dict[str, bytes]]:
    """A manifest and the shard objects it names (what the ingest would write)."""
    objects, splits = {}, {}
    for split, groups in shards.items():
        entries = []
        for n, samples in enumerate(groups):
            url = f"{PREFIX}/{shard_name(split, n)}"
            data = b"".join(encode_sample(s, "npy") for s in samples) + END_OF_ARCHIVE
            objects[url] = data
            entries.append({"url": url, "samples": len(samples), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        splits[split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    return {"format": FORMAT, "classes": CLASSES, "encoding": "npy", "splits": splits}, objects


@pytest.fixture
def s3(monkeypatch) -> dict[str, bytes]:
    objects: dict[str, bytes] = {}

    def read_bytes(uri: str) -> bytes:
        if uri not in objects:
            raise StorageError(f"{uri} does not exist")
        return objects[uri]

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    return objects


def _good() -> tuple[dict, dict[str, bytes]]:
    return _dataset({"train": [[_sample(0, "train"), _sample(1, "train")], [_sample(2, "train")]],
                     "val": [[_sample(3, "val")]]})


def test_an_intact_dataset_has_no_problems(s3):
    manifest, objects = _good()
    s3.update(objects)
    assert verify(manifest) == []


def test_shard_level_problems(s3):
    manifest, objects = _good()
    s3.update(objects)
    first, second = (f"{PREFIX}/train-00000{i}.tar" for i in (0, 1))
    s3[first] = objects[first][:600] + b"x" + objects[first][601:]  # an image byte changed: still parses
    del s3[second]
    assert verify(manifest) == [f"{first}: sha256 differs from the manifest",
                                f"{second}: {second} does not exist"]

    s3[second] = objects[second] + END_OF_ARCHIVE
    s3[first] = objects[first]
    assert verify(manifest) == [f"{second}: {len(objects[second]) + 1024} bytes, manifest says "
                                f"{len(objects[second])}", f"{second}: sha256 differs from the manifest"]


def test_count_mismatches(s3):
    manifest, objects = _good()
    s3.update(objects)
    broken = copy.deepcopy(manifest)
    broken["splits"]["train"]["shards"][0]["samples"] = 3
    broken["splits"]["val"]["samples"] = 2
    first = f"{PREFIX}/train-000000.tar"
    assert verify(broken) == [f"{first}: 2 samples, manifest says 3",
                              "split train: shards hold 4 samples, manifest says 3",
                              "split val: shards hold 1 samples, manifest says 2"]


def test_sample_level_problems(s3):
    lacking = _sample(4, "train")
    samples = [
        _sample(0, "train"),
        _sample(1, "train", label_id=2),  # metadata disagrees with the .cls member
        _sample(2, "train", split="val"),  # metadata says another split
        _sample(3, "train", patient="shared"),
        _sample(0, "train"),  # the same key again
    ]
    manifest, objects = _dataset({"train": [samples], "val": [[_sample(5, "val", patient="shared")]]})
    url = f"{PREFIX}/train-000000.tar"
    # a sample without its .cls member, and a member outside any sample
    extra = tar_bytes([(f"{lacking.key}.npy", lacking.image), (f"{lacking.key}.json", lacking.meta),
                       ("README", b"hello")])
    data = objects[url][:-1024] + extra + END_OF_ARCHIVE
    entry = manifest["splits"]["train"]["shards"][0]
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), samples=6)
    manifest["splits"]["train"]["samples"] = 6
    s3.update(objects)
    s3[url] = data
    key = "{:032x}".format
    assert verify(manifest) == [
        f"{url}: member 'README' has no extension, so it belongs to no sample",
        f"{url}: sample {key(1)}: label id 1 is inconsistent",
        f"{url}: sample {key(2)}: metadata says split 'val', shard is 'train'",
        f"{url}: sample {key(0)} appears more than once in the dataset",
        f"{url}: sample {key(4)} lacks members (has ['json', 'npy'])",
        f"{PREFIX}/val-000000.tar: sample {key(5)}: patient shared is in both 'train' and 'val'",
    ]


def test_unreadable_members_and_a_corrupt_tar_are_problems_not_crashes(s3):
    bad = _sample(0, "train")
    bad.meta = b"{not json"
    manifest, objects = _dataset({"train": [[bad], [_sample(1, "train")]]})
    s3.update(objects)
    second = f"{PREFIX}/train-000001.tar"
    s3[second] = objects[second][:600]  # header and part of the image: a truncated upload
    problems = verify(manifest)
    assert problems[0].startswith(f"{PREFIX}/train-000000.tar: sample {0:032x}: unreadable .cls or .json member")
    assert problems[1:] == [
        f"{second}: 600 bytes, manifest says {len(objects[second])}",
        f"{second}: sha256 differs from the manifest",
        f"{second} is truncated (member '{1:032x}.npy' needs 100 bytes)",
        f"{second}: 0 samples, manifest says 1",
    ]


def _unlabeled(i: int, split: str) -> Sample:
    """Sample ``i`` of an unlabeled dataset: no label id, so no .cls member and no label in its metadata."""
    meta = json.dumps({"split": split, "patient": f"p{i}"}).encode()
    return Sample(index=i, source=f"{i}.dcm", key=f"{i:032x}", split=split, patient=f"p{i}", label_id=UNLABELED,
                  image=bytes([i]) * 100, meta=meta)


def test_an_unlabeled_dataset_verifies_without_labels_and_a_labelled_one_needs_them(s3):
    manifest, objects = _dataset({"train": [[_unlabeled(0, "train"), _unlabeled(1, "train")]],
                                  "val": [[_unlabeled(2, "val")]]})
    s3.update(objects)
    assert verify(manifest | {"classes": [], "unlabeled": True}) == []
    key, url = "{:032x}".format, f"{PREFIX}/train-000000.tar"
    assert verify(manifest)[:2] == [f"{url}: sample {key(0)} lacks members (has ['json', 'npy'])",
                                    f"{url}: sample {key(1)} lacks members (has ['json', 'npy'])"]
    labelled, objects = _dataset({"train": [[_unlabeled(0, "train"), _sample(1, "train")]]})
    s3.update(objects)
    assert verify(labelled | {"classes": [], "unlabeled": True}) == [
        f"{url}: sample {key(1)} carries a label (.cls member or label_id) but the dataset is unlabeled"]
