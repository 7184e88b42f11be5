"""Shared images and patients between datasets: the perceptual hash and the banded join (no server), and
``radimagenet dataset overlap`` on crafted datasets in the local stack's S3 (integration).

The images are the synthetic CT abdomen generator's (one class family, so distinct images look alike
globally: the hard case for false positives); near copies are JPEG re-encodings and 5% resizes.
"""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
from PIL import Image

import helpers_shards
from radimagenet.dataset.fingerprint import perceptual_hash
from radimagenet.dataset.overlap import NEAR_THRESHOLD, hamming, near_pairs, secret_note

SIZE = 96


@functools.cache
def anatomy(seed: int, size: int = SIZE) -> np.ndarray:
    """A synthetic CT abdomen slice (normal or with a liver lesion), as a uint8 grey ``size`` x ``size`` image."""
    from radimagenet.ops.synth import generator_for

    pixels = generator_for(("CT/abd/normal", "CT/abd/liver_lesion")[seed % 2], "downstream")(
        np.random.default_rng(seed))
    a = pixels.array.astype(np.float32)
    lo, hi = np.percentile(a, [1, 99])
    grey = (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR))


def jpeg(image: np.ndarray, quality: int = 50) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` scaled by ``factor`` (the source someone resized), then back to its size (what an ingest stores)."""
    side = round(image.shape[0] * factor)
    small = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(small.resize(image.shape[::-1], Image.Resampling.BILINEAR))


def test_the_hash_survives_reencoding_and_resizing_but_tells_similar_slices_apart():
    images = [anatomy(seed) for seed in range(16)]
    h = perceptual_hash(images)
    assert h.shape == (16, 32) and h.dtype == np.uint8
    for copy in ([jpeg(a, 50) for a in images], [resized(a, 0.95) for a in images],
                 [resized(a, 1.05) for a in images], [np.asarray(Image.fromarray(a).resize((224, 224))) for a in images]):
        assert hamming(h, perceptual_hash(copy)).max() <= NEAR_THRESHOLD // 2
    ia, ib = np.triu_indices(16, 1)
    distinct = hamming(h[ia], h[ib])
    assert distinct.min() > 2 * NEAR_THRESHOLD, sorted(distinct)[:5]  # measured: 30 and more
    assert hamming(h, perceptual_hash([a[:, ::-1] for a in images])).min() > NEAR_THRESHOLD  # mirrored: another image


def test_the_banded_join_finds_exactly_the_pairs_a_full_comparison_finds():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    bits = np.unpackbits(a[rng.integers(0, 3000, 300)], axis=1)
    for row, flips in zip(bits, rng.integers(0, 2 * NEAR_THRESHOLD, 300), strict=True):
        row[rng.choice(256, flips, replace=False)] ^= 1  # planted: 0 to 31 bits from a row of a
    b[:300] = np.packbits(bits, axis=1)
    b[300] = b[301] = a[7]  # two rows of b at distance 0 from one of a

    ia, ib, dist = near_pairs(a, b)
    ua, ub = (np.unpackbits(x, axis=1).astype(np.float32) for x in (a, b))
    full = np.rint(ua @ (1 - ub).T + (1 - ua) @ ub.T).astype(np.int32)  # every pair's distance
    want = set(zip(*np.nonzero(full <= NEAR_THRESHOLD), strict=True))
    assert set(zip(ia.tolist(), ib.tolist(), strict=True)) == {(int(i), int(j)) for i, j in want}
    assert len(ia) == len(want) and (dist == full[ia, ib]).all() and 150 < len(want) < 300
    assert list(ib) == sorted(ib)
    assert [len(x) for x in near_pairs(a[:0], b)] == [0, 0, 0]


def test_patients_compare_only_under_one_secret():
    same = {"ingest": {"secret_fingerprint": "abc"}}
    assert secret_note(same, same) == ""
    assert "different secrets (abc vs def)" in secret_note(same, {"ingest": {"secret_fingerprint": "def"}})
    assert "does not record its secret fingerprint" in secret_note(same, {"ingest": {}})


# ------------------------------------------------------------------------------ the command, on S3

A_IMAGES = {"train": range(0, 8), "val": range(8, 12), "test": range(12, 16)}  # anatomy seeds


def a_image(split: str, index: int, size: int) -> np.ndarray:
    return anatomy(A_IMAGES[split][index], size)


def b_image(split: str, index: int, size: int) -> np.ndarray:
    """B's test split: 2 exact copies of A's, 2 JPEG re-encodings, 2 resized by 5%, 2 new images; the
    other splits: new images only."""
    if split != "test" or index >= 6:
        return anatomy(100 + 10 * len(split) + index, size)
    source = a_image("train", index, size) if index < 4 else a_image("val", index - 4, size)
    return source if index < 2 else jpeg(source, 50) if index < 4 else resized(source, (0.95, 1.05)[index % 2])


def b_patient(split: str, index: int) -> str:
    return "a-train-5" if (split, index) == ("test", 6) else f"b-{split}-{index}"  # a new image, a known patient


def write(uri: str, image_fn, patient_fn, splits: dict[str, int], secret: str) -> None:
    manifest = helpers_shards.write_test_dataset(uri, splits, 3, image_size=SIZE, num_classes=2,
                                                 image_fn=image_fn, patient_fn=patient_fn)
    manifest["ingest"] = {"secret_fingerprint": secret}
    from radimagenet.io import storage

    storage.write_json(f"{uri}/manifest.json", manifest)


@pytest.fixture
def datasets(s3_prefix):
    helpers_shards.ensure_bucket(s3_prefix)
    a, b = f"{s3_prefix}/a", f"{s3_prefix}/b"
    write(a, a_image, lambda split, i: f"a-{split}-{i}", {s: len(r) for s, r in A_IMAGES.items()}, "f00d")
    write(b, b_image, b_patient, {"train": 4, "test": 8}, "f00d")
    return a, b


def run_cli(capsys, *argv: str) -> str:
    from radimagenet.cli import main

    assert main(["dataset", "overlap", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.integration
def test_overlap_counts_exact_and_near_copies_and_shared_patients(datasets, capsys):
    from radimagenet.io import storage

    a, b = datasets
    report = json.loads(run_cli(capsys, a, b, "--json", "--split-b", "test"))
    assert (report["images_exact"], report["images_near"], report["patients"]) == (2, 4, 1), report
    assert report["by_split"] == {"test": {"images": 8, "images_exact": 2, "images_near": 4, "patients": 1}}
    assert report["a"]["splits"] == ["train", "val", "test"] and report["a"]["images"] == 16
    assert report["b"]["images"] == 8 and report["b"]["images_in_shared_patients"] == 1
    keys_a = {s: [helpers_shards.sample_key(a_image(s, i, SIZE)) for i in range(len(r))] for s, r in A_IMAGES.items()}
    keys_b = [helpers_shards.sample_key(b_image("test", i, SIZE)) for i in range(8)]
    assert report["examples"]["exact"] == [[keys_a["train"][0], keys_b[0]], [keys_a["train"][1], keys_b[1]]]
    near = {(x, y) for x, y, d in report["examples"]["near"]}
    assert near == {(keys_a["train"][2], keys_b[2]), (keys_a["train"][3], keys_b[3]),
                    (keys_a["val"][0], keys_b[4]), (keys_a["val"][1], keys_b[5])}
    assert all(0 <= d <= NEAR_THRESHOLD for *_, d in report["examples"]["near"])
    assert report["examples"]["patients"] == ["a-train-5"]
    assert storage.exists(f"{b}/_fingerprints/test.npz") and storage.exists(f"{a}/_fingerprints/train.npz")

    # all of B's splits (its train images are new), and the cached fingerprints give the same answer
    report = json.loads(run_cli(capsys, a, b, "--json", "--split-a", "train,val"))
    assert report["by_split"]["train"] == {"images": 4, "images_exact": 0, "images_near": 0, "patients": 0}
    assert (report["images_exact"], report["images_near"]) == (2, 4)
    text = run_cli(capsys, a, b, "--split-a", "train", "--examples", "1", "--no-cache")
    assert "2 exact (same pixels), 2 near" in text and "patients in both: 1 (1 images of B)" in text, text
    assert len([line for line in text.splitlines() if line.startswith(("exact ", "near "))]) == 2, text


@pytest.mark.integration
def test_patients_are_not_compared_across_secrets(datasets, capsys):
    from radimagenet.cli import main
    from radimagenet.io import storage

    a, b = datasets
    manifest = storage.read_json(f"{b}/manifest.json")
    manifest["ingest"]["secret_fingerprint"] = "beef"
    storage.write_json(f"{b}/manifest.json", manifest)
    report = json.loads(run_cli(capsys, a, b, "--json"))
    assert report["patients"] is None and "different secrets (f00d vs beef)" in report["patients_note"]
    assert report["images_exact"] == 2 and report["examples"]["patients"] == []
    assert "patients in both: n/a" in run_cli(capsys, a, b)

    assert main(["dataset", "overlap", a, b, "--split-b", "holdout"]) == 2
    assert "has no split 'holdout'" in capsys.readouterr().err
