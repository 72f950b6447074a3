"""Freezing and unfreezing the model chain's backbone (BatchNorm kept frozen), and its serving half.

The chain itself (augmentation → preprocessing → backbone → pooling → head) is built in one place,
``headstart.features.chain.build_chain``; ``headstart.pipeline.model.head_run`` rebuilds it around a
trained head. This module decides what of it trains::

    image (B, S, S, 3) float32 raw 0–255
      ─▶ "augmentation" (Sequential; random layers act only when training=True)
      ─▶ "preprocessing" ─▶ "backbone" (nested application model) ─▶ "pooling" (absent for "none")
      ─▶ "head" (nested model from ``headstart.pipeline.model.head.build_head``) ─▶ logits (B, 1) or (B, K)

Why BatchNormalization layers are set ``trainable=False`` rather than called with
``training=False``: Keras 3's ``fit`` passes ``training=True`` into nested models and overrides a
``base(x, training=False)`` call (keras-team/keras#20285); a BN layer with ``trainable=False`` runs
in inference mode whatever ``training`` says, and its moving statistics never change. That flag is
part of the layer config, so it survives ``model.keras`` save and reload.

Only the layer named "backbone" is ever unfrozen: the "caffe" preprocessing is a frozen Conv2D that a
model-wide ``trainable = True`` would thaw.
"""

from __future__ import annotations

import difflib

import keras

# freeze_batchnorm lives with the chain builder, which freezes BatchNorm in every chain it builds.
from headstart.features.chain import build_chain, freeze_batchnorm
from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError
from headstart.pipeline.model.unfreeze import Unfreeze

def inference_model(model: keras.Model) -> keras.Model:
    """Returns the same model without its augmentation, sharing every weight.

    Exports need it: ``model.export`` traces ``model(x)`` without ``training=False``, and Keras's
    random image layers default to ``training=True``, so an exported full model would augment at
    serving time (measured here: logits off by up to 2.4), and TFLite has no kernels for the random
    ops.

    Args:
        model: a chain with a head (``build_chain``, ``rebuild_from_head_run``, or ``model.keras``).

    Returns:
        Model (B, S, S, 3) raw 0–255 → logits: the same chain, built by ``build_chain`` from the
        same layers, without "augmentation" (with "temperature" when the model is calibrated).
    """
    layers = {layer.name: layer for layer in model.layers}
    return build_chain(layers["backbone"], layers["preprocessing"], layers.get("pooling"), head=layers["head"],
                       temperature=layers.get("temperature"), name=f"{model.name}_inference")


def freeze_backbone(model: keras.Model) -> None:
    """The head stage: backbone and preprocessing frozen, head trainable.

    The caller must (re)compile afterwards: Keras collects trainable variables at compile time.
    """
    model.get_layer("backbone").trainable = False
    model.get_layer("preprocessing").trainable = False
    model.get_layer("head").trainable = True
    freeze_batchnorm(model)


def unfreeze_backbone(model: keras.Model, spec: Unfreeze) -> list[str]:
    """Unfreezes backbone layers as ``spec`` asks; BatchNorm and preprocessing stay frozen.

    The caller must (re)compile afterwards: Keras collects trainable variables at compile time.

    Args:
        model: a chain with a head (see ``build_chain``).
        spec: from ``parse_unfreeze``.

    Returns:
        Names of the backbone layers left trainable that hold trainable weights.

    Raises:
        OptionError: "top:N" with N above the backbone's layer count, or "from:LAYER" naming no
            backbone layer (the message suggests close names).
    """
    base = model.get_layer("backbone")
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    if spec.mode == "all":
        start = 0
    elif spec.mode == "top":
        if spec.count > len(layers):
            raise OptionError(Arg("unfreeze", f"top:{spec.count}"), f": the backbone has only {len(layers)} layers")
        start = len(layers) - spec.count
    else:
        names = [layer.name for layer in layers]
        if spec.layer not in names:
            close = difflib.get_close_matches(spec.layer, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (first: {names[0]}, last: {names[-1]})"
            raise OptionError(Arg("unfreeze", f"from:{spec.layer}"), f": no such backbone layer{hint}")
        start = names.index(spec.layer)
    # Thaw every layer one by one, then freeze what stays: setting the container's flag to the value it
    # already has does not reach layers frozen one by one before (a second call would keep them frozen).
    base.trainable = True
    for i, layer in enumerate(layers):
        layer.trainable = i >= start
    model.get_layer("preprocessing").trainable = False
    model.get_layer("head").trainable = True
    freeze_batchnorm(model)
    return [layer.name for layer in layers[start:] if layer.trainable_weights]


def trainable_counts(model: keras.Model) -> dict[str, int]:
    """Counts of what training will update, for logs and tests.

    Returns:
        ``{"trainable_weights": variables, "trainable_params": scalars, "non_trainable_params":
        scalars}``.
    """
    def size(variables) -> int:
        total = 0
        for v in variables:
            n = 1
            for d in v.shape:
                n *= int(d)
            total += n
        return total

    return {"trainable_weights": len(model.trainable_weights),
            "trainable_params": size(model.trainable_weights),
            "non_trainable_params": size(model.non_trainable_weights)}
