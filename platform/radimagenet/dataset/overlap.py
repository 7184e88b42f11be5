"""Images and patients that two datasets share: exact copies, near copies (re-encoded, resized), patients.

    report = overlap(load_manifest("s3://b/pretrain"), load_manifest("s3://b/thyroid"), splits_b=["test"])
    report["images_exact"], report["images_near"], report["patients"]

Counts are of dataset B's images (the second argument): ``images_exact`` have a twin in A with the same
pixels (the same sample key, i.e. the same full-resolution image, or the same stored image);
``images_near`` are not exact but their 256-bit perceptual hashes (:mod:`~radimagenet.dataset.fingerprint`)
differ from one of A's in at most :data:`NEAR_THRESHOLD` bits. ``patients`` counts pseudonyms found in
both, and is None when the two datasets were not ingested under the same de-identification secret
(their ``ingest.secret_fingerprint`` differ or are unknown): pseudonyms are then unrelated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from radimagenet.dataset.fingerprint import HASH_BITS, Fingerprints, fingerprint_split
from radimagenet.errors import ConfigError

# Measured on 396 synthetic CT/MR/US images at 224 px: JPEG at quality 50 and resizes by 0.29-1.15x move
# a hash by at most 8 bits (JPEG quality 20, brightness +10: 12), while the closest two distinct images
# differ in 36 (0.01st percentile of all pairs: 40). 16 sits between. Crops are not caught (2 px: 28).
NEAR_THRESHOLD = 16
BANDS = NEAR_THRESHOLD + 1  # pigeonhole: hashes within NEAR_THRESHOLD bits agree on one whole band
PAIRS_PER_PIECE = 1 << 20  # candidate pairs compared at a time (memory bound of the join)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance between rows of two packed-hash arrays of the same shape."""
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(axis=1, dtype=np.int32)


# bit i of a hash is bit i // BANDS of band i % BANDS: interleaved, so each band mixes low and high frequencies
_BAND_WEIGHTS = np.zeros((HASH_BITS, BANDS), np.float32)
_BAND_WEIGHTS[np.arange(HASH_BITS), np.arange(HASH_BITS) % BANDS] = 2.0 ** (np.arange(HASH_BITS) // BANDS)


def _bands(phash: np.ndarray) -> np.ndarray:
    """``(n, BANDS)`` int64: each band's bits as an integer (one float32 product: exact below 2^24)."""
    out = np.zeros((len(phash), BANDS), np.int64)
    for start in range(0, len(phash), 65536):
        bits = np.unpackbits(phash[start:start + 65536], axis=1).astype(np.float32)
        out[start:start + len(bits)] = np.rint(bits @ _BAND_WEIGHTS)
    return out


def _candidates(a_band: np.ndarray, b_band: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ia, ib)`` index pairs whose band values are equal, at most PAIRS_PER_PIECE at a time (a sort
    and a binary search: O((N + M) log N + pairs), never N x M)."""
    order = np.argsort(a_band, kind="stable")
    sorted_a = a_band[order]
    lo = np.searchsorted(sorted_a, b_band, "left")
    counts = np.searchsorted(sorted_a, b_band, "right") - lo
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    for p0 in range(0, total, PAIRS_PER_PIECE):
        p = np.arange(p0, min(p0 + PAIRS_PER_PIECE, total))
        ib = np.searchsorted(ends, p, "right")
        ia = order[lo[ib] + p - (ends[ib] - counts[ib])]
        yield ia, ib


def near_pairs(a: np.ndarray, b: np.ndarray, threshold: int = NEAR_THRESHOLD) -> tuple[np.ndarray, ...]:
    """``(ia, ib, distance)`` of every pair of packed hashes (rows of ``a`` and ``b``) at most ``threshold``
    bits apart, each pair once, sorted by ``ib`` then distance. ``threshold`` must be below BANDS."""
    if threshold >= BANDS:
        raise ConfigError(f"near threshold {threshold} needs more than {BANDS} bands")
    if not len(a) or not len(b):
        return np.array([], np.int64), np.array([], np.int64), np.array([], np.int32)
    a_bands, b_bands = _bands(a), _bands(b)
    found: list[np.ndarray] = []
    for band in range(BANDS):
        for ia, ib in _candidates(a_bands[:, band], b_bands[:, band]):
            d = hamming(a[ia], b[ib])
            keep = d <= threshold
            found.append(np.stack([ib[keep], d[keep], ia[keep]], axis=1))
    rows = np.unique(np.concatenate(found) if found else np.zeros((0, 3), np.int64), axis=0)
    return rows[:, 2], rows[:, 0], rows[:, 1].astype(np.int32)


def _lookup(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index in ``table`` of each of ``values`` (-1 where absent)."""
    if not len(table):
        return np.full(len(values), -1, np.int64)
    order = np.argsort(table, kind="stable")
    pos = np.clip(np.searchsorted(table[order], values), 0, len(table) - 1)
    return np.where(table[order][pos] == values, order[pos], -1)


def _splits(manifest: dict, wanted: list[str] | None, which: str) -> list[str]:
    have = [s for s, info in manifest["splits"].items() if info.get("shards")]
    missing = [s for s in wanted or [] if s not in manifest["splits"]]
    if missing:
        raise ConfigError(f"dataset {which} ({manifest.get('uri')}) has no split {missing[0]!r}; "
                          f"it has {sorted(manifest['splits'])}")
    return [s for s in have if s in wanted] if wanted else have


def secret_note(a: dict, b: dict) -> str:
    """Empty when patient pseudonyms are comparable (same secret fingerprint), else why not."""
    fa, fb = (m.get("ingest", {}).get("secret_fingerprint") for m in (a, b))
    if not fa or not fb:
        return "patients not compared: a manifest does not record its secret fingerprint (ingest.secret_fingerprint)"
    if fa != fb:
        return (f"patients not compared: the datasets were ingested under different secrets ({fa} vs {fb}), "
                "so the same patient has unrelated pseudonyms")
    return ""


def overlap(a: dict, b: dict, *, splits_a: list[str] | None = None, splits_b: list[str] | None = None,
            examples: int = 10, cache: bool = True, workers: int = 4,
            progress: Callable[[int], None] | None = None) -> dict:
    """The overlap report of manifests ``a`` and ``b`` (all their splits unless narrowed): counts of
    B's images with an exact or near twin in A, shared patients, per split of B, and example pairs."""
    names_a, names_b = _splits(a, splits_a, "A"), _splits(b, splits_b, "B")

    def prints(m: dict, names: list[str]) -> list[Fingerprints]:
        return [fingerprint_split(m, s, cache=cache, workers=workers, progress=progress) for s in names]

    fa, parts_b = Fingerprints.concat(prints(a, names_a)), prints(b, names_b)
    fb = Fingerprints.concat(parts_b)
    split_of_b = np.repeat(np.array(names_b), [len(p) for p in parts_b])
    by_key, by_digest = _lookup(fa.keys, fb.keys), _lookup(fa.digests, fb.digests)
    twin = np.where(by_key >= 0, by_key, by_digest)
    exact = twin >= 0
    ia, ib, dist = near_pairs(fa.phash, fb.phash)
    keep = ~exact[ib]
    ia, ib, dist = ia[keep], ib[keep], dist[keep]
    near = np.zeros(len(fb), bool)
    near[ib] = True
    note = secret_note(a, b)
    shared = set() if note else (set(fa.patients.tolist()) & set(fb.patients.tolist())) - {b""}
    in_shared = np.array([p in shared for p in fb.patients.tolist()], bool)
    report = {
        "a": _side(a, names_a, fa), "b": _side(b, names_b, fb),
        "images_exact": int(exact.sum()), "images_near": int(near.sum()),
        "patients": None if note else len(shared),
        "near_threshold_bits": NEAR_THRESHOLD, "hash_bits": HASH_BITS,
        "by_split": {s: {"images": int((split_of_b == s).sum()),
                         "images_exact": int((exact & (split_of_b == s)).sum()),
                         "images_near": int((near & (split_of_b == s)).sum()),
                         "patients": None if note else len(set(part.patients.tolist()) & shared)}
                     for s, part in zip(names_b, parts_b, strict=True)},
        "examples": {
            "exact": [[fa.keys[t].decode(), fb.keys[i].decode()] for i, t in
                      zip(np.flatnonzero(exact)[:examples], twin[exact][:examples], strict=True)],
            "near": [[fa.keys[i].decode(), fb.keys[j].decode(), int(d)]
                     for i, j, d in zip(*_first_per_b(ia, ib, dist, examples), strict=True)],
            "patients": sorted(p.decode() for p in shared)[:examples],
        },
    }
    report["b"]["images_in_shared_patients"] = int(in_shared.sum())
    if note:
        report["patients_note"] = note
    return report


def _first_per_b(ia: np.ndarray, ib: np.ndarray, dist: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """The closest near pair of each of the first ``n`` B images that have one (input sorted by ib, d)."""
    first = np.flatnonzero(np.r_[True, ib[1:] != ib[:-1]])[:n] if len(ib) else np.array([], np.int64)
    return ia[first], ib[first], dist[first]


def _side(manifest: dict, names: list[str], prints: Fingerprints) -> dict:
    return {"uri": manifest.get("uri", ""), "digest": manifest.get("digest", ""), "splits": names,
            "images": len(prints), "patients": len(set(prints.patients.tolist()) - {b""}),
            "secret_fingerprint": manifest.get("ingest", {}).get("secret_fingerprint")}


def overlap_tag(report: dict) -> str:
    """One line for a run tag: ``images_exact=0 images_near=2 patients=1`` (``patients=n/a``: not comparable)."""
    patients = "n/a" if report["patients"] is None else report["patients"]
    return f"images_exact={report['images_exact']} images_near={report['images_near']} patients={patients}"


def summary(report: dict) -> str:
    """The report for people: what was compared, the counts per split of B, examples."""
    a, b = report["a"], report["b"]
    lines = [f"A  {a['uri']}  splits {','.join(a['splits'])}: {a['images']} images, {a['patients']} patients",
             f"B  {b['uri']}  splits {','.join(b['splits'])}: {b['images']} images, {b['patients']} patients",
             f"images of B also in A: {report['images_exact']} exact (same pixels), {report['images_near']} near "
             f"(perceptual hash within {report['near_threshold_bits']} of {report['hash_bits']} bits, not exact)",
             "patients in both: " + ("n/a" if report["patients"] is None else
                                     f"{report['patients']} ({b['images_in_shared_patients']} images of B)"),
             "", f"{'split of B':<11} {'images':>7} {'exact':>6} {'near':>6} {'patients':>9}"]
    for split, row in report["by_split"].items():
        patients = "n/a" if row["patients"] is None else row["patients"]
        lines.append(f"{split:<11} {row['images']:>7} {row['images_exact']:>6} {row['images_near']:>6} {patients:>9}")
    ex = report["examples"]
    lines += [""] if ex["exact"] or ex["near"] else []
    lines += [f"exact  A {x} = B {y}" for x, y in ex["exact"]]
    lines += [f"near   A {x} ~ B {y} ({d} bits)" for x, y, d in ex["near"]]
    if report.get("patients_note"):
        lines.append(f"note: {report['patients_note']}")
    return "\n".join(lines)
