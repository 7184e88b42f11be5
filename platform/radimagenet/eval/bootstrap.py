"""Bootstrap resampling: who is drawn (images, images within their class, or whole patients) and the
percentile interval. The statistic itself (the AUC) lives in :mod:`radimagenet.eval.metrics`.

    columns, chunks = draws(len(patients), 2000, seed=0, patients=patients)   # columns: each image's patient
    values = np.concatenate([stat(chunk[:, columns]) for chunk in chunks])
    lo, hi = percentile_ci(values)

A resample is a row of *multiplicities* (how often each unit was drawn, summing to the number of
units), so a statistic weighs samples instead of copying them. Rows come in chunks of about 2 M
entries (int32) so memory stays small whatever the number of resamples. A patient (cluster) bootstrap
draws patients with replacement and gives every image of a drawn patient its patient's multiplicity:
the images of one patient stay together, as the patients (not the images) are the independent units.
Deterministic for a given ``seed``; resampling ``P`` patients that each hold one image draws exactly
what resampling those ``P`` images does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError

CHUNK_ENTRIES = 1 << 21  # multiplicities per chunk (8 MB of int32)


def check_n(n: int) -> None:
    """A bootstrap needs at least one resample."""
    if n < 1:
        raise ConfigError(f"bootstrap needs n >= 1 resamples, got {n}")


def patient_columns(patients: Any) -> tuple[np.ndarray, int]:
    """``(column [N], P)``: each image's patient as an index, patients numbered in order of first appearance."""
    p = np.asarray(patients).reshape(-1)
    if p.size == 0:
        raise ConfigError("no patients given (one pseudonym per image expected)")
    _, first, inverse = np.unique(p, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)], int(first.size)


def _draw(rng: np.random.Generator, size: int, rows: int) -> np.ndarray:
    """[rows, size] int32 multiplicities: ``size`` draws with replacement from ``size`` units per row."""
    idx = rng.integers(0, size, size=(rows, size), dtype=np.int64)
    idx += (np.arange(rows, dtype=np.int64) * size)[:, None]
    return np.bincount(idx.reshape(-1), minlength=rows * size).reshape(rows, size).astype(np.int32)


def resample(units: int, n: int, seed: int = 0, *, strata: Any = None) -> Iterator[np.ndarray]:
    """``n`` bootstrap rows of multiplicities over ``units`` units, in [r, units] int32 chunks.

    With ``strata`` (one group label per unit) each group is resampled on its own, keeping its size
    (e.g. positives and negatives, as pROC's stratified bootstrap does).
    """
    check_n(n)
    if units < 1:
        raise ConfigError("bootstrap needs at least one unit to resample")
    rng = np.random.default_rng(seed)
    groups = [np.arange(units)] if strata is None else [
        np.flatnonzero(np.asarray(strata).reshape(-1) == g) for g in np.unique(strata)]
    rows = max(1, CHUNK_ENTRIES // units)
    for start in range(0, n, rows):
        r = min(rows, n - start)
        if len(groups) == 1:
            yield _draw(rng, units, r)
            continue
        counts = np.zeros((r, units), dtype=np.int32)
        for idx in groups:
            counts[:, idx] = _draw(rng, idx.size, r)
        yield counts


def draws(images: int, n: int, seed: int = 0, *, patients: Any = None,
          strata: Any = None) -> tuple[np.ndarray | None, Iterator[np.ndarray]]:
    """``(columns, chunks)`` for ``n`` resamples of ``images`` images: image i weighs ``chunk[:, columns[i]]``.

    With ``patients`` (one pseudonym per image) whole patients are drawn and ``strata`` does not apply
    (a patient may hold both classes); otherwise images are (``columns`` None), within ``strata`` if given.
    """
    if patients is None:
        return None, resample(images, n, seed, strata=strata)
    if np.size(patients) != images:
        raise ConfigError(f"{np.size(patients)} patients given for {images} images (one per image expected)")
    columns, units = patient_columns(patients)
    return columns, resample(units, n, seed)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite ``values`` (NaN, NaN when none is finite)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
