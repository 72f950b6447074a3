"""Nearest neighbours on normalised cached features, near-duplicate pairs, exact byte duplicates.

(The files themselves are read in ``pictures``; the thresholds come from ``duplicate_thresholds``.)

One search serves every check that needs neighbours (near-duplicates within and across splits,
cleanlab's out-of-distribution score). Up to ``EXACT_LIMIT`` rows it is exact and blocked: queries go
``block`` rows at a time through one matrix product against all rows and only each query's top
``k`` survive, so memory is O(block × N + N × k), never the O(N²) of a full similarity matrix.
Exact search costs N² × D: at 100,000 × 1,280 that measured ~15 minutes here, so beyond the limit
faiss (optional: ``pip install faiss-cpu``) searches an inverted-file index over a 128-dimension PCA
projection, and the similarities of the pairs it returns are recomputed exactly
(``benchmarks/diagnose_speed.py``). Without faiss the exact search runs at any size, slowly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


#: Query rows per matrix product: 1,024 × 100,000 float32 similarities is 400 MB.
BLOCK_ROWS = 1024
#: Rows up to which the search is exact; beyond it faiss is used when installed.
EXACT_LIMIT = 20_000


def normalise_features(features: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Centres the features, then scales each row to unit length.

    Backbone features after ReLU are all non-negative, so raw cosine similarities crowd near 1 and
    hide the difference between a copy and a look-alike; subtracting the mean feature spreads them.

    Args:
        features: (N, D) or (N, h, w, C) (spatial maps are averaged over h, w first).
        center: (D,) vector to subtract; the mean of ``features`` when None.

    Returns:
        float32 (N, D), rows of unit L2 norm (an all-zero row stays zero).
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim == 4:
        x = x.mean(axis=(1, 2))
    x = x.reshape(len(x), -1)
    x = x - (x.mean(axis=0) if center is None else center)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def search_method(n: int) -> str:
    """"exact" or "faiss-ivf-pca128": what ``top_k_neighbours`` does for ``n`` rows."""
    if n <= EXACT_LIMIT:
        return "exact"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "exact"
    return "faiss-ivf-pca128"


def top_k_neighbours(x: np.ndarray, k: int, *, block: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row by cosine similarity, the row itself excluded.

    Exact up to ``EXACT_LIMIT`` rows (or without faiss), approximate beyond (see the module).

    Args:
        x: float32 (N, D) unit rows (``normalise_features``).
        k: neighbours per row (capped at N - 1).
        block: query rows per matrix product; bounds memory at about block × N × 4 bytes.

    Returns:
        (indices int64 (N, k), similarities float32 (N, k)), most similar first.
    """
    n = len(x)
    k = max(0, min(int(k), n - 1))
    if k and search_method(n) != "exact":
        return _faiss_neighbours(x, k)
    indices = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return indices, sims
    for start in range(0, n, block):
        stop = min(n, start + block)
        s = x[start:stop] @ x.T
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        indices[start:stop] = np.take_along_axis(part, order, axis=1)
        sims[start:stop] = np.take_along_axis(part_sims, order, axis=1)
    return indices, sims


def _faiss_neighbours(x: np.ndarray, k: int, dims: int = 128, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Approximate neighbours: faiss IVF (√N·4 lists, ``nprobe`` probed) over a PCA projection."""
    import faiss

    n, d = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    dims = min(dims, d)
    lists = int(min(4096, 4 * np.sqrt(n)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, lists, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexPreTransform(faiss.PCAMatrix(d, dims), ivf)
    sample = np.random.default_rng(0).choice(n, min(n, 40 * lists), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    ivf.nprobe = nprobe
    _, found = index.search(x, k + 1)
    indices = np.zeros((n, k), dtype=np.int64)
    for i, row in enumerate(found):
        # Drop the row itself (and -1, "fewer found than asked"); pad from what is left.
        others = [j for j in row if j != i and j >= 0][:k]
        indices[i, :len(others)] = others
        indices[i, len(others):] = others[-1] if others else (i + 1) % n
    # Exact cosine of the pairs found: the projection's inner products are only approximate.
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, 4096):  # blocks: x[indices] whole would be N × k × D floats
        part = slice(start, start + 4096)
        sims[part] = np.einsum("nd,nkd->nk", x[part], x[indices[part]])
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(sims, order, axis=1)


@dataclass(frozen=True)
class Pair:
    """Two rows that show the same image; ``a < b`` (global row indices).

    Attributes:
        similarity: cosine similarity of the two rows' features.
        exact: the source files are byte-identical.
        pixel_difference: mean absolute difference of their grey thumbnails (0–255), None when
            not measured (no files at hand, a fixed threshold, an unreadable file).
        found_by: "bytes", "features+pixels" (features close, pixels confirm), "pixels" (pixels
            match, features did not say so), or "features" (no pixel check possible).
    """

    a: int
    b: int
    similarity: float
    exact: bool
    pixel_difference: float | None = None
    found_by: str = "features"


def near_duplicate_pairs(indices: np.ndarray, sims: np.ndarray, threshold: float | np.ndarray) -> list[Pair]:
    """Every unordered pair (i, j) with j among i's neighbours at cosine similarity ≥ the threshold.

    Only the ``k`` neighbours kept per row are looked at, so a group of more than k + 1 copies of
    one image yields the pairs among each row's k closest copies, which still links the group.

    Args:
        indices, sims: (N, k) from ``top_k_neighbours``.
        threshold: one similarity, or (N,) one per row; a pair must reach both rows' thresholds.
    """
    per_row = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(indices),))
    rows, cols = np.nonzero(sims >= per_row[:, None])
    found: dict[tuple[int, int], float] = {}
    for i, c in zip(rows.tolist(), cols.tolist()):
        j = int(indices[i, c])
        if sims[i, c] < per_row[j]:
            continue
        key = (min(i, j), max(i, j))
        found[key] = max(found.get(key, -1.0), float(sims[i, c]))
    return [Pair(a, b, s, False) for (a, b), s in found.items()]


def exact_pairs(hashes: list[str | None], x: np.ndarray) -> list[Pair]:
    """Pairs of rows whose source files are byte-identical, with their feature similarity.

    Args:
        hashes: content hash per row (None: unknown, never paired).
        x: (N, D) unit rows, for the similarity column.
    """
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            groups.setdefault(h, []).append(i)
    pairs = []
    for members in groups.values():
        for p, a in enumerate(members):
            for b in members[p + 1:]:
                pairs.append(Pair(a, b, float(x[a] @ x[b]), True, 0.0, "bytes"))
    return pairs


def merge_pairs(*lists: list[Pair]) -> list[Pair]:
    """One list of distinct pairs: a pair in a later list replaces the same pair in an earlier one."""
    by_key: dict[tuple[int, int], Pair] = {}
    for pairs in lists:
        by_key.update({(p.a, p.b): p for p in pairs})
    return list(by_key.values())
