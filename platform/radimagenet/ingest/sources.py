"""What to read: a labels CSV (``path,label[,patient_id][,split][,mask]``) or a folder layout.

The folder layout is RadImageNet's released one: the relative directory of a file is its label
(``CT/lung/nodule/0001.png`` -> ``CT/lung/nodule``; flat ``US/gb/0001.png`` -> ``US/gb``).
Every input becomes an :class:`InputRow` with a stable index (its order in the source); rows that
cannot even be read as rows carry a ``problem`` and end as rejected, never silently dropped.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from radimagenet.errors import ConfigError

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("patient_id", "split", "mask")
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class InputRow:
    """One input: a file (and its row in labels.csv, if any)."""

    index: int
    source: str  # the path as given (CSV cell, or the path relative to SOURCE)
    path: str  # absolute path to read
    label: str
    patient_id: str | None = None  # identifying: only ever hashed
    split: str | None = None
    mask: str | None = None  # absolute path of the mask, if any
    problem: tuple[str, str] | None = None  # (reason, detail) when the row itself is unusable


def read_labels_csv(source: Path, labels: Path) -> list[InputRow]:
    """Rows of a labels CSV; paths are relative to ``source``. Missing columns fail fast."""
    if not labels.is_file():
        raise ConfigError(f"labels file {labels} does not exist")
    with labels.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ConfigError(
                f"{labels}: missing column(s) {missing}; expected a header with "
                f"{', '.join(REQUIRED_COLUMNS)} and optionally {', '.join(OPTIONAL_COLUMNS)}"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    out = [_row_from_csv(i, r, source, i + 2) for i, r in enumerate(rows)]
    check_split_column(out, labels)
    return out


def _row_from_csv(index: int, r: dict[str, str], source: Path, line: int) -> InputRow:
    given = r.get("path", "")
    problem = None
    if not given:
        problem = ("bad_row", f"labels.csv line {line}: empty path")
    elif not r.get("label"):
        problem = ("missing_label", f"labels.csv line {line}: empty label")
    split = r.get("split") or None
    if split is not None and split not in SPLIT_NAMES and problem is None:
        problem = ("bad_split", f"labels.csv line {line}: split {split!r} is not one of {SPLIT_NAMES}")
    mask = r.get("mask") or None
    return InputRow(
        index=index,
        source=given or f"<labels.csv line {line}>",
        path=str((source / given).resolve()) if given else "",
        label=r.get("label", ""),
        patient_id=r.get("patient_id") or None,
        split=split,
        mask=str((source / mask).resolve()) if mask else None,
        problem=problem,
    )


def check_split_column(rows: list[InputRow], labels: Path) -> None:
    """A patient given two different splits in the CSV is a misconfiguration: fail before writing."""
    first: dict[str, InputRow] = {}
    for row in rows:
        if row.patient_id is None or row.split is None or row.problem:
            continue
        seen = first.setdefault(row.patient_id, row)
        if seen.split != row.split:
            raise ConfigError(
                f"{labels}: rows for {seen.source!r} and {row.source!r} belong to the same patient but "
                f"are assigned to splits {seen.split!r} and {row.split!r}; a patient must stay in one split"
            )


def scan_folder(source: Path) -> list[InputRow]:
    """Every file under ``source`` (sorted); its relative directory is the label."""
    if not source.is_dir():
        raise ConfigError(f"source folder {source} does not exist")
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        files.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    rows = []
    for i, path in enumerate(files):
        rel = os.path.relpath(path, source)
        label = os.path.dirname(rel).replace(os.sep, "/")
        problem = None if label else ("missing_label", f"{rel} is not inside a label folder")
        rows.append(InputRow(index=i, source=rel, path=path, label=label, problem=problem))
    return rows


def read_inputs(source: str, labels: str | None) -> list[InputRow]:
    """Rows from ``labels`` when given, else from the folder layout under ``source``."""
    src = Path(source).expanduser().resolve()
    if not src.exists():
        raise ConfigError(f"source {source} does not exist")
    rows = read_labels_csv(src, Path(labels).expanduser()) if labels else scan_folder(src)
    if not rows:
        raise ConfigError(f"no inputs found in {labels or source}")
    return rows


def class_list(rows: list[InputRow]) -> list[str]:
    """Sorted distinct labels of the usable rows: index in this list = label id."""
    return sorted({r.label for r in rows if r.label and r.problem is None})
