"""A tap: where the backbone is cut so that its top layers can train on cached activations.

The cache normally stops at the pooled features, so anything past the head costs full passes
through the backbone. A tap moves the cache boundary down: extraction also stores the *input of the
backbone's top layers* (its activation map at the cut), and fine-tuning those layers then runs on
the cache, many epochs for the price of one end-to-end epoch::

    image ─▶ preprocessing ─▶ bottom ──(activations, cached)──▶ top ─▶ pooling ─▶ head
                              └──────────── the backbone, unchanged ─────────┘

``bottom`` and ``top`` are sub-models of the one backbone that *share its layers*: training ``top``
updates the backbone itself, so the full chain (``features.chain.build_chain``) needs no copying
or re-assembly after a top-block fine-tune.

A cut is only possible where a single tensor carries everything the top layers need: inside a
residual block the skip connection crosses it. ``top:N`` therefore means "at least the last N
layers": N is rounded up to the nearest block boundary, and the resolved count is what the cache
records (layer names are not stable across builds of the same application; positions are).
"""

from __future__ import annotations

from dataclasses import dataclass

from headstart.features.errors import TapError

__all__ = ["Tap", "TapError", "parse_tap", "resolve_tap", "split_backbone"]


@dataclass(frozen=True)
class Tap:
    """A resolved cut of a backbone.

    Attributes:
        spec: what was asked for, e.g. "top:10" or a layer name.
        top_layers: N: the cut is below ``backbone.layers[-N:]`` (at least what ``spec`` asked for).
        layer: name of the layer whose output is cached (the last layer below the cut).
        shape: per-image activation shape at the cut, e.g. (4, 4, 56).
    """

    spec: str
    top_layers: int
    layer: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        """JSON-ready form, as a cache's config records it."""
        return {"spec": self.spec, "top_layers": self.top_layers, "layer": self.layer,
                "shape": list(self.shape)}


def parse_tap(text: str) -> tuple[str, int | str]:
    """Parses a tap without TensorFlow: ("top", N) for "top:N", ("layer", NAME) otherwise.

    Raises:
        TapError: an empty value, or "top:N" with N not a whole number ≥ 1.
    """
    text = (text or "").strip()
    if not text:
        raise TapError("needs top:N or a layer name, got an empty value")
    mode, sep, value = text.partition(":")
    if sep and mode == "top":
        if not value.isdigit() or int(value) < 1:
            raise TapError(f"top:N needs a whole number N ≥ 1, got '{text}'")
        return "top", int(value)
    return "layer", text


def resolve_tap(backbone, spec: str) -> Tap:
    """Finds the cut ``spec`` asks for in ``backbone``.

    Args:
        backbone: a functional Keras model (a ``keras.applications`` backbone), (B, S, S, 3) →
            (B, h, w, C).
        spec: "top:N" (the cut below at least the last N layers, rounded up to a block boundary)
            or the name of the layer whose output is cut.

    Returns:
        The Tap; ``top_layers`` ≥ 1 and < the number of backbone layers.

    Raises:
        TapError: a model that is not functional, N too large, an unknown layer, or a layer whose
            output does not carry everything above it (inside a residual block).
    """
    mode, value = parse_tap(spec)
    layers = _layers_of(backbone)
    if mode == "layer":
        names = [layer.name for layer in layers]
        if value not in names:
            raise TapError(f"the backbone has no layer '{value}'")
        top = len(layers) - 1 - names.index(value)
        if top < 1 or not _cuts(backbone, layers[-top - 1]):
            raise TapError(f"the output of layer '{value}' is not a cut of the backbone (a skip connection "
                           f"crosses it, or nothing is above it); use top:N")
        return _tap(spec, layers, top)
    for top in range(value, len(layers) - 1):
        if _cuts(backbone, layers[-top - 1]):
            return _tap(spec, layers, top)
    raise TapError(f"the backbone has {len(layers) - 1} layers and no cut below its last {value}")


def split_backbone(backbone, tap: Tap):
    """The backbone as two models sharing its layers, cut at ``tap``.

    Returns:
        (bottom, top): bottom (B, S, S, 3) preprocessed → (B, *tap.shape); top (B, *tap.shape) →
        the backbone's output. ``top(bottom(x))`` computes exactly ``backbone(x)``.

    Raises:
        TapError: the tap does not fit this backbone (another build or size than it was resolved on).
    """
    import keras

    layers = _layers_of(backbone)
    if not 1 <= tap.top_layers < len(layers) - 1:
        raise TapError(f"top:{tap.top_layers} does not fit this backbone ({len(layers) - 1} layers)")
    cut = layers[-tap.top_layers - 1].output
    if tuple(int(d) for d in cut.shape[1:]) != tuple(tap.shape):
        raise TapError(f"top:{tap.top_layers} of this backbone has shape {tuple(cut.shape[1:])}, "
                       f"not the cached {tuple(tap.shape)}")
    bottom = keras.Model(backbone.input, cut, name=f"{backbone.name}_bottom")
    top = keras.Model(cut, backbone.output, name=f"{backbone.name}_top")
    return bottom, top


def _tap(spec: str, layers: list, top: int) -> Tap:
    cut = layers[-top - 1]
    return Tap(spec=spec, top_layers=top, layer=cut.name, shape=tuple(int(d) for d in cut.output.shape[1:]))


def _layers_of(backbone) -> list:
    if not hasattr(backbone, "_operations") and not getattr(backbone, "_is_graph_network", True):
        raise TapError(f"the backbone is not a functional model; a tap needs a keras.applications backbone")
    layers = list(backbone.layers)
    if len(layers) < 3:
        raise TapError(f"the backbone has too few layers to cut")
    return layers


def _cuts(backbone, layer) -> bool:
    """Whether ``layer``'s output alone carries everything the layers after it need."""
    import keras

    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        return False
    if isinstance(output, (list, tuple)):
        return False
    try:
        # Keras traces back from the output and refuses when it reaches a tensor the cut does
        # not provide ("not connected to inputs"): exactly the test of a cut.
        keras.Model(output, backbone.output)
    except ValueError:
        return False
    return True
