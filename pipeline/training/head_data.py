"""Batches of cached features for head training: in memory or streamed from HDF5, same numbers.

The epoch's order comes from ``plan_epoch``: one NumPy generator per (seed, epoch) shuffles blocks
of contiguous rows, groups them into windows, and shuffles rows fully within each window. Both
loaders read the same windows, cut batches from the same concatenated order and cast to float32 at
the same point, so a head trained from memory and one trained from a stream see identical batches,
and with ``--deterministic`` end bit-identical.

Why blocks and windows: h5py point selections are far slower per row than slices (figures:
docs/measurements.md), so the stream reads each window as a few contiguous slices and never holds
more than one window (``WINDOW_BYTES``) in memory. The geometry depends only on the row size, never on the memory
limit, so the in-memory loader (which follows the same plan) gives the same order. A cache that fits
in one window, every small cache, gets a full uniform permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

#: Bytes of features one window holds; bounds the streaming loader's memory.
WINDOW_BYTES = 64 << 20
#: Blocks per window: how many random places of the file a window mixes.
BLOCKS_PER_WINDOW = 64


def shuffle_geometry(row_bytes: int) -> tuple[int, int]:
    """Returns (block_rows, window_rows) for rows of ``row_bytes`` bytes; window = 64 blocks."""
    window = max(BLOCKS_PER_WINDOW, WINDOW_BYTES // max(1, row_bytes))
    block = max(1, window // BLOCKS_PER_WINDOW)
    return block, block * BLOCKS_PER_WINDOW


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's training order, window by window.

    Attributes:
        windows: per window, int64 row indices in training order (rows of whole blocks).
        choices: per window, int64 view per position (0 = original, k = stored view k-1), or None
            when the cache has no views.
    """

    windows: list[np.ndarray]
    choices: list[np.ndarray] | None

    @property
    def order(self) -> np.ndarray:
        """All rows in training order, int64 (n,)."""
        return np.concatenate(self.windows) if self.windows else np.zeros(0, np.int64)

    @property
    def choice(self) -> np.ndarray | None:
        """View per position of ``order``, or None."""
        return None if self.choices is None else np.concatenate(self.choices)


def plan_epoch(seed: int, epoch: int, n: int, views: int = 0, *, block_rows: int = 1,
               window_rows: int | None = None) -> EpochPlan:
    """Plans one epoch: block shuffle, windows of whole blocks, full shuffle within each window.

    Each (seed, epoch) has its own generator, so the plan does not depend on which epochs ran
    before (an early-stopped or resumed run draws the same plans).

    Args:
        seed: run seed; any int (negative seeds map to a non-negative key).
        epoch: 0-based epoch.
        n: training rows.
        views: K augmented views stored per image; each position draws one of the K + 1 versions.
        block_rows: rows per contiguous block.
        window_rows: rows per window (rounded down to whole blocks); None for one window.
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch])
    block_rows = max(1, int(block_rows))
    blocks = -(-n // block_rows)
    per_window = blocks if window_rows is None else max(1, int(window_rows) // block_rows)
    block_order = rng.permutation(blocks)
    windows = []
    for start in range(0, blocks, max(1, per_window)):
        chosen = block_order[start:start + per_window]
        rows = (chosen[:, None] * block_rows + np.arange(block_rows)[None, :]).reshape(-1)
        windows.append(rng.permutation(rows[rows < n]).astype(np.int64))
    choices = [rng.integers(0, views + 1, size=len(w), dtype=np.int64) for w in windows] if views else None
    return EpochPlan(windows, choices)


class SplitArrays(Protocol):
    """What ``FeatureRows`` reads: a cache split (``features.cache.SplitData``), one without its
    excluded rows (``data.exclusion.SubsetSplit``) or in-memory arrays (diagnose's ``_ArraySplit``)."""

    features: Any  # (N, *feature_shape): an h5py dataset, or anything sliced and shaped like one
    views: Any     # (N, K, *feature_shape) likewise, or None

    def __len__(self) -> int: ...


def split_nbytes(split: SplitArrays, *, with_views: bool) -> int:
    """Bytes a split takes in memory at its stored dtype (features, plus views when used)."""
    features = split.features
    row = int(np.prod(features.shape[1:], dtype=np.int64)) * np.dtype(features.dtype).itemsize
    copies = 1
    if with_views and split.views is not None:
        copies += int(split.views.shape[1])
    return len(split) * row * copies


class FeatureRows:
    """Read access to one split's features (N, *feature_shape) and views (N, K, *feature_shape).

    Args:
        split: a ``SplitArrays`` (``features.cache.SplitData`` or anything with ``features``, ``views``
            and ``__len__``); its datasets must stay open while this object is used.
        in_memory: load the arrays now (True) or read them from HDF5 window by window (False).
        with_views: use the stored augmented views (the training split of an augmented cache).
    """

    def __init__(self, split: SplitArrays, *, in_memory: bool, with_views: bool = False) -> None:
        self.n = len(split)
        self.in_memory = in_memory
        self.feature_shape = tuple(split.features.shape[1:])
        self.dtype = np.dtype(split.features.dtype)
        self.views = int(split.views.shape[1]) if with_views and split.views is not None else 0
        self.row_bytes = int(np.prod(self.feature_shape, dtype=np.int64)) * self.dtype.itemsize
        if in_memory:
            self._features = np.asarray(split.features[...])
            self._views = np.asarray(split.views[...]) if self.views else None
        else:
            self._features = split.features
            self._views = split.views if self.views else None

    def plan(self, seed: int, epoch: int) -> EpochPlan:
        """This split's plan for one epoch, with the geometry of its row size."""
        block, window = shuffle_geometry(self.row_bytes)
        return plan_epoch(seed, epoch, self.n, self.views, block_rows=block, window_rows=window)

    def gather(self, rows: np.ndarray, choice: np.ndarray | None = None) -> np.ndarray:
        """Returns float32 (len(rows), *feature_shape): row ``rows[j]`` in view ``choice[j]``.

        Args:
            rows: int row indices, any order, no repeats.
            choice: view per row (0 = original, k = stored view k-1); None means originals.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if choice is None:
            choice = np.zeros(rows.size, dtype=np.int64)
        read = self._read_memory if self.in_memory else self._read_stream
        # One cast, after the copy, at the same place for both loaders: float16 caches give the
        # same float32 batches whichever path read them.
        return read(rows, choice).astype(np.float32, copy=False)

    def _read_memory(self, rows: np.ndarray, choice: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, *self.feature_shape), dtype=self.dtype)
        for view in np.unique(choice):
            at = np.flatnonzero(choice == view)
            out[at] = self._features[rows[at]] if view == 0 else self._views[rows[at], view - 1]
        return out

    def _read_stream(self, rows: np.ndarray, choice: np.ndarray) -> np.ndarray:
        # Sort, split into contiguous runs, read each run as slices, scatter back into plan order.
        out = np.empty((rows.size, *self.feature_shape), dtype=self.dtype)
        if rows.size == 0:
            return out
        sort = np.argsort(rows, kind="stable")
        srows, schoice = rows[sort], choice[sort]
        cuts = np.flatnonzero(np.diff(srows) != 1) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, srows.size]):
            first, last = int(srows[lo]), int(srows[hi - 1]) + 1
            run_choice = schoice[lo:hi]
            for view in np.unique(run_choice):
                at = np.flatnonzero(run_choice == view)
                data = self._features[first:last] if view == 0 else self._views[first:last, view - 1]
                out[sort[lo + at]] = data[at]
        return out

    def _batched(self, windows: Iterable[tuple[np.ndarray, np.ndarray | None]],
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Batches are cut from the concatenated order, not per window, so window boundaries never
        # change a batch; rows left at a window's end carry over into the next.
        carry_x = np.zeros((0, *self.feature_shape), np.float32)
        carry_rows = np.zeros(0, np.int64)
        for rows, choice in windows:
            x = np.concatenate([carry_x, self.gather(rows, choice)])
            rows = np.concatenate([carry_rows, rows])
            full = len(rows) // batch_size * batch_size
            for b in range(0, full, batch_size):
                yield x[b:b + batch_size], rows[b:b + batch_size]
            carry_x, carry_rows = x[full:], rows[full:]
        if len(carry_rows):
            yield carry_x, carry_rows

    def train_batches(self, plan: EpochPlan, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (features float32 (B, *feature_shape), rows int64 (B,)) in the plan's order.

        Every batch holds ``batch_size`` rows except the last; ``rows`` index the labels.
        """
        choices = plan.choices if plan.choices is not None else [None] * len(plan.windows)
        yield from self._batched(zip(plan.windows, choices), batch_size)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (features float32 (B, *feature_shape), rows) in stored order, originals only."""
        _, window = shuffle_geometry(self.row_bytes)
        windows = ((np.arange(s, min(s + window, self.n), dtype=np.int64), None)
                   for s in range(0, self.n, window))
        yield from self._batched(windows, batch_size)
