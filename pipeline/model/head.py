"""The classifier head: one builder shared by ``train-head`` and ``finetune``.

The head sits on top of the frozen backbone's (optionally pooled) output and produces logits:

    features (B, *feature_shape) ─▶ [GlobalAveragePooling2D if rank 3] ─▶ [normalise] ─▶ Dropout
        ─▶ [Dense(hidden_units, relu) ─▶ Dropout  (kind "hidden")] ─▶ Dense ─▶ logits

The defaults (kind "linear", no normalisation) are the guide's head, layer for layer. Normalisation
is a layer of the head, so the exported end-to-end model still takes raw images: "l2" scales each
feature vector to unit length (``UnitNormalization``), "standardize" subtracts the training split's
per-channel mean and divides by its standard deviation (``Normalization``, statistics stored as the
layer's non-trainable weights, set with ``set_head_weights``/``adapt_head``).

Two classes get one logit (binary cross-entropy from logits, the guide's setup); more classes get one
logit per class (sparse categorical cross-entropy from logits). A multi-label head (``multi_label``:
a row may carry any set of the classes) gets one logit per class whatever their number, a sigmoid
each, and binary cross-entropy per class against (N, C) multi-hot targets; its decision thresholds
are chosen per class on validation (``headstart.pipeline.report.multilabel_metrics``). Only built-in Keras layers are used,
so a saved ``head.keras`` loads with ``keras.saving.load_model`` in safe mode and no custom objects.

Probabilities are computed here in NumPy, not inside the model, so the saved model and the exported
end-to-end model keep emitting logits (what the losses expect) while reports show probabilities.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, TYPE_CHECKING

import keras
import numpy as np

from headstart.pipeline.errors import OptionError
from headstart.pipeline.options.checks import check_value

if TYPE_CHECKING:
    import tensorflow as tf


def num_logits(num_classes: int, multi_label: bool = False) -> int:
    """Returns the head's output width: 1 for two classes, else ``num_classes`` (always for multi-label)."""
    return 1 if num_classes == 2 and not multi_label else num_classes



def build_head(
    feature_shape: Sequence[int],
    num_classes: int,
    *,
    dropout: float = 0.2,
    kind: str = "linear",
    hidden_units: int = 256,
    normalize: str = "none",
    name: str = "head",
    multi_label: bool = False,
) -> keras.Model:
    """Builds the classifier head.

    Args:
        feature_shape: shape of one cached feature, without the batch axis: ``(C,)`` for pooled
            features or ``(h, w, C)`` for spatial maps (``--pooling none``).
        num_classes: number of classes, at least 2.
        dropout: dropout rate before each Dense layer, in [0, 1).
        kind: "linear" (the guide's head) or "hidden" (one ReLU layer of ``hidden_units`` first).
        hidden_units: width of the hidden layer; used only by kind "hidden".
        normalize: "none", "l2" or "standardize" (statistics start at mean 0 / variance 1; set
            them with ``adapt_head`` or ``set_head_weights``).
        name: model name; ``finetune`` nests the head under this name.
        multi_label: one independent logit per class (sigmoid + binary cross-entropy each).

    Returns:
        A functional model, input ``(B, *feature_shape)`` float32 → logits ``(B, 1)`` for two
        single-label classes or ``(B, num_classes)`` otherwise.

    Raises:
        OptionError: fewer than two classes, a dropout outside [0, 1), an unknown kind or
            normalisation, a hidden width below 1, or a feature shape that is neither rank 1 nor 3.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    if num_classes < 2:
        raise OptionError(f"a classifier needs at least 2 classes, got {num_classes}")
    for field, value in (("dropout", dropout), ("head_kind", kind), ("hidden_units", hidden_units),
                         ("normalize", normalize)):
        check_value("head", field, value)  # the option table's ranges, as train-head checks them
    if len(feature_shape) not in (1, 3):
        raise OptionError(f"feature shape must be (C,) or (h, w, C), got {feature_shape}")

    inputs = keras.Input(shape=feature_shape, name="features")
    x = inputs
    if len(feature_shape) == 3:
        # Spatial maps from --pooling none: pool here so one head fits every cache layout.
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if normalize == "l2":
        x = keras.layers.UnitNormalization(axis=-1, name="normalize")(x)
    elif normalize == "standardize":
        x = keras.layers.Normalization(axis=-1, name="normalize")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    if kind == "hidden":
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(dropout, name="hidden_dropout")(x)
    # float32 whatever the global policy: under mixed precision the logits (and so the loss and
    # softmax) would otherwise be float16/bfloat16, which overflows or loses the small differences
    # the loss needs. Under the default float32 policy this changes nothing.
    outputs = keras.layers.Dense(num_logits(num_classes, multi_label), name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def adapt_head(head: keras.Model, train_batches: Iterable[np.ndarray]) -> None:
    """Sets a "standardize" head's statistics from the training features; no-op for other heads.

    Args:
        head: a head from ``build_head``.
        train_batches: the training split's original rows, float32 (B, *feature_shape) per batch
            (one array, or any iterable of them, e.g. ``FeatureRows.eval_batches``), so a streamed
            cache never has to fit in memory.
    """
    layer = _normalization_layer(head)
    if layer is None:
        return
    if isinstance(train_batches, np.ndarray):
        train_batches = [train_batches]
    count, total, squares = 0, 0.0, 0.0
    for x in train_batches:
        x = np.asarray(x, dtype=np.float64)
        x = x if x.ndim == 2 else x.mean(axis=(1, 2))  # rank 3: the head pools before normalising
        count, total, squares = count + len(x), total + x.sum(axis=0), squares + (x * x).sum(axis=0)
    mean = total / max(count, 1)
    variance = np.maximum(squares / max(count, 1) - mean * mean, 0.0)
    layer.set_weights([mean.astype(np.float32), variance.astype(np.float32),
                       np.asarray(count, dtype=layer.weights[2].dtype)])
    layer.finalize_state()


def set_head_weights(head: keras.Model, weights: list[np.ndarray]) -> None:
    """``head.set_weights`` that also refreshes a Normalization layer's statistics.

    ``keras.layers.Normalization`` reads its weights into constants in ``finalize_state``; a plain
    ``set_weights`` leaves it normalising with the old statistics (the parity check catches it).
    """
    head.set_weights(weights)
    layer = _normalization_layer(head)
    if layer is not None:
        layer.finalize_state()


def _normalization_layer(head: keras.Model) -> keras.layers.Normalization | None:
    for layer in head.layers:
        if isinstance(layer, keras.layers.Normalization):
            return layer
    return None


@keras.saving.register_keras_serializable(package="headstart")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy from logits with label smoothing, on int labels (N,).

    Keras's ``SparseCategoricalCrossentropy`` has no ``label_smoothing``; this one-hots the labels
    and calls the built-in categorical loss, so int labels stay the one label format.
    """

    def __init__(self, num_classes: int, label_smoothing: float, name: str = "smoothed_sparse_crossentropy",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes, self.label_smoothing = int(num_classes), float(label_smoothing)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=True,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}


def head_training_loss(num_classes: int, label_smoothing: float = 0.0, *,
                       multi_label: bool = False) -> keras.losses.Loss:
    """The loss a head trains with: ``head_loss_and_metrics``'s, with optional label smoothing.

    Validation and test losses are always the unsmoothed loss, so trials compare on one scale.
    Multi-label smoothing moves each of the C binary targets towards 0.5, as Keras's
    ``BinaryCrossentropy(label_smoothing=…)`` does.
    """
    if not label_smoothing:
        return head_loss_and_metrics(num_classes, multi_label=multi_label)[0]
    if num_classes == 2 or multi_label:
        return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    return SmoothedSparseCrossentropy(num_classes, label_smoothing)


def head_optimizer(lr: float, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam(lr), with decoupled weight decay on the kernels (never the biases) when asked."""
    if not weight_decay:
        return keras.optimizers.Adam(learning_rate=lr)
    optimizer = keras.optimizers.Adam(learning_rate=lr, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def head_loss_and_metrics(num_classes: int, *,
                          multi_label: bool = False) -> tuple[keras.losses.Loss, list[keras.metrics.Metric]]:
    """Returns the loss and metrics for a head with ``num_classes`` classes.

    Both metrics are named ``accuracy`` so that histories read ``loss, accuracy, val_loss,
    val_accuracy`` whatever the number of classes. ``finetune`` compiles with the same pair.

    Args:
        num_classes: at least 2.
        multi_label: a multi-label head: binary cross-entropy averaged over the C classes and rows,
            and "accuracy" the per-label ``BinaryAccuracy(threshold=0)`` (probability 0.5; the
            chosen thresholds are applied only after training).

    Returns:
        (loss, [accuracy metric]), both taking logits: ``BinaryCrossentropy(from_logits=True)`` and
        ``BinaryAccuracy(threshold=0)`` (a logit above 0 means class 1) for two classes or
        multi-label, otherwise ``SparseCategoricalCrossentropy(from_logits=True)`` and
        ``SparseCategoricalAccuracy``.
    """
    if num_classes == 2 or multi_label:
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)])
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def compile_head(model: keras.Model, num_classes: int, lr: float, *,
                 jit_compile: bool | str = "auto", weight_decay: float = 0.0,
                 label_smoothing: float = 0.0, multi_label: bool = False) -> keras.Model:
    """Compiles ``model`` with Adam(lr) and the loss/metrics of ``head_loss_and_metrics``.

    Args:
        model: a head from ``build_head`` (or a full model ending in one).
        num_classes: number of classes.
        lr: Adam learning rate.
        weight_decay: decoupled weight decay on kernels (``head_optimizer``); 0 for none.
        label_smoothing: smoothing of the training loss (``head_training_loss``); 0 for none.
        jit_compile: True compiles the train and predict steps with XLA; "auto" (Keras's default)
            lets Keras decide (XLA on a single GPU, not on CPU or under tf.distribute).
        multi_label: compile a multi-label head (see ``head_loss_and_metrics``).

    Returns:
        The same model, compiled. Under a ``mixed_float16`` policy Keras wraps Adam in a
        ``LossScaleOptimizer`` itself.
    """
    _, metrics = head_loss_and_metrics(num_classes, multi_label=multi_label)
    model.compile(optimizer=head_optimizer(lr, weight_decay),
                  loss=head_training_loss(num_classes, label_smoothing, multi_label=multi_label),
                  metrics=metrics, jit_compile=jit_compile)
    return model


def head_labels(labels: np.ndarray, num_classes: int, multi_label: bool = False) -> np.ndarray:
    """Converts labels to what the loss expects.

    Args:
        labels: int class indices (N,), or (N, C) multi-hot rows when ``multi_label``.

    Returns:
        float32 (N, 1) for two classes (binary cross-entropy compares with a (N, 1) logit),
        float32 (N, C) for multi-label, otherwise int64 (N,).
    """
    labels = np.asarray(labels)
    if multi_label:
        return labels.astype(np.float32).reshape(-1, num_classes)
    if num_classes == 2:
        return labels.astype(np.float32).reshape(-1, 1)
    return labels.astype(np.int64).reshape(-1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Numerically stable: exp only ever sees non-positive arguments.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logits_to_probabilities(logits: np.ndarray | tf.Tensor, num_classes: int, multi_label: bool = False) -> np.ndarray:
    """Turns head logits into class probabilities.

    Args:
        logits: (N, 1) or (N,) for two classes, (N, num_classes) otherwise; array or tensor.
        num_classes: number of classes.
        multi_label: one independent sigmoid per class.

    Returns:
        float64 (N, num_classes): rows summing to 1 (single-label; for two classes column 1 is
        sigmoid(logit)), or each entry sigmoid(logit) on its own (multi-label).
    """
    z = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return _sigmoid(z.reshape(-1, num_classes))
    if num_classes == 2:
        p1 = _sigmoid(z.reshape(-1))
        return np.stack([1.0 - p1, p1], axis=1)
    z = z.reshape(-1, num_classes)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_classes(logits: np.ndarray | tf.Tensor, num_classes: int, multi_label: bool = False,
                    thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Returns the predicted class index per row, int64 (N,); multi-label: the label sets, (N, C).

    For two classes a logit above 0 is class 1, exactly as ``BinaryAccuracy(threshold=0)`` counts.
    A multi-label row holds class c when its probability is at least ``thresholds[c]`` (0.5 for
    every class when None).
    """
    z = np.asarray(logits)
    if multi_label:
        cuts = np.full(num_classes, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return (logits_to_probabilities(z, num_classes, True) >= cuts[None, :]).astype(np.int64)
    if num_classes == 2:
        return (z.reshape(-1) > 0).astype(np.int64)
    return np.argmax(z.reshape(-1, num_classes), axis=1).astype(np.int64)
