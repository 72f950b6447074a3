"""What a feature cache records: its config (compared field by field on resume), its provenance
(versions, timings; never compared), and so the arguments of ``features.store.create_or_resume``.

Everything that changes the cached numbers goes into the config and nothing else: resuming with
another ``--batch-size`` or ``--max-bad`` is fine, another backbone, image size, tap or folder
content is not.
"""

from __future__ import annotations

import platform

from headstart.pipeline.config import ExtractConfig, config_to_dict
from headstart.pipeline.store.provenance import utc_timestamp


def store_args(config: ExtractConfig, backbone: dict, source, splits: list[str],
                shard: tuple[int, int] | None, tap=None) -> dict:
    """The keyword arguments of ``create_or_resume``: what the cache holds and where it came from."""
    from headstart.pipeline.data.splits import SHARD_HASH

    cache_config = _cache_config(config, backbone, source, splits)
    if tap is not None:
        # Only caches with a tap carry the key: every other cache's config is what it always was.
        cache_config["tap"] = tap.to_dict()
    if shard is not None:
        # Only sharded caches carry the field, so unsharded configs (and old caches) are unchanged
        # and a merged cache has exactly the config of a single-process run.
        cache_config["shard"] = {"index": shard[0], "count": shard[1], "hash": SHARD_HASH}
    multi_label = bool(getattr(source, "multi_label", False))
    provenance = {**_provenance(config, shard), "task": "multi_label" if multi_label else "single_label"}
    return dict(config=cache_config, provenance=provenance, class_names=list(source.class_names),
                splits=splits, feature_shape=tuple(backbone["feature_shape"]), dtype=config.dtype,
                views=config.augment_views, overwrite=config.overwrite, multi_label=multi_label,
                tap_shape=tuple(tap.shape) if tap is not None else None)


def _cache_config(config: ExtractConfig, backbone: dict, source, splits: list[str]) -> dict:
    from headstart.pipeline.data.image import EXIF_ORIENTATION

    # Everything that changes the cached numbers, and nothing else: resuming with another
    # --batch-size or --max-bad is fine, another backbone or image size is not.
    described = source.describe()
    # A hub: backbone's KerasHub version, preset and image converter config shape the numbers too;
    # only those caches carry the key, so every other cache's config is what it always was.
    hub = {"hub": backbone["hub"]} if backbone.get("hub") else {}
    # Likewise only multi-label caches carry "task": a single-label cache's config is unchanged,
    # so caches written before multi-label existed still resume and match.
    task = {"task": "multi_label"} if getattr(source, "multi_label", False) else {}
    return hub | task | {
        "backbone": backbone["backbone"],
        "alpha": backbone["alpha"],
        "weights": backbone["weights"],
        "weights_fingerprint": backbone["weights_fingerprint"],
        "image_size": config.image_size,
        "pooling": config.pooling,
        "preprocessing": backbone["preprocessing"],
        "feature_shape": list(backbone["feature_shape"]),
        "dtype": config.dtype,
        "class_names": list(source.class_names),
        "source": described,
        "splits": splits,
        "augment_views": config.augment_views,
        "augment": config.augment if config.augment_views else None,
        "seed": config.seed if config.augment_views else None,
        # Decoding changed (EXIF orientation applied): a cache of sideways pixels is another cache.
        "exif_orientation": EXIF_ORIENTATION,
    }


def view_seed(seed: int, shard: tuple[int, int] | None) -> int:
    # Views are seeded per (seed, split, batch number, view); without this, batch b of every shard
    # would get the same transforms. Shard 0 keeps the seed, so --shard 0/1 equals a plain run.
    return seed if shard is None else seed + 1_000_003 * shard[0]


def _provenance(config: ExtractConfig, shard: tuple[int, int] | None = None) -> dict:
    import h5py
    import keras
    import numpy
    import tensorflow as tf

    from headstart.pipeline import __version__

    provenance = {
        "headstart": __version__,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "h5py": h5py.__version__,
                     "numpy": numpy.__version__},
        "command_config": config_to_dict(config),
        "created": utc_timestamp(),
    }
    if shard is not None:
        provenance["shard"] = {"index": shard[0], "count": shard[1],
                               "view_seed": view_seed(config.seed, shard)}
    return provenance
