"""The format's names and rules, and the manifest checks, without a server (storage is faked)."""

from __future__ import annotations

import copy
import json

import pytest

from radimagenet.dataset import format as fmt
from radimagenet.errors import ConfigError
from radimagenet.io import storage

MANIFEST = {
    "format": fmt.FORMAT, "uri": "s3://b/ds", "classes": ["CT/lung/nodule", "MR/knee", "US"],
    "image_size": 32, "channels": 1, "encoding": "npy", "has_masks": False,
    "splits": {
        "train": {"samples": 5, "classes": {"CT/lung/nodule": 3, "US": 2},
                  "shards": [{"url": "s3://b/ds/train-000000.tar", "samples": 3},
                             {"url": "s3://b/ds/train-000001.tar", "samples": 2}]},
        "val": {"samples": 0, "classes": {}, "shards": []},
    },
}


def test_constants_are_the_documented_ones():
    assert fmt.FORMAT == "radimagenet-dataset/1"  # existing datasets say this: changing it orphans them
    assert fmt.ENCODINGS == ("npy", "png") and fmt.SPLITS == ("train", "val", "test")
    assert (fmt.LABEL_EXT, fmt.META_EXT, fmt.MASK_EXT) == ("cls", "json", "mask.png")


@pytest.mark.parametrize("name, expected", [
    ("0123abcd.npy", ("0123abcd", "npy")),
    ("0123abcd.mask.png", ("0123abcd", "mask.png")),  # the extension is everything after the first dot
    ("dir.v2/sub.d/k.cls", ("dir.v2/sub.d/k", "cls")),  # dots in directories are part of the key
    ("dir/k", ("dir/k", "")),  # no extension: not a sample member
    ("dir.v2/k", ("dir.v2/k", "")),
    ("k.", ("k", "")),
])
def test_the_key_rule(name, expected):
    assert fmt.split_member_name(name) == expected
    key, ext = expected
    if ext:
        assert fmt.member_name(key, ext) == name


def test_check_key_refuses_keys_the_rule_cannot_give_back():
    assert fmt.check_key("0" * 32) == "0" * 32
    assert fmt.check_key("a.b/c") == "a.b/c"
    for bad in ("a.b", "dir/a.b", "", "dir/"):
        with pytest.raises(ConfigError, match="sample key"):
            fmt.check_key(bad)


def test_names_and_uris():
    assert fmt.shard_name("train", 0) == "train-000000.tar"
    assert fmt.shard_name("val", 123456) == "val-123456.tar"
    for given in ("s3://b/ds", "s3://b/ds/", "s3://b/ds/manifest.json"):
        assert fmt.manifest_uri(given) == "s3://b/ds/manifest.json"
    assert fmt.manifest_uri("s3://b/ds/other.json") == "s3://b/ds/other.json"
    assert fmt.modality_of("CT/lung/nodule") == "CT" and fmt.modality_of("US") == "US"


def test_split_shards_and_class_counts():
    assert fmt.split_shards(MANIFEST, "train") == [fmt.ShardRef("s3://b/ds/train-000000.tar", 3),
                                                   fmt.ShardRef("s3://b/ds/train-000001.tar", 2)]
    assert fmt.split_shards(MANIFEST, "val") == []
    with pytest.raises(ConfigError, match=r"no 'test' split; it has \['train', 'val'\]"):
        fmt.split_shards(MANIFEST, "test")
    assert fmt.class_counts(MANIFEST, "train") == [3, 0, 2]


def _broken(path: list, value) -> dict:
    out = copy.deepcopy(MANIFEST)
    target = out
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize("manifest, message", [
    ([1, 2], "is not a JSON object"),
    (_broken(["format"], "radimagenet-dataset/2"), "has format 'radimagenet-dataset/2'; this version reads"),
    (_broken(["classes"], KeyError), r"incomplete: missing \['classes'\]"),
    (_broken(["classes"], []), "'classes' must be a non-empty list"),
    (_broken(["image_size"], "32"), "'image_size' must be a positive integer"),
    (_broken(["encoding"], "jpeg"), "encoding 'jpeg' is not one of"),
    (_broken(["splits"], {}), "'splits' must be a non-empty mapping"),
    (_broken(["splits", "val", "shards"], KeyError), "split 'val' has no 'shards' list"),
    (_broken(["splits", "train", "shards", 1, "samples"], -1), "split 'train' shard 1 needs a 'url'"),
    (_broken(["splits", "train", "samples"], 6), "split 'train' says 6 samples but its shards hold 5"),
])
def test_validate_manifest_names_the_file_and_the_reason(manifest, message):
    with pytest.raises(ConfigError, match=message) as info:
        fmt.validate_manifest(manifest, "s3://b/ds/manifest.json")
    assert str(info.value).startswith("s3://b/ds/manifest.json")


def test_validate_manifest_returns_a_valid_manifest_unchanged():
    assert fmt.validate_manifest(MANIFEST) is MANIFEST


def test_an_unlabeled_manifest_has_no_classes_and_its_samples_no_cls_member():
    from radimagenet.dataset.tar import sample_members

    unlabeled = dict(copy.deepcopy(MANIFEST), classes=[], unlabeled=True)
    assert fmt.validate_manifest(unlabeled) is unlabeled
    assert fmt.is_unlabeled(unlabeled) and not fmt.is_unlabeled(MANIFEST)
    for bad, message in ((dict(unlabeled, classes=["CT"]), "an unlabeled dataset has 'classes' \\[\\]"),
                         (dict(unlabeled, multi_label=True), "is not multi-label"),
                         (dict(unlabeled, unlabeled="yes"), "'unlabeled' must be true or false")):
        with pytest.raises(ConfigError, match=message):
            fmt.validate_manifest(bad)
    sample = fmt.Sample(index=0, source="src-0", key="0" * 32, split="train", patient="p", label_id=fmt.UNLABELED,
                        image=b"i", meta=b"{}")
    assert [name for name, _ in sample_members(sample, "npy")] == ["0" * 32 + ".npy", "0" * 32 + ".json"]
    assert fmt.member_label_ids({"key": "k"}) == () and fmt.member_label_ids({"label_id": 3}) == (3,)


@pytest.fixture
def fake_s3(monkeypatch) -> dict[str, bytes]:
    """An in-memory bucket behind the storage functions load_manifest uses."""
    objects: dict[str, bytes] = {}
    monkeypatch.setattr(storage, "exists", lambda uri: str(uri) in objects)
    monkeypatch.setattr(storage, "list_keys",
                        lambda prefix: sorted(k for k in objects if k.startswith(str(prefix).rstrip("/") + "/")))
    monkeypatch.setattr(storage, "read_json", lambda uri: json.loads(objects[str(uri)]))
    return objects


def test_load_manifest_complete_unfinished_missing_and_broken(fake_s3):
    fake_s3["s3://b/ds/manifest.json"] = json.dumps(MANIFEST).encode()
    assert fmt.load_manifest("s3://b/ds") == MANIFEST == fmt.load_manifest("s3://b/ds/manifest.json")
    with pytest.raises(ConfigError, match=r"no dataset at s3://b/none: s3://b/none/manifest.json does not exist"):
        fmt.load_manifest("s3://b/none/")
    fake_s3["s3://b/half/_journal/config.json"] = b"{}"
    with pytest.raises(ConfigError, match=r"dataset at s3://b/half is incomplete: no manifest.json .*resume"):
        fmt.load_manifest("s3://b/half")
    fake_s3["s3://b/bad/manifest.json"] = b"{not json"
    with pytest.raises(ConfigError, match=r"s3://b/bad/manifest.json is not valid JSON"):
        fmt.load_manifest("s3://b/bad")
    fake_s3["s3://b/old/manifest.json"] = json.dumps({**MANIFEST, "format": "x/0"}).encode()
    with pytest.raises(ConfigError, match=r"s3://b/old/manifest.json has format 'x/0'"):
        fmt.load_manifest("s3://b/old")
