"""The parity check: the model chain on raw images against the head on the cached features.

``finetune`` rebuilds the chain (``headstart.features.chain.build_chain``, the builder that also made
the extractor that filled the cache) and puts the trained head on top. Before it trains anything
it feeds the same images both ways — decoded from SOURCE through the full model, and as cached
features through the head alone — and refuses to go on when the logits differ by more than the
cache's precision explains: then the input path, the preprocessing or the weights are not the
ones the features came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from headstart.features.errors import Arg, parts_of
from headstart.pipeline.errors import ParityError, RunDirError

if TYPE_CHECKING:
    import keras

    from headstart.pipeline.data.source import Source

#: Relative tolerance of the parity check per cache dtype, scaled by max(1, |largest logit|): float16
#: keeps 11 significant bits (~5e-4 per feature), float32 differs only by summation order.
PARITY_RTOL = {"float16": 1e-2, "float32": 1e-4}


@dataclass(frozen=True)
class ParityResult:
    """What the parity check compared and found (metrics.json's "parity" section).

    Attributes:
        split: the split the images came from.
        samples: images compared.
        max_abs_diff: largest absolute logit difference over images and logits.
        tolerance: the largest difference accepted.
        dtype: the cache's feature dtype, which sets the tolerance.
        worst_key: the image with the largest difference.
    """

    split: str
    samples: int
    max_abs_diff: float
    tolerance: float
    dtype: str
    worst_key: str

    def to_dict(self) -> dict:
        """metrics.json's "parity" section."""
        return dataclasses.asdict(self)


def check_parity(model: keras.Model, cache_info: dict, source: Source, *, samples: int, batch_size: int = 32,
                 reference: keras.layers.Layer | None = None, field: str = "features") -> ParityResult:
    """Compares the model's inference logits with ``head(cached features)`` on the same images.

    Takes the first ``samples`` good images of the validation split (else test, else train) in
    source order whose keys are in the cache, and compares logits (B, 1|K).

    Args:
        model: the chain with a head (its "head" layer holds the head run's weights).
        cache_info: the head run's ``run.json["cache"]``: ``path`` and ``fingerprint``.
        source: the resolved Source.
        samples: images to compare.
        batch_size: images per forward pass.
        reference: what maps the cached rows to logits; default the model's "head" layer
            (``finetune --on-cache`` passes its top-block model, on the activations).
        field: the cached rows to compare on: "features", or "activations" at the cache's tap.

    Returns:
        A ParityResult.

    Raises:
        RunDirError: the cache is gone or changed since train-head. ParityError: a difference above
        the tolerance, or no image of the split found in the cache.
    """
    split, keys, images, features, dtype = _sample(model, cache_info, source, samples, field)
    head = reference if reference is not None else model.get_layer("head")
    what = "the head on cached features" if field == "features" else f"its top layers on cached {field}"
    ref = np.concatenate([np.asarray(head(features[i:i + batch_size], training=False))
                          for i in range(0, len(keys), batch_size)])
    got = np.concatenate([np.asarray(model(np.stack(images[i:i + batch_size]), training=False))
                          for i in range(0, len(keys), batch_size)])
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(axis=1)
    tolerance = PARITY_RTOL.get(dtype, 1e-2) * max(1.0, float(np.abs(ref).max()))
    worst = int(np.argmax(diff))
    if not diff[worst] <= tolerance:  # also catches NaN
        raise ParityError(
            f"parity check failed: on {keys[worst]} the full model's logits {got[worst].round(4).tolist()} differ "
            f"from {what} {ref[worst].round(4).tolist()} by {diff[worst]:.3g} (tolerance "
            f"{tolerance:.3g} for a {dtype} cache, {len(keys)} {split} images): the image files, the input "
            "path or the model's preprocessing differ from what extract-features used")
    return ParityResult(split=split, samples=len(keys), max_abs_diff=float(diff[worst]), tolerance=tolerance,
                        dtype=dtype, worst_key=keys[worst])


def _sample(model: keras.Model, info: dict, source: Source, samples: int,
            field: str = "features") -> tuple[str, list, list, np.ndarray, str]:
    """(split, keys, raw images, their cached rows of ``field`` as float32, those rows' dtype) to compare."""
    from headstart.features.errors import StoreError
    from headstart.features.cache import open_cache

    try:
        cache = open_cache(info["path"])
    except StoreError as exc:
        raise RunDirError("the parity check needs the head run's feature cache: ", *parts_of(exc),
                          " (or pass ", Arg("parity_samples", 0), ")") from None
    with cache:
        if cache.fingerprint != info.get("fingerprint"):
            raise RunDirError(f"{info['path']} has changed since the head was trained on it "
                              "(fingerprint differs); train the head again")
        shared = [s for s in ("validation", "test", "train") if s in cache.splits and s in source.split_names]
        if not shared:
            raise ParityError("parity check: the source and the cache share no split")
        split = shared[0]
        data = cache.split(split)
        index = {key: i for i, key in enumerate(data.keys)}
        keys, images = _first_cached_images(source, split, int(model.input_shape[1]), index, samples)
        if not keys:
            raise ParityError(f"parity check: none of the first {split} images of SOURCE are in {info['path']}; "
                              "is SOURCE the one the features were extracted from?")
        rows = np.array([index[k] for k in keys])
        order = np.argsort(rows)  # h5py reads increasing indices only
        stored = getattr(data, field)
        features = np.empty((len(rows), *stored.shape[1:]), np.float32)
        features[order] = stored[rows[order]]
        return split, keys, images, features, str(stored.dtype)


def _first_cached_images(source: Source, split: str, size: int, index: dict, samples: int) -> tuple[list, list]:
    # Up to 4× as many images are looked at: some may be bad files, or not in a partial cache.
    import tensorflow as tf

    good = source.dataset(split, size).filter(lambda e: tf.equal(tf.strings.length(e["error"]), 0))
    keys, images = [], []
    for element in good.take(samples * 4):
        key = element["key"].numpy().decode()
        if key in index:
            keys.append(key)
            images.append(element["image"].numpy())
        if len(keys) == samples:
            break
    return keys, images
