"""A training loader worker's reads: its samples, in its order, out of runs fetched ahead.

    for sample in reader_samples(plan.readers[w], urls, offsets, shard_starts, read_ahead):
        ...   # raw samples ({"__key__", "npy", "cls", ...}) in the order of plan.readers[w].ids

The reader's runs (:func:`radimagenet.data.plan.plan_runs`) are fetched in the order their first
samples are due, :data:`PREFETCH` ahead (:func:`radimagenet.dataset.reader.read_runs`: one ranged GET
each, on threads), parsed as they come (the whole run at once, in place) and each sample kept until
it is due.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from radimagenet.data.plan import ReaderPlan, plan_runs
from radimagenet.dataset.format import index_uri
from radimagenet.dataset.reader import parse_samples, read_runs
from radimagenet.errors import StorageError

PREFETCH = 16  # ranged GETs fetched ahead per loader worker (8 at a time)
TRIM_THRESHOLD = 1 << 30  # glibc returns freed memory to the OS only above this much (default: ~128 KiB)
MMAP_THRESHOLD = 64 << 20  # allocations below this come from the heap (default: 128 KiB, adapting)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse in this process (once; False where there is no glibc).

    A reader allocates and frees ~50 KiB samples and MiB-sized runs all the time; by default glibc
    hands them back to the kernel and faults them in again: 0.1-0.26M page faults per 20k samples,
    about 15% of the loader's CPU (old shard streaming and these runs alike, ``benchmarks/loader.py``).
    The process keeps the memory it peaked at instead (bounded by the read budget of
    :mod:`radimagenet.data.plan`).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
        return bool(trim) and bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def reader_samples(reader: ReaderPlan, urls: Sequence[str], offsets: Sequence[np.ndarray], shard_starts: np.ndarray,
                   read_ahead: int) -> Iterator[dict[str, Any]]:
    """The raw samples of ``reader.ids``, in that order (``offsets``: each shard's index offsets)."""
    keep_freed_memory()
    runs = plan_runs(reader, shard_starts, read_ahead)
    fetched = read_runs(((urls[r.shard], int(offsets[r.shard][r.first]), int(offsets[r.shard][r.last + 1]))
                         for r in runs), PREFETCH)
    due = iter(runs)
    held: dict[int, dict[str, Any]] = {}
    try:
        for gid in reader.ids.tolist():
            while gid not in held:
                run, data = next(due), next(fetched)
                samples = parse_samples(data, urls[run.shard])
                if len(samples) != run.last - run.first + 1:
                    raise StorageError(f"{urls[run.shard]}: samples {run.first}-{run.last} by its index hold "
                                       f"{len(samples)} samples; delete {index_uri(urls[run.shard])} to rebuild the index")
                base = int(shard_starts[run.shard]) + run.first
                held.update((g, samples[g - base]) for g in run.ids.tolist())
            yield held.pop(gid)
    finally:
        fetched.close()
