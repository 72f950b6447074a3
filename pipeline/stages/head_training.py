"""``train-head``: train the classifier head on a feature cache and write the run directory.

Steps: open the cache and check it can train a head → refuse an occupied ``--out`` → load every
split into memory, or stream them all → build and compile the head (under ``--strategy`` and
``--mixed-precision``) → the epoch loop with early stopping (``headstart.pipeline.stages.head_fit``)
→ validation and test metrics → the run directory (``head.keras``, metrics, history, curves, and
run.json last).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headstart.pipeline.config import HeadConfig, config_to_dict
from headstart.pipeline.distribute.strategy import STRATEGIES
from headstart.pipeline.errors import DataError, OptionError
from headstart.pipeline.report.tensorboard_logs import check_log_dir
from headstart.pipeline.stages.determinism import op_determinism
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
    from headstart.pipeline.stages.class_weights import check_class_weight_option
    from headstart.pipeline.stages.monitor import check_monitor

    check_class_weight_option(config.class_weight)
    check_monitor(config.monitor)

    check_head_options(**head_options(config), weight_decay=config.weight_decay,
                       label_smoothing=config.label_smoothing)


def head_options(config: HeadConfig) -> dict:
    """The ``build_head`` keyword arguments a HeadConfig asks for (run.json's "head" record too)."""
    return {"dropout": config.dropout, "kind": config.head_kind, "hidden_units": config.hidden_units,
            "normalize": config.normalize}


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
        if cache.multi_label:  # multi-hot rows of 0/1, checked by the store on write and read
            continue
        if labels.size and (labels.min() < 0 or labels.max() >= len(cache.class_names)):
            raise DataError(f"{path}: split '{name}' has labels outside 0..{len(cache.class_names) - 1}")
    return {name: split for name, split in splits.items() if len(split) > 0}


def _check_inputs(config: HeadConfig) -> bool:
    """The cache and ``--out`` checks that need no TensorFlow, so a mistyped path fails at once.

    Returns:
        Whether the cache is multi-label.
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.report.rundir import check_run_dir_free

    from headstart.pipeline.stages.class_weights import resolve_class_weights
    from headstart.pipeline.stages.monitor import check_monitor

    with open_cache(config.features) as cache:
        splits = _open_splits(cache, config.features)
        multi_label = cache.multi_label
        check_monitor(config.monitor, has_validation="validation" in splits, multi_label=multi_label)
        if config.class_weight != "none":  # a bad weights file fails here, before TensorFlow starts
            resolve_class_weights(config.class_weight, list(cache.class_names), np.asarray(splits["train"].labels),
                                  multi_label=multi_label)
    check_run_dir_free(config.out, config.overwrite)
    return multi_label


@dataclass
class _HeadData:
    """The cache's splits, loaded (one loader for all) for ``_train``."""

    splits: dict[str, Any]
    rows: dict[str, FeatureRows]
    labels: dict[str, np.ndarray]
    loader: str                     # "memory" or "stream"
    class_names: list[str]
    feature_shape: tuple[int, ...]
    load_seconds: float
    multi_label: bool = False       # labels are (N, C) multi-hot rows (the cache's task)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def validation(self) -> tuple[FeatureRows, np.ndarray] | None:
        return (self.rows["validation"], self.labels["validation"]) if "validation" in self.rows else None


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
        format version (passed through from ``headstart.features.cache.open_cache``).
    """
    validate_head_config(config)
    multi_label = _check_inputs(config)
    from headstart.pipeline.distribute.strategy import chief_output_dir, set_up_strategy

    # First TensorFlow work of the run: a multi-worker strategy must be set up before any other.
    setup = set_up_strategy(config.strategy, config.batch_size, log=log)
    if multi_label and setup.replicas > 1:
        raise OptionError(f"--strategy {config.strategy}: a multi-label head trains on one device for now "
                          f"({setup.replicas} replicas here); use --strategy default")
    if config.jit_compile and config.deterministic:
        log("--jit-compile: Keras runs without XLA under --deterministic")
    # Every worker runs the whole stage (saving included); only the chief's files are kept.
    with chief_output_dir(config.out, setup.info.is_chief) as out:
        result = _train(config, out, setup, log, callbacks)
    if not setup.info.is_chief:
        result.run_dir = str(config.out)
    result.summary = _summary(result)
    return result


def _train(config: HeadConfig, out: Path, setup: Any, log: Callable[[str], None],
           callbacks: Sequence[Any] = ()) -> HeadResult:
    """``train_head`` after the strategy is set up; writes the run directory into ``out``."""
    from headstart.features.cache import open_cache
    from headstart.pipeline.report.rundir import prepare_run_dir
    from headstart.pipeline.stages.class_weights import training_class_weights
    from headstart.pipeline.stages.head_fit import fit_head

    t_start = time.perf_counter()
    with open_cache(config.features) as cache:
        splits = _open_splits(cache, config.features)
        exclusion = _exclude(config, splits, log)
        # Refuse an occupied --out before any work, but only once the cache is known to be usable.
        run_dir = prepare_run_dir(out, config.overwrite)
        data = _load(config, cache, splits, log)
        weights = training_class_weights(config.class_weight, data.class_names, data.labels["train"], log,
                                         multi_label=data.multi_label)
        with op_determinism(config.deterministic):
            model, policy = _build_head(config, data, setup.strategy)
            if data.validation is None:
                log("no validation split: early stopping watches the training loss")
            t_train = time.perf_counter()
            if config.tensorboard and setup.info.is_chief:  # one writer per log directory
                from headstart.pipeline.report.tensorboard_logs import tensorboard_callback

                callbacks = [*callbacks, tensorboard_callback(config.tensorboard)]
            fit = fit_head(model, data.rows["train"], data.labels["train"], data.validation, config=config,
                           num_classes=data.num_classes, log=log, replicas=setup.replicas, callbacks=callbacks,
                           multi_label=data.multi_label,
                           sample_weights=None if weights is None else weights.per_sample(data.labels["train"]))
            train_seconds = time.perf_counter() - t_train
            t_eval = time.perf_counter()
            metrics = {"best_epoch": fit.best_epoch, "epochs_run": len(fit.epoch_seconds), "monitor": fit.monitor,
                       **_final_metrics(model, data, config.batch_size, setup.replicas)}
            eval_seconds = time.perf_counter() - t_eval
        cache_info = _cache_record(config, cache, splits)

    result = _result(run_dir, fit, metrics, data.loader, setup.distribute)
    timings = {"load_seconds": data.load_seconds, "train_seconds": train_seconds,
               "seconds_per_epoch": result.seconds_per_epoch, "epoch_seconds": fit.epoch_seconds,
               "evaluate_seconds": eval_seconds}
    _write_run_dir(run_dir, config, model=model, policy=policy, data=data, fit=fit, metrics=metrics,
                   cache_info=cache_info, exclusion=exclusion, distribute=setup.distribute, timings=timings,
                   t_start=t_start, class_weights=weights)
    return result


def _load(config: HeadConfig, cache: Any, splits: dict[str, Any], log: Callable[[str], None]) -> _HeadData:
    """Loads the splits (in memory, or streamed) and logs what was loaded."""
    t_load = time.perf_counter()
    rows, loader, need = _make_loaders(splits, config.memory_limit_mb, config.views)
    labels = {name: np.asarray(s.labels, dtype=np.int64) for name, s in splits.items()}
    data = _HeadData(splits=splits, rows=rows, labels=labels, loader=loader, class_names=list(cache.class_names),
                     feature_shape=tuple(int(d) for d in cache.feature_shape),
                     load_seconds=time.perf_counter() - t_load, multi_label=cache.multi_label)
    log(f"{config.features}: {', '.join(f'{n} {len(s)}' for n, s in splits.items())} rows, "
        f"{data.num_classes} {'labels (multi-label)' if data.multi_label else 'classes'}, features {data.feature_shape}"
        + (f", {cache.views} augmented views" if rows["train"].views else "")
        + f"; {loader} loader ({need / MB:.1f} MB, limit {config.memory_limit_mb} MB)")
    return data


def _build_head(config: HeadConfig, data: _HeadData, strategy: Any) -> tuple[Any, str]:
    """The compiled head and the dtype policy it was built under."""
    import keras

    from headstart.pipeline.distribute.strategy import precision

    # Seeds the head's initial weights and its dropout masks; the batch order has its own seeded
    # plan (headstart.pipeline.stages.head_data.plan_epoch).
    keras.utils.set_random_seed(config.seed)
    # Variables (model and optimizer) must be created in the strategy's scope; layers take the
    # dtype policy in force when they are built.
    with precision(config.mixed_precision) as policy, strategy.scope():
        model = build_compiled_head(config, data.feature_shape, data.num_classes,
                                    (x for x, _ in data.rows["train"].eval_batches(4096)),
                                    multi_label=data.multi_label)
    return model, policy


def build_compiled_head(config: HeadConfig, feature_shape: tuple[int, ...], num_classes: int,
                        train_batches: Any = None, *, multi_label: bool = False) -> Any:
    """The head of ``config``, compiled as train-head compiles it (call inside a strategy scope).

    Args:
        train_batches: the training split's original rows (arrays (B, *feature_shape)), for the
            statistics of ``--normalize standardize``; None leaves them at mean 0, variance 1.
        multi_label: one sigmoid logit per class, binary cross-entropy per class.

    Returns:
        A Keras model (B, *feature_shape) float32 → logits (B, 1 or num_classes).
    """
    from headstart.pipeline.model.head import adapt_head, build_head, compile_head

    model = build_head(feature_shape, num_classes, **head_options(config), multi_label=multi_label)
    if train_batches is not None:
        adapt_head(model, train_batches)
    return compile_head(model, num_classes, config.lr, jit_compile=True if config.jit_compile else "auto",
                        weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                        multi_label=multi_label)


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


def _final_metrics(model: Any, data: _HeadData, batch_size: int, replicas: int = 1) -> dict[str, Any]:
    """metrics.json's validation and test sections (None for an absent split); a multi-label run's
    also holds "thresholds", chosen on validation (``measure_splits``)."""
    from headstart.pipeline.report.split_measures import measure_splits
    from headstart.pipeline.stages.head_fit import evaluate_head

    logits = {name: evaluate_head(model, data.rows[name], data.labels[name], num_classes=data.num_classes,
                                  batch_size=batch_size, replicas=replicas, multi_label=data.multi_label)[2]
              for name in ("validation", "test") if name in data.rows}
    out, thresholds = measure_splits(data.labels, logits, data.class_names, multi_label=data.multi_label)
    return {**out, "thresholds": thresholds} if thresholds else out


def _cache_record(config: HeadConfig, cache: Any, splits: dict[str, Any]) -> dict[str, Any]:
    """run.json's "cache" section: the provenance ``finetune`` rebuilds the backbone from."""
    return {"path": os.path.abspath(config.features), "fingerprint": cache.fingerprint, "config": cache.config,
            "provenance": cache.provenance, "splits": {name: len(s) for name, s in splits.items()},
            "views": int(cache.views), "dtype": cache.dtype}


def _result(run_dir: Path, fit: Any, metrics: dict, loader: str, distribute: dict) -> HeadResult:
    val_m, test_m = metrics["validation"] or {}, metrics["test"] or {}
    return HeadResult(
        run_dir=str(run_dir), best_epoch=fit.best_epoch, epochs_run=len(fit.epoch_seconds),
        val_loss=val_m.get("loss"), val_accuracy=val_m.get("accuracy"),
        test_loss=test_m.get("loss"), test_accuracy=test_m.get("accuracy"),
        seconds_per_epoch=float(np.mean(fit.epoch_seconds)), loader=loader, metrics=metrics,
        history=fit.history, distribute=distribute)


def _write_run_dir(run_dir: Path, config: HeadConfig, *, model: Any, policy: str, data: _HeadData, fit: Any,
                   metrics: dict, cache_info: dict, exclusion: Any, distribute: dict, timings: dict,
                   t_start: float, class_weights: Any = None) -> None:
    """head.keras, metrics.json, history.csv, curves.png, then run.json (its presence marks a
    finished run, see ``headstart.pipeline.report.rundir``)."""
    from headstart.pipeline.report import rundir as report
    from headstart.pipeline.stages.class_weights import class_weight_record

    report.save_model_atomic(model, run_dir / "head.keras")
    report.write_json_atomic(run_dir / "metrics.json", metrics)
    if data.multi_label:  # beside the model, so whoever copies head.keras can take its cuts along
        report.write_json_atomic(run_dir / "thresholds.json", metrics["thresholds"])
    report.write_history_csv(fit.history, run_dir / "history.csv")
    report.plot_curves(fit.history, run_dir / "curves.png", best_epoch=fit.best_epoch,
                       title=f"train-head: {Path(config.features).name}")
    resolved = config_to_dict(config)
    resolved["features"] = os.path.abspath(config.features)
    resolved["out"] = os.path.abspath(config.out)
    num_classes = data.num_classes
    report.write_run_json(run_dir, {
        "kind": "head",
        "config": resolved,
        "cache": cache_info,
        "task": "multi_label" if data.multi_label else "single_label",
        "class_names": data.class_names,
        "num_classes": num_classes,
        "feature_shape": list(data.feature_shape),
        "head": {**head_options(config), "weight_decay": config.weight_decay,
                 "label_smoothing": config.label_smoothing, "logits": int(model.output_shape[-1]), "from_logits": True,
                 "multi_label": data.multi_label,
                 "loss": "binary_crossentropy" if num_classes == 2 or data.multi_label
                 else "sparse_categorical_crossentropy"},
        **({"thresholds": metrics["thresholds"]} if data.multi_label else {}),
        "loader": data.loader,
        "exclude": exclusion.record() if exclusion else None,
        "shuffle": dict(zip(("block_rows", "window_rows"), shuffle_geometry(data.rows["train"].row_bytes)),
                        seed=config.seed),
        "class_weight": class_weight_record(class_weights),
        "monitor": {"option": config.monitor, "watched": fit.monitor},
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.epoch_seconds),
        "distribute": distribute,
        "precision": report.precision_record(model, policy),
    }, timings={**timings, "total_seconds": time.perf_counter() - t_start})


def _summary(result: HeadResult) -> str:
    from headstart.pipeline.report.rundir import format_summary_table

    if result.metrics.get("thresholds"):  # multi-label
        from headstart.pipeline.report.multilabel_metrics import summary_rows

        measures = summary_rows(result.metrics.get("validation"), result.metrics.get("test"))
    else:
        measures = [("validation accuracy", result.val_accuracy),
                    ("validation loss", result.val_loss),
                    ("test accuracy", result.test_accuracy),
                    ("test balanced accuracy", (result.metrics.get("test") or {}).get("balanced_accuracy")),
                    ("test macro-F1", (result.metrics.get("test") or {}).get("macro_f1")),
                    ("test loss", result.test_loss)]
    return format_summary_table([
        ("best epoch", f"{result.best_epoch} of {result.epochs_run}"),
        *measures,
        ("time per epoch", f"{result.seconds_per_epoch:.3f} s ({result.loader})"),
        ("run directory", result.run_dir + ("" if result.distribute.get("is_chief", True)
                                            else " (written by the chief, not this worker)")),
    ], title="train-head")
