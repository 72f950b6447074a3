"""``train-head``: train the classifier head on a feature cache and write the run directory.

Why a hand-written epoch loop rather than ``model.fit``: the batches must be exactly the same
whether the features sit in memory or stream from HDF5, and for augmented caches each epoch draws
one view per image from a seeded plan. Feeding ``train_on_batch`` from ``headstart.pipeline.stages.head_data`` keeps
that in plain NumPy, with no generator adapter reordering or prefetching across epochs. Early
stopping follows ``keras.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=True)``:
an epoch improves when its validation loss is strictly lower than the best so far; training stops
after ``patience`` epochs without improvement, and the best epoch's weights are restored.

With more than one replica (``--strategy``, ``headstart.pipeline.distribute.strategy``) an epoch instead runs
``headstart.pipeline.distribute.loop.train_epoch`` over the same planned batches, split across the replicas
(``train_on_batch`` would give each replica the whole batch), all epochs served from one
distributed iterator; early stopping and the restored best weights stay in this loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from headstart.pipeline.config import HeadConfig, config_to_dict
from headstart.pipeline.distribute.strategy import STRATEGIES
from headstart.pipeline.errors import DataError, OptionError
from headstart.pipeline.report.tensorboard_logs import check_log_dir
from headstart.pipeline.stages.finite_loss import check_finite_losses
from headstart.pipeline.stages.head_data import FeatureRows, shuffle_geometry, split_nbytes

MB = 1 << 20


@dataclass
class HeadResult:
    """What ``train_head`` produced; ``metrics`` is the content of ``metrics.json``."""

    run_dir: str
    best_epoch: int                 # 1-based epoch whose weights were kept
    epochs_run: int
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    seconds_per_epoch: float
    loader: str                     # "memory" or "stream"
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    summary: str = ""               # the table to print at the end
    distribute: dict = field(default_factory=dict)  # run.json's "distribute": strategy, batch split, chief


def validate_head_config(config: HeadConfig) -> None:
    """Checks option values before anything is opened or built.

    Raises:
        OptionError: naming the option at fault.
    """
    if not config.features:
        raise OptionError("FEATURES is required")
    if not config.out:
        raise OptionError("--out is required")
    checks = [
        ("--epochs", config.epochs >= 1, "at least 1", config.epochs),
        ("--lr", config.lr > 0 and math.isfinite(config.lr), "a positive number", config.lr),
        ("--batch-size", config.batch_size >= 1, "at least 1", config.batch_size),
        ("--dropout", 0.0 <= config.dropout < 1.0, "in [0, 1)", config.dropout),
        ("--patience", config.patience >= 0, "0 or more", config.patience),
        ("--memory-limit-mb", config.memory_limit_mb >= 0, "0 or more", config.memory_limit_mb),
        ("--strategy", config.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}", config.strategy),
    ]
    for option, ok, expected, value in checks:
        if not ok:
            raise OptionError(f"{option} must be {expected}, got {value}")
    check_log_dir(config.tensorboard)
    from headstart.pipeline.model.head_options import check_head_options

    check_head_options(**head_options(config), weight_decay=config.weight_decay,
                       label_smoothing=config.label_smoothing)


def head_options(config: HeadConfig) -> dict:
    """The ``build_head`` keyword arguments a HeadConfig asks for (run.json's "head" record too)."""
    return {"dropout": config.dropout, "kind": config.head_kind, "hidden_units": config.hidden_units,
            "normalize": config.normalize}


@contextlib.contextmanager
def _op_determinism(enabled: bool) -> Iterator[None]:
    # enable_op_determinism is process-wide and would leak into whatever runs next in the same
    # process (other tests, finetune after train-head); restore the previous state on exit. TF has
    # no public switch-off, hence the guarded private import.
    if not enabled:
        yield
        return
    import tensorflow as tf

    try:
        from tensorflow.python.framework import config as tf_config

        was_enabled = tf_config.is_op_determinism_enabled()
        disable = tf_config.disable_op_determinism
    except (ImportError, AttributeError):  # pragma: no cover - older/newer TF layouts
        was_enabled, disable = True, None
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled and disable is not None:
            disable()


def _open_splits(cache: Any, path: str) -> dict[str, Any]:
    # The store already refused missing / foreign / incomplete / unknown-version files; what is left
    # is whether this cache can train a head at all.
    if "train" not in cache.splits:
        raise DataError(f"{path}: the cache has no 'train' split (it has: "
                        f"{', '.join(cache.splits) or 'none'}); extract it with --splits train,...")
    if len(cache.class_names) < 2:
        raise DataError(f"{path}: the cache has {len(cache.class_names)} class(es); a classifier needs 2 or more")
    splits = {name: cache.split(name) for name in ("train", "validation", "test") if name in cache.splits}
    if len(splits["train"]) == 0:
        raise DataError(f"{path}: the 'train' split has no rows")
    for name, split in splits.items():
        labels = np.asarray(split.labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(cache.class_names)):
            raise DataError(f"{path}: split '{name}' has labels outside 0..{len(cache.class_names) - 1}")
    return {name: split for name, split in splits.items() if len(split) > 0}


def _check_inputs(config: HeadConfig) -> None:
    """The cache and ``--out`` checks that need no TensorFlow, so a mistyped path fails at once."""
    from headstart.features.store import open_cache
    from headstart.pipeline.report.rundir import check_run_dir_free

    with open_cache(config.features) as cache:
        _open_splits(cache, config.features)
    check_run_dir_free(config.out, config.overwrite)


def _evaluate(model: Any, rows: FeatureRows, labels: np.ndarray, num_classes: int,
              batch_size: int, replicas: int = 1) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and logits of ``model`` on one split, in stored order.

    Computed from the concatenated logits with the head's own loss, so the number equals what
    ``model.evaluate`` reports (the mean over rows) and the logits serve the confusion matrix.
    """
    from headstart.pipeline.distribute.loop import predict_logits
    from headstart.pipeline.model.head import head_labels, head_loss_and_metrics, predict_classes

    chunks = [np.asarray(predict_logits(model, x, replicas)) for x, _ in rows.eval_batches(batch_size)]
    logits = np.concatenate(chunks, axis=0)
    loss_fn, _ = head_loss_and_metrics(num_classes)
    loss = float(loss_fn(head_labels(labels, num_classes), logits))
    accuracy = float(np.mean(predict_classes(logits, num_classes) == labels))
    return loss, accuracy, logits


def _distributed_feed(model: Any, train: FeatureRows, targets: np.ndarray, seed: int, epochs: int,
                      batch_size: int) -> Any:
    """Every epoch's planned batches back to back, served from one distributed iterator.

    One iterator for the whole fit, because making and ending one per epoch costs more than a
    head's epoch (see ``headstart.pipeline.distribute.loop.EpochFeed``). Plans do not depend on training, so
    reading ahead into the next epoch changes nothing.
    """
    from headstart.pipeline.distribute.loop import EpochFeed, planned_dataset

    def batches():
        for epoch in range(epochs):
            for x, rows in train.train_batches(train.plan(seed, epoch), batch_size):
                yield x, targets[rows]

    steps = -(-train.n // batch_size)
    data = planned_dataset(batches, (train.feature_shape, np.float32), (targets.shape[1:], targets.dtype),
                           steps * epochs)
    return EpochFeed(model.distribute_strategy, data, steps=steps, repeat=False)


def fit_head(model: Any, train: FeatureRows, train_labels: np.ndarray, val: tuple | None,
             config: HeadConfig, num_classes: int, log: Callable[[str], None],
             replicas: int = 1, callbacks: Sequence[Any] = ()) -> tuple[dict, int, list]:
    """The train-head epoch loop with early stopping (also the recipe of diagnose's fold heads).

    Args:
        model: a compiled head (``build_compiled_head``).
        train: the training rows; ``train_labels`` (N,) their int class indices.
        val: (FeatureRows, labels) watched by early stopping, or None to watch the training loss.
        config: epochs, batch size, patience and seed of the recipe.
        num_classes: number of classes.
        log: receives one line per epoch.
        replicas: devices the batches are split over (1 without tf.distribute).
        callbacks: Keras callbacks (e.g. ``keras.callbacks.TensorBoard``); they get the hooks ``fit``
            would call: train begin/end, epoch begin/end with the epoch's logs, train batch begin/end.

    Returns:
        (history, best epoch 1-based, seconds per epoch); the best epoch's weights are restored.
    """
    import keras

    from headstart.pipeline.distribute.loop import train_epoch
    from headstart.pipeline.model.head import head_labels

    hooks = keras.callbacks.CallbackList(list(callbacks), model=model)

    targets = head_labels(train_labels, num_classes)
    monitor = "val_loss" if val is not None else "loss"
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history.update(val_loss=[], val_accuracy=[])
    best_value, best_epoch, best_weights, wait = math.inf, 0, None, 0
    seconds = []
    feed = (_distributed_feed(model, train, targets, config.seed, config.epochs, config.batch_size)
            if replicas > 1 else None)
    hooks.on_train_begin()
    for epoch in range(config.epochs):
        start = time.perf_counter()
        hooks.on_epoch_begin(epoch)
        if feed is not None:
            logs = train_epoch(model, feed, num_classes)
            history["loss"].append(logs["loss"])
            history["accuracy"].append(logs["accuracy"])
        else:
            loss_sum = acc_sum = 0.0
            batches = train.train_batches(train.plan(config.seed, epoch), config.batch_size)
            for step, (x, rows) in enumerate(batches):
                hooks.on_train_batch_begin(step)
                logs = model.train_on_batch(x, targets[rows], return_dict=True)
                hooks.on_train_batch_end(step, logs)
                # train_on_batch resets metrics per call; weight by batch size as fit's running means do.
                loss_sum += float(logs["loss"]) * len(rows)
                acc_sum += float(logs["accuracy"]) * len(rows)
            history["loss"].append(loss_sum / train.n)
            history["accuracy"].append(acc_sum / train.n)
        if val is not None:
            # Every worker computes the same number from the same synchronised weights, so all of
            # them take the same early-stopping decision and run the same number of epochs.
            val_loss, val_acc, _ = _evaluate(model, val[0], val[1], num_classes, config.batch_size,
                                             replicas)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
        seconds.append(time.perf_counter() - start)
        hooks.on_epoch_end(epoch, {key: values[-1] for key, values in history.items()})
        current = history[monitor][-1]
        log(_epoch_line(epoch + 1, config.epochs, history, seconds[-1]))
        check_finite_losses("train-head", epoch + 1, {k: v[-1] for k, v in history.items()})
        if math.isfinite(current) and current < best_value:
            best_value, best_epoch, best_weights, wait = current, epoch + 1, model.get_weights(), 0
        else:
            wait += 1
            if wait >= config.patience and best_weights is not None:
                log(f"early stopping: {monitor} has not improved for {wait} epoch(s); "
                    f"restoring epoch {best_epoch}")
                break
    hooks.on_train_end()
    if best_weights is None:
        # Every epoch diverged (NaN/inf); keep the last weights and say so rather than hide it.
        log(f"warning: {monitor} was never finite; keeping the last epoch's weights")
        best_epoch = len(seconds)
    else:
        model.set_weights(best_weights)
    return history, best_epoch, seconds


def build_compiled_head(config: HeadConfig, feature_shape: tuple[int, ...], num_classes: int,
                        train_batches: Any = None) -> Any:
    """The head of ``config``, compiled as train-head compiles it (call inside a strategy scope).

    Args:
        train_batches: the training split's original rows (arrays (B, *feature_shape)), for the
            statistics of ``--normalize standardize``; None leaves them at mean 0, variance 1.

    Returns:
        A Keras model (B, *feature_shape) float32 → logits (B, 1 or num_classes).
    """
    from headstart.pipeline.model.head import adapt_head, build_head, compile_head

    model = build_head(feature_shape, num_classes, **head_options(config))
    if train_batches is not None:
        adapt_head(model, train_batches)
    return compile_head(model, num_classes, config.lr, jit_compile=True if config.jit_compile else "auto",
                        weight_decay=config.weight_decay, label_smoothing=config.label_smoothing)


def _epoch_line(epoch: int, epochs: int, history: dict, seconds: float) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in history:
            parts.append(f"{key} {history[key][-1]:.4f}")
    parts.append(f"{seconds:.2f} s")
    return "  ".join(parts)


def _make_loaders(splits: dict[str, Any], memory_limit_mb: int,
                  views: bool = True) -> tuple[dict[str, FeatureRows], str, int]:
    """Loads every split into memory when all fit in the limit, else streams them all.

    ``views=False`` trains on the originals only, ignoring a cache's augmented views.

    Returns:
        (split → FeatureRows, "memory" or "stream", bytes the splits take at the stored dtype).
    """
    # One decision for all splits, so a run is wholly in memory or wholly streamed and run.json
    # can say which with one word.
    need = sum(split_nbytes(s, with_views=(views and name == "train")) for name, s in splits.items())
    in_memory = need <= memory_limit_mb * MB
    rows = {name: FeatureRows(s, in_memory=in_memory, with_views=(views and name == "train"))
            for name, s in splits.items()}
    return rows, ("memory" if in_memory else "stream"), need


def _exclude(config: HeadConfig, splits: dict[str, Any], log: Callable[[str], None]) -> Any:
    """Applies --exclude to the splits in place; returns the Exclusion (None without --exclude)."""
    if not config.exclude:
        return None
    from headstart.pipeline.data.exclusion import SubsetSplit, resolve_exclusion

    exclusion = resolve_exclusion(config.exclude, {n: s.keys for n, s in splits.items()}, data=config.features)
    for name, keep in exclusion.keep.items():
        splits[name] = SubsetSplit(splits[name], keep)
    if not len(splits["train"]):
        raise DataError(f"--exclude {config.exclude} removes every row of the 'train' split")
    for name in [n for n, s in splits.items() if not len(s)]:
        del splits[name]  # an emptied validation split: early stopping then watches the training loss
    log(f"--exclude {config.exclude}: removed " + ", ".join(f"{n} {k}" for n, k in exclusion.removed.items())
        + (f"; {exclusion.kept_in_test} listed test rows kept (the test split is never changed)"
           if exclusion.kept_in_test else ""))
    return exclusion


def _final_metrics(model: Any, rows: dict[str, FeatureRows], labels: dict[str, np.ndarray],
                   class_names: list[str], batch_size: int, replicas: int = 1) -> dict[str, Any]:
    """metrics.json's validation and test sections (None for an absent split)."""
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.report.rundir import classification_metrics

    out: dict[str, Any] = {}
    for name in ("validation", "test"):
        if name not in rows:
            out[name] = None
            continue
        loss, _, logits = _evaluate(model, rows[name], labels[name], len(class_names), batch_size, replicas)
        predicted = predict_classes(logits, len(class_names))
        out[name] = {"loss": loss, **classification_metrics(labels[name], predicted, class_names)}
    return out


def _summary(result: HeadResult) -> str:
    from headstart.pipeline.report.rundir import format_summary_table

    return format_summary_table([
        ("best epoch", f"{result.best_epoch} of {result.epochs_run}"),
        ("validation accuracy", result.val_accuracy),
        ("validation loss", result.val_loss),
        ("test accuracy", result.test_accuracy),
        ("test loss", result.test_loss),
        ("time per epoch", f"{result.seconds_per_epoch:.3f} s ({result.loader})"),
        ("run directory", result.run_dir + ("" if result.distribute.get("is_chief", True)
                                            else " (written by the chief, not this worker)")),
    ], title="train-head")


def train_head(config: HeadConfig, *, log: Callable[[str], None] = print,
               callbacks: Sequence[Any] = ()) -> HeadResult:
    """Trains the head on a feature cache and writes the run directory.

    Args:
        config: resolved ``train-head`` options (``features`` cache path, ``out`` run directory…).
            With ``tensorboard`` set, Keras' TensorBoard callback logs every epoch there.
        log: receives one line per epoch and status messages.
        callbacks: extra Keras callbacks; the epoch loop calls their train, epoch and batch hooks.

    Returns:
        A HeadResult; ``summary`` is the table for the CLI to print.

    Raises:
        OptionError: bad option values. RunDirError: ``out`` exists with content and not
        ``overwrite``. DataError: the cache has no train split, fewer than 2 classes or bad labels.
        headstart.features.errors.StoreError: the cache is missing, foreign, incomplete or of an unknown
        format version (passed through from ``headstart.features.store.open_cache``).
    """
    validate_head_config(config)
    _check_inputs(config)
    from headstart.pipeline.distribute.strategy import batch_policy, chief_output_dir, resolve_strategy, strategy_line

    # First TensorFlow work of the run: a multi-worker strategy must be set up before any other.
    strategy, info = resolve_strategy(config.strategy)
    distribute = {**batch_policy(info, config.batch_size),
                  **{k: info[k] for k in ("requested", "worker_index", "is_chief", "devices")}}
    if strategy_line(info, distribute):
        log(strategy_line(info, distribute))
    if config.jit_compile and config.deterministic:
        log("--jit-compile: Keras runs without XLA under --deterministic")
    # Every worker runs the whole stage (saving included); only the chief's files are kept.
    with chief_output_dir(config.out, info["is_chief"]) as out:
        result = _train(config, out, strategy, distribute, log, callbacks)
    if not info["is_chief"]:
        result.run_dir = str(config.out)
    result.summary = _summary(result)
    return result


def _train(config: HeadConfig, out: Path, strategy: Any, distribute: dict,
           log: Callable[[str], None], callbacks: Sequence[Any] = ()) -> HeadResult:
    """``train_head`` after the strategy is set up; writes the run directory into ``out``."""
    import keras

    from headstart.features.store import open_cache
    from headstart.pipeline.report import rundir as report
    from headstart.pipeline.distribute.strategy import precision
    replicas = distribute["replicas"]
    t_start = time.perf_counter()
    with open_cache(config.features) as cache:
        splits = _open_splits(cache, config.features)
        exclusion = _exclude(config, splits, log)
        # Refuse an occupied --out before any work, but only once the cache is known to be usable.
        run_dir = report.prepare_run_dir(out, config.overwrite)
        class_names = list(cache.class_names)
        num_classes = len(class_names)
        feature_shape = tuple(int(d) for d in cache.feature_shape)

        t_load = time.perf_counter()
        rows, loader, need = _make_loaders(splits, config.memory_limit_mb, config.views)
        labels = {name: np.asarray(s.labels, dtype=np.int64) for name, s in splits.items()}
        load_seconds = time.perf_counter() - t_load
        log(f"{config.features}: {', '.join(f'{n} {len(s)}' for n, s in splits.items())} rows, "
            f"{num_classes} classes, features {feature_shape}"
            + (f", {cache.views} augmented views" if rows["train"].views else "")
            + f"; {loader} loader ({need / MB:.1f} MB, limit {config.memory_limit_mb} MB)")

        with _op_determinism(config.deterministic):
            # Seeds the head's initial weights and its dropout masks; the batch order has its own
            # seeded plan (headstart.pipeline.stages.head_data.plan_epoch).
            keras.utils.set_random_seed(config.seed)
            # Variables (model and optimizer) must be created in the strategy's scope; layers take
            # the dtype policy in force when they are built.
            with precision(config.mixed_precision) as policy, strategy.scope():
                model = build_compiled_head(config, feature_shape, num_classes,
                                            (x for x, _ in rows["train"].eval_batches(4096)))
            val = (rows["validation"], labels["validation"]) if "validation" in rows else None
            if val is None:
                log("no validation split: early stopping watches the training loss")
            t_train = time.perf_counter()
            if config.tensorboard and distribute.get("is_chief", True):  # one writer per log directory
                from headstart.pipeline.report.tensorboard_logs import tensorboard_callback

                callbacks = [*callbacks, tensorboard_callback(config.tensorboard)]
            history, best_epoch, epoch_seconds = fit_head(model, rows["train"], labels["train"], val,
                                                          config, num_classes, log, replicas, callbacks)
            train_seconds = time.perf_counter() - t_train
            t_eval = time.perf_counter()
            metrics = {"best_epoch": best_epoch, "epochs_run": len(epoch_seconds),
                       "monitor": "val_loss" if val is not None else "loss",
                       **_final_metrics(model, rows, labels, class_names, config.batch_size, replicas)}
            eval_seconds = time.perf_counter() - t_eval

        cache_info = {
            "path": os.path.abspath(config.features),
            "fingerprint": cache.fingerprint,
            "config": cache.config,
            "provenance": cache.provenance,
            "splits": {name: len(s) for name, s in splits.items()},
            "views": int(cache.views),
            "dtype": cache.dtype,
        }

    val_m, test_m = metrics["validation"] or {}, metrics["test"] or {}
    result = HeadResult(
        run_dir=str(run_dir), best_epoch=best_epoch, epochs_run=len(epoch_seconds),
        val_loss=val_m.get("loss"), val_accuracy=val_m.get("accuracy"),
        test_loss=test_m.get("loss"), test_accuracy=test_m.get("accuracy"),
        seconds_per_epoch=float(np.mean(epoch_seconds)), loader=loader, metrics=metrics,
        history=history, distribute=distribute,
    )

    # run.json goes last: its presence marks a finished run (see headstart.pipeline.report.rundir).
    report.save_model_atomic(model, run_dir / "head.keras")
    report.write_json_atomic(run_dir / "metrics.json", metrics)
    report.write_history_csv(history, run_dir / "history.csv")
    report.plot_curves(history, run_dir / "curves.png", best_epoch=best_epoch,
                       title=f"train-head: {Path(config.features).name}")
    resolved = config_to_dict(config)
    resolved["features"] = os.path.abspath(config.features)
    resolved["out"] = os.path.abspath(config.out)
    report.write_json_atomic(run_dir / report.RUN_JSON, {
        "kind": "head",
        "config": resolved,
        "cache": cache_info,
        "class_names": class_names,
        "num_classes": num_classes,
        "feature_shape": list(feature_shape),
        "head": {**head_options(config), "weight_decay": config.weight_decay,
                 "label_smoothing": config.label_smoothing, "logits": int(model.output_shape[-1]), "from_logits": True,
                 "loss": "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"},
        "loader": loader,
        "exclude": exclusion.record() if exclusion else None,
        "shuffle": dict(zip(("block_rows", "window_rows"), shuffle_geometry(rows["train"].row_bytes)),
                        seed=config.seed),
        "best_epoch": best_epoch,
        "epochs_run": len(epoch_seconds),
        "distribute": distribute,
        "precision": {"policy": policy, "logits_dtype": str(model.outputs[0].dtype),
                      "jit_compile": bool(model.jit_compile)},
        "versions": report.library_versions(),
        "timings": {"load_seconds": load_seconds, "train_seconds": train_seconds,
                    "seconds_per_epoch": result.seconds_per_epoch, "epoch_seconds": epoch_seconds,
                    "evaluate_seconds": eval_seconds,
                    "total_seconds": time.perf_counter() - t_start},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return result
