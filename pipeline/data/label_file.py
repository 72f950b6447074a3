"""Label files: a ``.csv`` or ``.jsonl`` table of image paths and labels, read and checked. No TensorFlow.

One row per image (a JSONL line is one JSON object). Columns, matched without regard to case:

* the path: ``path``, ``filename``, ``file`` or ``image`` (first found), else ``id``; or the
  column ``--path-column`` names. Relative paths are relative to the label file's folder, or to
  ``--images DIR`` when given; absolute paths are used as they are. A value without an image
  extension (a bare Kaggle-style id) is tried as given and then with each of ``IMAGE_EXTENSIONS``
  (lower and upper case): ``DIR/abc123`` → ``DIR/abc123.jpg`` …
* the label: ``label`` (one label per row) or ``labels`` (several, separated by ``|`` or white
  space: a multi-label task); or the column ``--label-column`` names. ``--multi-label`` makes any
  label column a multi-label one.
* optional ``split``: train, validation or test (any case), used as given.

Class names are the sorted distinct labels of the usable rows. Keys are the paths relative to the
base folder (forward slashes), or absolute for files outside it.

Bad rows are not fatal here: each becomes a ``BadRow`` with its reason, and the source hands it on
as a bad item, so extraction skips and reports it like a bad image (``--max-bad``, ``--strict``).
The kinds: an empty path, a missing file, a path that is not a regular file (a named pipe or a
device: never opened), an empty label, several labels in a single-label column, an unknown split
value, and a path given by several rows that disagree (labels or split); rows that repeat a path
with the same labels and split are kept once (``LabelTable.duplicates``).
A header without a path or a label column is a one-line ``DataError`` naming the columns found.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.features.bounded_parse import MAX_LINE_BYTES, ParseLimitError, loads_json
from headstart.pipeline.data.image_header import IMAGE_EXTENSIONS
from headstart.features.regular_file import not_regular_reason
from headstart.pipeline.data.splits import SPLIT_FOLDERS
from headstart.features.errors import Arg
from headstart.pipeline.errors import DataError

#: SOURCE suffixes read as label files.
LABEL_FILE_SUFFIXES = (".csv", ".jsonl")
#: Path columns looked for, in this order; then ``ID_COLUMN``.
PATH_COLUMNS = ("path", "filename", "file", "image")
ID_COLUMN = "id"
LABEL_COLUMN, LABELS_COLUMN, SPLIT_COLUMN = "label", "labels", "split"
_SEPARATORS = re.compile(r"[|\s]+")


def is_label_file(source: str) -> bool:
    """Whether SOURCE names a label file (by its suffix: ``LABEL_FILE_SUFFIXES``)."""
    return Path(source).suffix.lower() in LABEL_FILE_SUFFIXES


@dataclass(frozen=True)
class LabelRow:
    """One usable row: ``key`` (relative to the table's root, or absolute), its labels, its split.

    ``labels`` holds one name for a single-label table, the sorted label set for a multi-label one;
    ``split`` is None when the table has no split column.
    """

    key: str
    labels: tuple[str, ...]
    split: str | None


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used: its key, the split it named (if valid), and why."""

    key: str
    split: str | None
    reason: str


@dataclass
class LabelTable:
    """A label file, read and checked (``read_label_file``).

    Attributes:
        path: the label file, resolved. root: the folder keys are relative to.
        sha256: of the file's bytes: part of what the source describes, so a changed file is
            another cache.
        columns: the header as found. path_column, label_column: the columns used.
        multi_label: a multi-label task (``labels`` column or ``--multi-label``).
        has_split_column: the file says each row's split.
        rows: the usable rows, in file order; bad: the unusable ones with their reasons.
        duplicates: rows dropped because they repeat another row exactly.
        class_names: sorted distinct labels of ``rows``.
    """

    path: Path
    root: Path
    sha256: str
    columns: list[str]
    path_column: str
    label_column: str
    multi_label: bool
    has_split_column: bool
    rows: list[LabelRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    duplicates: int = 0
    class_names: list[str] = field(default_factory=list)


def read_label_file(path: str | os.PathLike, *, spec: str, path_column: str | None = None,
                    label_column: str | None = None, images: str | None = None,
                    multi_label: bool = False) -> LabelTable:
    """Reads a CSV or JSONL label file into usable rows and bad rows.

    Args:
        path: the ``.csv`` or ``.jsonl`` file.
        spec: SOURCE as given, for messages.
        path_column, label_column: column names overriding the usual ones.
        images: folder that relative paths and bare ids resolve against (default: the file's folder).
        multi_label: read the label column as several labels per row.

    Raises:
        DataError: an unreadable or non-UTF-8 file, bad CSV syntax, a missing column, a missing
            ``--images`` folder, or no usable row at all.
    """
    file = Path(path).expanduser().resolve()
    data = _read_bytes(file, spec)
    root = _images_root(images, file)
    columns, records = _records(data, file, spec)
    path_col, label_col = _choose_columns(columns, spec, path_column, label_column, multi_label)
    split_col = _find_column(columns, SPLIT_COLUMN)
    table = LabelTable(path=file, root=root, sha256=hashlib.sha256(data).hexdigest(), columns=columns,
                       path_column=path_col, label_column=label_col,
                       multi_label=multi_label or label_col.lower() == LABELS_COLUMN,
                       has_split_column=split_col is not None)
    parsed = [(where, _parse_row(record, table, split_col, where)) for where, record in records]
    _group_rows(table, parsed)
    table.class_names = sorted({label for row in table.rows for label in row.labels})
    if not table.rows:
        example = f" (e.g. {table.bad[0].key}: {table.bad[0].reason})" if table.bad else ""
        raise DataError(f"{spec}: no row with an existing image and a label; "
                        f"{len(table.bad)} bad row(s){example}")
    return table


# ── reading ──────────────────────────────────────────────────────────────────────────────────


def _read_bytes(file: Path, spec: str) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise DataError(f"{spec}: cannot read the label file ({exc.strerror or exc})") from None


def _images_root(images: str | None, file: Path) -> Path:
    if images is None:
        return file.parent
    root = Path(images).expanduser()
    if not root.is_dir():
        raise DataError(Arg("images", images), ": no such directory")
    return root.resolve()


def _records(data: bytes, file: Path, spec: str) -> tuple[list[str], list[tuple[str, Any]]]:
    """(columns, [(where, record)]): a record is a dict, or a str saying why the line is unusable."""
    try:
        text = data.decode("utf-8-sig")  # spreadsheets save CSV with a byte-order mark
    except UnicodeDecodeError as exc:
        raise DataError(f"{spec}: not a UTF-8 label file ({exc.reason} at byte {exc.start})") from None
    if file.suffix.lower() == ".jsonl":
        return _jsonl_records(text, file)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        records = [(f"{file.name} row {reader.line_num}",
                    {(k or "").strip(): v for k, v in row.items() if k is not None}) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{spec}: not a valid CSV file ({exc})") from None
    return columns, records


def _jsonl_records(text: str, file: Path) -> tuple[list[str], list[tuple[str, Any]]]:
    columns: dict[str, None] = {}
    records: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file.name} line {number}"
        try:
            record = loads_json(line, max_bytes=MAX_LINE_BYTES)  # a 1,000-deep line: no RecursionError
        except json.JSONDecodeError as exc:
            records.append((where, f"not JSON ({exc.msg})"))
            continue
        except ParseLimitError as exc:
            records.append((where, f"refused before parsing: {exc}"))
            continue
        if not isinstance(record, dict):
            records.append((where, "not a JSON object"))
            continue
        record = {str(k).strip(): v for k, v in record.items()}
        columns.update(dict.fromkeys(record))
        records.append((where, record))
    return list(columns), records


def _find_column(columns: list[str], name: str) -> str | None:
    return next((c for c in columns if c.lower() == name.lower()), None)


def _choose_columns(columns: list[str], spec: str, path_column: str | None, label_column: str | None,
                    multi_label: bool) -> tuple[str, str]:
    """The path and label columns: the ones named, else the usual names (module docstring)."""
    found = ", ".join(columns) or "none"
    for option, name in (("path_column", path_column), ("label_column", label_column)):
        if name is not None and _find_column(columns, name) is None:
            raise DataError(f"{spec}: no column '{name}' (", Arg(option), f"); columns found: {found}",
                            field=option, value=name)
    path_col = _find_column(columns, path_column) if path_column else \
        next((c for c in (_find_column(columns, n) for n in (*PATH_COLUMNS, ID_COLUMN)) if c), None)
    if label_column:
        label_col = _find_column(columns, label_column)
    else:
        preferred = (LABELS_COLUMN, LABEL_COLUMN) if multi_label else (LABEL_COLUMN, LABELS_COLUMN)
        label_col = next((c for c in (_find_column(columns, n) for n in preferred) if c), None)
    missing = [what for what, col in ((f"path column ({', '.join((*PATH_COLUMNS, ID_COLUMN))} "
                                       f"or --path-column)", path_col),
                                      ("label column (label, labels or --label-column)", label_col)) if col is None]
    if missing:
        raise DataError(f"{spec}: no {' and no '.join(missing)}; columns found: {found}")
    return path_col, label_col  # type: ignore[return-value]


# ── one row ──────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Parsed:
    key: str | None          # None: the row names no path
    labels: tuple[str, ...]
    split: str | None
    reason: str | None       # why the row is unusable (the file check comes later, per path)
    missing: str | None      # why its file cannot be read: "missing file", "not a regular file (…)"


def _parse_row(record: dict[str, Any] | str, table: LabelTable, split_col: str | None, where: str) -> _Parsed:
    if isinstance(record, str):
        return _Parsed(None, (), None, record, "missing file")
    split, reason = _row_split(record, split_col)
    key, missing = _resolve_path(_text(record.get(table.path_column)), table.root)
    labels, label_reason = _row_labels(record.get(table.label_column), table)
    if key is None:
        reason = "empty path"
    return _Parsed(key, labels, split, reason or label_reason, missing)


def _text(value: object) -> str:
    if value is None or isinstance(value, bool):
        return ""
    return str(value).strip()


def _row_split(record: dict, split_col: str | None) -> tuple[str | None, str | None]:
    if split_col is None:
        return None, None
    value = _text(record.get(split_col))
    if value.lower() in SPLIT_FOLDERS:
        return value.lower(), None
    shown = f"unknown split '{value}'" if value else "empty split"
    return None, f"{shown} (expected {', '.join(SPLIT_FOLDERS)})"


def _row_labels(value: object, table: LabelTable) -> tuple[tuple[str, ...], str | None]:
    if isinstance(value, list):
        names = [_text(v) for v in value]
    elif table.multi_label:
        names = _SEPARATORS.split(_text(value))
    else:
        names = [_text(value)]
    names = sorted({n for n in names if n})
    if not names:
        return (), "empty label"
    if not table.multi_label and (len(names) > 1 or "|" in names[0]):
        return (), (f"several labels '{_text(value)}' in the single-label column '{table.label_column}' "
                    f"(name the column '{LABELS_COLUMN}' or pass --multi-label)")
    return tuple(names), None


def _resolve_path(value: str, root: Path) -> tuple[str | None, str | None]:
    """(key, None when the file exists, else why not); a bare id is tried with each image extension.

    One ``stat`` per candidate, on plain strings (through pathlib, 100,000 rows naming missing files
    took 7 s). A named pipe or a device is not a missing file: it gets its own reason and is never
    opened.
    """
    if not value:
        return None, "missing file"
    first = os.path.join(root, os.path.expanduser(value)).rstrip(os.sep) or os.sep  # absolute stays absolute
    candidates = [first]
    if os.path.splitext(first)[1].lower() not in IMAGE_EXTENSIONS:
        candidates += [first + ext for e in IMAGE_EXTENSIONS for ext in (e, e.upper())]
    problem = "missing file"
    for candidate in candidates:
        try:
            mode = os.stat(candidate).st_mode
        except (OSError, ValueError):
            continue
        reason = not_regular_reason(mode)
        if reason is None:
            return _key(candidate, root), None
        if candidate is first:
            problem = reason
    return _key(first, root), problem


def _key(path: str, root: Path) -> str:
    absolute, base = os.path.normpath(path), str(root)
    prefix = base if base.endswith(os.sep) else base + os.sep
    if absolute.startswith(prefix):
        return absolute[len(prefix):].replace(os.sep, "/")
    return absolute.replace(os.sep, "/")  # outside the base folder: the absolute path is the key


# ── rows of one path ─────────────────────────────────────────────────────────────────────────


def _group_rows(table: LabelTable, parsed: list[tuple[str, _Parsed]]) -> None:
    """Fills ``table.rows`` / ``table.bad``: one entry per path, in the order paths first appear."""
    groups: dict[str, list[tuple[str, _Parsed]]] = {}
    for where, row in parsed:
        if row.key is None:
            table.bad.append(BadRow(where, row.split, row.reason or "empty path"))
        else:
            groups.setdefault(row.key, []).append((where, row))
    for key, group in groups.items():
        entry = _settle(key, group, table)
        if isinstance(entry, LabelRow):
            table.rows.append(entry)
            table.duplicates += len(group) - 1
        else:
            table.bad.append(entry)


def _settle(key: str, group: list[tuple[str, _Parsed]], table: LabelTable) -> LabelRow | BadRow:
    wheres = ", ".join(where for where, _ in group)
    first = group[0][1]
    splits = {row.split for _, row in group}
    split = first.split if len(splits) == 1 else None
    if first.missing:
        return BadRow(key, split, f"{first.missing} ({wheres})")
    distinct = {(row.labels, row.split, row.reason) for _, row in group}
    if len(distinct) == 1:
        return LabelRow(key, first.labels, first.split) if first.reason is None \
            else BadRow(key, split, f"{first.reason} ({wheres})")
    return BadRow(key, split, f"duplicate path with conflicting rows: "
                              + "; ".join(f"{where}: {_describe(row, table)}" for where, row in group))


def _describe(row: _Parsed, table: LabelTable) -> str:
    if row.reason:
        return row.reason
    said = "|".join(row.labels)
    return said + (f" in {row.split}" if table.has_split_column else "")

