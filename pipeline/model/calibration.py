"""Temperature scaling (Guo et al. 2017): the final model's logits divided by a temperature fitted on
validation, so that "0.9 confident" means right about nine times in ten.

The temperature is a layer of the model itself — a built-in ``keras.layers.Rescaling`` named
``"temperature"`` with ``scale = 1 / T``, after the head — so ``model.keras`` loads anywhere in safe
mode (no custom class to register), ``get_config`` carries it, and every export (SavedModel, ONNX,
TFLite: ``headstart.pipeline.commands.export``) computes the calibrated logits with no code of ours on
the serving side. Dividing by a positive T never changes which class wins, so accuracy is unchanged;
multi-label models get one T per class (one sigmoid each), and their thresholds are chosen after.

The fit is a one-dimensional problem per temperature: the negative log-likelihood of the validation
labels is minimised over log T (bounded, so a validation split the model gets entirely right
cannot send T to zero) with ``scipy.optimize.minimize_scalar``. Keras is imported inside functions.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

#: The name of the temperature layer in the chain (``headstart.features.chain.build_chain``).
TEMPERATURE_LAYER = "temperature"
#: log T is searched in [-LOG_BOUND, LOG_BOUND]: T between 0.05 and 20.
LOG_BOUND = 3.0


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    # log(sigmoid(z)) = -log(1 + exp(-z)), stable on both sides.
    return -np.logaddexp(0.0, -z)


def nll(labels: np.ndarray, logits: np.ndarray, num_classes: int, multi_label: bool = False) -> float:
    """The mean negative log-likelihood of the labels under the logits (natural log).

    Args:
        labels: int (N,) class indices, or (N, C) multi-hot rows when ``multi_label``.
        logits: (N, 1) for two classes (one sigmoid), (N, K) otherwise.
        num_classes: K.
        multi_label: one sigmoid per class; the mean is over rows and classes (binary cross-entropy).

    Returns:
        The NLL, as the head's unsmoothed loss measures it; nan for no rows.
    """
    z = np.asarray(logits, dtype=np.float64)
    if not len(z):
        return float("nan")
    if multi_label or num_classes == 2:
        y = np.asarray(labels, dtype=np.float64).reshape(z.shape)
        return float(-np.mean(y * _log_sigmoid(z) + (1.0 - y) * _log_sigmoid(-z)))
    z = z.reshape(-1, num_classes)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(z)), np.asarray(labels, dtype=np.int64).reshape(-1)]))


def _fit_one(labels: np.ndarray, logits: np.ndarray, num_classes: int, multi_label: bool) -> float | None:
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: nll(labels, logits / np.exp(log_t), num_classes, multi_label),
                            bounds=(-LOG_BOUND, LOG_BOUND), method="bounded", options={"xatol": 1e-4})
    # An optimum at a bound means the split does not pin T down: every image right with a margin
    # (the NLL keeps falling as T → 0, measured here: T 0.05 took a test NLL from 0.67 to 10.9) or
    # the logits carry no signal. Then the model is left as it was trained.
    return None if abs(found.x) > LOG_BOUND - 0.01 else float(np.exp(found.x))


def fit_temperature(labels: np.ndarray, logits: np.ndarray, num_classes: int,
                    multi_label: bool = False) -> list[float | None]:
    """The temperature(s) minimising the validation NLL of ``logits / T``.

    Args:
        labels: int (N,) class indices, or (N, C) multi-hot rows when ``multi_label``.
        logits: float (N, 1) or (N, K) raw logits of the final model.
        num_classes: K.
        multi_label: fit one temperature per class (each class its own sigmoid).

    Returns:
        [T] for a single-label model, [T_1, …, T_C] for a multi-label one; each in (0.05, 20), or
        None where the split does not determine it (the optimum lies at a bound, e.g. a validation
        split the model gets entirely right).
    """
    z = np.asarray(logits, dtype=np.float64)
    if not multi_label:
        return [_fit_one(labels, z, num_classes, False)]
    y = np.asarray(labels, dtype=np.float64).reshape(-1, num_classes)
    z = z.reshape(-1, num_classes)
    return [_fit_one(y[:, c:c + 1], z[:, c:c + 1], 2, True) for c in range(num_classes)]


def temperature_layer(temperature: list[float]) -> Any:
    """The chain's last layer: logits (B, K) → logits / T, float32 whatever the dtype policy.

    A scalar ``scale`` for one temperature, a (C,) list for per-class ones (it broadcasts over B).
    """
    import keras

    scales = [1.0 / float(t) for t in temperature]
    return keras.layers.Rescaling(scale=scales[0] if len(scales) == 1 else scales, name=TEMPERATURE_LAYER,
                                  dtype="float32")


def model_temperature(model: keras.Model) -> list[float] | None:
    """The temperature(s) a model carries (its "temperature" layer), or None when uncalibrated."""
    layer = next((layer for layer in model.layers if layer.name == TEMPERATURE_LAYER), None)
    if layer is None:
        return None
    scale = layer.get_config()["scale"]
    return [1.0 / float(s) for s in np.atleast_1d(np.asarray(scale, dtype=np.float64))]


def with_temperature(model: keras.Model, temperature: list[float]) -> keras.Model:
    """The same chain (every layer shared, the augmentation kept) ending in a temperature layer.

    Args:
        model: a chain with a head (``build_chain``), without a temperature layer.
        temperature: ``fit_temperature``'s result.

    Returns:
        Model (B, S, S, 3) raw 0–255 → calibrated logits, named as ``model`` is.
    """
    from headstart.features.chain import build_chain

    layers = {layer.name: layer for layer in model.layers}
    return build_chain(layers["backbone"], layers["preprocessing"], layers.get("pooling"), head=layers["head"],
                       augmentation=layers.get("augmentation"), temperature=temperature_layer(temperature),
                       name=model.name)
