"""The classifier head: one builder shared by ``train-head`` and ``finetune``.

The head sits on top of the frozen backbone's (optionally pooled) output and produces logits:

    features (B, *feature_shape) ─▶ [GlobalAveragePooling2D if rank 3] ─▶ Dropout ─▶ Dense ─▶ logits

Two classes get one logit (binary cross-entropy from logits, the guide's setup); more classes get one
logit per class (sparse categorical cross-entropy from logits). Only built-in Keras layers are used,
so a saved ``head.keras`` loads with ``keras.saving.load_model`` in safe mode and no custom objects.

Probabilities are computed here in NumPy, not inside the model, so the saved model and the exported
end-to-end model keep emitting logits (what the losses expect) while reports show probabilities.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from headstart.pipeline.errors import OptionError


def num_logits(num_classes: int) -> int:
    """Returns the head's output width: 1 for two classes, else ``num_classes``."""
    return 1 if num_classes == 2 else num_classes


def build_head(
    feature_shape: Sequence[int],
    num_classes: int,
    *,
    dropout: float = 0.2,
    name: str = "head",
) -> keras.Model:
    """Builds the classifier head.

    Args:
        feature_shape: shape of one cached feature, without the batch axis: ``(C,)`` for pooled
            features or ``(h, w, C)`` for spatial maps (``--pooling none``).
        num_classes: number of classes, at least 2.
        dropout: dropout rate before the Dense layer, in [0, 1).
        name: model name; ``finetune`` nests the head under this name.

    Returns:
        A functional model, input ``(B, *feature_shape)`` float32 → logits ``(B, 1)`` for two
        classes or ``(B, num_classes)`` otherwise.

    Raises:
        OptionError: fewer than two classes, a dropout outside [0, 1), or a feature shape that is
            neither rank 1 nor rank 3.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    if num_classes < 2:
        raise OptionError(f"a classifier needs at least 2 classes, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise OptionError(f"--dropout must be in [0, 1), got {dropout}")
    if len(feature_shape) not in (1, 3):
        raise OptionError(f"feature shape must be (C,) or (h, w, C), got {feature_shape}")

    inputs = keras.Input(shape=feature_shape, name="features")
    x = inputs
    if len(feature_shape) == 3:
        # Spatial maps from --pooling none: pool here so one head fits every cache layout.
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 whatever the global policy: under mixed precision the logits (and so the loss and
    # softmax) would otherwise be float16/bfloat16, which overflows or loses the small differences
    # the loss needs. Under the default float32 policy this changes nothing.
    outputs = keras.layers.Dense(num_logits(num_classes), name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def head_loss_and_metrics(num_classes: int) -> tuple[keras.losses.Loss, list[keras.metrics.Metric]]:
    """Returns the loss and metrics for a head with ``num_classes`` classes.

    Both metrics are named ``accuracy`` so that histories read ``loss, accuracy, val_loss,
    val_accuracy`` whatever the number of classes. ``finetune`` compiles with the same pair.

    Args:
        num_classes: at least 2.

    Returns:
        (loss, [accuracy metric]), both taking logits: ``BinaryCrossentropy(from_logits=True)`` and
        ``BinaryAccuracy(threshold=0)`` (a logit above 0 means class 1) for two classes, otherwise
        ``SparseCategoricalCrossentropy(from_logits=True)`` and ``SparseCategoricalAccuracy``.
    """
    if num_classes == 2:
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)])
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def compile_head(model: keras.Model, num_classes: int, lr: float, *,
                 jit_compile: bool | str = "auto") -> keras.Model:
    """Compiles ``model`` with Adam(lr) and the loss/metrics of ``head_loss_and_metrics``.

    Args:
        model: a head from ``build_head`` (or a full model ending in one).
        num_classes: number of classes.
        lr: Adam learning rate.
        jit_compile: True compiles the train and predict steps with XLA; "auto" (Keras's default)
            lets Keras decide (XLA on a single GPU, not on CPU or under tf.distribute).

    Returns:
        The same model, compiled. Under a ``mixed_float16`` policy Keras wraps Adam in a
        ``LossScaleOptimizer`` itself.
    """
    loss, metrics = head_loss_and_metrics(num_classes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss, metrics=metrics,
                  jit_compile=jit_compile)
    return model


def head_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Converts int class labels (N,) to what the loss expects.

    Returns:
        float32 (N, 1) for two classes (binary cross-entropy compares with a (N, 1) logit),
        otherwise int64 (N,).
    """
    labels = np.asarray(labels)
    if num_classes == 2:
        return labels.astype(np.float32).reshape(-1, 1)
    return labels.astype(np.int64).reshape(-1)


def logits_to_probabilities(logits: Any, num_classes: int) -> np.ndarray:
    """Turns head logits into class probabilities.

    Args:
        logits: (N, 1) or (N,) for two classes, (N, num_classes) otherwise; array or tensor.
        num_classes: number of classes.

    Returns:
        float64 (N, num_classes), rows summing to 1; for two classes column 1 is sigmoid(logit).
    """
    z = np.asarray(logits, dtype=np.float64)
    if num_classes == 2:
        z = z.reshape(-1)
        # Numerically stable sigmoid: exp only ever sees non-positive arguments.
        e = np.exp(-np.abs(z))
        p1 = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return np.stack([1.0 - p1, p1], axis=1)
    z = z.reshape(-1, num_classes)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_classes(logits: Any, num_classes: int) -> np.ndarray:
    """Returns the predicted class index per row, int64 (N,).

    For two classes a logit above 0 is class 1, exactly as ``BinaryAccuracy(threshold=0)`` counts.
    """
    z = np.asarray(logits)
    if num_classes == 2:
        return (z.reshape(-1) > 0).astype(np.int64)
    return np.argmax(z.reshape(-1, num_classes), axis=1).astype(np.int64)
