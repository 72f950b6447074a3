"""The recipe that turns a ``train-head`` run back into a model on raw images.

A head run records where its features came from (its cache's config: backbone, weights and their
fingerprint, alpha, image size, pooling). ``rebuild_head_chain`` rebuilds backbone, preprocessing and
pooling from that recipe with the one chain builder (``headstart.features.chain``), checks that the
weights are the ones the cache was made with, and puts the trained head on top. ``finetune`` starts
from it (through ``RunDir.rebuild``); so do the benchmarks, and any stage that needs the head run as
a model on images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from headstart.features.errors import Arg
from headstart.pipeline.errors import RunDirError


@dataclass
class HeadRunModel:
    """A chain rebuilt around a trained head.

    Attributes:
        model: (B, S, S, 3) raw 0–255 float32 → logits (B, 1) or (B, K); layers "augmentation" (when
            given), "preprocessing", "backbone", "pooling" (absent for "none"), "head".
        head: the "head" layer of ``model``, holding the head run's weights.
        info: ``headstart.features.backbones.BackboneInfo`` of the rebuilt backbone
            (``info.feature_shape`` is the head's input shape).
    """

    model: Any
    head: Any
    info: Any


def rebuild_head_chain(backbone: Mapping[str, Any], num_classes: int, architecture: Mapping[str, Any],
                       head_file: str | os.PathLike, *, weights: str | None = None,
                       augmentation: Any = None) -> HeadRunModel:
    """Rebuilds backbone, preprocessing and pooling from a head run's recipe; puts the head on top.

    Layers take the Keras dtype policy and ``tf.distribute`` scope in force, so call it inside
    ``precision(...)`` and ``strategy.scope()`` where those apply. The run directory's reader
    (``headstart.pipeline.report.rundir.RunDir.rebuild``) supplies the recipe.

    Args:
        backbone: backbone, weights, alpha, image_size, pooling and weights_fingerprint, as the
            head's cache recorded them.
        num_classes: K.
        architecture: ``build_head`` keyword arguments of the trained head.
        head_file: the trained ``head.keras``.
        weights: the backbone weights to load instead of the recorded ones (e.g. the file moved);
            the recorded fingerprint decides whether they are the same weights.
        augmentation: a layer named "augmentation" to put in front (training only), or None.

    Returns:
        A HeadRunModel. Its BatchNorm layers are frozen; the backbone is trainable as Keras builds
        it (``freeze_backbone`` / ``unfreeze_backbone`` decide, then recompile).

    Raises:
        RunDirError: a ``head.keras`` that does not fit the rebuilt head.
        headstart.features.errors.WeightsError: weights that cannot be loaded or are not the
        cache's. Other ``FeaturesError`` subclasses from the backbone registry.
    """
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head

    base, preprocessing, pooling, info = build_backbone_parts(
        backbone["backbone"], weights=weights if weights is not None else backbone["weights"],
        image_size=backbone["image_size"], alpha=backbone["alpha"], pooling=backbone["pooling"],
        expected_fingerprint=backbone["weights_fingerprint"])
    head = build_head(info.feature_shape, num_classes, **architecture)
    load_head_weights(head, head_file)
    model = build_chain(base, preprocessing, pooling, head=head, augmentation=augmentation)
    return HeadRunModel(model=model, head=head, info=info)


def load_head_weights(head: Any, path: str | os.PathLike) -> None:
    """Copies the weights of a saved head (``head.keras``, loaded in safe mode) into ``head``.

    Raises:
        RunDirError: the file does not load, or its weights do not fit ``head``.
    """
    import keras

    from headstart.pipeline.model.head import set_head_weights

    try:
        trained = keras.saving.load_model(path, safe_mode=True, compile=False)
        set_head_weights(head, trained.get_weights())
    except Exception as exc:  # noqa: BLE001 - load and shape errors both mean a head we cannot use
        raise RunDirError(Arg("head"), f": {path} does not fit the rebuilt head ({str(exc).splitlines()[0][:200]})",
                          value=path) from exc
