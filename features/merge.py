"""Joining the caches of ``extract-features --shard I/N`` workers into one cache.

Each worker writes an ordinary cache of its shard (about 1/N of every split) whose config carries
``shard`` = {"index", "count", "hash"}. Every split group of a shard also holds two int64 datasets
that ``write_source_index`` adds before the shard is finalized: ``source_index`` (one per row) and
``skipped_source_index`` (one per skipped entry), each item's position in the *unsharded* split.
``merge_shards`` checks that the shards form one complete set of one configuration and writes
rows and skipped entries back in source order, so the merged cache is row for row what a single
``extract-features`` run writes, and its config is the shards' config without ``shard``: exactly
the single run's config (rerunning that command on it says "already complete").

A copy, not HDF5 virtual datasets: the merged file goes through ``headstart.features.store``'s writer, so it
is an ordinary cache — crash-safe, resumable, marked ``complete`` only at the end — and
self-contained, so it survives deleting or moving the shards (a VDS would silently read fill
values instead). And hash sharding interleaves the shards item by item, so a VDS in source order
would need about one mapping per row. The price is the disk space of one more copy and a
sequential read of the shards, small next to the forward passes that made the features.

h5py and numpy only: no TensorFlow, nothing from ``pipeline``.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import h5py
import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.features._hdf5 import first_difference, open_h5
from headstart.features._store_io import START_OVER
from headstart.features.cache import FeatureCache, SplitData, open_cache
from headstart.features.errors import Arg, ShardError
from headstart.features.store import StoreWriter, create_or_resume

__all__ = ["ROW_INDEX", "SKIPPED_INDEX", "MergeSummary", "merge_shards", "write_source_index"]

ROW_INDEX = "source_index"
SKIPPED_INDEX = "skipped_source_index"
_COMMIT_BYTES = 64 << 20  # rows per commit: bounded memory whatever the feature shape


@dataclass
class MergeSummary:
    """What ``merge_shards`` wrote, for the CLI to print."""

    path: str
    already_complete: bool
    shards: int
    splits: dict[str, dict] = field(default_factory=dict)  # name → {"rows", "skipped"}
    seconds: float = 0.0


def write_source_index(partial_path: str, splits: Sequence[str],
                       source_keys: Callable[[str], Iterable[str]]) -> None:
    """Records each row's and skipped entry's position in the unsharded split, in a shard's partial.

    Called once every split of the shard is done and its writer is closed. The datasets are
    replaced whole, so running it again after a kill gives the same file.

    Args:
        partial_path: the shard's ``PATH.partial``, which no writer holds.
        splits: the cache's split names.
        source_keys: split → keys of every item of the unsharded split, in source order.

    Raises:
        ShardError: committed keys the source does not list, in that order (the source changed
            while the worker ran). StoreError: the partial cannot be opened.
    """
    with open_h5(partial_path, "r+", damaged_hint=START_OVER) as f:
        for split in splits:
            group = f[split]
            rows = _committed_strings(group, "keys", "committed")
            skipped = _committed_strings(group, "skipped_keys", "skipped_committed")
            found = _positions(source_keys(split), rows, skipped)
            if found is None:
                raise ShardError(f"{partial_path}: split '{split}' has keys the source no longer "
                                 f"lists in that order (was it changed during the run?)",
                                 *START_OVER)
            for name, values in zip((ROW_INDEX, SKIPPED_INDEX), found):
                if name in group:
                    del group[name]
                group.create_dataset(name, data=values, dtype=np.int64, fletcher32=True)
        f.flush()


def merge_shards(out: str | os.PathLike, shard_paths: Sequence[str | os.PathLike], *,
                 provenance: dict | None = None, overwrite: bool = False,
                 reporter: Reporter = QUIET) -> MergeSummary:
    """Checks that the shards form one complete set and copies them into one cache, in source order.

    A killed merge resumes when run again with the same shards, like a killed extraction.

    Args:
        out: the merged cache file.
        shard_paths: the finished shard caches, 0 … N-1 once each, in any order.
        provenance: stored in the merged cache, plus ``merge`` (the shard files, their
            fingerprints and provenance) and shard 0's ``command_config`` as a single run's would
            read (``shard`` None, ``out`` OUT): later stages take source options from it.
        overwrite: replace an OUT of another configuration (only at the end).
        reporter: where one-line status messages go (``features/reporter.py``).

    Returns:
        A MergeSummary.

    Raises:
        ShardError: a file that is not a shard, shards of different configurations or shard
            counts, a shard missing or given twice, shards that do not fit together, OUT being
            one of them. StoreError: a shard missing, incomplete or unreadable; OUT in use or of
            another configuration (without ``overwrite``).
    """
    out = os.fspath(out)
    start = time.perf_counter()
    with ExitStack() as stack:
        shards = [_open_shard(os.fspath(p), stack) for p in shard_paths]
        if not shards:
            raise ShardError("no shard files given")
        _check_one_configuration(shards)
        shards = _check_complete_set(shards)
        _check_out_is_new(out, shards)
        first = shards[0].cache
        # Every check comes before OUT is touched, so a refused merge leaves nothing behind.
        plans = {split: _Plan.of(split, [_ShardSplit.load(s, split) for s in shards])
                 for split in first.splits}
        writer = create_or_resume(out, config=shards[0].config, provenance=_merged_provenance(provenance, shards, out),
                                  class_names=first.class_names, splits=first.splits,
                                  feature_shape=first.feature_shape, dtype=first.dtype,
                                  views=first.views, overwrite=overwrite,
                                  multi_label=first.multi_label, tap_shape=first.tap_shape)
        summary = MergeSummary(out, writer.complete, len(shards))
        if writer.complete:
            reporter.line(f"{out} is already complete with this configuration; nothing to do")
            return summary
        try:
            for split, plan in plans.items():
                _merge_split(writer, split, plan, reporter)
                summary.splits[split] = {"rows": len(plan.rows.pos), "skipped": len(plan.skips.pos)}
            summary.seconds = time.perf_counter() - start
            writer.finalize({"merge_seconds": round(summary.seconds, 3)})
        finally:
            # Idempotent after finalize(); otherwise it leaves the .partial for a resume.
            writer.close()
    return summary


def _merged_provenance(provenance: dict | None, shards: list["_Shard"], out: str) -> dict:
    """The merged cache's provenance: the given one, shard 0's command_config as a single run's, and
    "merge" (the shard files, their fingerprints and provenance)."""
    merged = dict(provenance or {})
    command = shards[0].cache.provenance.get("command_config")
    if isinstance(command, dict):
        merged["command_config"] = {**command, "shard": None, "out": out}
    merged["merge"] = {"count": len(shards),
                       "shards": [{"path": os.path.abspath(s.path), "shard": f"{s.index}/{s.count}",
                                   "fingerprint": s.cache.fingerprint, "provenance": s.cache.provenance}
                                  for s in shards]}
    return merged


@dataclass
class _Shard:
    path: str
    cache: FeatureCache
    index: int
    count: int
    scheme: dict  # the shard field without its index: what every shard must share
    config: dict  # the cache config without the shard field


@dataclass
class _ShardSplit:
    where: str  # "PATH (split 'NAME')", for messages
    data: SplitData
    row_pos: np.ndarray
    skip_pos: np.ndarray

    @classmethod
    def load(cls, shard: _Shard, split: str) -> "_ShardSplit":
        data = shard.cache.split(split)
        group = data.features.parent
        where = f"{shard.path} (split '{split}')"
        if ROW_INDEX not in group or SKIPPED_INDEX not in group:
            raise ShardError(f"{where} has no source positions (written by an older headstart?); "
                             "extract this shard again with ", Arg("overwrite"))
        row_pos = np.asarray(group[ROW_INDEX][:], dtype=np.int64)
        skip_pos = np.asarray(group[SKIPPED_INDEX][:], dtype=np.int64)
        if len(row_pos) != len(data) or len(skip_pos) != len(data.skipped):
            raise ShardError(f"{where} is damaged: {len(row_pos)} positions for {len(data)} rows")
        # Source order within a shard is what lets one position range be one slice of it.
        if np.any(np.diff(row_pos) <= 0) or np.any(np.diff(skip_pos) <= 0):
            raise ShardError(f"{where} is damaged: its rows are not in source order")
        return cls(where, data, row_pos, skip_pos)


@dataclass
class _Order:
    """Items of several shards sorted by source position."""

    pos: np.ndarray    # source positions, ascending
    shard: np.ndarray  # which shard each item comes from
    local: np.ndarray  # its index within that shard
    flat: np.ndarray   # its index in the concatenation of all shards' items

    @classmethod
    def of(cls, positions: list[np.ndarray]) -> "_Order":
        pos = np.concatenate(positions)
        shard = np.concatenate([np.full(len(p), j, dtype=np.int64) for j, p in enumerate(positions)])
        local = np.concatenate([np.arange(len(p), dtype=np.int64) for p in positions])
        flat = np.argsort(pos, kind="stable")
        return cls(pos[flat], shard[flat], local[flat], flat)


@dataclass
class _Plan:
    """One split of every shard, with its rows and skipped entries in merged (source) order."""

    parts: list[_ShardSplit]
    rows: _Order
    skips: _Order

    @classmethod
    def of(cls, split: str, parts: list[_ShardSplit]) -> "_Plan":
        rows = _Order.of([p.row_pos for p in parts])
        skips = _Order.of([p.skip_pos for p in parts])
        total = len(rows.pos) + len(skips.pos)
        # Positions 0 … total-1, each exactly once: the shards tile the split with nothing lost.
        if not np.array_equal(np.sort(np.concatenate([rows.pos, skips.pos])), np.arange(total)):
            raise ShardError(f"the shards' split '{split}' overlap or leave gaps (was the source "
                             f"changed between workers?); extract the shards again")
        return cls(parts, rows, skips)


def _open_shard(path: str, stack: ExitStack) -> _Shard:
    cache = stack.enter_context(open_cache(path))
    spec = cache.config.get("shard")
    if not isinstance(spec, dict) or not {"index", "count"} <= set(spec):
        raise ShardError(f"{path} is not a shard (it was written without extract-features ", Arg("shard"), ")")
    config = {k: v for k, v in cache.config.items() if k != "shard"}
    scheme = {k: v for k, v in spec.items() if k != "index"}
    return _Shard(path, cache, int(spec["index"]), int(spec["count"]), scheme, config)


#: Source fields each worker measures on its own copy of the data: a folder's listing digest holds
#: modification times, which copies made without keeping them (cp, gsutil) change; the merge's own
#: check that the shards tile every split still catches a file list that differs.
PER_WORKER_SOURCE_FIELDS = ("listing_sha256",)


def _compared(config: dict) -> dict:
    source = config.get("source")
    if not isinstance(source, dict):
        return config
    return {**config, "source": {k: v for k, v in source.items() if k not in PER_WORKER_SOURCE_FIELDS}}


def _check_one_configuration(shards: list[_Shard]) -> None:
    first = shards[0]
    for other in shards[1:]:
        diff = first_difference(_compared(first.config), _compared(other.config))
        if diff:
            name, mine, theirs = diff
            raise ShardError(f"{other.path} was extracted with {name}={theirs} but {first.path} "
                             f"with {name}={mine}; all shards must share one configuration")
        if other.cache.task != first.cache.task:
            raise ShardError(f"{other.path} holds a {other.cache.task} cache but {first.path} a "
                             f"{first.cache.task} one; all shards must share one configuration")
        if other.scheme != first.scheme:
            raise ShardError(f"{other.path} is shard {other.index}/{other.count} but {first.path} "
                             f"is shard {first.index}/{first.count}; all shards must be cut "
                             f"into the same N")


def _check_complete_set(shards: list[_Shard]) -> list[_Shard]:
    """Every index 0 … N-1 exactly once; returns the shards in index order."""
    count = shards[0].count
    by_index: dict[int, _Shard] = {}
    for shard in shards:
        if shard.index in by_index:
            raise ShardError(f"shard {shard.index}/{count} is given twice: "
                             f"{by_index[shard.index].path} and {shard.path}")
        by_index[shard.index] = shard
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise ShardError(f"missing shard {', '.join(missing)}: merge-features needs all {count} "
                         f"shards, got {len(shards)}")
    return [by_index[i] for i in range(count)]


def _check_out_is_new(out: str, shards: list[_Shard]) -> None:
    for shard in shards:
        if os.path.exists(out) and os.path.samefile(out, shard.path):
            raise ShardError(f"OUT {out} is one of the shards; write the merged cache to a new file")


def _merge_split(writer: StoreWriter, split: str, plan: _Plan, reporter: Reporter) -> None:
    """Appends one split's rows and skipped entries in source order, resuming a killed merge."""
    if writer.is_done(split):
        return
    parts, rows, skips = plan.parts, plan.rows, plan.skips
    total = len(rows.pos) + len(skips.pos)
    labels = np.concatenate([p.data.labels for p in parts])[rows.flat]
    all_keys = [key for p in parts for key in p.data.keys]
    keys = [all_keys[i] for i in rows.flat]
    all_skipped = [pair for p in parts for pair in p.data.skipped]
    skipped = [all_skipped[i] for i in skips.flat]
    has_views = any(p.data.views is not None for p in parts)
    names = ("features", *(("views",) if has_views else ()),
             *(("activations", "view_activations") if writer.tap_shape else ()))
    if writer.tap_shape and not has_views:
        names = names[:-1]
    # Kept only when every shard measured it: a column covering some rows would read as "measured".
    # A shard with no rows in this split never wrote the column, which is no reason to drop it.
    measured = all(p.data.pixel_std is not None or not len(p.data) for p in parts)
    stds = [np.zeros(0, np.float32) if p.data.pixel_std is None else p.data.pixel_std for p in parts]
    pixel_std = np.concatenate(stds)[rows.flat] if measured and len(rows.flat) else None

    consumed, committed = writer.progress(split)
    if committed != int(np.searchsorted(rows.pos, consumed)):
        raise ShardError(f"{writer.partial_path} (an interrupted merge) does not match these "
                         "shards", *START_OVER)
    if consumed:
        reporter.line(f"resuming split '{split}' after {consumed} items")
    row_bytes = int(np.prod(writer.feature_shape)) * np.dtype(writer.dtype).itemsize
    if writer.tap_shape:  # float16 activations travel with each row
        row_bytes += int(np.prod(writer.tap_shape)) * 2
    step = max(1, _COMMIT_BYTES // (row_bytes * (1 + (writer.views if has_views else 0))))
    for start in range(consumed, total, step):
        end = min(total, start + step)
        r0, r1 = (int(i) for i in np.searchsorted(rows.pos, [start, end]))
        s0, s1 = (int(i) for i in np.searchsorted(skips.pos, [start, end]))
        arrays = _gather(writer, parts, rows, r0, r1, names)
        writer.append(split, labels=labels[r0:r1], keys=keys[r0:r1], skipped=skipped[s0:s1], consumed=end,
                      pixel_std=None if pixel_std is None else pixel_std[r0:r1], **arrays)
    writer.finish_split(split)


def _gather(writer: StoreWriter, parts: list[_ShardSplit], rows: _Order, r0: int, r1: int,
            names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The per-row arrays ``names`` (features, and views or activations) of merged rows [r0, r1),
    read as one slice per shard."""
    tap = tuple(writer.tap_shape or ())
    shapes = {"features": (tuple(writer.feature_shape), writer.dtype),
              "views": ((writer.views, *writer.feature_shape), writer.dtype),
              "activations": (tap, "float16"), "view_activations": ((writer.views, *tap), "float16")}
    out = {name: np.empty((r1 - r0, *shapes[name][0]), dtype=shapes[name][1]) for name in names}
    shard, local = rows.shard[r0:r1], rows.local[r0:r1]
    for j, part in enumerate(parts):
        sel = np.flatnonzero(shard == j)
        if not len(sel):
            continue
        lo, hi = int(local[sel[0]]), int(local[sel[-1]]) + 1
        for name in names:
            stored = getattr(part.data, name)
            if stored is None:
                raise ShardError(f"{part.where} is damaged: it has rows without {name}")
            out[name][sel] = stored[lo:hi]
    return out


def _committed_strings(group: h5py.Group, name: str, counter: str) -> list[str]:
    return list(group[name].asstr()[: int(group.attrs[counter])])


def _positions(source_keys: Iterable[str], rows: list[str],
               skipped: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions of ``rows`` and ``skipped`` (each in source order) in ``source_keys``.

    One pass, no key → position table: both lists are subsequences of the source order, so each
    key is matched against the next unmatched row and the next unmatched skipped entry. None when
    one of them is not such a subsequence.
    """
    row_pos = np.empty(len(rows), dtype=np.int64)
    skip_pos = np.empty(len(skipped), dtype=np.int64)
    r = s = 0
    for position, key in enumerate(source_keys):
        if r == len(rows) and s == len(skipped):
            break
        if r < len(rows) and key == rows[r]:
            row_pos[r] = position
            r += 1
        elif s < len(skipped) and key == skipped[s]:
            skip_pos[s] = position
            s += 1
    if r < len(rows) or s < len(skipped):
        return None
    return row_pos, skip_pos
