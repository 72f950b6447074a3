"""``finetune --on-cache``: fine-tune the backbone's top layers on cached activations.

An end-to-end epoch runs every training image through the whole backbone. When the head run's
cache was extracted with ``--tap top:N``, it already holds the input of the backbone's last N
layers for every image (and for every augmented view), so the layers above the tap and the head
can train on those activations alone: the frozen bottom of the backbone never runs again::

    cached activations (B, *tap) ─▶ top layers ─▶ pooling ─▶ head ─▶ logits        (training)
    image ─▶ preprocessing ─▶ bottom ─▶ top layers ─▶ pooling ─▶ head ─▶ logits    (the model kept)

The model trained here *shares its layers* with the full chain (``features.tap.split_backbone``),
so the fine-tuned chain needs no assembly; a parity check on images then proves that the chain
reproduces what the top-block model computes on the cache, and the run directory is an ordinary
finetune run (``evaluate``, ``predict`` and ``export`` take it).

Augmentation on the cache: each epoch, every training row is shown as its original activations or
one of its K cached views, drawn uniformly (the views were augmented with the cache's ``augment``);
the image-level ``--augment`` layer never runs, since no image does. With ``--augment auto`` the
views of each item the view trials kept (``evidence.view_trials``, whose per-item caches carry
activations at the same tap) join the draw. Each item's cache holds its part of the training rows
(``evidence.view_parts``), so a row of a kept item's part has 1 + K versions (its original and its K
views of that item) and a row of a dropped item's part only its original. Their rows are matched to
the head cache's by key, and their backbone, weights, size, tap and classes are checked against it.
BatchNorm stays frozen as in every fine-tune (the shared layers are the chain's own, frozen by
``build_chain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from headstart.features.reporter import Reporter
from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError
from headstart.pipeline.model.calibration import TEMPERATURE_LAYER

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from headstart.features.cache import FeatureCache
    from headstart.pipeline.config import FinetuneConfig
    from headstart.pipeline.distribute.strategy import StageStrategy
    from headstart.pipeline.model.parity import ParityResult
    from headstart.pipeline.model.unfreeze import Unfreeze
    from headstart.pipeline.finetuning.plan import FinetunePlan
    from headstart.pipeline.training.class_weights import ClassWeights
    from headstart.pipeline.training.stage_fit import StageOutcome


@dataclass(frozen=True)
class CachedRows:
    """The rows of one split the top layers train or validate on, in memory.

    Attributes:
        activations: (N, V, *tap_shape) float16: V = 1 + the cached views (train) or 1.
        targets: (N, …) what the loss expects (``model.head.head_labels``).
        weights: (N,) float32 class weights (training only), or None.
    """

    activations: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None = None


def on_cache_unfreeze(spec: Unfreeze, tap: dict) -> Unfreeze:
    """The ``--unfreeze`` value on the cache: only layers above the tap can train.

    "all" becomes "top:N" (every layer above the tap); "top:M" needs M ≤ N; "from:LAYER" is
    checked once the model is built (``unfreeze_backbone``) and must lie above the tap.

    Raises:
        OptionError: top:M reaching below the tap.
    """
    from headstart.pipeline.model.unfreeze import Unfreeze

    top = int(tap["top_layers"])
    if spec.mode == "all":
        return Unfreeze("top", count=top)
    if spec.mode == "top" and spec.count > top:
        raise OptionError(Arg("unfreeze", f"top:{spec.count}"), f" reaches below the cache's tap (top:{top}, layer "
                          f"{tap['layer']}): ", Arg("on_cache"), f" trains at most the last {top} layers; extract "
                          "with a deeper ", Arg("tap"), ", or fine-tune end to end")
    return spec


def cache_tap(cache_info: dict) -> dict:
    """The tap of the head run's cache (``FeatureCache.tap``).

    Raises:
        OptionError: the cache has no activations (extracted without ``--tap``).
    """
    from headstart.features.cache import open_cache

    with open_cache(cache_info["path"]) as cache:
        if cache.tap is None:
            raise OptionError(Arg("on_cache"), f": the head's cache {cache_info['path']} holds no activations; "
                              "extract it again with ", Arg("tap", placeholder="top:N"), " (e.g. ",
                              Arg("tap", "top:20"), ")")
        return dict(cache.tap)


def top_block_model(model: keras.Model, tap: dict) -> keras.Model:
    """The part of the chain above the tap, as a model on cached activations; layers shared.

    Args:
        model: the chain (``features.chain.build_chain``: "backbone", "pooling", "head").
        tap: the cache's tap record.

    Returns:
        Model (B, *tap_shape) float32 → the chain's output (the head's logits, divided by the
        temperature in a calibrated model); training it trains the chain.
    """
    import keras

    from headstart.features.tap import Tap, split_backbone

    _, top = split_backbone(model.get_layer("backbone"), Tap(spec=tap["spec"], top_layers=int(tap["top_layers"]),
                                                             layer=tap["layer"], shape=tuple(tap["shape"])))
    inputs = keras.Input(shape=tuple(tap["shape"]), dtype="float32", name="activations")
    x = top(inputs)
    layers = {layer.name: layer for layer in model.layers}
    # The chain's own layers after the backbone, in its order; a calibrated model ends in its temperature.
    for name in ("pooling", "head", TEMPERATURE_LAYER):
        if name in layers:
            x = layers[name](x)
    return keras.Model(inputs, x, name="top_blocks")


def load_rows(cache_info: dict, split: str, *, num_classes: int, multi_label: bool, views: bool,
              exclude: set[str] = frozenset(), class_weights: ClassWeights | None = None,
              view_caches: Sequence[str] = ()) -> CachedRows | None:
    """Reads one split's activations (and its views' with ``views``) into memory.

    Args:
        view_caches: caches of the same split holding more views (the view trials' kept items), whose
            view activations are appended to each row's, matched by key (``views_from``; a row outside
            every kept item's part has its own activations there).

    Returns:
        CachedRows, or None when the cache has no such split or no row survives ``exclude``.
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.model.head import head_labels

    with open_cache(cache_info["path"]) as cache:
        if split not in cache.splits:
            return None
        data = cache.split(split)
        keep = np.array([key not in exclude for key in data.keys], dtype=bool)
        if not keep.any():
            return None
        stack = [np.asarray(data.activations[:])[:, None]]
        if views and data.view_activations is not None:
            stack.append(np.asarray(data.view_activations[:]))
        if view_caches:
            stack.append(views_from(view_caches, cache, split))
        activations = np.concatenate(stack, axis=1)[keep]
        labels = data.labels[keep]
    weights = None if class_weights is None or multi_label else class_weights.per_sample(labels)
    return CachedRows(activations, head_labels(labels, num_classes, multi_label), weights)


#: What a views cache must share with the head cache for its activations to stand in for the same rows.
#: (the weights by their fingerprint, not by how they were named.)
PROVENANCE = ("backbone", "alpha", "weights_fingerprint", "image_size", "pooling", "preprocessing", "dtype")


def views_from(paths: Sequence[str], base: FeatureCache, split: str) -> np.ndarray:
    """Other caches' view activations of ``split``, row by row of ``base`` (``evidence.view_parts``).

    Args:
        paths: caches extracted with views and the same tap (the kept items', ``evidence.view_trials``),
            each of every row or of its item's part of the rows.
        base: the open head cache (``FeatureCache``).

    Returns:
        (N, V, *tap_shape) float16: row n's views from every cache that holds it (matched by key: the
        same image, not the same position), padded with its own activations to the most any row has.

    Raises:
        DataError: a cache differs in backbone, weights, size, tap or classes, or has rows of ``split``
            but no views of them. A cache without rows of ``split`` (an empty part) adds nothing.
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.errors import DataError
    from headstart.pipeline.evidence.view_parts import views_by_key

    parts = []
    for path in paths:
        with open_cache(path) as views:
            differ = [k for k in PROVENANCE if views.config.get(k) != base.config.get(k)]
            if views.tap != base.tap or views.class_names != base.class_names:
                differ.append("tap" if views.tap != base.tap else "classes")
            if not differ and (split not in views.splits or not len(views.split(split))):
                continue  # an item's part of a tiny split can be empty (evidence.view_parts): no rows, no views
            if differ or views.split(split).view_activations is None:
                raise DataError(f"{path}: its views cannot train on {base.path}: "
                                + (f"different {', '.join(differ)}" if differ else f"no views of {split}"))
            data = views.split(split)
            parts.append((list(data.keys), np.asarray(data.view_activations[:])))
    data = base.split(split)
    return views_by_key(np.asarray(data.activations[:]), list(data.keys), parts)


def cached_dataset(rows: CachedRows, *, batch_size: int, seed: int | None):
    """Batches of (activations, targets[, weights]); with ``seed``, shuffled and one view drawn per row.

    Each epoch reshuffles and redraws which of a row's V stored versions it shows (``seed`` fixes
    the sequence, so two runs see the same batches).
    """
    import tensorflow as tf

    table = tf.constant(rows.activations)
    extras = [tf.constant(rows.targets)] + ([tf.constant(rows.weights)] if rows.weights is not None else [])
    n, versions = rows.activations.shape[:2]
    index = tf.data.Dataset.range(n)
    if seed is None:
        pairs = index.map(lambda i: (i, tf.constant(0, tf.int64)))
    else:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(lambda r: tf.math.floormod(r, versions))
        pairs = tf.data.Dataset.zip(index.shuffle(n, seed=seed, reshuffle_each_iteration=True), draws)

    def gather(i, v):
        x = tf.cast(tf.gather_nd(table, tf.stack([i, v], axis=-1)), tf.float32)
        return (x, *[tf.gather(e, i) for e in extras])

    return pairs.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fit_top_blocks(config: FinetuneConfig, spec: Unfreeze, plan: FinetunePlan, model: keras.Model,
                   setup: StageStrategy, run_dir: Path,
                   reporter: Reporter, callbacks: Sequence[Any],
                   views: Sequence[tuple[str, str]] | None = None) -> tuple[Any, dict]:
    """``finetune --on-cache``'s fit: unfreeze above the tap, train on the cache, keep the best epoch.

    With ``--probe lr`` every rate of ``rate_probes.PROBE_LRS`` trains from the seeded weights to
    early stopping (an epoch on the cache is cheap, so each look runs until it answers rather than
    for one epoch) and the one with the best validation measure is kept: its fit *is* the fine-tune.

    Args:
        views: (item, cache) of each augmentation the view trials kept, whose views join the draw; None
            when no view trials ran (``--augment`` given).

    Returns:
        (the kept fit's StageOutcome, trainable counts), as the end-to-end fit returns them; the counts
        carry "metrics": what metrics.json records instead of the request (the effective ``unfreeze``,
        the ``lr`` kept) and "on_cache": the tap, the rates tried and the parity check after training.

    Raises:
        OptionError: no tap in the cache, ``--unfreeze`` below the tap. ParityError: the chain on
            images disagrees with the top-block model on the cache after training.
    """
    from headstart.pipeline.model.assembly import trainable_counts, unfreeze_backbone
    from headstart.pipeline.finetuning.rate_probes import PROBE_LRS, parse_probe

    tap = cache_tap(plan.head_run.cache)
    spec = on_cache_unfreeze(spec, tap)
    unfrozen = unfreeze_backbone(model, spec)
    _check_above_tap(model, tap, spec)
    top = top_block_model(model, tap)
    counts = trainable_counts(model)
    views = None if views is None else list(views)
    train, val, versions = _cached_splits(config, plan, [path for _, path in views or ()])
    reporter.line(_views_line(views, versions))
    reporter.line(f"fine-tuning {len(unfrozen)} backbone layers with weights on cached activations (--on-cache, --unfreeze "
        f"{spec}, tap {tap['spec']} at {tap['layer']} {tuple(tap['shape'])}), {counts['trainable_params']:,} "
        f"trainable parameters; BatchNorm frozen")
    rates = PROBE_LRS if "lr" in parse_probe(config.probe) else (config.lr,)
    seeded, tried, best = top.get_weights(), [], None
    for lr in rates:
        top.set_weights(seeded)
        stage, score = _fit_rate(config, plan, top, setup, run_dir, lr, train, val, reporter, callbacks, many=len(rates) > 1)
        tried.append({"lr": lr, "best_epoch": stage.best_epoch, "epochs_run": len(stage.epoch_seconds),
                      "seconds": round(sum(stage.epoch_seconds), 2), stage.monitor: score})
        if best is None or _better(score, best[1], stage.monitor):
            best = (stage, score, lr, top.get_weights())
    stage, score, lr, weights = best
    top.set_weights(weights)
    if len(rates) > 1:
        reporter.line(f"on the cache: kept lr {lr:g} ({stage.monitor} {score:.4f}, epoch {stage.best_epoch} of "
            f"{len(stage.epoch_seconds)}) of {', '.join(f'{r:g}' for r in rates)}")
    parity = check_top_parity(config, plan, model, tap, reporter)
    return stage, {**counts, "metrics": {"unfreeze": str(spec), "lr": lr},
                   "on_cache": {"tap": tap, "rates": tried, "parity": parity and parity.to_dict(),
                                "views": {"items": [item for item, _ in views or ()],
                                          "caches": [p for _, p in views or ()], "per_row": versions - 1}}}


def _fit_rate(config: FinetuneConfig, plan: FinetunePlan, top: keras.Model, setup: StageStrategy, run_dir: Path,
              lr: float, train: tf.data.Dataset, val: tf.data.Dataset | None, reporter: Reporter,
              callbacks: Sequence[Any], *, many: bool) -> tuple[StageOutcome, float]:
    """One fit of the top layers at ``lr`` to early stopping (its own backup, so a kill resumes it);
    returns (its StageOutcome, the monitored value at its best epoch; NaN when none was finite)."""
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.training.stage_fit import fit_stage

    with setup.strategy.scope():
        compile_head(top, plan.num_classes, lr, jit_compile=True if config.jit_compile else "auto",
                     multi_label=plan.multi_label)
    if many:
        reporter.line(f"on the cache at lr {lr:g}:")
    stage = fit_stage(top, f"finetune-lr{lr:g}" if many else "finetune", run_dir=run_dir, train=train, val=val,
                      epochs=config.epochs, patience=config.patience, reporter=reporter, num_classes=plan.num_classes,
                      callbacks=callbacks, replicas=setup.replicas, multi_label=plan.multi_label, monitor=config.monitor)
    values = stage.history.get(stage.monitor, [])
    score = values[stage.best_epoch - 1] if stage.best_epoch and len(values) >= stage.best_epoch else float("nan")
    return stage, float(score)


def _better(score: float, best: float, monitor: str) -> bool:
    """Whether ``score`` beats ``best`` for ``monitor`` (losses: lower; measures: higher); NaN never does."""
    if score != score:
        return False
    if best != best:
        return True
    return score < best if monitor.endswith("loss") else score > best


def check_top_parity(config: FinetuneConfig, plan: FinetunePlan, model: keras.Model, tap: dict,
                     reporter: Reporter) -> ParityResult | None:
    """After training: the chain on images against the top-block model on the cached activations.

    Returns:
        The ParityResult, or None with ``--parity-samples 0``.
    """
    from headstart.pipeline.model.parity import check_parity

    if not config.parity_samples:
        return None
    parity = check_parity(model, plan.head_run.cache, plan.source, samples=config.parity_samples,
                          batch_size=config.batch_size, reference=top_block_model(model, tap), field="activations")
    reporter.line(f"parity after training: {parity.samples} {parity.split} images, the fine-tuned model on images against "
        f"its top layers on cached activations, largest logit difference {parity.max_abs_diff:.3g} "
        f"(tolerance {parity.tolerance:.3g})")
    return parity


def _views_line(views: Sequence[tuple[str, str]] | None, versions: int) -> str:
    """What the training rows are drawn from, in one line."""
    if views is not None and not views and versions == 1:
        return "training on the originals only: the view trials kept no augmentation"
    if len(views or ()) > 1:  # each row's views are its part's item's (evidence.view_parts)
        return (f"training on the originals and up to {versions - 1} cached views per row of the augmentation the "
                f"view trials kept, each row's of one item ({', '.join(item for item, _ in views)})")
    if views:
        return (f"training on the originals and {versions - 1} cached views per row of the augmentation the view "
                f"trials kept ({', '.join(item for item, _ in views)})")
    return ("training on the originals only: no views cached" if versions == 1 else
            f"training on the originals and the head cache's {versions - 1} views per row")


def _cached_splits(config: FinetuneConfig, plan: FinetunePlan, view_caches: Sequence[str] = ()
                   ) -> tuple[tf.data.Dataset, tf.data.Dataset | None, int]:
    """(shuffled train batches with views, validation batches or None, versions per training row), from
    the head's cache and ``view_caches``."""
    from headstart.pipeline.data.exclusion import read_exclude_keys

    exclude = set(read_exclude_keys(config.exclude)) if config.exclude else set()
    common = dict(num_classes=plan.num_classes, multi_label=plan.multi_label, exclude=exclude)
    train = load_rows(plan.head_run.cache, "train", views=True, class_weights=plan.class_weights,
                      view_caches=view_caches, **common)
    if train is None:
        raise OptionError(Arg("on_cache"), f": the head's cache {plan.head_run.cache['path']} has no training rows")
    val = load_rows(plan.head_run.cache, plan.val_split, views=False, **common) if plan.val_split else None
    return (cached_dataset(train, batch_size=config.batch_size, seed=config.seed),
            None if val is None else cached_dataset(val, batch_size=config.batch_size, seed=None),
            int(train.activations.shape[1]))


def _check_above_tap(model: keras.Model, tap: dict, spec: Unfreeze) -> None:
    """``from:LAYER`` must start above the tap: below it, nothing in the cache would reach it."""
    if spec.mode != "from":
        return
    names = [layer.name for layer in model.get_layer("backbone").layers]
    if names.index(spec.layer) < len(names) - int(tap["top_layers"]):
        raise OptionError(Arg("unfreeze", f"from:{spec.layer}"), f" starts below the cache's tap (layer "
                          f"{tap['layer']}): ", Arg("on_cache"), f" trains only the last {tap['top_layers']} layers")
