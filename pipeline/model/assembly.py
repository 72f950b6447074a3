"""The full model: assemble it, and freeze / unfreeze its backbone with BatchNorm kept frozen.

One functional Keras model, built from the same parts as the extractor that filled the cache::

    image (B, S, S, 3) float32 raw 0–255
      ─▶ "augmentation" (Sequential; random layers act only when training=True)
      ─▶ "preprocessing" ─▶ "backbone" (nested application model) ─▶ "pooling" (absent for "none")
      ─▶ "head" (nested model from ``headstart.pipeline.model.head.build_head``) ─▶ logits (B, 1) or (B, K)

Why BatchNormalization layers are set ``trainable=False`` rather than called with
``training=False``: Keras 3's ``fit`` passes ``training=True`` into nested models and overrides a
``base(x, training=False)`` call (keras-team/keras#20285); a BN layer with ``trainable=False`` runs
in inference mode whatever ``training`` says, and its moving statistics never change. That flag is
part of the layer config, so it survives ``model.keras`` save and reload.

Only the layer named "backbone" is ever unfrozen: the "caffe" preprocessing is a frozen Conv2D that a
model-wide ``trainable = True`` would thaw.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterator

import keras
import numpy as np

from headstart.pipeline.errors import OptionError
from headstart.pipeline.model.unfreeze import Unfreeze, parse_unfreeze  # noqa: F401 - re-exported

#: Relative tolerance of the parity check per cache dtype, scaled by max(1, |largest logit|): float16
#: keeps 11 significant bits (~5e-4 per feature), float32 differs only by summation order.
PARITY_RTOL = {"float16": 1e-2, "float32": 1e-4}
#: Names of the parts of the assembled model, in order.
PARTS = ("augmentation", "preprocessing", "backbone", "pooling", "head")


def build_backbone_parts(
    backbone: str,
    *,
    weights: str,
    image_size: int,
    alpha: float | None,
    pooling: str,
    expected_fingerprint: str | None = None,
) -> tuple[keras.Model, keras.layers.Layer, keras.layers.Layer | None, str]:
    """Rebuilds the extractor's parts and checks the weights are the ones the cache was made with.

    Args:
        backbone, weights, image_size, alpha, pooling: as recorded in the cache config (see
            ``headstart.features.backbones.build_extractor``).
        expected_fingerprint: the cache's ``weights_fingerprint``; None skips the check.

    Returns:
        (base named "backbone", preprocessing layer, pooling layer or None, weights fingerprint).

    Raises:
        headstart.features.errors.WeightsError: the rebuilt weights differ from the expected ones, or cannot
            be loaded. Other ``FeaturesError`` subclasses from the backbone registry.
    """
    from headstart.features.backbones import build_base, build_pooling, build_preprocessing, fingerprint_weights
    from headstart.features.errors import WeightsError

    base = build_base(backbone, weights=weights, image_size=image_size, alpha=alpha)
    fingerprint = fingerprint_weights(base)
    if expected_fingerprint and fingerprint != expected_fingerprint:
        hint = ("random weights ('none') are drawn anew at every build unless the backbone seeds "
                "them; extract with --weights PATH to fine-tune") if weights in (None, "none") else (
                "pass the weights file the features were extracted with")
        raise WeightsError(f"--weights {weights}: these {backbone} weights are not the ones the cached "
                           f"features came from (fingerprint {fingerprint[:12]}… ≠ "
                           f"{expected_fingerprint[:12]}…); {hint}")
    return base, build_preprocessing(backbone), build_pooling(pooling, tuple(base.output.shape[1:])), fingerprint


def assemble_model(
    base: keras.Model,
    preprocessing: keras.layers.Layer,
    pooling: keras.layers.Layer | None,
    head: keras.Model,
    *,
    image_size: int,
    augmentation: keras.Sequential | None = None,
    name: str = "headstart",
) -> keras.Model:
    """Builds the end-to-end model from its parts (the layers are used as they are, not copied).

    Args:
        base: the backbone application model, named "backbone", input (S, S, 3).
        preprocessing: layer named "preprocessing", raw 0–255 → what ``base`` expects.
        pooling: layer named "pooling", (B, h, w, C) → (B, C); None keeps the spatial map.
        head: the classifier head, named "head", input the (pooled) backbone output.
        image_size: S.
        augmentation: Sequential named "augmentation", or None for no augmentation.
        name: model name.

    Returns:
        Model (B, S, S, 3) float32 raw 0–255 → logits (B, 1) or (B, num_classes). BatchNorm layers
        of the backbone are frozen; the backbone's other layers are left as they come.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = preprocessing(x)
    x = base(x)
    if pooling is not None:
        x = pooling(x)
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=name)
    freeze_batchnorm(model)
    return model


def inference_model(model: keras.Model) -> keras.Model:
    """Returns the same model without its augmentation, sharing every weight.

    Exports need it: ``model.export`` traces ``model(x)`` without ``training=False``, and Keras's
    random image layers default to ``training=True``, so an exported full model would augment at
    serving time (measured here: logits off by up to 2.4), and TFLite has no kernels for the random
    ops.

    Args:
        model: a model from ``assemble_model`` (or one loaded from ``model.keras``).

    Returns:
        Model (B, S, S, 3) raw 0–255 → logits, the chain of every layer except "augmentation".
    """
    chain = [layer for layer in model.layers
             if not isinstance(layer, keras.layers.InputLayer) and layer.name != "augmentation"]
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    x = inputs
    for layer in chain:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_inference")


def walk_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Yields ``layer`` and every layer nested in it, depth first."""
    yield layer
    for child in getattr(layer, "layers", ()):
        yield from walk_layers(child)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in ``model``, nested models included, in model order."""
    return [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def freeze_batchnorm(model: keras.Model) -> None:
    """Sets every BatchNormalization layer ``trainable=False`` (inference mode, stats fixed)."""
    for layer in batchnorm_layers(model):
        layer.trainable = False


def freeze_backbone(model: keras.Model) -> None:
    """The head stage: backbone and preprocessing frozen, head trainable.

    The caller must (re)compile afterwards: Keras collects trainable variables at compile time.
    """
    model.get_layer("backbone").trainable = False
    model.get_layer("preprocessing").trainable = False
    model.get_layer("head").trainable = True
    freeze_batchnorm(model)


def unfreeze_backbone(model: keras.Model, spec: Unfreeze) -> list[str]:
    """Unfreezes backbone layers as ``spec`` asks; BatchNorm and preprocessing stay frozen.

    The caller must (re)compile afterwards: Keras collects trainable variables at compile time.

    Args:
        model: a model from ``assemble_model``.
        spec: from ``parse_unfreeze``.

    Returns:
        Names of the backbone layers left trainable that hold trainable weights.

    Raises:
        OptionError: "top:N" with N above the backbone's layer count, or "from:LAYER" naming no
            backbone layer (the message suggests close names).
    """
    base = model.get_layer("backbone")
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    if spec.mode == "all":
        start = 0
    elif spec.mode == "top":
        if spec.count > len(layers):
            raise OptionError(f"--unfreeze top:{spec.count}: the backbone has only {len(layers)} layers")
        start = len(layers) - spec.count
    else:
        names = [layer.name for layer in layers]
        if spec.layer not in names:
            close = difflib.get_close_matches(spec.layer, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (first: {names[0]}, last: {names[-1]})"
            raise OptionError(f"--unfreeze from:{spec.layer}: no such backbone layer{hint}")
        start = names.index(spec.layer)
    # Setting a container's flag sets every nested layer's, so thaw all, then freeze what stays.
    base.trainable = True
    for layer in layers[:start]:
        layer.trainable = False
    model.get_layer("preprocessing").trainable = False
    model.get_layer("head").trainable = True
    freeze_batchnorm(model)
    return [layer.name for layer in layers[start:] if layer.trainable_weights]


def trainable_counts(model: keras.Model) -> dict[str, int]:
    """Counts of what training will update, for logs and tests.

    Returns:
        ``{"trainable_weights": variables, "trainable_params": scalars, "non_trainable_params":
        scalars}``.
    """
    def size(variables) -> int:
        total = 0
        for v in variables:
            n = 1
            for d in v.shape:
                n *= int(d)
            total += n
        return total

    return {"trainable_weights": len(model.trainable_weights),
            "trainable_params": size(model.trainable_weights),
            "non_trainable_params": size(model.non_trainable_weights)}


def check_parity(model: keras.Model, cache_info: dict, source: Any, *, samples: int, batch_size: int = 32) -> dict:
    """Compares the model's inference logits with ``head(cached features)`` on the same images.

    Takes the first ``samples`` good images of the validation split (else test, else train) in
    source order whose keys are in the cache, and compares logits (B, 1|K).

    Args:
        model: the assembled model (its "head" layer holds the head run's weights).
        cache_info: the head run's ``run.json["cache"]``: ``path`` and ``fingerprint``.
        source: the resolved Source.
        samples: images to compare.
        batch_size: images per forward pass.

    Returns:
        ``{"split", "samples", "max_abs_diff", "tolerance", "dtype", "worst_key"}``.

    Raises:
        RunDirError: the cache is gone or changed since train-head. ParityError: a difference above
        the tolerance, or no image of the split found in the cache.
    """
    import tensorflow as tf

    from headstart.features.errors import StoreError
    from headstart.features.store import open_cache

    from headstart.pipeline.errors import ParityError, RunDirError

    info = cache_info
    try:
        cache = open_cache(info["path"])
    except StoreError as exc:
        raise RunDirError(f"the parity check needs the head run's feature cache: {exc} "
                          "(or pass --parity-samples 0)") from None
    with cache:
        if cache.fingerprint != info.get("fingerprint"):
            raise RunDirError(f"{info['path']} has changed since the head was trained on it "
                              "(fingerprint differs); train the head again")
        shared = [s for s in ("validation", "test", "train") if s in cache.splits and s in source.split_names]
        split = shared[0] if shared else None
        if split is None:
            raise ParityError("parity check: the source and the cache share no split")
        data = cache.split(split)
        index = {key: i for i, key in enumerate(data.keys)}
        size = int(model.input_shape[1])
        good = source.dataset(split, size).filter(lambda e: tf.equal(tf.strings.length(e["error"]), 0))
        keys, images = [], []
        for element in good.take(samples * 4):
            key = element["key"].numpy().decode()
            if key in index:
                keys.append(key)
                images.append(element["image"].numpy())
            if len(keys) == samples:
                break
        if not keys:
            raise ParityError(f"parity check: none of the first {split} images of SOURCE are in {info['path']}; "
                              "is SOURCE the one the features were extracted from?")
        rows = np.array([index[k] for k in keys])
        order = np.argsort(rows)  # h5py reads increasing indices only
        features = np.empty((len(rows), *data.features.shape[1:]), np.float32)
        features[order] = data.features[rows[order]]
        dtype = str(data.features.dtype)
    head = model.get_layer("head")
    ref = np.concatenate([np.asarray(head(features[i:i + batch_size], training=False))
                          for i in range(0, len(keys), batch_size)])
    got = np.concatenate([np.asarray(model(np.stack(images[i:i + batch_size]), training=False))
                          for i in range(0, len(keys), batch_size)])
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(axis=1)
    tolerance = PARITY_RTOL.get(dtype, 1e-2) * max(1.0, float(np.abs(ref).max()))
    worst = int(np.argmax(diff))
    result = {"split": split, "samples": len(keys), "max_abs_diff": float(diff[worst]),
              "tolerance": tolerance, "dtype": dtype, "worst_key": keys[worst]}
    if not diff[worst] <= tolerance:  # also catches NaN
        raise ParityError(
            f"parity check failed: on {keys[worst]} the full model's logits {got[worst].round(4).tolist()} differ "
            f"from the head on cached features {ref[worst].round(4).tolist()} by {diff[worst]:.3g} (tolerance "
            f"{tolerance:.3g} for a {dtype} cache, {len(keys)} {split} images): the image files, the input "
            "path or the model's preprocessing differ from what extract-features used")
    return result
