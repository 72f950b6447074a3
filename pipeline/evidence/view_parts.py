"""The training rows shared out among the augmentation items: each row's views come from one item.

The view trials (``evidence.view_trials``) once extracted every candidate's views of the whole
training split: with six items and one view each, six backbone passes over it, 40 % of auto's time
on the photos. Each item's cache now covers a stable 1/M of the rows instead (M items trained;
``extract-features --shard j/M``, whose ``splits.shard_of`` already partitions keys by hash, so a
resumed run finds the same rows), which is M times cheaper: one pass per view over the split for
all items together. Its "with" arm trains on every original plus the views of its part; the
on-cache fine-tune draws each row from its original and the views of its part's item when that
item was kept (the one-of draw: every view one transform, as the per-item caches gave it before).

What it costs is evidence: an item is seen on 1/M of the rows, so a small harm shows less. The
per-item comparison on the whole split had no power on these effects either (photos: every item
within ±0.0067; digits' flip −0.0037 ± 0.0099 at one view per row); gross harms still show, and
the audit's pre-filter removes the grossest before any training.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def part_spec(index: int, count: int) -> str | None:
    """``--shard`` of item ``index`` of ``count`` trained items (None when one item has every row)."""
    return None if count <= 1 else f"{index}/{count}"


def views_by_key(originals: np.ndarray, keys: Sequence[str], parts: Sequence[tuple[Sequence[str], np.ndarray]]
                 ) -> np.ndarray:
    """Each row's views from the caches that hold it, padded with the row's original.

    Args:
        originals: (N, *shape): the rows as the head cache holds them.
        keys: the N rows' keys.
        parts: (keys_c, views_c (n_c, K_c, *shape)) of each views cache; a cache holds some rows or all.

    Returns:
        (N, V, *shape), V the most views any row has: row n's views from every cache that holds it (in
        ``parts``' order), then its original again until V (at least 1). Caches that each hold every row give the
        stack of their views, as before the rows were shared out; a row no cache holds is its
        original V times, so drawing among its versions draws the original.
    """
    where = {key: i for i, key in enumerate(keys)}
    rows = [np.array([where.get(k, -1) for k in part_keys], dtype=np.int64) for part_keys, _ in parts]
    counts = np.zeros(len(keys), dtype=np.int64)
    for at, (_, views) in zip(rows, parts):
        counts[at[at >= 0]] += views.shape[1]
    width = max(1, int(counts.max()) if len(keys) else 0)  # one version at least: drawing it draws the original
    out = np.repeat(np.asarray(originals)[:, None], width, axis=1)
    filled = np.zeros(len(keys), dtype=np.int64)
    for at, (_, views) in zip(rows, parts):
        known = at >= 0  # a cache row outside the head cache's split: nothing to pair it with
        target, views = at[known], np.asarray(views)[known]
        for k in range(views.shape[1]):
            out[target, filled[target] + k] = views[:, k]
        filled[target] += views.shape[1]
    return out
