"""``train-head``: train the classifier head on a feature cache and write the run directory.

Steps: check the options and the cache (no TensorFlow yet) → claim ``--out`` (its lock and the
``--out`` policy: a run made with the same options on the same cache is already done) → load every
split into memory, or stream them all (``headstart.pipeline.training.head_inputs``) → build and
compile the head (under ``--strategy`` and ``--mixed-precision``) → the fit with early stopping
(``headstart.pipeline.training.head_fit``: a one-trial group of the sweep's batched trainer) → validation and test metrics → the run
directory (``RunDir.write_outputs``: head.keras, metrics, history, curves, and run.json last).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headstart.pipeline.config import HeadConfig, config_to_dict
from headstart.features.errors import Arg
from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.errors import OptionError
from headstart.pipeline.options.checks import check_config
from headstart.pipeline.store.rundir import RunDir
from headstart.pipeline.report.tensorboard_logs import check_log_dir
from headstart.pipeline.training.determinism import op_determinism
from headstart.pipeline.training.head_data import shuffle_geometry
from headstart.pipeline.training.head_fit import KeptHead
from headstart.pipeline.training.head_build import build_compiled_head, head_options

#: How run.json's identity of the cache a head trained on is named in a refusal.
CACHE_IDENTITY = "FEATURES (fingerprint)"


@dataclass
class HeadResult:
    """What ``train_head`` produced (or found already done); ``metrics`` is metrics.json's content.

    ``train_rows`` and ``train_seconds`` (the training split's rows, the fit's seconds) let
    ``headstart run`` report images per second without reading the run directory again.
    """

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
    train_rows: int = 0
    train_seconds: float | None = None
    reused: bool = False            # the run directory already held this run

    @classmethod
    def from_run_dir(cls, run: RunDir) -> "HeadResult":
        """The result a finished train-head run directory records."""
        metrics, record = run.metrics(), run.record
        val_m, test_m = metrics.get("validation") or {}, metrics.get("test") or {}
        timings = record.get("timings") or {}
        return cls(run_dir=str(run.path), best_epoch=int(record.get("best_epoch") or 0),
                   epochs_run=int(record.get("epochs_run") or 0), val_loss=val_m.get("loss"),
                   val_accuracy=val_m.get("accuracy"), test_loss=test_m.get("loss"),
                   test_accuracy=test_m.get("accuracy"), seconds_per_epoch=float(timings.get("seconds_per_epoch") or 0),
                   loader=str(record.get("loader", "")), metrics=metrics, history=run.history(),
                   distribute=record.get("distribute") or {}, train_rows=int(run.cache.get("splits", {}).get("train", 0)),
                   train_seconds=timings.get("train_seconds"), reused=True)


def check_head_config(config: HeadConfig, *, label: Callable[[str], Arg] | None = None) -> None:
    """Every check of train-head's options that needs neither the cache nor TensorFlow.

    Raises:
        OptionError: naming the option at fault (``label`` names it; default: train-head's flag).
    """
    check_config("head", config, label=label)
    check_log_dir(config.tensorboard)
    from headstart.pipeline.data.exclusion import check_exclude_option
    from headstart.pipeline.training.class_weights import check_class_weight_option
    from headstart.pipeline.training.monitor import check_monitor

    check_class_weight_option(config.class_weight)
    check_monitor(config.monitor)
    check_exclude_option(config.exclude, (label or Arg)("exclude"))


def _check_cache(config: HeadConfig) -> tuple[bool, str]:
    """The cache checks that need no TensorFlow, so a mistyped path fails at once.

    Returns:
        (whether the cache is multi-label, its fingerprint).
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.training.class_weights import resolve_class_weights
    from headstart.pipeline.training.head_inputs import open_head_splits
    from headstart.pipeline.training.monitor import check_monitor

    with open_cache(config.features) as cache:
        splits = open_head_splits(cache, config.features)
        check_monitor(config.monitor, has_validation="validation" in splits, multi_label=cache.multi_label)
        if config.class_weight != "none":  # a bad weights file fails here, before TensorFlow starts
            resolve_class_weights(config.class_weight, list(cache.class_names), np.asarray(splits["train"].labels),
                                  multi_label=cache.multi_label)
        return cache.multi_label, cache.fingerprint


def resolved_config(config: HeadConfig) -> dict:
    """run.json's "config": every option, paths made absolute."""
    return {**config_to_dict(config), "features": os.path.abspath(config.features), "out": os.path.abspath(config.out)}


def train_head(config: HeadConfig, *, reporter: Reporter = QUIET,
               callbacks: Sequence[Any] = (), kept: KeptHead | None = None) -> HeadResult:
    """Trains the head on a feature cache and writes the run directory.

    Args:
        config: resolved ``train-head`` options (``features`` cache path, ``out`` run directory…).
            With ``tensorboard`` set, Keras' TensorBoard callback logs every epoch there.
        reporter: gets one line per epoch and status messages (default: none).
        callbacks: extra Keras callbacks; the fit calls their train and epoch hooks (batch hooks only
            under several replicas or ``--mixed-precision``: ``head_fit.fit_head``).
        kept: a ``training.head_fit.KeptHead`` (a sweep trial's weights and history): the run
            directory is written for those weights instead of training (``sweep.best``).

    Returns:
        A HeadResult; ``summary`` is the table for the CLI to print. A ``--out`` that already holds
        this run (same options, same cache) is not trained again: its recorded result comes back.

    Raises:
        OptionError: bad option values.
        RunDirError: ``out`` holds another run (and not ``overwrite``).
        RunDirBusyError: another process writes ``out``.
        DataError: the cache has no train split, fewer than 2 classes or bad labels.
        headstart.features.errors.StoreError: the cache is missing, foreign, incomplete or of an
            unknown format version.
    """
    from headstart.pipeline.distribute.strategy import config_is_chief
    from headstart.pipeline.store.out_dir import REUSE, claim_run_dir

    check_head_config(config)
    multi_label, fingerprint = _check_cache(config)
    with claim_run_dir(config.out, section="head", command="train-head", resolved=resolved_config(config),
                       overwrite=config.overwrite, inputs={CACHE_IDENTITY: fingerprint},
                       recorded_inputs=lambda run: {CACHE_IDENTITY: run.cache.get("fingerprint")},
                       chief=config_is_chief()) as (state, _):
        if state == REUSE:
            reporter.line(f"{config.out}: already done (a train-head run with these options on this cache)")
            result = HeadResult.from_run_dir(RunDir.open(config.out, kind="head"))
        else:
            result = _train_distributed(config, multi_label, reporter, callbacks, kept)
    result.summary = _summary(result)
    return result


def _train_distributed(config: HeadConfig, multi_label: bool, reporter: Reporter,
                       callbacks: Sequence[Any], kept: KeptHead | None = None) -> HeadResult:
    """Sets up the strategy (the run's first TensorFlow work), then trains on every worker."""
    from headstart.pipeline.distribute.strategy import chief_output_dir, set_up_strategy

    # First TensorFlow work of the run: a multi-worker strategy must be set up before any other.
    setup = set_up_strategy(config.strategy, config.batch_size, reporter=reporter)
    if multi_label and setup.replicas > 1:
        raise OptionError(Arg("strategy", config.strategy), ": a multi-label head trains on one device for now "
                          f"({setup.replicas} replicas here); use ", Arg("strategy", "default"))
    if config.jit_compile and config.deterministic:
        reporter.line("--jit-compile: Keras runs without XLA under --deterministic")
    # Every worker runs the whole stage (saving included); only the chief's files are kept.
    with chief_output_dir(config.out, setup.info.is_chief) as out:
        result = _train(config, out, setup, reporter, callbacks, kept)
    if not setup.info.is_chief:
        result.run_dir = str(config.out)
    return result


@dataclass
class _Trained:
    """What the fit left for the outputs."""

    model: Any
    policy: str
    fit: Any
    metrics: dict
    weights: Any
    timings: dict


def _train(config: HeadConfig, out: Path, setup: Any, reporter: Reporter,
           callbacks: Sequence[Any] = (), kept: KeptHead | None = None) -> HeadResult:
    """``train_head`` after the strategy is set up; writes the run directory into ``out``."""
    from headstart.features.cache import open_cache
    from headstart.pipeline.training.head_inputs import exclude_rows, load_head_data, open_head_splits

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)  # a worker's scratch copy; the chief's exists (claimed)
    with open_cache(config.features) as cache:
        splits = open_head_splits(cache, config.features)
        exclusion = exclude_rows(config.exclude, splits, config.features, reporter)
        data = load_head_data(cache, splits, memory_limit_mb=config.memory_limit_mb, views=config.views,
                              path=config.features, reporter=reporter)
        with op_determinism(config.deterministic):
            trained = _fit(config, data, setup, reporter, callbacks, kept)
        cache_info = _cache_record(config, cache, splits)
    result = _result(out, trained, data.loader, setup.distribute, cache_info)
    trained.timings.update(load_seconds=data.load_seconds, seconds_per_epoch=result.seconds_per_epoch,
                           epoch_seconds=trained.fit.epoch_seconds, total_seconds=time.perf_counter() - t_start)
    RunDir(out).write_outputs(
        trained.model, kind="head", metrics=trained.metrics, history=trained.fit.history,
        best_epoch=trained.fit.best_epoch, title=f"train-head: {Path(config.features).name}",
        record=_run_record(config, trained, data, cache_info, exclusion, setup.distribute), timings=trained.timings)
    return result


def _fit(config: HeadConfig, data: Any, setup: Any, reporter: Reporter, callbacks: Sequence[Any],
         kept: KeptHead | None = None) -> _Trained:
    """Builds the head, trains it (or takes ``kept``'s weights) and measures the kept weights."""
    from headstart.pipeline.training.class_weights import training_class_weights
    from headstart.pipeline.training.head_fit import fit_head

    weights = training_class_weights(config.class_weight, data.class_names, data.labels["train"], reporter,
                                     multi_label=data.multi_label)
    model, policy = _build_head(config, data, setup.strategy)
    if data.validation is None:
        reporter.line("no validation split: early stopping watches the training loss")
    if config.tensorboard and setup.info.is_chief:  # one writer per log directory
        from headstart.pipeline.report.tensorboard_logs import tensorboard_callback

        callbacks = [*callbacks, tensorboard_callback(config.tensorboard)]
    t_train = time.perf_counter()
    if kept is not None:
        fit = kept.restore(model)
    else:
        fit = fit_head(model, data.rows["train"], data.labels["train"], data.validation, config=config,
                       num_classes=data.num_classes, reporter=reporter, replicas=setup.replicas, callbacks=callbacks,
                       multi_label=data.multi_label,
                       sample_weights=None if weights is None else weights.per_sample(data.labels["train"]))
    train_seconds = time.perf_counter() - t_train if kept is None else sum(fit.epoch_seconds)
    t_eval = time.perf_counter()
    metrics = {"best_epoch": fit.best_epoch, "epochs_run": len(fit.epoch_seconds), "monitor": fit.monitor,
               **_final_metrics(model, data, config.batch_size, setup.replicas)}
    timings = {"train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - t_eval}
    return _Trained(model=model, policy=policy, fit=fit, metrics=metrics, weights=weights, timings=timings)


def write_fixed_head(config: HeadConfig, weights: Sequence[np.ndarray], *, fitted_by: str,
                     reporter: Reporter = QUIET) -> HeadResult:
    """A head run directory whose linear head takes ``weights`` instead of being trained.

    ``train_head`` with a ``KeptHead`` (as the sweep's best/ is written), so the files, record and
    measures are train-head's own and ``finetune``, ``predict`` and ``export`` take it like any head;
    for a head fitted elsewhere: auto's logistic probe (``evidence.baselines.logistic_head_weights``).
    ``config.out`` is written over.

    Args:
        config: a linear head on ``config.features``, no dropout or normalisation.
        weights: the Dense layer's [kernel (D, logits), bias (logits,)].
        fitted_by: what fitted them (the run's history names no epochs; the caller records it).
    """
    from headstart.pipeline.training.head_fit import HeadFit

    fit = HeadFit(history={}, best_epoch=1, epoch_seconds=[0.0], monitor="val_loss")
    kept = KeptHead(weights={"logits": [np.asarray(w, dtype=np.float32) for w in weights]}, fit=fit)
    reporter.line(f"head: weights fitted by {fitted_by}, not trained")
    return train_head(dataclasses.replace(config, overwrite=True), reporter=reporter, kept=kept)


def _build_head(config: HeadConfig, data: Any, strategy: Any) -> tuple[Any, str]:
    """The compiled head and the dtype policy it was built under."""
    import keras

    from headstart.pipeline.distribute.strategy import precision

    # Seeds the head's initial weights (the one-device trainer draws the same ones itself) and the
    # Keras loop's dropout masks; the batch order has its own seeded plan (head_data.plan_epoch).
    keras.utils.set_random_seed(config.seed)
    # Variables (model and optimizer) must be created in the strategy's scope; layers take the
    # dtype policy in force when they are built.
    with precision(config.mixed_precision) as policy, strategy.scope():
        model = build_compiled_head(config, data.feature_shape, data.num_classes,
                                    (x for x, _ in data.rows["train"].eval_batches(4096)),
                                    multi_label=data.multi_label)
    return model, policy


def _final_metrics(model: Any, data: Any, batch_size: int, replicas: int = 1) -> dict[str, Any]:
    """metrics.json's validation and test sections (None for an absent split); a multi-label run's
    also holds "thresholds", chosen on validation (``measure_splits``)."""
    from headstart.pipeline.report.split_measures import measure_splits
    from headstart.pipeline.training.head_fit import evaluate_head

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


def _result(run_dir: Path, trained: _Trained, loader: str, distribute: dict, cache_info: dict) -> HeadResult:
    fit, metrics = trained.fit, trained.metrics
    val_m, test_m = metrics["validation"] or {}, metrics["test"] or {}
    return HeadResult(
        run_dir=str(run_dir), best_epoch=fit.best_epoch, epochs_run=len(fit.epoch_seconds),
        val_loss=val_m.get("loss"), val_accuracy=val_m.get("accuracy"),
        test_loss=test_m.get("loss"), test_accuracy=test_m.get("accuracy"),
        seconds_per_epoch=float(np.mean(fit.epoch_seconds)), loader=loader, metrics=metrics,
        history=fit.history, distribute=distribute, train_rows=int(cache_info["splits"]["train"]),
        train_seconds=trained.timings["train_seconds"])


def _run_record(config: HeadConfig, trained: _Trained, data: Any, cache_info: dict, exclusion: Any,
                distribute: dict) -> dict:
    """run.json after its "kind" (``RunDir.write_outputs`` adds versions, timings and the time)."""
    from headstart.pipeline.store.provenance import precision_record
    from headstart.pipeline.training.class_weights import class_weight_record

    model, fit, num_classes = trained.model, trained.fit, data.num_classes
    return {
        "config": resolved_config(config),
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
        **({"thresholds": trained.metrics["thresholds"]} if data.multi_label else {}),
        "loader": data.loader,
        "exclude": exclusion.record() if exclusion else None,
        "shuffle": dict(zip(("block_rows", "window_rows"), shuffle_geometry(data.rows["train"].row_bytes)),
                        seed=config.seed),
        "class_weight": class_weight_record(trained.weights),
        "monitor": {"option": config.monitor, "watched": fit.monitor},
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.epoch_seconds),
        "distribute": distribute,
        "precision": precision_record(model, trained.policy),
    }


def _summary(result: HeadResult) -> str:
    from headstart.pipeline.report.summary_table import format_summary_table

    if result.metrics.get("thresholds"):  # multi-label
        from headstart.pipeline.report.multilabel_metrics import summary_rows

        measures = summary_rows(result.metrics.get("validation"), result.metrics.get("test"))
    else:
        test = result.metrics.get("test") or {}
        measures = [("validation accuracy", result.val_accuracy), ("validation loss", result.val_loss),
                    ("test accuracy", result.test_accuracy), ("test balanced accuracy", test.get("balanced_accuracy")),
                    ("test macro-F1", test.get("macro_f1")), ("test loss", result.test_loss)]
    return format_summary_table([
        ("best epoch", f"{result.best_epoch} of {result.epochs_run}"),
        *measures,
        ("time per epoch", f"{result.seconds_per_epoch:.3f} s ({result.loader})"),
        ("run directory", result.run_dir + ("" if result.distribute.get("is_chief", True)
                                            else " (written by the chief, not this worker)")),
    ], title="train-head")
