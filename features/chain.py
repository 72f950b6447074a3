"""The model chain: the one place that puts preprocessing, backbone, pooling and a head together.

Every model headstart runs is this chain, one functional Keras model on raw images::

    image (B, S, S, 3) float32, 0–255
      ─▶ ["augmentation"] ─▶ "preprocessing" ─▶ "backbone" ─▶ ["pooling"] ─▶ ["head"] ─▶ output

The feature extractor that fills the cache is the chain without a head (``build_extractor``);
``finetune`` puts the trained head on the same chain, with augmentation in front (the caller passes
both as Keras layers, so this module knows nothing of heads or augmentation); an export is the same
chain again without the augmentation. Because they are one builder, the parity check (the full
model against the head on cached features) checks this builder against the cache.

BatchNormalization layers are always frozen (``trainable=False``, so they run in inference mode
whatever ``training`` says and their moving statistics never change): the extractor must reproduce
the statistics the backbone came with, and fine-tuning keeps them (Keras 3's ``fit`` passes
``training=True`` into nested models, keras-team/keras#20285, so a ``training=False`` call would not
hold). The flag is part of the layer config and survives ``.keras`` save and reload.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import keras

from headstart.features import hub
from headstart.features.backbones import (BackboneInfo, build_base, build_pooling, build_preprocessing,
                                          fingerprint_weights)
from headstart.features.registry import check_image_size, get_backbone_spec
# The same canonical alpha and weights values, and the seeded hub build, as build_base uses.
from headstart.features.backbones import _build_hub, _resolve_alpha, _resolve_weights
from headstart.features.errors import Arg, TapError, WeightsError


class BackboneParts(NamedTuple):
    """The layers of the chain below the head, and what they are.

    A tuple, so ``base, preprocessing, pooling, info = build_backbone_parts(...)`` reads in the
    order ``build_chain`` takes them.

    Attributes:
        backbone: the application model named "backbone", (B, S, S, 3) → (B, h, w, C).
        preprocessing: layer named "preprocessing", raw 0–255 → what ``backbone`` expects.
        pooling: layer named "pooling", (B, h, w, C) → (B, C); None for ``pooling="none"``.
        info: provenance of these parts; ``info.feature_shape`` is the head's input shape.
    """

    backbone: keras.Model
    preprocessing: keras.layers.Layer
    pooling: keras.layers.Layer | None
    info: BackboneInfo


def build_backbone_parts(
    name: str,
    *,
    weights: str,
    image_size: int,
    alpha: float | None = None,
    pooling: str = "avg",
    expected_fingerprint: str | None = None,
) -> BackboneParts:
    """Builds the backbone, its preprocessing and the pooling, and describes them.

    Args:
        name: registry key.
        weights: "imagenet", "none", "shipped" or a weights file path (see ``build_base``).
        image_size: S.
        alpha: width multiplier for mobilenet / mobilenet_v2.
        pooling: "avg", "max" or "none".
        expected_fingerprint: the cache's ``weights_fingerprint`` when rebuilding the chain that
            filled a cache; None skips the check.

    Returns:
        BackboneParts; the backbone is left as Keras builds it (trainable).

    Raises:
        UnknownBackboneError, ImageSizeError, FeaturesError (``--alpha`` / ``--pooling`` misuse).
        WeightsError: weights that cannot be loaded, or that differ from ``expected_fingerprint``.
    """
    spec = get_backbone_spec(name)
    # Cheap checks first, so a typo never waits for a download or a big model to build.
    check_image_size(name, image_size)
    resolved_alpha = _resolve_alpha(spec, alpha)
    provenance = None
    if hub.is_hub(name):
        kind, path = hub.hub_weights(weights), None
        base, preprocessing, provenance = _build_hub(name, kind, image_size)
    else:
        build_pooling(pooling)
        kind, path = _resolve_weights(weights, name, resolved_alpha if spec.takes_alpha else None)
        base = build_base(name, weights=weights, image_size=image_size, alpha=alpha)
        preprocessing = build_preprocessing(name)
    fingerprint = fingerprint_weights(base)
    if expected_fingerprint and fingerprint != expected_fingerprint:
        _refuse_fingerprint(name, weights, fingerprint, expected_fingerprint)
    # A feature map (h, w, C) or, for hub transformers, a token sequence (T, D); pooled: (C,) / (D,).
    output = tuple(int(d) for d in base.output.shape[1:])
    pool = build_pooling(pooling, output)
    info = BackboneInfo(
        hub=provenance, backbone=name, alpha=resolved_alpha, weights=path if kind == "file" else kind,
        weights_fingerprint=fingerprint, image_size=int(image_size), pooling=pooling,
        preprocessing=spec.preprocessing, feature_shape=output[-1:] if pool is not None else output)
    return BackboneParts(base, preprocessing, pool, info)


def build_chain(
    backbone: keras.Model,
    preprocessing: keras.layers.Layer,
    pooling: keras.layers.Layer | None,
    *,
    head: keras.layers.Layer | None = None,
    augmentation: keras.layers.Layer | None = None,
    temperature: keras.layers.Layer | None = None,
    name: str = "headstart",
) -> keras.Model:
    """Builds the chain from its parts; the layers are used as they are (shared, not copied).

    Args:
        backbone: the application model named "backbone", input (S, S, 3).
        preprocessing: layer named "preprocessing", raw 0–255 → what ``backbone`` expects.
        pooling: layer named "pooling", or None to keep the spatial map.
        head: layer (usually a nested model) named "head" taking the (pooled) backbone output, or
            None for the feature extractor.
        augmentation: layer (usually a Sequential) named "augmentation" acting only when
            ``training=True``, or None.
        temperature: layer named "temperature" after the head (logits / T, the calibration fitted
            by ``headstart.pipeline.model.calibration``), or None.
        name: model name.

    Returns:
        Model (B, S, S, 3) float32 raw 0–255 → the head's output, e.g. logits (B, 1) or (B, K); without
        a head the features (B, C) or (B, h, w, C). Every BatchNormalization layer is frozen; the
        backbone's other layers are left as they come.
    """
    size = tuple(int(d) for d in backbone.input_shape[1:])
    inputs = keras.Input(shape=size, dtype="float32", name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = backbone(preprocessing(x))
    if pooling is not None:
        x = pooling(x)
    if head is not None:
        x = head(x)
    if temperature is not None:
        x = temperature(x)
    model = keras.Model(inputs, x, name=name)
    freeze_batchnorm(model)
    return model


def build_extractor(
    name: str,
    *,
    weights: str,
    image_size: int,
    alpha: float | None = None,
    pooling: str = "avg",
) -> tuple[keras.Model, BackboneInfo]:
    """Builds the frozen feature extractor (the chain without a head) and describes it.

    Args:
        name: registry key.
        weights: "imagenet", "none", "shipped" or a weights file path (see ``build_base``).
        image_size: S.
        alpha: width multiplier for mobilenet / mobilenet_v2.
        pooling: "avg", "max" or "none".

    Returns:
        (extractor, info). extractor: (B, S, S, 3) raw 0–255 float32 → (B, C) when pooled, else
        (B, h, w, C); layers "preprocessing", "backbone" and "pooling" (an Identity for "none", so
        ``get_layer("pooling")`` works whatever the pooling) are reachable with ``get_layer``; the
        backbone is frozen (``trainable=False``).

    Raises:
        UnknownBackboneError, ImageSizeError, FeaturesError, WeightsError.
    """
    base, preprocessing, pool, info = build_backbone_parts(
        name, weights=weights, image_size=image_size, alpha=alpha, pooling=pooling)
    base.trainable = False
    # Keras model names cannot hold a hub preset's "hub:"; its family names it instead.
    label = get_backbone_spec(name).family if info.hub else name
    extractor = build_chain(base, preprocessing, pool or keras.layers.Identity(name="pooling"),
                            name=f"{label}_extractor")
    return extractor, info


def build_tapped_extractor(
    name: str,
    *,
    weights: str,
    image_size: int,
    tap: str,
    alpha: float | None = None,
    pooling: str = "avg",
):
    """The frozen extractor that also returns the backbone's activations at a tap.

    Args:
        name, weights, image_size, alpha, pooling: as ``build_extractor``.
        tap: "top:N" or a layer name (``features.tap.resolve_tap``).

    Returns:
        (extractor, info, tap). extractor: (B, S, S, 3) raw 0–255 float32 → [features (B, *C),
        activations (B, *tap.shape)], one forward pass: the features are computed from the
        activations by the backbone's own top layers, so they equal ``build_extractor``'s.

    Raises:
        UnknownBackboneError, ImageSizeError, FeaturesError, WeightsError; TapError: no such cut.
    """
    from headstart.features.tap import resolve_tap, split_backbone

    if hub.is_hub(name):
        raise TapError(f"{name} is a KerasHub preset; a tap needs a keras.applications backbone")
    base, preprocessing, pool, info = build_backbone_parts(
        name, weights=weights, image_size=image_size, alpha=alpha, pooling=pooling)
    base.trainable = False
    resolved = resolve_tap(base, tap)
    bottom, top = split_backbone(base, resolved)
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    activations = bottom(preprocessing(inputs))
    features = top(activations)
    if pool is not None:
        features = pool(features)
    extractor = keras.Model(inputs, [features, activations], name=f"{name}_tapped_extractor")
    freeze_batchnorm(extractor)
    return extractor, info, resolved


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


def _refuse_fingerprint(name: str, weights: str, got: str, expected: str) -> None:
    hint = ("random weights ('none') are drawn anew at every build unless the backbone seeds "
            "them; extract with ", Arg("weights", placeholder="PATH"), " to fine-tune") if weights in (None, "none") \
        else ("pass the weights file the features were extracted with",)
    raise WeightsError(Arg("weights", weights), f": these {name} weights are not the ones the cached "
                       f"features came from (fingerprint {got[:12]}… ≠ {expected[:12]}…); ", *hint)
