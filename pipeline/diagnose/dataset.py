"""The whole cache in memory, split by split, as one table of rows for the diagnosis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.pipeline.errors import DataError

#: Splits in the order the report lists them; a leak is any pair across two of them.
SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class CacheRows:
    """Every row of a cache's train/validation/test splits, concatenated in that order.

    Attributes:
        features: float32 (N, *feature_shape).
        labels: int64 (N,).
        keys: N source keys.
        splits: (N,) split name of each row (numpy str array).
        pixel_std: float32 (N,), or None when any split lacks it (an older cache).
        class_names, fingerprint, config, path: from the cache.
    """

    features: np.ndarray
    labels: np.ndarray
    keys: list[str]
    splits: np.ndarray
    pixel_std: np.ndarray | None
    class_names: list[str]
    fingerprint: str
    config: dict
    path: str

    def where(self, *names: str) -> np.ndarray:
        """int64 row indices of the named splits."""
        return np.flatnonzero(np.isin(self.splits, names))

    @property
    def source_root(self) -> str | None:
        """The folder the keys are relative to, or None when the source is not a folder (TFDS)."""
        source = self.config.get("source") or {}
        return source.get("root") if isinstance(source, dict) else None


def load_cache_rows(path: str) -> CacheRows:
    """Reads the train/validation/test splits of a finished cache into memory.

    Raises:
        StoreError: the cache cannot be opened. DataError: no train split, fewer than 2 classes.
    """
    from headstart.features.cache import open_cache

    with open_cache(path) as cache:
        names = [s for s in SPLIT_ORDER if s in cache.splits]
        if "train" not in names:
            raise DataError(f"{path}: the cache has no 'train' split (it has: {', '.join(cache.splits)})")
        if len(cache.class_names) < 2:
            raise DataError(f"{path}: the cache has {len(cache.class_names)} class(es); need 2 or more")
        if cache.multi_label:
            # Out-of-fold heads and cleanlab's find_label_issues here are single-label; cleanlab's
            # multilabel_classification would need multi-label fold heads, not built yet.
            raise DataError(f"{path}: diagnose reads single-label caches only; this one is multi-label")
        parts = [cache.split(s) for s in names]
        features = np.concatenate([np.asarray(p.features[...], dtype=np.float32) for p in parts])
        stds = [p.pixel_std for p in parts if len(p)]
        return CacheRows(
            features=features,
            labels=np.concatenate([p.labels for p in parts]).astype(np.int64),
            keys=[k for p in parts for k in p.keys],
            splits=np.array([p.name for p in parts for _ in range(len(p))], dtype=object).astype(str),
            pixel_std=(np.concatenate(stds) if stds and all(s is not None for s in stds) else None),
            class_names=list(cache.class_names), fingerprint=cache.fingerprint,
            config=dict(cache.config), path=str(path))
