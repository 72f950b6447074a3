"""Outliers: images far from all others in feature space, and near-constant images.

Far from everything: cleanlab's ``OutOfDistribution`` feature score (its transform of the mean
distance to the k nearest neighbours), fed the neighbours ``neighbours.top_k_neighbours`` already
found, so the search runs once. An image is flagged with Datalab's rule for feature outliers: its
mean neighbour distance lies beyond Q3 + (1/0.37 − 1) × IQR of all images' mean distances.

Near-constant: the per-row ``pixel_std`` that extraction records (blank, black, one flat colour
score ~0 on the 0–255 scale); caches from before it was recorded say "not measured".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Datalab's default for feature-based outliers (cleanlab OutlierIssueManager.DEFAULT_THRESHOLDS).
IQR_THRESHOLD = 0.37037
#: Pixel standard deviation (0–255) below which an image counts as near-constant. JPEG noise on a
#: flat colour stays under 1; the flattest of the 2,000 real photos measured here is far above.
NEAR_CONSTANT_STD = 2.0


@dataclass
class Outliers:
    """Attributes:
        ood_scores: (N,) cleanlab OOD score in [0, 1], low = atypical.
        mean_distance: (N,) mean Euclidean distance (unit features) to the k neighbours.
        is_ood: (N,) bool.
        distance_threshold: the mean distance beyond which a row is flagged.
        pixel_std: (N,) float32, or None when the cache did not record it.
        is_constant: (N,) bool (all False when not measured).
    """

    ood_scores: np.ndarray
    mean_distance: np.ndarray
    is_ood: np.ndarray
    distance_threshold: float
    pixel_std: np.ndarray | None
    is_constant: np.ndarray


class _PrecomputedNeighbours:
    """The part of sklearn's NearestNeighbors that cleanlab's OutOfDistribution calls."""

    metric = "euclidean"

    def __init__(self, indices: np.ndarray, distances: np.ndarray) -> None:
        self.n_neighbors = indices.shape[1]
        self._indices, self._distances = indices, distances

    def kneighbors(self, features=None):
        return self._distances, self._indices


def find_outliers(x: np.ndarray, indices: np.ndarray, sims: np.ndarray, pixel_std: np.ndarray | None,
                  *, constant_std: float = NEAR_CONSTANT_STD) -> Outliers:
    """Scores every row; ``x`` (N, D) unit rows, ``indices``/``sims`` (N, k) from top_k_neighbours."""
    from cleanlab.outlier import OutOfDistribution

    n = len(x)
    distances = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.astype(np.float64)))
    if n > 1 and indices.shape[1]:
        ood = OutOfDistribution(params={"knn": _PrecomputedNeighbours(indices, distances)})
        scores = np.asarray(ood.score(features=x), dtype=np.float64)
        mean = distances.mean(axis=1)
        q1, q3 = np.percentile(mean, [25, 75])
        threshold = float(q3 + (1 / IQR_THRESHOLD - 1) * (q3 - q1))
        is_ood = mean > threshold
    else:
        scores, mean, threshold = np.ones(n), np.zeros(n), float("inf")
        is_ood = np.zeros(n, dtype=bool)
    constant = (np.zeros(n, dtype=bool) if pixel_std is None
                else np.asarray(pixel_std) < constant_std)
    return Outliers(scores, mean, is_ood, threshold, pixel_std, constant)
