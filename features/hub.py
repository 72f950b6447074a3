"""KerasHub backbones: ``--backbone hub:PRESET`` (a preset handle KerasHub accepts, or a local
preset directory written by ``save_to_preset``).

A hub backbone fills the same three named slots as a registry one, so caches, the parity check,
fine-tuning and exports treat it alike:

    image (B, S, S, 3) raw 0–255 ─▶ "preprocessing" = the preset's ImageConverter (resize no-op at
    its own size, scale and offset) ─▶ "backbone" = the preset's Backbone ─▶ "pooling"

Token outputs (B, T, D) (ViT, DINOv2) are pooled by "cls" (the first token) or "avg" / "max" over
tokens; feature maps (B, h, w, C) (ResNet, EfficientNet presets) as for built-in backbones. Both
KerasHub classes are registered Keras serializables, so a model.keras holding them loads in safe
mode once ``keras_hub`` is imported: ``import_for_model_file`` does that for readers. KerasHub is
an optional extra (``pip install 'headstart[hub]'``); nothing here imports it at module level.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

from headstart.features.errors import Arg, FeaturesError, ImageSizeError, WeightsError

PREFIX = "hub:"
#: --weights values of a hub backbone: the preset's own weights, or a seeded random init.
HUB_WEIGHTS = ("preset", "none")


def is_hub(name: object) -> bool:
    """Whether a --backbone value names a KerasHub preset."""
    return isinstance(name, str) and name.startswith(PREFIX) and len(name) > len(PREFIX)


def preset_of(name: str) -> str:
    """The KerasHub handle or directory of ``hub:PRESET``."""
    return name[len(PREFIX):]


def hub_weights(weights: str | None) -> str:
    """Maps --weights onto a hub backbone: "imagenet" (the CLI default) and "preset" mean the
    preset's own weights, "none" random ones.

    Raises:
        WeightsError: a weights file (a preset carries its weights).
    """
    if weights in (None, "imagenet", "preset"):
        return "preset"
    if weights == "none":
        return "none"
    raise WeightsError(Arg("weights", weights), ": a hub: backbone takes the preset's weights ('preset', the "
                       "default) or 'none'")


def keras_hub_module():
    """Imports keras_hub, or says how to install it.

    Raises:
        FeaturesError: keras_hub is not installed.
    """
    try:
        import keras_hub
    except ImportError:
        raise FeaturesError(Arg("backbone", "hub:…"), ": KerasHub is not installed (pip install 'headstart[hub]')",
                            field="backbone") from None
    return keras_hub


def build_hub_parts(name: str, *, weights: str, image_size: int) -> tuple[Any, Any, dict]:
    """Loads the preset's backbone and image converter.

    Args:
        name: "hub:PRESET".
        weights: "preset" or "none" (see ``hub_weights``).
        image_size: S; must equal the converter's size when the preset fixes one.

    Returns:
        (backbone named "backbone": converter output → (B, T, D) or (B, h, w, C); converter named
        "preprocessing": (B, S, S, 3) raw 0–255 → the backbone's input; provenance dict with
        "preset", "keras_hub" version, "backbone_class" and the converter's "converter" config).

    Raises:
        FeaturesError: KerasHub missing, or a preset it cannot load. ImageSizeError: a size the
        preset does not take.
    """
    hub = keras_hub_module()
    preset = preset_of(name)
    try:
        backbone = hub.models.Backbone.from_preset(preset, load_weights=weights == "preset")
        converter = hub.layers.ImageConverter.from_preset(preset)
    except Exception as exc:  # noqa: BLE001 - KerasHub raises ValueError, FileNotFoundError, HTTP errors…
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FeaturesError(Arg("backbone", name), f": KerasHub cannot load this preset ({text})") from exc
    size = getattr(converter, "image_size", None)
    if size is not None and tuple(int(s) for s in size) != (image_size, image_size):
        raise ImageSizeError(Arg("image_size", image_size), f" does not fit {name}: its image converter makes "
                             f"{size[0]}x{size[1]} images (use ", Arg("image_size", int(size[0])), ")")
    backbone.name, converter.name = "backbone", "preprocessing"
    provenance = {"preset": preset if not os.path.isdir(preset) else os.path.abspath(preset),
                  "keras_hub": hub.__version__, "backbone_class": type(backbone).__name__,
                  "converter": json.loads(json.dumps(converter.get_config(), default=list))}
    return backbone, converter, provenance


def token_pooling(pooling: str, tokens: int) -> Any:
    """Pooling of a token sequence (B, T, D) → (B, D), as one built-in layer named "pooling".

    "cls" keeps the first (class) token — a Cropping1D and a Flatten, not a Lambda, so the model
    loads in safe mode; "avg" / "max" pool over all tokens; "none" keeps (B, T, D).

    Raises:
        FeaturesError: another value.
    """
    import keras

    if pooling == "cls":
        return keras.Sequential([keras.layers.Cropping1D((0, tokens - 1)), keras.layers.Flatten()], name="pooling")
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling1D(name="pooling")
    if pooling == "max":
        return keras.layers.GlobalMaxPooling1D(name="pooling")
    if pooling == "none":
        return None
    raise FeaturesError(Arg("pooling"), f": unknown pooling {pooling!r} for token outputs (choose from cls, avg, "
                        "max, none)", value=pooling)


def import_for_model_file(path: str | os.PathLike) -> None:
    """Imports keras_hub when a .keras file holds KerasHub layers, so safe-mode loading finds them.

    Cheap for every other file: only the archive's config.json is read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # not a .keras archive: the loader's own error says so
    if b"keras_hub" in config:
        keras_hub_module()
