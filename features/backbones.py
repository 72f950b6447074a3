"""Backbone registry, weights loading, and the layers of the chain below the head.

The parts built here (``build_base`` → "backbone", ``build_preprocessing`` → "preprocessing",
``build_pooling`` → "pooling") are put together by ``headstart.features.chain``, the one builder of
the model chain (the feature extractor is that chain without a head)::

    image (B, S, S, 3) float32, 0–255 ─▶ "preprocessing" ─▶ "backbone" ─▶ "pooling" ─▶ (B, C) or (B, h, w, C)

Preprocessing lives inside the model and is built from built-in Keras layers only, so a saved
``.keras`` file reloads with ``keras.saving.load_model`` in safe mode, without custom objects, and
nobody re-implements preprocessing elsewhere. The three layers are named so callers can
``get_layer`` them (fine-tuning unfreezes ``get_layer("backbone")`` only, never the whole model:
the "caffe" preprocessing is a frozen Conv2D that a model-wide ``trainable = True`` would thaw).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import random
import socket
import warnings
from dataclasses import dataclass
from typing import Iterator

import keras
import numpy as np

from headstart.features import hub
from headstart.features.errors import Arg, FeaturesError, WeightsDownloadError, WeightsError
# The registry lives in a TF-free module so the CLI can list it.
from headstart.features.registry import (POOLINGS, BackboneSpec, alpha_backbones, check_image_size,
                                          get_backbone_spec)

#: ImageNet channel means in BGR order, as ``keras.applications.imagenet_utils`` subtracts them.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

#: ImageNet channel means and standard deviations in RGB order, on the [0, 1] scale, as
#: ``imagenet_utils.preprocess_input(mode="torch")`` normalises them (DenseNet).
_TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
_TORCH_RGB_STD = (0.229, 0.224, 0.225)

#: Keras initializers without a seed draw one from Python's `random`; seeding it (and only it,
#: restored afterwards) makes "--weights none" the same weights in every build and process, so
#: its fingerprint is stable and a cache built with it can be resumed.
_NONE_INIT_SEED = 1234

#: Seconds any one socket operation of a weights download may stall before it fails, so a
#: firewalled machine gets a WeightsError instead of hanging.
_DOWNLOAD_SOCKET_TIMEOUT = 60.0


@dataclass(frozen=True)
class BackboneInfo:
    """What an extractor is, for cache provenance and config comparison.

    Attributes:
        backbone: registry key.
        alpha: width multiplier actually used (1.0 when not given) for backbones that take one,
            else None.
        weights: "imagenet", "none", "shipped" or the weights file's absolute path.
        weights_fingerprint: ``fingerprint_weights`` of the backbone model (preprocessing and
            pooling excluded: they carry no learned weights).
        image_size: S of the (S, S, 3) input.
        pooling: "avg", "max" or "none".
        preprocessing: the spec's preprocessing kind.
        feature_shape: per-image output shape, (C,) when pooled, (h, w, C) otherwise.
        hub: for a ``hub:`` backbone, the KerasHub version, preset and image converter config
            (``features.hub.build_hub_parts``); None otherwise, and then absent from ``to_dict``
            so the provenance of registry backbones is what it always was.
    """

    backbone: str
    alpha: float | None
    weights: str
    weights_fingerprint: str
    image_size: int
    pooling: str
    preprocessing: str
    feature_shape: tuple[int, ...]
    hub: dict | None = None

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (``feature_shape`` as a list)."""
        d = dataclasses.asdict(self)
        d["feature_shape"] = [int(n) for n in self.feature_shape]
        if d["hub"] is None:
            del d["hub"]
        return d


def build_base(name: str, *, weights: str, image_size: int, alpha: float | None = None) -> keras.Model:
    """Builds the application model without its classifier, named "backbone".

    Args:
        name: registry key.
        weights: "imagenet" (download, or Keras's cache in ~/.keras/models); "none" (random init,
            the same in every build, so its fingerprint is stable; the caller's random state is
            neither used nor changed); "shipped" (the ImageNet file inside the package,
            ``features.shipped_weights``, SHA-256 checked: MobileNetV2 alpha 0.35 only); or a path to
            a ``.h5`` / ``.hdf5`` / ``.weights.h5`` file for this architecture.
        image_size: S; input is (S, S, 3) in what the spec's preprocessing produces.
        alpha: width multiplier for backbones that take one (None → 1.0).

    Returns:
        Functional model (B, S, S, 3) → (B, h, w, C), ``include_top=False``, ``pooling=None``.

    Raises:
        UnknownBackboneError, ImageSizeError, FeaturesError (``--alpha`` misuse), WeightsError.
    """
    spec = get_backbone_spec(name)
    check_image_size(name, image_size)
    alpha = _resolve_alpha(spec, alpha)
    if hub.is_hub(name):
        return _build_hub(name, weights, image_size)[0]
    kind, path = _resolve_weights(weights, name, alpha if spec.takes_alpha else None)
    if kind == "imagenet" and spec.takes_alpha and alpha not in spec.imagenet_alphas:
        raise WeightsError(
            Arg("weights", "imagenet"), f": no ImageNet weights for {name} ", Arg("alpha", alpha), " (available: "
            f"{', '.join(f'{a:g}' for a in spec.imagenet_alphas)}); use one of those, ",
            Arg("weights", "none"), ", or ", Arg("weights", placeholder="PATH")
        )

    # No name= here: EfficientNetV2 looks its block layout and weights file up by its own name.
    kwargs: dict = {"include_top": False, "input_shape": (image_size, image_size, 3)}
    if spec.takes_alpha:
        kwargs["alpha"] = alpha
    constructor = getattr(keras.applications, spec.application)
    if spec.preprocessing == "none" and "include_preprocessing" in inspect.signature(constructor).parameters:
        # ConvNeXt, EfficientNetV2 and MobileNetV3 normalise raw 0–255 input themselves when asked
        # (EfficientNet always does); that is what "none" relies on.
        kwargs["include_preprocessing"] = True

    if kind == "imagenet":
        base = _build_imagenet(constructor, name, kwargs)
    else:
        with _fixed_python_random(_NONE_INIT_SEED):
            base = constructor(weights=None, **kwargs)
        if kind in ("file", "shipped"):
            _load_weights_file(base, path, name, alpha)
    base.name = "backbone"
    return base


def build_preprocessing(name: str) -> keras.layers.Layer:
    """Returns the layer that maps raw images to what the backbone expects, named "preprocessing".

    Built-in layers only (no Lambda, no custom class), so models containing it save and reload in
    safe mode. Computed in float32 even under a mixed-precision policy: the caffe mean subtraction
    would lose a pixel level in float16.

    Args:
        name: registry key.

    Returns:
        Layer (B, S, S, 3) float 0–255 → (B, S, S, 3): "tf" → [-1, 1]; "caffe" → BGR minus the
        ImageNet mean; "torch" → [0, 1] minus the ImageNet mean, over its std; "none" → unchanged.
    """
    kind = get_backbone_spec(name).preprocessing
    if kind == "hub":
        return _build_hub(name, "none", None)[1]
    if kind == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing", dtype="float32")
    if kind == "caffe":
        # kernel[0, 0, i, o] = 1 where input channel i (RGB) feeds output channel o (BGR).
        swap = np.zeros((3, 3), np.float32)
        for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
            swap[rgb, bgr] = 1.0
        return _channel_affine_layer(swap, -np.asarray(_CAFFE_BGR_MEAN, np.float32))
    if kind == "torch":
        std = np.asarray(_TORCH_RGB_STD, np.float32)
        return _channel_affine_layer(np.diag(1.0 / (255.0 * std)), -np.asarray(_TORCH_RGB_MEAN, np.float32) / std)
    return keras.layers.Identity(name="preprocessing", dtype="float32")


def build_pooling(pooling: str, feature_shape: tuple | None = None) -> keras.layers.Layer | None:
    """Returns the pooling layer named "pooling" for "avg" / "max" (/ "cls"), or None for "none".

    Args:
        pooling: one of ``POOLINGS``.
        feature_shape: the backbone's per-image output shape; a token sequence (T, D) gets the
            token poolings of ``features.hub.token_pooling``; None or (h, w, C): a feature map.

    Raises:
        FeaturesError: any other value ("cls" on a feature map); the message lists the valid ones.
    """
    if feature_shape is not None and len(feature_shape) == 2:
        return hub.token_pooling(pooling, int(feature_shape[0]))
    if pooling == "cls":
        raise FeaturesError(Arg("pooling", "cls"), " needs a backbone with token outputs (a hub: transformer "
                            "preset); use avg, max or none")
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pooling")
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="pooling")
    if pooling == "none":
        return None
    raise FeaturesError(Arg("pooling"), f": unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})",
                        value=pooling)


def fingerprint_weights(model: keras.Model) -> str:
    """Hashes every weight array of ``model``, in ``model.weights`` order.

    Shapes, dtypes and bytes are hashed, names are not: Keras numbers auto-named layers per
    process, so the same weights would otherwise fingerprint differently in two builds.

    Returns:
        sha256 hex digest (64 characters).
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        # Variable.numpy(), not np.asarray(variable): the latter warns once per array under NumPy 2.
        array = np.ascontiguousarray(variable.numpy())
        digest.update(f"{array.shape}|{array.dtype.str}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# ── helpers ──────────────────────────────────────────────────────────────────────────────────


def _resolve_alpha(spec: BackboneSpec, alpha: float | None) -> float | None:
    # A canonical value (1.0, not None) so that caches built with and without an explicit
    # --alpha 1.0 compare equal.
    if not spec.takes_alpha:
        if alpha is not None:
            takers = ", ".join(alpha_backbones())
            raise FeaturesError(Arg("alpha"), f" applies only to {takers}, not to backbone '{spec.name}'", value=alpha)
        return None
    if alpha is None:
        return 1.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise FeaturesError.invalid("alpha", alpha, "must be a number > 0", shown=repr(alpha))
    return float(alpha)


def _resolve_weights(weights: str | None, name: str | None = None,
                     alpha: float | None = None) -> tuple[str, str | None]:
    """Returns ("imagenet" | "none" | "shipped" | "file", absolute path or None); checks that a file
    exists, and that "shipped" (the weights inside the package) are for backbone ``name`` at ``alpha``."""
    if weights is None or weights == "none":
        return "none", None
    if weights == "imagenet":
        return "imagenet", None
    if weights == "shipped":
        from headstart.features.shipped_weights import shipped_weights_path

        return "shipped", str(shipped_weights_path(name, alpha))
    path = os.path.abspath(os.path.expanduser(str(weights)))
    if not os.path.exists(path):
        raise WeightsError(Arg("weights"), f": file {path} does not exist (or use 'imagenet', 'none' or 'shipped')",
                           value=weights)
    if not os.path.isfile(path):
        raise WeightsError(Arg("weights"), f": {path} is not a file", value=weights)
    if not path.endswith((".h5", ".hdf5")):
        raise WeightsError(Arg("weights"), f": {path} is not a .h5, .hdf5 or .weights.h5 weights file", value=weights)
    return "file", path


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # urlretrieve has no timeout of its own; only tighten a default nobody else has set.
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)


@contextlib.contextmanager
def _fixed_python_random(seed: int) -> Iterator[None]:
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")), "models")


def _build_imagenet(constructor, name: str, kwargs: dict) -> keras.Model:
    with warnings.catch_warnings():
        # No-top weights hold only convolutions, so the 224 px file is right at any input size.
        warnings.filterwarnings("ignore", message=".*input_shape. is undefined or non-square")
        try:
            with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT):
                return constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception("URL fetch failure …")
            raise WeightsDownloadError(
                Arg("weights", "imagenet"), f": cannot get ImageNet weights for {name} ({_one_line(exc)}); pass ",
                Arg("weights", placeholder="PATH"), f" to a local .h5 file, or put Keras's file in {_keras_cache_dir()}"
            ) from exc


def _load_weights_file(model: keras.Model, path: str, name: str, alpha: float | None) -> None:
    what = name if alpha is None else f"{name} alpha {alpha:g}"
    with warnings.catch_warnings():
        # A mismatched .weights.h5 emits one warning per layer before the ValueError we report.
        warnings.simplefilter("ignore")
        try:
            model.load_weights(path)
        except Exception as exc:  # noqa: BLE001 - h5py OSError, Keras ValueError/KeyError, …
            raise WeightsError(
                Arg("weights"), f": {path} does not fit backbone {what}: {_one_line(exc)}", value=path
            ) from exc


def _build_hub(name: str, weights: str, image_size: int | None) -> tuple:
    """(backbone, converter, provenance) of a ``hub:`` preset, random weights seeded like "none"."""
    kind = hub.hub_weights(weights)
    if image_size is None:  # only the converter is wanted: any size the preset takes
        converter = hub.keras_hub_module().layers.ImageConverter.from_preset(hub.preset_of(name))
        converter.name = "preprocessing"
        return None, converter, None
    with _fixed_python_random(_NONE_INIT_SEED):
        return hub.build_hub_parts(name, weights=kind, image_size=image_size)


def _channel_affine_layer(matrix: np.ndarray, bias: np.ndarray) -> keras.layers.Layer:
    """A frozen 1×1 Conv2D computing ``pixel @ matrix + bias`` per pixel; (B, S, S, 3) → (B, S, S, 3).

    A built-in layer with fixed weights, so "caffe" (channel swap, mean) and "torch" (scale, mean,
    std) preprocessing reload in safe mode like any other layer.
    """
    layer = keras.layers.Conv2D(3, 1, name="preprocessing", trainable=False, dtype="float32")
    layer.build((None, None, None, 3))
    layer.set_weights([np.asarray(matrix, np.float32).reshape(1, 1, 3, 3), np.asarray(bias, np.float32)])
    return layer

