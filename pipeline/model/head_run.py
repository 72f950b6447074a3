"""The rebuild of a described chain: a ``train-head`` run back into a model on raw images.

A head run records its chain (``features.chain_config.ChainConfig``: backbone, weights and their
fingerprint, alpha, image size, pooling, head). ``rebuild_head_chain`` rebuilds backbone,
preprocessing and pooling from it with the one chain builder (``headstart.features.chain``), checks
that the weights are the ones the cache was made with, and puts the trained head on top.
``finetune`` starts from it (through ``RunDir.rebuild``, or with a new head without ``--head``); so
do the audit, export of a head run and the benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from headstart.features.chain_config import ChainConfig
from headstart.features.errors import Arg
from headstart.pipeline.errors import RunDirError

if TYPE_CHECKING:
    import keras


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


def rebuild_head_chain(chain: ChainConfig, head_file: str | os.PathLike | None, *,
                       augmentation: keras.layers.Layer | None = None) -> HeadRunModel:
    """Builds a chain from its ``ChainConfig``: backbone, preprocessing, pooling, and the head on top.

    The one rebuild of a described chain: a head run's (``RunDir.rebuild``, so finetune, the audit and
    export), and finetune's new chain without a head run (``head_file`` None: a freshly initialised
    head). Layers take the Keras dtype policy and ``tf.distribute`` scope in force, so call it inside
    ``precision(...)`` and ``strategy.scope()`` where those apply.

    Args:
        chain: the chain; ``chain.backbone.fingerprint`` (when set) must match the weights loaded.
        head_file: the trained ``head.keras`` whose weights go into the head, or None.
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

    kwargs = chain.backbone_kwargs()
    base, preprocessing, pooling, info = build_backbone_parts(kwargs.pop("name"), **kwargs)
    head = build_head(info.feature_shape, chain.num_classes, **chain.head_kwargs())
    if head_file is not None:
        load_head_weights(head, head_file)
    model = build_chain(base, preprocessing, pooling, head=head, augmentation=augmentation)
    return HeadRunModel(model=model, head=head, info=info)


def load_head_weights(head: keras.Model, path: str | os.PathLike) -> None:
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
