"""Near-duplicate thresholds per class, from the data's own nearest-neighbour similarities.

A fixed cosine threshold means something else on every dataset: on the photos the typical nearest
neighbour of an image sits at similarity ~0.5 and a copy at ~0.99, while a class of handwritten 1s
is near 0.9 as a whole, so a fixed 0.95 calls different people's 1s copies. Here a pair is a
near-duplicate candidate when it is far closer than its class's typical nearest neighbour:

    d = 1 − cosine similarity of each row to its nearest row of the same split and class;
    per class, on log d:  threshold = median − ``ROBUST_Z`` × 1.4826 × MAD
    (the robust z-score: the few copies a class may hold do not move median or MAD).

Log distance because "far closer" is a ratio: a copy is 10–1,000× closer than a typical neighbour
whatever the typical distance is. Measured on 2 × 2 real caches (photos and 8×8 digits, MobileNetV2
0.35 and 0.5): no nearest pair of different images lies beyond z = −4.5; the photos' own copy sits at
z ≈ −18 and byte copies beyond −30. A class with fewer than ``MIN_ROWS`` rows that have a
neighbour takes the statistics of all classes together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Robust standard deviations below the class's median log nearest-neighbour distance.
ROBUST_Z = 6.0
#: Rows a class needs for its own statistics; smaller classes use all rows'.
MIN_ROWS = 20
#: Smallest cosine distance considered (byte copies are 0; the log needs a floor).
_FLOOR = 1e-6


@dataclass
class DuplicateThresholds:
    """The cosine similarity from which a pair is a near-duplicate candidate, per class.

    Attributes:
        mode: "from the data" or "fixed".
        per_class: float64 (C,) similarity thresholds.
        classes: one record per class (name, rows, median nearest-neighbour similarity, threshold, basis).
    """

    mode: str
    per_class: np.ndarray
    classes: list[dict]

    def per_row(self, labels: np.ndarray) -> np.ndarray:
        """(N,) the threshold of each row's class."""
        return self.per_class[np.asarray(labels, dtype=np.int64)]

    def record(self) -> dict:
        """report.json's account of the choice."""
        rule = ("the cosine similarity of the pair's class threshold (the stricter of the two classes): "
                f"per class, median − {ROBUST_Z:g} × 1.4826 × MAD of log(1 − s) over each row's nearest "
                "row of the same split and class" if self.mode == "from the data"
                else "one cosine similarity for every class (--duplicate-threshold)")
        return {"mode": self.mode, "rule": rule, "per_class": self.classes}


def nearest_within_groups(x: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row to its nearest other row of the same split and class.

    Args:
        x: float32 (N, D) unit rows (``neighbours.normalise_features``).
        labels: (N,) class of each row. splits: (N,) split name of each row.

    Returns:
        float64 (N,); NaN for a row alone in its (split, class) group.
    """
    from headstart.pipeline.diagnose.neighbours import top_k_neighbours

    nearest = np.full(len(x), np.nan)
    for split in np.unique(splits):
        for cls in np.unique(labels):
            group = np.flatnonzero((splits == split) & (labels == cls))
            if len(group) >= 2:
                _, sims = top_k_neighbours(x[group], 1)
                nearest[group] = sims[:, 0]
    return nearest


def thresholds_from_data(nearest: np.ndarray, labels: np.ndarray, class_names: list[str], *,
                         z: float = ROBUST_Z) -> DuplicateThresholds:
    """Per-class thresholds by the rule of the module docstring.

    Args:
        nearest: (N,) from ``nearest_within_groups``.
        labels: (N,) class of each row.
        class_names: the C class names.
    """
    log_d = np.log(np.maximum(1.0 - nearest, _FLOOR))
    known = ~np.isnan(nearest)
    overall = _robust_threshold(log_d[known], z) if known.sum() >= 2 else None
    per_class, records = np.ones(len(class_names)), []
    for c, name in enumerate(class_names):
        mine = known & (labels == c)
        basis = "class" if mine.sum() >= MIN_ROWS else "all classes (too few rows)"
        value = _robust_threshold(log_d[mine], z) if basis == "class" else overall
        per_class[c] = 1.0 if value is None else value
        records.append({"class": name, "rows": int(mine.sum()), "basis": basis,
                        "median_nearest_similarity": (round(float(np.median(nearest[mine])), 6)
                                                      if mine.any() else None),
                        "threshold": round(float(per_class[c]), 6)})
    return DuplicateThresholds("from the data", per_class, records)


def fixed_thresholds(value: float, class_names: list[str]) -> DuplicateThresholds:
    """One threshold for every class (``--duplicate-threshold``)."""
    records = [{"class": name, "threshold": value} for name in class_names]
    return DuplicateThresholds("fixed", np.full(len(class_names), float(value)), records)


def _robust_threshold(log_d: np.ndarray, z: float) -> float:
    median = float(np.median(log_d))
    spread = 1.4826 * float(np.median(np.abs(log_d - median)))
    return float(1.0 - np.exp(median - z * spread))
