"""Augmentation layers from a short spec such as ``"flip,rotate=0.1"`` (the guide's default).

Items, comma-separated:

* ``flip`` / ``flip=horizontal|vertical|horizontal_and_vertical`` → ``RandomFlip``
* ``rotate=F`` → ``RandomRotation(F)`` (F is a fraction of a full turn)
* ``zoom=F`` → ``RandomZoom(F)`` (zoom in or out by up to F)
* ``contrast=F`` → ``RandomContrast(F)`` (value range 0–255: images are raw)
* ``brightness=F`` → ``RandomBrightness(F)`` (shift by up to F of the 0–255 range)
* ``translate=F`` → ``RandomTranslation(F, F)`` (fraction of height and width)
* ``none`` or an empty spec → no augmentation (an identity model)

Keras random layers act only in training: ``fit`` passes ``training=True``, ``predict`` and
``evaluate`` pass ``training=False`` and then they return their input unchanged. Beware: a direct
call ``model(x)`` *without* ``training=`` augments (Keras 3 random layers default to
``training=True``), so inference code calling a model directly must pass ``training=False``.

``parse_augment_spec`` imports nothing heavy, so the CLI can validate ``--augment`` before
importing TensorFlow.
"""

from __future__ import annotations

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# Item → (inclusive upper bound of its factor, what the factor means), for the error messages.
_FACTOR_ITEMS = {
    "rotate": (1.0, "fraction of a full turn"),
    "zoom": (0.99, "fraction of the image size"),
    "contrast": (1.0, "contrast factor"),
    "brightness": (1.0, "fraction of the value range"),
    "translate": (1.0, "fraction of the image size"),
}
KNOWN_ITEMS = ("flip",) + tuple(_FACTOR_ITEMS)


def parse_augment_spec(spec: str) -> list[tuple[str, str | None]]:
    """Parses and validates an augmentation spec without importing TensorFlow.

    Args:
        spec: e.g. "flip,rotate=0.1"; "none" or "" for no augmentation.

    Returns:
        [(item, value)] in the given order; value is None only for a bare ``flip``.

    Raises:
        OptionError: an unknown item, a missing or invalid value, or an item given twice.
    """
    from headstart.features.errors import Arg
    from headstart.pipeline.errors import OptionError

    text = (spec or "").strip()
    if text.lower() in ("", "none"):
        return []
    items: list[tuple[str, str | None]] = []
    for raw in text.split(","):
        name, sep, value = (part.strip() for part in raw.partition("="))
        name = name.lower()
        if not name:
            raise OptionError(Arg("augment"), f" '{spec}': empty item", value=spec)
        if name not in KNOWN_ITEMS:
            raise OptionError(Arg("augment"), f": unknown item '{name}' (known: {', '.join(KNOWN_ITEMS)}, none)",
                              value=spec)
        if any(name == seen for seen, _ in items):
            raise OptionError(Arg("augment"), f": item '{name}' is given twice", value=spec)
        if name == "flip":
            if sep and value not in FLIP_MODES:
                raise OptionError(Arg("augment"), f": flip='{value}' must be one of {', '.join(FLIP_MODES)}", value=spec)
            items.append((name, value if sep else None))
            continue
        upper, meaning = _FACTOR_ITEMS[name]
        if not sep or not value:
            raise OptionError(Arg("augment"), f": '{name}' needs a value, e.g. {name}=0.1 ({meaning})", value=spec)
        try:
            factor = float(value)
        except ValueError:
            raise OptionError(Arg("augment"), f": {name}='{value}' is not a number", value=spec) from None
        if not 0.0 < factor <= upper:
            raise OptionError(Arg("augment"), f": {name}={value} must be in (0, {upper:g}] ({meaning})", value=spec)
        items.append((name, value))
    return items


def build_augmentation(spec: str = "flip,rotate=0.1", seed: int | None = None):
    """Builds the augmentation model for a spec.

    Args:
        spec: see the module docstring.
        seed: seeds each random layer (layer i gets ``seed + i``) for reproducible draws.

    Returns:
        ``keras.Sequential`` named "augmentation": images (B, S, S, 3) → (B, S, S, 3), changed only
        when called with ``training=True``.

    Raises:
        OptionError: an invalid spec.
    """
    import keras

    items = parse_augment_spec(spec)
    layers = []
    for i, (name, value) in enumerate(items):
        layer_seed = None if seed is None else seed + i
        if name == "flip":
            layers.append(keras.layers.RandomFlip(value or "horizontal", seed=layer_seed))
        elif name == "rotate":
            layers.append(keras.layers.RandomRotation(float(value), seed=layer_seed))
        elif name == "zoom":
            layers.append(keras.layers.RandomZoom(float(value), seed=layer_seed))
        elif name == "contrast":
            layers.append(keras.layers.RandomContrast(float(value), value_range=(0, 255), seed=layer_seed))
        elif name == "translate":
            layers.append(keras.layers.RandomTranslation(float(value), float(value), seed=layer_seed))
        elif name == "brightness":
            layers.append(keras.layers.RandomBrightness(float(value), value_range=(0, 255), seed=layer_seed))
    if not layers:
        # An empty Sequential cannot be called; Identity keeps "none" a drop-in model.
        layers.append(keras.layers.Identity())
    return keras.Sequential(layers, name="augmentation")


def build_fixed_transform(name: str, value: str | None, sign: int = 1):
    """One augmentation item at the edge of its range, the same for every image.

    The invariance audit (``headstart.pipeline.evidence.audit``) asks how a trained head treats images
    transformed as the augmentation would at its strongest; it uses the same Keras layers as
    ``build_augmentation`` with their range pinned to one end, so what is audited is what trains.

    Args:
        name: an item of ``KNOWN_ITEMS``.
        value: its value as ``parse_augment_spec`` returns it (a flip mode, or a factor as text).
        sign: +1 or -1: which end of a symmetric range (ignored for flips).

    Returns:
        A function images (B, S, S, 3) raw 0–255 float32 → images of the same shape.
    """
    import keras
    from keras import ops

    if name == "flip":
        axes = {"horizontal": (2,), "vertical": (1,), "horizontal_and_vertical": (1, 2)}[value or "horizontal"]
        return lambda images: ops.flip(images, axis=axes)
    factor = sign * float(value)
    if name == "contrast":
        # RandomContrast's own formula, with its factor pinned (its layer draws it at random).
        def contrast(images):
            mean = ops.mean(images, axis=(1, 2), keepdims=True)
            return ops.clip((images - mean) * (1.0 + factor) + mean, 0.0, 255.0)
        return contrast
    layer = {
        "rotate": lambda: keras.layers.RandomRotation((factor, factor)),
        "zoom": lambda: keras.layers.RandomZoom((factor, factor)),
        "translate": lambda: keras.layers.RandomTranslation((factor, factor), (factor, factor)),
        "brightness": lambda: keras.layers.RandomBrightness((factor, factor), value_range=(0, 255)),
    }[name]()
    return lambda images: layer(images, training=True)
