"""``--exclude CSV``: drop the listed keys from training (train-head, finetune, run).

Any CSV with a ``key`` column works: diagnose's label_issues.csv or outliers.csv, or a hand-made
list. Listed keys are removed from the splits a model learns from or is selected on (train and
validation); the test split is never changed, so test scores before and after an exclusion stay
comparable (dropping hard test images would flatter the score). A key that is in no split of the
data is an error: the CSV belongs to another dataset, or to an older cache of this one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TYPE_CHECKING

import numpy as np

from headstart.features.regular_file import not_regular_reason, open_regular
from headstart.features.errors import Arg, Part
from headstart.pipeline.errors import DataError, OptionError

if TYPE_CHECKING:
    import h5py
    import tensorflow as tf

    from headstart.features.cache import SplitData
    from headstart.pipeline.data.source import Source

#: Splits --exclude removes keys from.
TRAINING_SPLITS = ("train", "validation")


@dataclass
class Exclusion:
    """The resolved --exclude: which rows of each split stay.

    Attributes:
        path: the CSV. sha256: of its bytes. listed: distinct keys it lists.
        keep: split → bool (N,) mask of rows that stay (only for the training splits).
        removed: split → rows removed. kept_in_test: listed keys found in the test split (kept).
    """

    path: str
    sha256: str
    listed: int
    keep: dict[str, np.ndarray] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    kept_in_test: int = 0

    def record(self) -> dict[str, Any]:
        """run.json's "exclude" entry."""
        return {"path": self.path, "sha256": self.sha256, "listed": self.listed,
                "removed": dict(self.removed), "kept_in_test": self.kept_in_test,
                "splits": list(TRAINING_SPLITS)}


def check_exclude_option(path: str | None, option: Part = Arg("exclude")) -> None:
    """Refuses, before any work, an ``--exclude`` that is missing or not a regular file: a named
    pipe was waited on for ever (by ``headstart run``'s stage key, after extraction).

    Raises:
        OptionError: naming the option and the path.
    """
    if not path:
        return
    if not os.path.exists(path):
        raise OptionError(option, f" {path}: no such file", field="exclude", value=path)
    if not_regular_reason(path):
        raise OptionError(option, f" {path}: {not_regular_reason(path)}; give a CSV file with a 'key' column",
                          field="exclude", value=path)


def read_exclude_keys(path: str) -> list[str]:
    """The distinct values of the ``key`` column, in file order.

    Raises:
        OptionError: the file is missing or unreadable, or has no ``key`` column.
    """
    try:
        # open_regular: a named pipe would block for ever; utf-8-sig: spreadsheets write a BOM,
        # and label files accept one too.
        with io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "key" not in columns:
                raise OptionError(Arg("exclude", path), f": no 'key' column (columns: {', '.join(columns) or 'none'})")
            keys = [row["key"] for row in reader if row.get("key")]
    except OSError as exc:
        raise OptionError(Arg("exclude", path), f": cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise OptionError(Arg("exclude", path), f": not a UTF-8 CSV ({exc})") from None
    return list(dict.fromkeys(keys))


def resolve_exclusion(path: str, keys: Mapping[str, Sequence[str]], *, data: str) -> Exclusion:
    """Matches the CSV's keys against the keys of every split of the data.

    Args:
        path: the CSV.
        keys: split → keys of its rows (a cache's or a source's).
        data: names the cache or source in the error message.

    Raises:
        OptionError: see ``read_exclude_keys``. DataError: keys that are in no split (a foreign or
            stale CSV), as one line with the count and an example.
    """
    listed = read_exclude_keys(path)
    wanted = set(listed)
    known = set().union(*(set(k) for k in keys.values())) if keys else set()
    unknown = [k for k in listed if k not in known]
    if unknown:
        raise DataError(Arg("exclude", path), f": {len(unknown)} of {len(listed)} keys are not in {data} "
                        f"(e.g. {unknown[0]!r}); it lists another dataset or an older cache of this one")
    with open_regular(path) as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    result = Exclusion(path=os.path.abspath(path), sha256=digest, listed=len(listed))
    for split, split_keys in keys.items():
        drop = np.fromiter((k in wanted for k in split_keys), dtype=bool, count=len(split_keys))
        if split in TRAINING_SPLITS:
            result.keep[split] = ~drop
            result.removed[split] = int(drop.sum())
        elif split == "test":
            result.kept_in_test = int(drop.sum())
    return result


class SubsetSplit:
    """A cache split without its excluded rows; reads like ``SplitData`` for ``FeatureRows``.

    Args:
        split: a ``headstart.features.cache.SplitData``.
        keep: bool (N,) rows that stay.
    """

    def __init__(self, split: SplitData | SubsetSplit, keep: np.ndarray) -> None:
        self.name = split.name
        rows = np.flatnonzero(keep)
        self.labels = np.asarray(split.labels)[rows]
        self.keys = [split.keys[i] for i in rows]
        self.features = _RowSubset(split.features, rows)
        self.views = None if split.views is None else _RowSubset(split.views, rows)

    def __len__(self) -> int:
        return len(self.labels)


class _RowSubset:
    """Rows ``rows`` (sorted) of an h5py dataset, sliceable like the dataset itself.

    A slice of the subset reads the one contiguous range of the file that covers it and drops the
    excluded rows in memory, so streaming keeps reading slices (h5py point selections are ~50×
    slower per row, see head_data).
    """

    def __init__(self, data: h5py.Dataset | _RowSubset, rows: np.ndarray) -> None:
        self._data, self._rows = data, rows
        self.shape = (len(rows), *data.shape[1:])
        self.dtype = data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if first is Ellipsis:
            first, rest = slice(None), ()
        rows = self._rows[first]
        if not len(rows):
            return np.zeros((0, *self.shape[1:]), dtype=self.dtype)[(slice(None), *rest)]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        block = np.asarray(self._data[(slice(lo, hi), *rest)])
        return block[rows - lo]


class ExcludingSource:
    """A data source (``headstart.pipeline.data.sources``) whose train and validation splits lack the
    excluded keys; everything else is the wrapped source's. Used by finetune, which reads images."""

    def __init__(self, source: Source, exclusion: Exclusion, dropped: dict[str, frozenset]) -> None:
        self._source, self.exclusion, self._dropped = source, exclusion, dropped

    @classmethod
    def wrap(cls, source: Source, path: str, *, data: str) -> "ExcludingSource":
        """Resolves ``path`` against the source's keys (DataError for keys it does not have)."""
        keys = {split: source.keys(split) for split in source.split_names}
        exclusion = resolve_exclusion(path, keys, data=data)
        dropped = {split: frozenset(k for k, keep in zip(keys[split], mask) if not keep)
                   for split, mask in exclusion.keep.items()}
        return cls(source, exclusion, dropped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def count(self, split: str, *, shard: tuple[int, int] | None = None) -> int | None:
        n = self._source.count(split, shard=shard)
        if n is None or shard is not None:  # finetune never shards; a shard's share is not known
            return n
        return n - len(self._dropped.get(split, ()))

    def keys(self, split: str) -> list[str]:
        dropped = self._dropped.get(split, frozenset())
        return [k for k in self._source.keys(split) if k not in dropped]

    def dataset(self, split: str, image_size: int, **kwargs: Any) -> tf.data.Dataset:
        ds = self._source.dataset(split, image_size, **kwargs)
        dropped = self._dropped.get(split)
        if not dropped:
            return ds
        import tensorflow as tf

        # Filtered on the key after decoding: simple and correct for every source kind; the
        # excluded images are a small share, so the wasted decodes cost little.
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(sorted(dropped), tf.string),
                                                tf.ones(len(dropped), tf.int32)), default_value=0)
        return ds.filter(lambda e: tf.equal(table.lookup(e["key"]), 0))
