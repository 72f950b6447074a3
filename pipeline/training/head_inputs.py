"""train-head's input: a cache's splits, checked for a head, ``--exclude`` applied, then loaded.

One loading decision for all splits (in memory when they fit ``--memory-limit-mb``, else streamed
from HDF5), so a run is wholly in memory or wholly streamed and run.json says which in one word;
both loaders feed identical batches (``headstart.pipeline.training.head_data``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.features.errors import Arg
from headstart.features.reporter import Reporter
from headstart.pipeline.errors import DataError
from headstart.pipeline.training.head_data import FeatureRows, split_nbytes

MB = 1 << 20


@dataclass
class HeadData:
    """The cache's splits, loaded (one loader for all).

    Attributes:
        splits: split name → the cache's split (``--exclude`` applied).
        rows: split name → its FeatureRows. labels: split name → int64 (N,) or (N, C) multi-hot.
        loader: "memory" or "stream". load_seconds: how long loading took.
        multi_label: labels are (N, C) multi-hot rows (the cache's task).
    """

    splits: dict[str, Any]
    rows: dict[str, FeatureRows]
    labels: dict[str, np.ndarray]
    loader: str
    class_names: list[str]
    feature_shape: tuple[int, ...]
    load_seconds: float
    multi_label: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def validation(self) -> tuple[FeatureRows, np.ndarray] | None:
        return (self.rows["validation"], self.labels["validation"]) if "validation" in self.rows else None


def open_head_splits(cache: Any, path: str) -> dict[str, Any]:
    """The cache's non-empty train/validation/test splits, once it is known to be able to train a head.

    Raises:
        DataError: no train split or an empty one, fewer than 2 classes, labels out of range.
    """
    # The store already refused missing / foreign / incomplete / unknown-version files.
    if "train" not in cache.splits:
        raise DataError(f"{path}: the cache has no 'train' split (it has: "
                        f"{', '.join(cache.splits) or 'none'}); extract it with ", Arg("splits", "train,..."))
    if len(cache.class_names) < 2:
        raise DataError(f"{path}: the cache has {len(cache.class_names)} class(es); a classifier needs 2 or more")
    splits = {name: cache.split(name) for name in ("train", "validation", "test") if name in cache.splits}
    if len(splits["train"]) == 0:
        raise DataError(f"{path}: the 'train' split has no rows")
    for name, split in splits.items():
        labels = np.asarray(split.labels)
        if cache.multi_label:  # multi-hot rows of 0/1, checked by the store on write and read
            continue
        if labels.size and (labels.min() < 0 or labels.max() >= len(cache.class_names)):
            raise DataError(f"{path}: split '{name}' has labels outside 0..{len(cache.class_names) - 1}")
    return {name: split for name, split in splits.items() if len(split) > 0}


def exclude_rows(exclude: str | None, splits: dict[str, Any], data: str, reporter: Reporter) -> Any:
    """Applies ``--exclude`` to the splits in place; returns the Exclusion (None without one).

    Raises:
        DataError: unknown keys, or a train split left empty.
    """
    if not exclude:
        return None
    from headstart.pipeline.data.exclusion import SubsetSplit, resolve_exclusion

    exclusion = resolve_exclusion(exclude, {n: s.keys for n, s in splits.items()}, data=data)
    for name, keep in exclusion.keep.items():
        splits[name] = SubsetSplit(splits[name], keep)
    if not len(splits["train"]):
        raise DataError(Arg("exclude", exclude), " removes every row of the 'train' split")
    for name in [n for n, s in splits.items() if not len(s)]:
        del splits[name]  # an emptied validation split: early stopping then watches the training loss
    removed = ", ".join(f"{n} {k}" for n, k in exclusion.removed.items())
    reporter.line(f"--exclude {exclude}: removed {removed}"
                  + (f"; {exclusion.kept_in_test} listed test rows kept (the test split is never changed)"
                     if exclusion.kept_in_test else ""))
    return exclusion


def make_loaders(splits: dict[str, Any], memory_limit_mb: int,
                 views: bool = True) -> tuple[dict[str, FeatureRows], str, int]:
    """Loads every split into memory when all fit in the limit, else streams them all.

    ``views=False`` trains on the originals only, ignoring a cache's augmented views.

    Returns:
        (split → FeatureRows, "memory" or "stream", bytes the splits take at the stored dtype).
    """
    need = sum(split_nbytes(s, with_views=(views and name == "train")) for name, s in splits.items())
    in_memory = need <= memory_limit_mb * MB
    rows = {name: FeatureRows(s, in_memory=in_memory, with_views=(views and name == "train"))
            for name, s in splits.items()}
    return rows, ("memory" if in_memory else "stream"), need


def load_head_data(cache: Any, splits: dict[str, Any], *, memory_limit_mb: int, views: bool, path: str,
                   reporter: Reporter) -> HeadData:
    """Loads the splits (in memory, or streamed) and reports what was loaded."""
    t_load = time.perf_counter()
    rows, loader, need = make_loaders(splits, memory_limit_mb, views)
    labels = {name: np.asarray(s.labels, dtype=np.int64) for name, s in splits.items()}
    data = HeadData(splits=splits, rows=rows, labels=labels, loader=loader, class_names=list(cache.class_names),
                    feature_shape=tuple(int(d) for d in cache.feature_shape),
                    load_seconds=time.perf_counter() - t_load, multi_label=cache.multi_label)
    kind = "labels (multi-label)" if data.multi_label else "classes"
    reporter.line(f"{path}: {', '.join(f'{n} {len(s)}' for n, s in splits.items())} rows, "
                  f"{data.num_classes} {kind}, features {data.feature_shape}"
                  + (f", {cache.views} augmented views" if rows["train"].views else "")
                  + f"; {loader} loader ({need / MB:.1f} MB, limit {memory_limit_mb} MB)")
    return data
