"""The recipe that turns a ``train-head`` run back into a model on raw images.

A head run records where its features came from (``run.json["cache"]["config"]``: backbone,
weights and their fingerprint, alpha, image size, pooling). ``rebuild_from_head_run`` rebuilds
backbone, preprocessing and pooling from that provenance with the one chain builder
(``headstart.features.chain``), checks that the weights are the ones the cache was made with, and
puts the trained head on top. ``finetune`` starts from it; so do the benchmarks, and any stage that
needs the head run as a model on images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.pipeline.errors import RunDirError

#: The cache-config keys the rebuild takes from a head run.
BACKBONE_KEYS = ("backbone", "weights", "alpha", "image_size", "pooling")


@dataclass
class HeadRunModel:
    """A chain rebuilt around a trained head.

    Attributes:
        model: (B, S, S, 3) raw 0–255 float32 → logits (B, 1) or (B, K); layers "augmentation" (when
            given), "preprocessing", "backbone", "pooling" (absent for "none"), "head".
        head: the "head" layer of ``model``, holding the head run's weights.
        info: ``headstart.features.backbones.BackboneInfo`` of the rebuilt backbone
            (``info.feature_shape`` is the head's input shape).
    """

    model: Any
    head: Any
    info: Any


def read_head_run(path: str | os.PathLike) -> dict:
    """Reads a ``train-head`` run directory's run.json.

    Raises:
        RunDirError: missing, not a directory, incomplete (no run.json), not a train-head run, or
            without ``head.keras``.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunDirError(f"--head {run_dir}: no such run directory (give a train-head --out directory)")
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        what = "incomplete (no run.json; did train-head finish?)" if (run_dir / "head.keras").exists() else \
            "not a train-head run directory (no run.json)"
        raise RunDirError(f"--head {run_dir}: {what}")
    try:
        run = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"--head {run_dir}: run.json is unreadable ({exc})") from None
    kind = run.get("kind") if isinstance(run, dict) else None
    if kind != "head" or not isinstance(run.get("cache"), dict) or not (run_dir / "head.keras").is_file():
        raise RunDirError(f"--head {run_dir}: a {kind or 'foreign'!r} run directory, not a train-head run "
                          f"with head.keras")
    return run


def rebuild_from_head_run(head_dir: str | os.PathLike, *, run: dict | None = None, weights: str | None = None,
                          augmentation: Any = None) -> HeadRunModel:
    """Rebuilds backbone, preprocessing and pooling from a head run's provenance; puts the head on top.

    Layers take the Keras dtype policy and ``tf.distribute`` scope in force, so call it inside
    ``precision(...)`` and ``strategy.scope()`` where those apply.

    Args:
        head_dir: the ``train-head`` run directory (``run.json`` and ``head.keras``).
        run: its run.json when already read (``read_head_run``); None reads it.
        weights: the backbone weights to load instead of the recorded ones (e.g. the file moved);
            the recorded fingerprint decides whether they are the same weights.
        augmentation: a layer named "augmentation" to put in front (training only), or None.

    Returns:
        A HeadRunModel. Its BatchNorm layers are frozen; the backbone is trainable as Keras builds
        it (``freeze_backbone`` / ``unfreeze_backbone`` decide, then recompile).

    Raises:
        RunDirError: a bad head run, or a ``head.keras`` that does not fit the rebuilt head.
        headstart.features.errors.WeightsError: weights that cannot be loaded or are not the
        cache's. Other ``FeaturesError`` subclasses from the backbone registry.
    """
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head, head_architecture

    run = run if run is not None else read_head_run(head_dir)
    cache = run["cache"]["config"]
    base, preprocessing, pooling, info = build_backbone_parts(
        cache["backbone"], weights=weights if weights is not None else cache["weights"],
        image_size=cache["image_size"], alpha=cache["alpha"], pooling=cache["pooling"],
        expected_fingerprint=cache["weights_fingerprint"])
    head = build_head(info.feature_shape, len(run["class_names"]), **head_architecture(run["head"]))
    load_head_weights(head, Path(head_dir) / "head.keras")
    model = build_chain(base, preprocessing, pooling, head=head, augmentation=augmentation)
    return HeadRunModel(model=model, head=head, info=info)


def load_head_weights(head: Any, path: str | os.PathLike) -> None:
    """Copies the weights of a saved head (``head.keras``, loaded in safe mode) into ``head``.

    Raises:
        RunDirError: the file does not load, or its weights do not fit ``head``.
    """
    import keras

    from headstart.pipeline.model.head import set_head_weights

    try:
        trained = keras.saving.load_model(path, safe_mode=True, compile=False)
        set_head_weights(head, trained.get_weights())
    except Exception as exc:  # noqa: BLE001 - load and shape errors both mean a head we cannot use
        raise RunDirError(f"--head: {path} does not fit the rebuilt head ({str(exc).splitlines()[0][:200]})") from exc
