"""What ``features/`` offers by name, without TensorFlow, Keras or h5py.

The backbone registry, the poolings and the cache's storage dtypes are listed here once. The
builders (``backbones.py``), the store (``_hdf5.py``) and the command line (``headstart.pipeline.options``:
choices, help texts, validators) all read them from here, so adding a backbone or a dtype is one
edit, and ``headstart --help`` can list them without importing TensorFlow.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from headstart.features.errors import ImageSizeError, UnknownBackboneError

DEFAULT_BACKBONE = "xception"
#: Pooling of the backbone's feature map: global average, global max, or none (spatial features).
POOLINGS = ("avg", "max", "none")
#: Storage types of cached features.
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    Attributes:
        name: registry key, e.g. "xception".
        application: ``keras.applications`` attribute, e.g. "Xception".
        preprocessing: "tf" (scale to [-1, 1]), "caffe" (RGB→BGR, ImageNet mean subtracted) or
            "none" (the application model normalises raw 0–255 input itself).
        min_size: smallest ``--image-size`` the application accepts.
        takes_alpha: whether ``--alpha`` (width multiplier) applies.
    """

    name: str
    application: str
    preprocessing: str
    min_size: int
    takes_alpha: bool


# Minimum sizes are those keras.applications enforces via obtain_input_shape(min_size=…).
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("xception", "Xception", "tf", 71, False),
        BackboneSpec("mobilenet", "MobileNet", "tf", 32, True),
        BackboneSpec("mobilenet_v2", "MobileNetV2", "tf", 32, True),
        BackboneSpec("resnet50", "ResNet50", "caffe", 32, False),
        BackboneSpec("efficientnetv2_b0", "EfficientNetV2B0", "none", 32, False),
    )
}


def alpha_backbones() -> list[str]:
    """Names of the backbones that take ``--alpha`` (a width multiplier), in registry order."""
    return [spec.name for spec in BACKBONES.values() if spec.takes_alpha]


def get_backbone_spec(name: str) -> BackboneSpec:
    """Returns the registry entry for ``name``.

    Raises:
        UnknownBackboneError: ``name`` is not registered; the message lists the valid names.
    """
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise UnknownBackboneError(
            f"--backbone: unknown backbone {name!r} (choose from {', '.join(BACKBONES)})"
        ) from None


def check_image_size(name: str, image_size: int) -> None:
    """Checks that ``image_size`` is a whole number of pixels the backbone accepts.

    Raises:
        UnknownBackboneError: unknown ``name``.
        ImageSizeError: not an int, or smaller than the backbone's minimum.
    """
    spec = get_backbone_spec(name)
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ImageSizeError(f"--image-size must be a whole number of pixels, got {image_size!r}")
    if image_size < spec.min_size:
        raise ImageSizeError(
            f"--image-size {image_size} is too small for backbone '{name}' (minimum {spec.min_size})"
        )
