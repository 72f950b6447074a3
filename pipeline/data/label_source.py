"""A label file (``.csv`` / ``.jsonl``) as a source: its rows, their splits, and its bad rows.

The file is read and checked by ``label_file.read_label_file``; this turns the table into the
items of each split, the same file-list dataset as a class-folder tree (``FileListSource``):

* with a ``split`` column, each row goes to the split it names;
* without one, ``splits.assign_stratified`` splits per class by the stable hash of the key, as for
  a class-folder tree without split folders. A multi-label row is stratified on its rarest label
  (fewest rows in the file; ties by name), so a rare label still reaches validation and test.

Bad rows stay items (a zero image with the reason, skipped and reported by extraction like a bad
image, counted against ``--max-bad``, refused by ``--strict`` before anything is written). A bad
row goes to the split it names, or to the first split (train) when it names none.

``describe()`` records the file, its sha256, the columns used and the task, so a cache made from
another version of the file is a config mismatch (refused, or redone with ``--overwrite``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from headstart.pipeline.data.label_file import LabelRow, LabelTable, read_label_file
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.pipeline.data.file_list import FileListSource
from headstart.pipeline.data.splits import SPLIT_FOLDERS, assign_stratified, hashed_split_specs


class LabelFileSource(FileListSource):
    """Images listed in a label file, with the file's splits or stratified hashed ones.

    Attributes:
        table: the checked ``LabelTable`` (rows, bad rows, duplicates, sha256).
        multi_label: the file is a multi-label table (elements carry (C,) multi-hot labels).
    """

    kind = "label_file"

    def __init__(self, spec: SourceSpec, path: Path):
        table = read_label_file(path, spec=spec.source, path_column=spec.path_column,
                                label_column=spec.label_column, images=spec.images,
                                multi_label=spec.multi_label)
        super().__init__(spec.source, table.root)
        self.table = table
        self.multi_label = table.multi_label
        self.class_names = list(table.class_names)
        splits = _row_splits(table, spec, self.notes)
        if table.has_split_column:  # a split only bad rows name is one too: found empty, not dropped
            named = set(splits.values()) | {bad.split for bad in table.bad}
            self.split_names = [s for s in SPLIT_FOLDERS if s in named]
            self._split_specs = {s: f"column split={s}" for s in self.split_names}
        else:
            self._split_specs = hashed_split_specs(spec.validation_fraction, spec.test_fraction)
            self.split_names = [s for s in SPLIT_FOLDERS if s in self._split_specs]
        self._items = {s: [] for s in self.split_names}
        index = {name: i for i, name in enumerate(self.class_names)}
        for row in table.rows:
            self._items[splits[row.key]].append((row.key, self._label(row, index)))
        self._add_bad_rows()
        if table.duplicates:
            self.notes.append(f"{table.path.name}: {table.duplicates} row(s) repeat an earlier row exactly "
                              f"(same path, labels and split); each image is kept once")
        for items in self._items.values():
            items.sort(key=lambda item: item[0])  # the order of a class-folder tree: by key

    def describe(self) -> dict:
        t = self.table
        return {"source": self.spec, "kind": self.kind, "root": str(self.root), "file": str(t.path),
                "sha256": t.sha256, "path_column": t.path_column, "label_column": t.label_column,
                "task": "multi_label" if t.multi_label else "single_label",
                "splits": dict(self._split_specs)}

    def assignments(self) -> dict[str, tuple[str, tuple[str, ...] | None]]:
        """Every row's key → (its split, its label names sorted; None for a bad row)."""
        found = {}
        for split, items in self._items.items():
            for key, label in items:
                if key in self._reasons:
                    found[key] = (split, None)
                elif self.multi_label:
                    found[key] = (split, tuple(n for n, hot in zip(self.class_names, label) if hot))
                else:
                    found[key] = (split, (self.class_names[label],))
        return found

    def _label(self, row: LabelRow, index: dict[str, int]) -> Any:
        if not self.multi_label:
            return index[row.labels[0]]
        hot = [0] * len(self.class_names)
        for name in row.labels:
            hot[index[name]] = 1
        return tuple(hot)

    def _add_bad_rows(self) -> None:
        empty = (0,) * len(self.class_names) if self.multi_label else 0
        for bad in self.table.bad:
            split = bad.split if bad.split in self._items else self.split_names[0]
            self._items[split].append((bad.key, empty))
            self._reasons[bad.key] = bad.reason


def _row_splits(table: LabelTable, spec: SourceSpec, notes: list[str]) -> dict[str, str]:
    """key → split of every usable row: the split column, else stratified by (rarest) label."""
    if table.has_split_column:
        return {row.key: row.split for row in table.rows}  # type: ignore[misc]
    counts = Counter(label for row in table.rows for label in row.labels)
    strata = [(row.key, min(row.labels, key=lambda name: (counts[name], name))) for row in table.rows]
    return assign_stratified(strata, validation_fraction=spec.validation_fraction,
                             test_fraction=spec.test_fraction, spec=spec.source, notes=notes)
