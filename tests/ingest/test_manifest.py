"""The manifest from per-shard tallies: the same digest, counts and patients as from the members
themselves (the driver never sees a shard's members), whatever the number of shards."""

from __future__ import annotations

import collections
import hashlib
import random

from radimagenet.dataset.format import label_text, member_label_ids
from radimagenet.dataset.writer import ShardRecord
from radimagenet.ingest import IngestConfig
from radimagenet.ingest.manifest import build_manifest, dataset_digest, tally

CLASSES = ["CT/lung", "MR/knee", "US/liver"]


def _records(seed: int, multi_label: bool = False, unlabeled: bool = False) -> list[ShardRecord]:
    rng = random.Random(seed)
    records = []
    for split, n_shards in (("train", 3), ("val", 2), ("test", 1)):
        for index in range(n_shards):
            members = []
            for _ in range(rng.randint(1, 40)):
                m = {"index": rng.randrange(10**6), "source": f"src-{rng.getrandbits(64):016x}",
                     "key": f"{rng.getrandbits(128):032x}", "patient": f"p{rng.randrange(25)}",
                     "patient_source": rng.choice(["column", "dicom"])}
                if not unlabeled:
                    ids = sorted(rng.sample(range(3), rng.randint(1, 3))) if multi_label else [rng.randrange(3)]
                    m["label_id"] = ids[0]
                    if multi_label:
                        m["label_ids"] = ids
                members.append(m)
            records.append(ShardRecord(split, index, f"s3://b/d/{split}-{index:06d}.tar", len(members),
                                       1000 * len(members), f"{index:064x}", members))
    return records


def _reference_digest(records: list[ShardRecord], cfg: IngestConfig) -> str:
    """The digest as defined: SHA-256 over the sorted (split, key, labels) triples."""
    triples = sorted((r.split, m["key"], label_text(member_label_ids(m))) for r in records for m in r.members)
    text = f"{cfg.image_size}:{cfg.encoding}\n" + "".join(f"{s}\t{k}\t{t}\n" for s, k, t in triples)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_the_digest_from_tallies_is_the_sorted_triples_digest_in_any_shard_order():
    cfg = IngestConfig(source="/s", out="s3://b/d")
    for seed, kw in ((0, {}), (1, {"multi_label": True}), (2, {"unlabeled": True})):
        records = _records(seed, **kw)
        tallies = [tally(r, {}) for r in records]
        random.Random(seed).shuffle(tallies)
        assert dataset_digest(tallies, cfg) == _reference_digest(records, cfg)


def test_the_manifest_counts_classes_patients_and_dropped_fields_across_shards():
    cfg = IngestConfig(source="/s", out="s3://b/d", multi_label=True)
    records = _records(3, multi_label=True)
    dropped = {records[0].members[0]["index"]: ("body_part",), records[-1].members[-1]["index"]: ("body_part", "modality")}
    fingerprint = {"secret_fingerprint": "f", "inputs_sha256": "i"}
    n = sum(r.samples for r in records)
    manifest = build_manifest(cfg, CLASSES, [tally(r, dropped) for r in reversed(records)], {"written": n, "rejected": 2},
                              {"blank": 2}, fingerprint, False)
    for split, info in manifest["splits"].items():
        mine = [r for r in records if r.split == split]
        classes = collections.Counter(CLASSES[i] for r in mine for m in r.members for i in m["label_ids"])
        assert info["classes"] == {c: classes.get(c, 0) for c in CLASSES}
        assert info["patients"] == len({m["patient"] for r in mine for m in r.members})  # a union, not a sum
        assert [s["url"] for s in info["shards"]] == [r.url for r in mine]  # in shard order
        assert info["samples"] == sum(r.samples for r in mine)
    assert manifest["counts"]["dropped_fields"] == {"body_part": 2, "modality": 1}
    assert (manifest["counts"]["inputs"], manifest["counts"]["written"]) == (n + 2, n)
    assert manifest["split_unit"] == "patient"
    records[1].members[0]["patient_source"] = "file"  # one image was its own patient
    assert build_manifest(cfg, CLASSES, [tally(r, {}) for r in records], {}, {}, fingerprint, False)["split_unit"] == "image"
