"""What to read: a labels CSV (``path,label[,patient_id][,split][,mask]``) or a folder layout.

    rows = read_inputs("corpus", "corpus/labels.csv")   # or read_inputs("corpus", None): folder layout
    classes = class_list(rows)                           # index in this list = label id

The folder layout is RadImageNet's released one: the relative directory of a file is its label
(``CT/lung/nodule/0001.png`` -> ``CT/lung/nodule``; flat ``US/gb/0001.png`` -> ``US/gb``).
Every input becomes an :class:`InputRow` with a stable index (its order in the source); rows that
cannot even be read as rows carry a ``problem`` and end as rejected, never silently dropped.

Nothing outside SOURCE is ever read: a CSV path or mask that resolves outside it (absolute, ``..``,
a symlink out) and a link in the folder that points outside it are ``outside_source`` rows. A file
name that is not valid UTF-8 is a ``bad_filename`` row (shown with its bytes escaped, ``\\xff``); a
label with a control, format or line-separator character is a ``bad_label`` row. A ``problem``
detail never holds the path (the row's ``source`` does).

Multi-label (``read_inputs(..., multi_label=True)``, ``radimagenet ingest --multi-label``): the label
cell of a labels CSV lists every finding of the image, separated by ``|`` (``effusion|nodule``, as
NIH ChestX-ray14 writes them); the row's ``label`` is then the sorted distinct names joined by ``|``
and each name is a class. An empty name (``a||b``) is a ``bad_label`` row. A folder gives one label,
so a multi-label ingest needs a labels CSV.

Unlabeled (``read_inputs(..., unlabeled=True)``, ``radimagenet ingest --unlabeled``): every row's
``label`` is ``""``. The folder layout gives no class (files may sit at any depth, SOURCE itself
included); a labels CSV needs only a ``path`` column and its ``label`` column, if any, is ignored (said
once on stderr).
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import operator
import os
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from radimagenet.dataset.format import LABEL_SEP, label_names
from radimagenet.errors import ConfigError

REQUIRED_COLUMNS = ("path", "label")
UNLABELED_MULTI_LABEL = "--unlabeled and --multi-label exclude each other: an unlabeled dataset has no labels"
OPTIONAL_COLUMNS = ("patient_id", "split", "mask")
SPLIT_NAMES = ("train", "val", "test")
# control (\n \t \x00 ...), invisible format (bidi overrides, zero-width) and line/paragraph separators
_BAD_LABEL_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
_NAME = operator.attrgetter("name")
_JOINERS = frozenset("\u200c\u200d")  # zero-width (non-)joiner: part of correctly spelled Persian, Arabic, Indic words


class InputRow(NamedTuple):
    """One input: a file (and its row in labels.csv, if any). A named tuple, not a frozen dataclass:
    made 10x faster (the scan of a large folder); rows cross to the Ray tasks as columns (``shards.pickle_rows``)."""

    index: int
    source: str  # the path as given (CSV cell, or the path relative to SOURCE; non-UTF-8 bytes escaped)
    path: str  # absolute path to read ("" when the row has a problem that forbids reading)
    label: str
    patient_id: str | None = None  # identifying: only ever hashed
    split: str | None = None
    mask: str | None = None  # absolute path of the mask, if any
    problem: tuple[str, str] | None = None  # (reason, detail) when the row itself is unusable


# --- checks shared by both layouts -----------------------------------------------------------------

def _inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve(root: str, given: str) -> str | None:
    """``given`` (relative to ``root``, or absolute) with every symlink and ``..`` resolved; None if
    it cannot be a path at all (an embedded NUL)."""
    try:
        return os.path.realpath(os.path.join(root, given))
    except (ValueError, OSError):
        return None


@functools.lru_cache(maxsize=4096)
def _label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class name (a control, format or line-separator character), or None."""
    for ch in label:
        if unicodedata.category(ch) in _BAD_LABEL_CATEGORIES and ch not in _JOINERS:
            return f"the label has a control character (U+{ord(ch):04X})"
    return None


def _is_utf8(name: str) -> bool:
    """False for a name decoded with surrogate escapes (a file name whose bytes are not UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_name(name: str) -> str:
    """A printable, JSON-safe form of a file name: bytes that are not UTF-8 become ``\\xNN``."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file system produced
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


# --- labels CSV ------------------------------------------------------------------------------------

def read_labels_csv(source: Path, labels: Path, multi_label: bool = False, unlabeled: bool = False) -> list[InputRow]:
    """Rows of a labels CSV; paths are relative to ``source``. Missing columns fail fast.
    ``multi_label``: a label cell lists several names separated by ``|``; ``unlabeled``: only ``path``
    is required and a ``label`` column is ignored."""
    if not labels.is_file():
        raise ConfigError(f"labels file {labels} does not exist")
    root = os.path.realpath(source)
    reader = csv.reader(io.StringIO(_decode_labels(labels), newline=""))
    out: list[InputRow] = []
    try:
        columns = [c.strip() for c in next(reader, [])]
        missing = [c for c in (("path",) if unlabeled else REQUIRED_COLUMNS) if c not in columns]
        if unlabeled and "label" in columns:
            print(f"radimagenet ingest: note: --unlabeled: the label column of {labels} is ignored", file=sys.stderr)
        if missing:
            raise ConfigError(
                f"{labels}: missing column(s) {missing}; expected a header with "
                f"{', '.join(REQUIRED_COLUMNS)} and optionally {', '.join(OPTIONAL_COLUMNS)}"
            )
        start = reader.line_num + 1
        for cells in reader:  # a quoted cell may span lines: a row starts where the previous one ended
            line, start = start, reader.line_num + 1
            if not cells:
                continue
            r = {col: cell.strip() for col, cell in zip(columns, cells, strict=False)}
            extra = sum(1 for cell in cells[len(columns):] if cell.strip())
            if multi_label:
                r["label"] = _multi_label(r.get("label", ""))
            if unlabeled:
                r["label"] = ""
            out.append(_row_from_csv(len(out), r, root, line, extra, multi_label, unlabeled))
    except csv.Error as exc:
        raise ConfigError(f"{labels} line {reader.line_num}: not a readable CSV row ({exc})") from None
    check_split_column(out, labels)
    return out


def _decode_labels(labels: Path) -> str:
    """The text of a UTF-8 labels file (a BOM is dropped); otherwise fail with the byte offset."""
    try:
        data = labels.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {labels}: {exc.strerror or exc}") from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return str(memoryview(data)[skip:], "utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise ConfigError(
            f"{labels}: not valid UTF-8 at byte offset {offset} (line {line}, byte 0x{data[offset]:02x}); "
            f"save the labels file as UTF-8"
        ) from None


def _row_from_csv(index: int, r: dict[str, str], source: str, line: int, extra: int = 0,
                  multi_label: bool = False, unlabeled: bool = False) -> InputRow:
    """One CSV row as an input; ``extra`` counts non-empty cells beyond the header (an unquoted comma)."""
    where = f"labels.csv line {line}"
    given, label = r.get("path", ""), r.get("label", "")
    split = r.get("split") or None
    mask_given = r.get("mask") or None
    path = _resolve(source, given) if given else None
    mask = _resolve(source, mask_given) if mask_given else None
    problem = None
    if not given:
        problem = ("bad_row", f"{where}: empty path")
    elif extra:
        problem = ("bad_row", f"{where}: {extra} cell(s) more than the header (quote a path with a comma)")
    elif path is None or (mask_given and mask is None):
        problem = ("bad_row", f"{where}: the path or mask holds a NUL character")
    elif not _inside(path, source):
        problem = ("outside_source", f"{where}: the path leaves SOURCE (absolute, '..' or a link out); not read")
    elif mask is not None and not _inside(mask, source):
        problem = ("outside_source", f"{where}: the mask path leaves SOURCE (absolute, '..' or a link out); "
                   f"not read")
    elif not label and not unlabeled:
        problem = ("missing_label", f"{where}: empty label")
    elif _label_problem(label):
        problem = ("bad_label", f"{where}: {_label_problem(label)}")
    elif multi_label and label.startswith(LABEL_SEP):  # _multi_label sorts an empty name first
        problem = ("bad_label", f"{where}: an empty name in the multi-label cell (names are separated by "
                   f"{LABEL_SEP!r})")
    elif split is not None and split not in SPLIT_NAMES:
        problem = ("bad_split", f"{where}: split {split!r} is not one of {SPLIT_NAMES}")
    unreadable = problem is not None and problem[0] in ("bad_row", "outside_source")
    return InputRow(
        index=index,
        source=given or f"<labels.csv line {line}>",
        path="" if unreadable or path is None else path,
        label=label,
        patient_id=r.get("patient_id") or None,
        split=split,
        mask=None if unreadable else mask,
        problem=problem,
    )


def _multi_label(cell: str) -> str:
    """A multi-label cell as the sorted distinct names joined by ``|``; an empty name is kept (as ``||``)
    so that the row is refused ``bad_label``, never silently read as fewer labels."""
    names = [n.strip() for n in cell.split(LABEL_SEP)]
    return "" if not cell.strip() else LABEL_SEP.join(sorted(set(names)))


def check_split_column(rows: list[InputRow], labels: Path) -> None:
    """A patient given two different splits in the CSV is a misconfiguration: fail before writing."""
    first: dict[str, InputRow] = {}
    for row in rows:
        if row.patient_id is None or row.split is None or row.problem:
            continue
        seen = first.setdefault(row.patient_id, row)
        if seen.split != row.split:
            raise ConfigError(  # rows by number, never by path (paths may name the patient)
                f"labels file: data rows {seen.index + 1} and {row.index + 1} belong to the same patient but "
                f"are assigned to splits {seen.split!r} and {row.split!r}; a patient must stay in one split"
            )


# --- folder layout ---------------------------------------------------------------------------------

def scan_folder(source: Path, unlabeled: bool = False) -> list[InputRow]:
    """Every file under ``source`` (sorted, depth first); its relative directory is the label
    (``unlabeled``: no label, and a file may sit at any depth).

    Folder links are never followed (one pointing outside SOURCE is an ``outside_source`` row, one
    inside is skipped: its files are listed where they are); a file link is read only when its target
    is inside SOURCE. A folder that cannot be listed is an ``unreadable`` row.
    """
    if not source.is_dir():
        raise ConfigError(f"source folder {source} does not exist")
    root = os.path.realpath(source)
    rows: list[InputRow] = []
    stack = [""]  # relative folders still to list; popped in sorted order
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as it:
                entries = sorted(it, key=_NAME)
        except OSError as exc:
            if not rel_dir:
                raise ConfigError(f"cannot list source folder {source}: {exc.strerror or exc}") from None
            rows.append(_folder_row(len(rows), rel_dir, "", ("unreadable", "this folder cannot be listed"),
                                    unlabeled))
            continue
        subdirs = []
        label = "" if unlabeled else rel_dir.replace(os.sep, "/")  # what _folder_row gives this folder's files
        plain = _is_utf8(rel_dir) and (bool(label) or unlabeled) and not _label_problem(label)
        prefix = rel_dir + os.sep if rel_dir else ""  # os.path.join(rel_dir, name), 3x faster
        for entry in entries:
            rel = prefix + entry.name
            if _entry_is(entry.is_dir, follow_symlinks=False):
                subdirs.append(rel)
                continue
            name = entry.name
            if plain and (name.isascii() or _is_utf8(name)) and not _entry_is(entry.is_symlink):  # common, fast
                rows.append(_plain_row((len(rows), rel, entry.path, label, None, None, None, None)))
                continue
            row = _folder_entry(len(rows), rel, entry, root, unlabeled)
            if row is not None:
                rows.append(row)
        stack.extend(reversed(subdirs))
    return rows


# InputRow(index, source, path, label) made without the named tuple's Python __new__ (3x faster)
_plain_row = functools.partial(tuple.__new__, InputRow)


def _folder_entry(index: int, rel: str, entry: os.DirEntry, root: str, unlabeled: bool = False) -> InputRow | None:
    """The row of one non-directory entry of the scan (None: a folder link inside SOURCE, skipped)."""
    if not _entry_is(entry.is_symlink):
        return _folder_row(index, rel, entry.path, None, unlabeled)
    target = os.path.realpath(entry.path)
    inside = _inside(target, root)
    if os.path.isdir(target):
        if inside:
            return None
        return _folder_row(index, rel, "", ("outside_source", "a folder link that leaves SOURCE; not followed"),
                           unlabeled)
    if not inside:
        return _folder_row(index, rel, "", ("outside_source", "a file link that leaves SOURCE; not read"), unlabeled)
    return _folder_row(index, rel, target, None, unlabeled)


def _entry_is(test: Callable[..., bool], **kwargs: bool) -> bool:
    """``entry.is_dir()`` / ``is_symlink()``, False when the entry vanished or cannot be stat'ed."""
    try:
        return test(**kwargs)
    except OSError:
        return False


def _folder_row(index: int, rel: str, path: str, problem: tuple[str, str] | None,
                unlabeled: bool = False) -> InputRow:
    """A folder-layout row: label from the relative folder (``unlabeled``: none); name and label checks
    after ``problem``."""
    label = "" if unlabeled else os.path.dirname(rel).replace(os.sep, "/")
    utf8 = _is_utf8(rel)
    if problem is None and not utf8:
        problem = ("bad_filename", "the file or folder name is not valid UTF-8 (shown with \\x escapes); "
                   "rename it")
    elif problem is None and not label and not unlabeled:
        problem = ("missing_label", "the file is not inside a label folder")
    elif problem is None and _label_problem(label):
        problem = ("bad_label", f"folder name: {_label_problem(label)}")
    if not utf8:
        rel, label = escape_name(rel), escape_name(label)
    return InputRow(index=index, source=rel, path="" if problem else path, label=label, problem=problem)


# --- both ------------------------------------------------------------------------------------------

def read_inputs(source: str, labels: str | None, multi_label: bool = False, unlabeled: bool = False) -> list[InputRow]:
    """Rows from ``labels`` when given, else from the folder layout under ``source``
    (``multi_label``: label cells list several ``|``-separated names; needs ``labels``; ``unlabeled``:
    every row's label is empty, whatever the folders or a label column say)."""
    src = Path(source).expanduser().resolve()
    if not src.exists():
        raise ConfigError(f"source {source} does not exist")
    if unlabeled and multi_label:
        raise ConfigError(UNLABELED_MULTI_LABEL)
    if multi_label and not labels:
        raise ConfigError("--multi-label needs a labels CSV (--labels) whose label cells list the image's "
                          "findings separated by '|': a folder gives each file one label")
    rows = (read_labels_csv(src, Path(labels).expanduser(), multi_label, unlabeled) if labels
            else scan_folder(src, unlabeled))
    if not rows:
        raise ConfigError(f"no inputs found in {labels or source}")
    return rows


def class_list(rows: list[InputRow], multi_label: bool = False) -> list[str]:
    """Sorted distinct labels of the usable rows: index in this list = label id.

    A class whose every row has a problem here is not in the list; one whose files are all rejected
    later (at decode) keeps its id, since ids are fixed before shards are written; the manifest then
    lists it under ``counts.classes_without_images``.
    """
    return sorted({n for r in rows if r.label and r.problem is None for n in label_names(r.label, multi_label)})
