"""Label issues from out-of-fold probabilities, with cleanlab's confident learning.

``cleanlab.filter.find_label_issues`` decides which rows are issues (confident joint, pruned by
noise rate); ``cleanlab.rank.get_label_quality_scores`` (self-confidence) ranks all rows, lowest
score = given label least likely. Multi-label caches would go through cleanlab's multi-label
variants (``find_label_issues(..., multi_label=True)``, ``cleanlab.multilabel_classification``)
with multi-label fold heads; that path is not wired, and ``diagnose`` refuses a multi-label cache
in one line (``headstart.pipeline.diagnose.dataset.load_cache_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelIssues:
    """Attributes:
        scores: (N,) label-quality score of each row's given label, in [0, 1] (low = suspicious).
        suggested: (N,) int64 most probable class under the out-of-fold probabilities.
        is_issue: (N,) bool, cleanlab's verdict.
        ranking: (N,) int64 all rows, most suspicious first (issues first, then by score).
    """

    scores: np.ndarray
    suggested: np.ndarray
    is_issue: np.ndarray
    ranking: np.ndarray


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> LabelIssues:
    """Runs cleanlab on (N,) given labels and (N, C) out-of-fold probabilities.

    Raises:
        ValueError: from cleanlab on inconsistent shapes.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    if n == 0:
        empty = np.zeros(0)
        return LabelIssues(empty, empty.astype(np.int64), empty.astype(bool), empty.astype(np.int64))
    # cleanlab wants every class to appear in the labels; a class absent from these rows has no
    # column to prune by, so it is left out of the call and mapped back.
    present = np.unique(labels)
    remap = {int(c): i for i, c in enumerate(present)}
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    local = np.array([remap[int(c)] for c in labels], dtype=np.int64)
    scores = get_label_quality_scores(local, sub, method="self_confidence")
    if len(present) >= 2:
        is_issue = cleanlab_find(local, sub, filter_by="prune_by_noise_rate", n_jobs=1)
    else:
        is_issue = np.zeros(n, dtype=bool)
    ranking = np.lexsort((scores, ~is_issue))
    return LabelIssues(np.asarray(scores, dtype=np.float64), probs.argmax(axis=1).astype(np.int64),
                       np.asarray(is_issue, dtype=bool), ranking.astype(np.int64))
