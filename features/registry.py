"""What ``features/`` offers by name, without TensorFlow, Keras or h5py.

The backbone registry, the poolings and the cache's storage dtypes are listed here once. The
builders (``backbones.py``), the store (``_hdf5.py``) and the command line (``headstart.pipeline.options.facts``:
choices, help texts, validators) all read them from here, so adding a backbone or a dtype is one
edit, and ``headstart --help`` can list them without importing TensorFlow.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from headstart.features.errors import Arg, ImageSizeError, UnknownBackboneError, WeightsError

DEFAULT_BACKBONE = "xception"
#: Pooling of the backbone's feature map: global average, global max, or none (spatial features).
#: "cls" (the first token) applies to the token outputs of ``hub:`` transformer backbones only.
POOLINGS = ("avg", "max", "none", "cls")
#: Storage types of cached features.
DTYPES = ("float16", "float32")
#: What ``--weights`` takes besides a weights file: Keras' ImageNet download, random, the file inside the package.
WEIGHT_WORDS = ("imagenet", "none", "shipped")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: everything headstart needs to know about a ``keras.applications`` model.

    Attributes:
        name: registry key, e.g. "xception".
        application: ``keras.applications`` attribute, e.g. "Xception".
        preprocessing: what raw 0–255 RGB must become, as the application's own ``preprocess_input``
            does it: "tf" (scale to [-1, 1]), "caffe" (RGB→BGR, ImageNet mean subtracted), "torch"
            (scale to [0, 1], ImageNet mean and std normalised) or "none" (the application
            normalises raw 0–255 input itself: built with ``include_preprocessing=True`` where the
            constructor has that switch).
        min_size: smallest ``--image-size`` the application accepts.
        family: the group it belongs to, e.g. "convnext"; tests build each family's smallest member.
        module: the ``keras.applications`` submodule holding its ``preprocess_input``.
        imagenet_alphas: width multipliers with published ImageNet weights; non-empty means the
            backbone takes ``--alpha`` (1.0 when not given).
        params: parameters of the no-top model at ``--alpha 1.0`` (from a ``weights=None`` build;
            ``benchmarks/backbone_facts.py`` rebuilds and checks every entry).
        features: channels C of its feature map, i.e. the pooled feature size, at ``--alpha 1.0``.
        native_size: the input size its ImageNet weights were trained at (the application's default
            input shape); ``headstart run --recipe auto`` tries it beside ``--image-size``'s default.
    """

    name: str
    application: str
    preprocessing: str
    min_size: int
    family: str
    module: str
    params: int
    features: int
    imagenet_alphas: tuple[float, ...] = ()
    native_size: int = 224

    @property
    def takes_alpha(self) -> bool:
        """Whether ``--alpha`` (width multiplier) applies."""
        return bool(self.imagenet_alphas)


#: Preprocessing kinds a registry entry may name (``backbones.build_preprocessing`` builds each).
PREPROCESSINGS = ("tf", "caffe", "torch", "none")  # and "hub": a KerasHub preset's image converter


def _family(family: str, module: str, preprocessing: str, min_size: int, *members: tuple, alphas=()) -> list:
    # One line per member: (name, application, params, features[, native_size]); 224 px unless given.
    return [BackboneSpec(name, application, preprocessing, min_size, family, module, params, features, alphas,
                         *native)
            for name, application, params, features, *native in members]


# Minimum sizes are those keras.applications enforces via obtain_input_shape(min_size=…)
# (MobileNetV3 enforces none; 32 is where its stride-32 feature map is 1×1).
# The first five keep their historical order; adding a backbone is one line here.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        *_family("xception", "xception", "tf", 71, ("xception", "Xception", 20861480, 2048, 299)),
        *_family("mobilenet", "mobilenet", "tf", 32, ("mobilenet", "MobileNet", 3228864, 1024),
                 alphas=(0.25, 0.5, 0.75, 1.0)),
        *_family("mobilenet_v2", "mobilenet_v2", "tf", 32, ("mobilenet_v2", "MobileNetV2", 2257984, 1280),
                 alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
        *_family("resnet", "resnet", "caffe", 32, ("resnet50", "ResNet50", 23587712, 2048),
                 ("resnet101", "ResNet101", 42658176, 2048), ("resnet152", "ResNet152", 58370944, 2048)),
        *_family("efficientnet_v2", "efficientnet_v2", "none", 32,
                 ("efficientnetv2_b0", "EfficientNetV2B0", 5919312, 1280),
                 ("efficientnetv2_b1", "EfficientNetV2B1", 6931124, 1280, 240),
                 ("efficientnetv2_b2", "EfficientNetV2B2", 8769374, 1408, 260),
                 ("efficientnetv2_b3", "EfficientNetV2B3", 12930622, 1536, 300),
                 ("efficientnetv2_s", "EfficientNetV2S", 20331360, 1280, 384),
                 ("efficientnetv2_m", "EfficientNetV2M", 53150388, 1280, 480),
                 ("efficientnetv2_l", "EfficientNetV2L", 117746848, 1280, 480)),
        *_family("efficientnet", "efficientnet", "none", 32,
                 ("efficientnet_b0", "EfficientNetB0", 4049571, 1280),
                 ("efficientnet_b1", "EfficientNetB1", 6575239, 1280, 240),
                 ("efficientnet_b2", "EfficientNetB2", 7768569, 1408, 260),
                 ("efficientnet_b3", "EfficientNetB3", 10783535, 1536, 300),
                 ("efficientnet_b4", "EfficientNetB4", 17673823, 1792, 380),
                 ("efficientnet_b5", "EfficientNetB5", 28513527, 2048, 456),
                 ("efficientnet_b6", "EfficientNetB6", 40960143, 2304, 528),
                 ("efficientnet_b7", "EfficientNetB7", 64097687, 2560, 600)),
        *_family("convnext", "convnext", "none", 32,
                 ("convnext_tiny", "ConvNeXtTiny", 27820128, 768),
                 ("convnext_small", "ConvNeXtSmall", 49454688, 768),
                 ("convnext_base", "ConvNeXtBase", 87566464, 1024),
                 ("convnext_large", "ConvNeXtLarge", 196230336, 1536),
                 ("convnext_xlarge", "ConvNeXtXLarge", 348147968, 2048)),
        *_family("resnet_v2", "resnet_v2", "tf", 32, ("resnet50_v2", "ResNet50V2", 23564800, 2048),
                 ("resnet101_v2", "ResNet101V2", 42626560, 2048), ("resnet152_v2", "ResNet152V2", 58331648, 2048)),
        *_family("densenet", "densenet", "torch", 32, ("densenet121", "DenseNet121", 7037504, 1024),
                 ("densenet169", "DenseNet169", 12642880, 1664), ("densenet201", "DenseNet201", 18321984, 1920)),
        *_family("inception_v3", "inception_v3", "tf", 75, ("inception_v3", "InceptionV3", 21802784, 2048, 299)),
        *_family("inception_resnet_v2", "inception_resnet_v2", "tf", 75,
                 ("inception_resnet_v2", "InceptionResNetV2", 54336736, 1536, 299)),
        *_family("mobilenet_v3", "mobilenet_v3", "none", 32,
                 ("mobilenet_v3_small", "MobileNetV3Small", 939120, 576),
                 ("mobilenet_v3_large", "MobileNetV3Large", 2996352, 960), alphas=(0.75, 1.0)),
        *_family("nasnet", "nasnet", "tf", 32, ("nasnet_mobile", "NASNetMobile", 4269716, 1056),
                 ("nasnet_large", "NASNetLarge", 84916818, 4032, 331)),
        *_family("vgg", "vgg16", "caffe", 32, ("vgg16", "VGG16", 14714688, 512)),
        *_family("vgg", "vgg19", "caffe", 32, ("vgg19", "VGG19", 20024384, 512)),
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
    if isinstance(name, str) and name.startswith("hub:") and len(name) > 4:
        # A KerasHub preset (features/hub.py): its converter is its preprocessing, any size is
        # checked against the preset when it loads.
        return BackboneSpec(name, "", "hub", 1, "hub", "", 0, 0)
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise UnknownBackboneError(
            Arg("backbone"), f": unknown backbone {name!r} ({_did_you_mean(name)}choose from {', '.join(BACKBONES)}, "
            "or hub:PRESET)", value=name) from None


def _did_you_mean(name: object) -> str:
    """"did you mean 'mobilenet_v2'? " for a near miss (case, underscores and dashes aside), else ""."""
    import difflib

    if not isinstance(name, str):
        return ""
    folded = {key.replace("_", "").replace("-", "").lower(): key for key in BACKBONES}
    close = [folded[k] for k in difflib.get_close_matches(name.replace("_", "").replace("-", "").lower(), folded,
                                                         n=1, cutoff=0.8)]
    return f"did you mean {close[0]!r}? " if close else ""


def check_weights_option(weights: str | None, backbone: str | None = None, alpha: float | None = None) -> None:
    """Refuses a ``--weights`` value that is neither one of ``WEIGHT_WORDS`` nor an existing file, and
    "shipped" for a ``backbone`` (and alpha) no shipped file is for; no TensorFlow.

    Raises:
        WeightsError: naming the option and the file.
    """
    import os

    if weights == "shipped" and backbone is not None and not backbone.startswith("hub:"):
        from headstart.features.shipped_weights import refuse_unshipped

        takes = backbone in BACKBONES and BACKBONES[backbone].takes_alpha
        refuse_unshipped(backbone, (1.0 if alpha is None else float(alpha)) if takes else None)
    if weights is None or weights in WEIGHT_WORDS or os.path.isfile(os.path.expanduser(weights)):
        return
    raise WeightsError(Arg("weights"), f": file {weights} does not exist (or use {', '.join(map(repr, WEIGHT_WORDS))})",
                       value=weights)


def check_image_size(name: str, image_size: int) -> None:
    """Checks that ``image_size`` is a whole number of pixels the backbone accepts.

    Raises:
        UnknownBackboneError: unknown ``name``.
        ImageSizeError: not an int, or smaller than the backbone's minimum.
    """
    spec = get_backbone_spec(name)
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ImageSizeError.invalid("image_size", image_size, "must be a whole number of pixels", shown=repr(image_size))
    if image_size < spec.min_size:
        raise ImageSizeError(
            Arg("image_size", image_size), f" is too small for backbone '{name}' (minimum {spec.min_size})"
        )


def backbone_rows() -> list[dict]:
    """The registry as rows for ``headstart backbones``: name, family, preprocessing, minimum input
    size, feature size, parameter count (no-top, ``--alpha 1.0``) and ImageNet alphas."""
    return [{"name": s.name, "family": s.family, "application": s.application, "preprocessing": s.preprocessing,
             "min_size": s.min_size, "native_size": s.native_size, "features": s.features, "params": s.params,
             "imagenet_alphas": list(s.imagenet_alphas)} for s in BACKBONES.values()]


def format_backbone_table(rows: list[dict]) -> str:
    """``backbone_rows`` as an aligned text table, with how to use a KerasHub preset after it."""
    lines = [f"{'backbone':22s} {'family':20s} {'preprocessing':13s} {'min px':>6s} {'native':>6s} "
             f"{'features':>8s} {'params':>8s}  alphas"]
    for r in rows:
        alphas = ", ".join(f"{a:g}" for a in r["imagenet_alphas"])
        lines.append(f"{r['name']:22s} {r['family']:20s} {r['preprocessing']:13s} {r['min_size']:6d} "
                     f"{r['native_size']:6d} {r['features']:8d} {r['params'] / 1e6:7.1f}M  {alphas}")
    lines.append("native: the size its ImageNet weights were trained at; params: no-top model at --alpha 1.0; "
                 "features: pooled feature size (channels of the map). "
                 "Also: --backbone hub:PRESET, a KerasHub image backbone (pip install 'headstart[hub]').")
    return "\n".join(lines)
