"""What changed in a label file since a cache was made from it: "labels.csv changed since features.h5 was
written (3 rows differ)", where the cache's refusal would otherwise show two SHA-256 digests.

A cache records its label file's SHA-256 (``LabelFileSource.describe``), so another version of the file
is a configuration mismatch. The rows that differ are counted against what the cache holds: per key,
its split and its labels, or that it was a bad row (a row whose image could not be decoded is compared
by split only: its labels were never stored); rows added or removed count too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np

from headstart.features.errors import Arg, StoreConfigMismatch, StoreError

if TYPE_CHECKING:
    from headstart.pipeline.data.label_source import LabelFileSource
    from headstart.pipeline.data.source import Source


def explain_label_change(error: StoreConfigMismatch, source: Source, out: str | os.PathLike) -> StoreConfigMismatch:
    """``error`` reworded when what differs is the label file's content (its sha256) or the folder's
    listing (``listing_digest``); else ``error``."""
    if error.field == "source.listing_sha256" and getattr(source, "kind", None) == "dir":
        return _folder_change(error, source, out)
    if error.field != "source.sha256" or getattr(source, "kind", None) != "label_file":
        return error
    name = Path(source.table.path).name
    if error.partial:
        return StoreConfigMismatch(f"{name} changed since the interrupted run {out}.partial started; use ",
                                   Arg("overwrite"), " to start again", field=error.field, partial=True)
    count = changed_rows(source, out)
    if count is None:
        return error
    rows = ("no row differs in split or labels" if count == 0 else
            "1 row differs" if count == 1 else f"{count} rows differ")
    return StoreConfigMismatch(f"{name} changed since {out} was written ({rows}); use ", Arg("overwrite"),
                               " to replace it", field=error.field)


def _folder_change(error: StoreConfigMismatch, source: Source, out: str | os.PathLike) -> StoreConfigMismatch:
    """"the folder changed since …": files added, removed, moved to another class or rewritten."""
    where = f"the interrupted run {out}.partial started" if error.partial else f"{out} was written"
    if "=<absent>;" in str(error):  # a cache from before listings were recorded: no way to tell
        why = f"{out} was made before headstart recorded its folder's listing, so whether {source.spec} changed"
        return StoreConfigMismatch(f"{why} cannot be told; use ", Arg("overwrite"), " to extract it again",
                                   field=error.field, partial=error.partial)
    return StoreConfigMismatch(f"the folder {source.spec} changed since {where} (files added, removed, moved to "
                               "another class or rewritten); use ", Arg("overwrite"), " to extract it again",
                               field=error.field, partial=error.partial)


def changed_rows(source: LabelFileSource, cache_path: str | os.PathLike) -> int | None:
    """Rows whose split or labels differ between ``source`` (a ``LabelFileSource``) and the cache; None
    when the cache cannot be read."""
    from headstart.features.cache import open_cache

    mark = f"{Path(source.table.path).name} row"  # how a bad row's reason names the file (a bad image's does not)
    recorded: dict[str, tuple[str, Any]] = {}
    try:
        with open_cache(str(cache_path)) as cache:
            names = list(cache.class_names)
            for split in cache.splits:
                data = cache.split(split)
                for key, label in zip(data.keys, np.asarray(data.labels)):
                    recorded[key] = (split, _label_names(label, names))
                for key, reason in data.skipped:
                    recorded[key] = (split, _BAD_ROW if mark in reason else _BAD_IMAGE)
    except (StoreError, OSError):
        return None
    now = {key: (split, _BAD_ROW if labels is None else labels) for key, (split, labels) in source.assignments().items()}
    return sum(not _same(recorded.get(key), now.get(key)) for key in set(recorded) | set(now))


#: What the cache holds for a row it skipped: a bad row of the label file, or a row whose image was bad.
_BAD_ROW, _BAD_IMAGE = "<bad row>", "<bad image>"


def _label_names(label: np.ndarray, names: list[str]) -> tuple[str, ...]:
    if np.ndim(label) == 0:
        return (names[int(label)],)
    return tuple(name for name, hot in zip(names, label) if hot)


def _same(old: tuple | None, new: tuple | None) -> bool:
    if old is None or new is None:
        return old is new
    if old[1] == _BAD_IMAGE and new[1] != _BAD_ROW:  # the image is what it was; its labels were never stored
        return old[0] == new[0]
    return old == new
