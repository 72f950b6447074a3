"""train-head's recipe for a head on cached features: its build options and its compile.

One recipe for train-head, diagnose's fold heads and (by the same calls) the sweep's trials, so a
head trained anywhere starts from the same initial weights and trains with the same loss.
"""

from __future__ import annotations

from typing import Iterable, TYPE_CHECKING

from headstart.pipeline.config import HeadConfig

if TYPE_CHECKING:
    import keras
    import numpy as np


def head_options(config: HeadConfig) -> dict:
    """The ``build_head`` keyword arguments a HeadConfig asks for (run.json's "head" record too)."""
    return {"dropout": config.dropout, "kind": config.head_kind, "hidden_units": config.hidden_units,
            "normalize": config.normalize}


def build_compiled_head(config: HeadConfig, feature_shape: tuple[int, ...], num_classes: int,
                        train_batches: Iterable[np.ndarray] | None = None, *,
                        multi_label: bool = False) -> keras.Model:
    """The head of ``config``, compiled as train-head compiles it (call inside a strategy scope).

    Args:
        config: the recipe (head kind, dropout, normalisation, lr, weight decay, label smoothing).
        feature_shape: the cache's feature shape.
        num_classes: K.
        train_batches: the training split's original rows (arrays (B, *feature_shape)), for the
            statistics of ``--normalize standardize``; None leaves them at mean 0, variance 1.
        multi_label: one sigmoid logit per class, binary cross-entropy per class.

    Returns:
        A Keras model (B, *feature_shape) float32 → logits (B, 1 or num_classes).
    """
    from headstart.pipeline.model.head import adapt_head, build_head, compile_head

    model = build_head(feature_shape, num_classes, **head_options(config), multi_label=multi_label)
    if train_batches is not None:
        adapt_head(model, train_batches)
    return compile_head(model, num_classes, config.lr, jit_compile=True if config.jit_compile else "auto",
                        weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                        multi_label=multi_label)
