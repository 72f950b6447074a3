"""Near-duplicates and leaks: which pairs of rows show the same picture, and how each was found.

The steps, each counted in report.json's ``duplicate_steps``:

1. **features**: pairs among each row's k nearest neighbours (``neighbours.top_k_neighbours``)
   at or above their classes' threshold (``duplicate_thresholds``: from the data by default, one
   fixed similarity with ``--duplicate-threshold``);
2. **pixels** (thresholds from the data, and the source files at hand): each candidate is kept
   only when the two images' thumbnails match (``pictures``), so "leak" means "the same picture,
   resized or re-encoded"; and a search over the thumbnails adds the pairs whose pixels match
   although their features disagree (tiny images, where a backbone sees resizing artefacts);
3. **bytes**: byte-identical source files by sha256 (any folder source).

A TFDS source has no files: its pairs rest on the features alone, and the report says so. With a
fixed threshold the pixel step is skipped, which is what ``diagnose`` did before thresholds came
from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from headstart.pipeline.diagnose import neighbours as nb
from headstart.pipeline.diagnose.duplicate_thresholds import DuplicateThresholds


@dataclass
class Duplicates:
    """Attributes:
        pairs: neighbours.Pair list, leaks first, then byte copies, then by similarity.
        thresholds: the per-class thresholds used.
        steps: how many pairs passed each step (report.json ``duplicate_steps``).
        hashing: how byte copies were looked for (report.json ``exact_duplicates``).
    """

    pairs: list
    thresholds: DuplicateThresholds
    steps: dict
    hashing: dict


def find_duplicates(rows, x: np.ndarray, indices: np.ndarray, sims: np.ndarray, *,
                    threshold: float | None, neighbours: int) -> Duplicates:
    """Runs the steps of the module docstring.

    Args:
        rows: dataset.CacheRows.
        x: float32 (N, D) unit rows; ``indices``/``sims`` (N, k) their nearest neighbours.
        threshold: a fixed cosine similarity, or None for thresholds from the data.
        neighbours: k of the thumbnail search.
    """
    from headstart.pipeline.diagnose import duplicate_thresholds as dt
    from headstart.pipeline.diagnose.pictures import SAME_PICTURE_LEVELS, read_pictures

    if threshold is None:
        thresholds = dt.thresholds_from_data(dt.nearest_within_groups(x, rows.labels, rows.splits),
                                             rows.labels, rows.class_names)
    else:
        thresholds = dt.fixed_thresholds(threshold, rows.class_names)
    near = nb.near_duplicate_pairs(indices, sims, thresholds.per_row(rows.labels))
    steps: dict = {"features": {"pairs": len(near)}}
    root = rows.source_root
    if root is None:
        hashing = {"method": "none", "reason": "the source is not a folder of files (TFDS); byte "
                   "copies show up as near-duplicates with similarity ~1"}
        steps["pixels"] = {"checked": False, "reason": "no source files to compare"}
        return _finish(rows, near, thresholds, steps, hashing)
    pictures = read_pictures(root, rows.keys, thumbnails=threshold is None)
    hashing = {"method": "sha256 of the source files", "root": root, "missing_files": pictures.missing}
    exact = nb.exact_pairs(pictures.hashes, x)
    steps["bytes"] = {"pairs": len(exact)}
    if threshold is not None:
        steps["pixels"] = {"checked": False, "reason": "a fixed --duplicate-threshold keeps the features' verdict"}
        return _finish(rows, nb.merge_pairs(near, exact), thresholds, steps, hashing)
    kept, step = _check_pixels(near, pictures, x, neighbours)
    steps["pixels"] = {"checked": True, "same_picture_mean_levels": SAME_PICTURE_LEVELS,
                       "undecodable_files": pictures.undecodable, **step}
    return _finish(rows, nb.merge_pairs(kept, exact), thresholds, steps, hashing)


def _check_pixels(near: list, pictures, x: np.ndarray, k: int) -> tuple[list, dict]:
    """Feature candidates judged by their thumbnails, plus the pairs the thumbnail search adds."""
    from headstart.pipeline.diagnose.pictures import SAME_PICTURE_LEVELS, same_picture_pairs

    kept, rejected, unreadable = [], 0, 0
    for pair in near:
        diff = pictures.pixel_difference(pair.a, pair.b)
        if diff is None:  # cannot look: the features' verdict stands, marked unconfirmed
            unreadable += 1
            kept.append(pair)
        elif diff <= SAME_PICTURE_LEVELS:
            kept.append(replace(pair, pixel_difference=diff, found_by="features+pixels"))
        else:
            rejected += 1
    known = {(p.a, p.b) for p in kept}
    by_pixels = [nb.Pair(a, b, float(x[a] @ x[b]), False, diff, "pixels")
                 for a, b, diff in same_picture_pairs(pictures, k) if (a, b) not in known]
    step = {"confirmed": len(near) - rejected - unreadable, "rejected": rejected,
            "unreadable": unreadable, "found_by_pixels_only": len(by_pixels)}
    return kept + by_pixels, step


def _finish(rows, pairs: list, thresholds: DuplicateThresholds, steps: dict, hashing: dict) -> Duplicates:
    splits = rows.splits
    # Leaks first (pairs across splits), then exact copies, then by similarity.
    pairs.sort(key=lambda p: (splits[p.a] == splits[p.b], not p.exact, -p.similarity))
    steps["reported"] = len(pairs)
    return Duplicates(pairs, thresholds, steps, hashing)
