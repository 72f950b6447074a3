"""Label issues that several backbones agree on: ``headstart diagnose A.h5 B.h5 --out D``.

Each cache of the same images (other backbones, other sizes) gets its own out-of-fold heads and
cleanlab verdict; which images a backbone calls mislabeled depends on what its features separate,
so one backbone's list mixes wrong labels with its own blind spots. An image every cache flags is
in the **consensus** and listed first; then the images fewer caches flag (more caches first), each
group by the mean label-quality score. The caches must hold the same keys with the same labels and
splits; anything else is refused in one line before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.pipeline.errors import DataError


@dataclass
class Agreement:
    """Attributes:
        caches: one record per cache (path, fingerprint, backbone, alpha), the diagnosed one first.
        is_issue: bool (N, M) cleanlab's verdict of each cache, rows aligned with the first cache.
        scores: float64 (N, M) label-quality score of each row's given label in each cache.
        suggested: int64 (N,) most probable class under the summed probabilities of all caches.
        ranking: int64 rows flagged by at least one cache, consensus first (see the module).
    """

    caches: list[dict]
    is_issue: np.ndarray
    scores: np.ndarray
    suggested: np.ndarray
    ranking: np.ndarray

    @property
    def flagged_by(self) -> np.ndarray:
        """(N,) how many caches flag each row."""
        return self.is_issue.sum(axis=1)

    @property
    def consensus(self) -> np.ndarray:
        """(N,) bool: every cache flags the row."""
        return self.flagged_by == len(self.caches)


def align_cache(first, other) -> np.ndarray:
    """Where each row of ``first`` sits in ``other`` (two dataset.CacheRows of the same images).

    Returns:
        int64 (N,) indices into ``other``'s rows.

    Raises:
        DataError: other classes, other keys, or a key with another split or label (one line).
    """
    where = f"{other.path} and {first.path}"
    if other.class_names != first.class_names:
        raise DataError(f"{where} have other classes ({', '.join(other.class_names)} vs "
                        f"{', '.join(first.class_names)}); give caches of the same images")
    position = {key: i for i, key in enumerate(other.keys)}
    absent = [key for key in first.keys if key not in position]
    if absent or len(other.keys) != len(first.keys):
        extra = len(set(other.keys) - set(first.keys))
        example = absent[0] if absent else next(iter(set(other.keys) - set(first.keys)), "")
        raise DataError(f"{where} hold other images: {len(absent)} keys only in the second, {extra} only in "
                        f"the first (e.g. {example}); give caches of the same images")
    order = np.array([position[key] for key in first.keys], dtype=np.int64)
    for name, mine, theirs in (("split", first.splits, other.splits[order]),
                               ("label", first.labels, other.labels[order])):
        differ = np.flatnonzero(mine != theirs)
        if len(differ):
            raise DataError(f"{where} give {len(differ)} images another {name} (e.g. {first.keys[differ[0]]}); "
                            "give caches of the same images")
    return order


def combine_issues(caches: list, issues: list, probs: list[np.ndarray]) -> Agreement:
    """One Agreement from each cache (dataset.CacheRows), its label_issues.LabelIssues and (N, C)
    probabilities, all aligned with the first cache's rows."""
    import os

    records = [{"path": os.path.abspath(c.path), "fingerprint": c.fingerprint, "backbone": c.config.get("backbone"),
                "alpha": c.config.get("alpha"), "label_issues": int(i.is_issue.sum())}
               for c, i in zip(caches, issues)]
    is_issue = np.stack([i.is_issue for i in issues], axis=1)
    scores = np.stack([i.scores for i in issues], axis=1)
    flagged = is_issue.sum(axis=1)
    rows = np.flatnonzero(flagged > 0)
    mean = scores[rows].mean(axis=1)
    ranking = rows[np.lexsort((mean, -flagged[rows]))]
    suggested = np.sum(probs, axis=0).argmax(axis=1).astype(np.int64)
    return Agreement(records, is_issue, scores, suggested, ranking.astype(np.int64))
