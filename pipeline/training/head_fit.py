"""``train-head``'s fit: a one-trial group of the batched head trainer, or the Keras loop where that cannot run.

One head trainer: on one device in float32, ``fit_head`` trains the head as a group of one trial of
``headstart.pipeline.training.head_group.train_group``, the sweep's trainer, and takes the kept
weights into the compiled model (``KeptHead.restore``); a sweep of one configuration and
``train-head`` with it give the same weights bit for bit (tests/test_sweep_best.py). The batches
are the seeded plan of ``headstart.pipeline.training.head_data`` whether the features sit in memory
or stream from HDF5, the validation split is predicted a chunk at a time, and early stopping is the
project's one rule (``headstart.pipeline.training.early_stopping``): the monitored column, or the
training loss without a validation split (diagnose's fold heads).

The narrow adapter kept: with more than one replica (``--strategy``) or under ``--mixed-precision``
the batched step does not apply (its stacked variables are float32 and unreplicated), so an epoch
runs ``headstart.pipeline.distribute.loop.train_epoch`` on the compiled model over the same planned
batches (split across replicas), all epochs from one distributed iterator, with the same early
stopping and restored best weights.

``--class-weight`` arrives as per-row sample weights of the training split (the batch loss is
Σ w·l / B, the accuracy stays unweighted). ``--monitor`` other than val_loss adds its validation
measure to the history as ``val_<measure>``; early stopping watches it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.training.early_stopping import EarlyStopping, epoch_limit
from headstart.pipeline.training.finite_loss import check_finite_losses
from headstart.pipeline.training.head_data import FeatureRows
from headstart.pipeline.training.monitor import effective_monitor, history_key, validation_measure


@dataclass
class HeadFit:
    """What the epoch loop did.

    Attributes:
        history: "loss", "accuracy" (and "val_loss", "val_accuracy" with validation), per epoch.
        best_epoch: 1-based epoch whose weights the model holds on return.
        epoch_seconds: wall seconds per epoch, validation included.
        monitor: the history key early stopping watched: "val_loss", "loss" or "val_<measure>".
    """

    history: dict[str, list[float]]
    best_epoch: int
    epoch_seconds: list[float]
    monitor: str


@dataclass
class KeptHead:
    """A head trained elsewhere, taken as it is: a sweep trial's kept weights and its course.

    Attributes:
        weights: the Dense weights by layer name ("hidden": [kernel (C, H), bias (H,)], "logits":
            [kernel (C|H, L), bias (L,)]), as the sweep's batched trainer keeps them.
        fit: the HeadFit that trained them (history, best epoch, seconds, monitor).
    """

    weights: dict[str, list[np.ndarray]]
    fit: HeadFit

    def restore(self, model: Any) -> HeadFit:
        """Sets ``model``'s Dense layers to the kept weights; returns the fit that made them."""
        for layer, weights in self.weights.items():
            model.get_layer(layer).set_weights(weights)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # Its slots as a trained model's: head.keras then loads without Keras's warning that
            # the saved optimizer has fewer variables (the moments are zero: the trainer's are not kept).
            optimizer.build(model.trainable_variables)
        return self.fit


def fit_head(model: Any, train: FeatureRows, train_labels: np.ndarray, val: tuple | None, *, config: Any,
             num_classes: int, reporter: Reporter = QUIET, replicas: int = 1, callbacks: Sequence[Any] = (),
             multi_label: bool = False, sample_weights: np.ndarray | None = None,
             initial_seed: int | None = None) -> HeadFit:
    """Trains the head with early stopping (train-head, and diagnose's fold heads).

    Args:
        model: a compiled head (``build_compiled_head``); it holds the kept weights on return.
        train: the training rows; ``train_labels`` (N,) their int class indices, or (N, C)
            multi-hot rows for a multi-label head.
        val: (FeatureRows, labels) watched by early stopping, or None to watch the training loss.
            A multi-label head's early stopping watches validation mAP unless ``config.monitor``
            names another measure (``monitor.effective_monitor``).
        config: a ``HeadConfig``: the head's recipe, epochs (0: no maximum), batch size, patience,
            seed (initial weights, batch plan, dropout) and monitor.
        num_classes: number of classes. reporter: gets one line per epoch (default: none).
        replicas: devices the batches are split over (1 without tf.distribute).
        callbacks: Keras callbacks (e.g. ``keras.callbacks.TensorBoard``): train begin/end and
            epoch begin/end with the epoch's logs. Batch hooks are called only by the Keras loop
            (the batched step is one compiled call per batch with no Keras model behind it).
        multi_label: the head is multi-label (sigmoid per class).
        sample_weights: float32 (N,), each training row's loss weight (``--class-weight``), or None.
        initial_seed: the seed of the initial weights when not ``config.seed`` (diagnose's folds).

    Returns:
        A HeadFit; the best epoch's weights are in ``model``.
    """
    import keras

    hooks = keras.callbacks.CallbackList(list(callbacks), model=model)
    hooks.on_train_begin()
    if replicas > 1 or model.dtype_policy.compute_dtype != "float32":
        fit = _keras_fit(model, train, train_labels, val, config=config, num_classes=num_classes, reporter=reporter,
                         replicas=replicas, hooks=hooks, multi_label=multi_label, sample_weights=sample_weights)
    else:
        fit = _group_fit(model, train, train_labels, val, config=config, num_classes=num_classes, reporter=reporter,
                         hooks=hooks, multi_label=multi_label, sample_weights=sample_weights,
                         initial_seed=initial_seed)
    hooks.on_train_end()
    return fit


def _group_fit(model: Any, train: FeatureRows, train_labels: np.ndarray, val: tuple | None, *, config: Any,
               num_classes: int, reporter: Reporter, hooks: Any, multi_label: bool,
               sample_weights: np.ndarray | None, initial_seed: int | None) -> HeadFit:
    """The head trained as a one-trial group of the sweep's batched trainer, its kept weights put in ``model``."""
    from headstart.pipeline.model.head import adapt_head
    from headstart.pipeline.training.head_group import train_group
    from headstart.pipeline.training.head_params import SweepCache, TrialParams

    rows, labels = {"train": train}, {"train": np.asarray(train_labels)}
    if val is not None:
        rows["validation"], labels["validation"] = val[0], np.asarray(val[1])
    # The class names only label the trial's own validation record, which the caller measures again.
    cache = SweepCache(name="train-head", path="", rows=rows, labels=labels,
                       class_names=[str(k) for k in range(num_classes)], feature_shape=tuple(train.feature_shape),
                       views=0, multi_label=multi_label)

    def on_log(epoch: int, logs: dict[int, dict[str, float]], seconds: float) -> None:
        hooks.on_epoch_begin(epoch - 1)
        hooks.on_epoch_end(epoch - 1, dict(logs[0]))
        reporter.line(_epoch_line(epoch, config.epochs, logs[0], seconds))
        check_finite_losses("train-head", epoch, logs[0])

    monitor = getattr(config, "monitor", "val_loss")
    # views=False: ``train`` already holds the rows to train on, augmented views or not.
    (run,) = train_group(cache, [TrialParams.from_head_config(config, cache.name, views=False)], seed=config.seed,
                         epochs=config.epochs, patience=config.patience, monitor=monitor,
                         sample_weights=sample_weights, on_log=on_log,
                         jit_compile=bool(getattr(config, "jit_compile", False))
                         and not getattr(config, "deterministic", False),
                         trial_seeds=None if initial_seed is None else [initial_seed])
    if run.note:
        reporter.line(run.note)
    # The group standardised with the statistics of these rows: the model's layer takes the same.
    adapt_head(model, (x for x, _ in train.eval_batches(4096)))
    watched = history_key(effective_monitor(monitor, multi_label), True) if val is not None else "loss"
    return KeptHead(run.weights, HeadFit(run.history, run.best_epoch, run.epoch_seconds, watched)).restore(model)


def _keras_fit(model: Any, train: FeatureRows, train_labels: np.ndarray, val: tuple | None, *, config: Any,
               num_classes: int, reporter: Reporter, replicas: int, hooks: Any, multi_label: bool,
               sample_weights: np.ndarray | None) -> HeadFit:
    """The compiled model trained by ``distribute.loop.train_epoch`` (several replicas, or mixed precision)."""
    from headstart.pipeline.model.head import head_labels

    targets = head_labels(train_labels, num_classes, multi_label)
    monitor = effective_monitor(getattr(config, "monitor", "val_loss"), multi_label)
    stopping = EarlyStopping(history_key(monitor, val is not None), config.patience)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history.update({"val_loss": [], "val_accuracy": [], stopping.monitor: []})
    best_weights, seconds = None, []
    feed = _distributed_feed(model, train, targets, config.seed, config.epochs, config.batch_size, sample_weights)
    for epoch in range(epoch_limit(config.epochs)):
        start = time.perf_counter()
        hooks.on_epoch_begin(epoch)
        logs = _train_epoch(model, feed, num_classes)
        if val is not None:
            logs.update(_validate(model, val, monitor, num_classes=num_classes, batch_size=config.batch_size,
                                  replicas=replicas, multi_label=multi_label))
        seconds.append(_end_epoch(epoch, config.epochs, logs, history, start, hooks, reporter))
        if stopping.update(epoch + 1, history[stopping.monitor][-1]):
            best_weights = model.get_weights()
        elif stopping.exhausted:
            reporter.line(stopping.stop_message())
            break
    if best_weights is None:
        # Every epoch diverged (NaN/inf); keep the last weights and say so rather than hide it.
        reporter.line(stopping.never_finite_message())
        return HeadFit(history, len(seconds), seconds, stopping.monitor)
    model.set_weights(best_weights)
    return HeadFit(history, stopping.best_epoch, seconds, stopping.monitor)


def _end_epoch(epoch: int, epochs: int, logs: dict, history: dict, start: float, hooks: Any,
               reporter: Reporter) -> float:
    """Records the epoch (history, callbacks, its log line) and stops on a non-finite loss; returns its seconds."""
    for key, value in logs.items():
        history[key].append(value)
    seconds = time.perf_counter() - start
    row = {key: values[-1] for key, values in history.items()}
    hooks.on_epoch_end(epoch, row)
    reporter.line(_epoch_line(epoch + 1, epochs, row, seconds))
    check_finite_losses("train-head", epoch + 1, row)
    return seconds


def _validate(model: Any, val: tuple, monitor: str, *, num_classes: int, batch_size: int, replicas: int,
              multi_label: bool) -> dict[str, float]:
    """One epoch's val_loss and val_accuracy, and the monitored measure ("val_<measure>") if any.

    Every worker computes the same numbers from the same synchronised weights, so all of them take
    the same early-stopping decision and run the same number of epochs.
    """
    logs = {}
    logs["val_loss"], logs["val_accuracy"], logits = evaluate_head(
        model, *val, num_classes=num_classes, batch_size=batch_size, replicas=replicas, multi_label=multi_label)
    if monitor != "val_loss":
        logs[f"val_{monitor}"] = validation_measure(monitor, val[1], logits, num_classes)
    return logs


def evaluate_head(model: Any, rows: FeatureRows, labels: np.ndarray, *, num_classes: int, batch_size: int,
                  replicas: int = 1, multi_label: bool = False) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and logits of ``model`` on one split, in stored order.

    Computed from the concatenated logits with the head's own loss, so the number equals what
    ``model.evaluate`` reports (the mean over rows) and the logits serve the confusion matrix.
    For a multi-label head the accuracy is per label at probability 0.5, as its training metric.
    """
    from headstart.pipeline.distribute.loop import predict_logits
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.report.split_measures import split_loss

    chunks = [np.asarray(predict_logits(model, x, replicas)) for x, _ in rows.eval_batches(batch_size)]
    logits = np.concatenate(chunks, axis=0)
    loss = split_loss(labels, logits, num_classes, multi_label)
    accuracy = float(np.mean(predict_classes(logits, num_classes, multi_label) == labels))
    return loss, accuracy, logits


def _train_epoch(model: Any, feed: Any, num_classes: int) -> dict[str, float]:
    """One epoch over the planned batches of ``feed``; returns its mean "loss" and "accuracy"."""
    from headstart.pipeline.distribute.loop import train_epoch

    logs = train_epoch(model, feed, num_classes)
    return {"loss": logs["loss"], "accuracy": logs["accuracy"]}


def _distributed_feed(model: Any, train: FeatureRows, targets: np.ndarray, seed: int, epochs: int,
                      batch_size: int, sample_weights: np.ndarray | None = None) -> Any:
    """Every epoch's planned batches back to back, served from one distributed iterator.

    One iterator for the whole fit, because making and ending one per epoch costs more than a
    head's epoch (see ``headstart.pipeline.distribute.loop.EpochFeed``). Plans do not depend on
    training, so reading ahead into the next epoch changes nothing.
    """
    from headstart.pipeline.distribute.loop import EpochFeed, planned_dataset

    epochs = epoch_limit(epochs)  # 0: no maximum (the batches are planned lazily)

    def batches():
        for epoch in range(epochs):
            for x, rows in train.train_batches(train.plan(seed, epoch), batch_size):
                yield (x, targets[rows]) if sample_weights is None else (x, targets[rows], sample_weights[rows])

    steps = -(-train.n // batch_size)
    data = planned_dataset(batches, (train.feature_shape, np.float32), (targets.shape[1:], targets.dtype),
                           steps * epochs, weighted=sample_weights is not None)
    return EpochFeed(model.distribute_strategy, data, steps=steps, repeat=False)


def _epoch_line(epoch: int, epochs: int, row: dict[str, float], seconds: float) -> str:
    """"epoch 3/20  loss 0.4  accuracy 0.9  val_loss …  0.12 s": one epoch's history row."""
    parts = [f"epoch {epoch}/{epochs}" if epochs > 0 else f"epoch {epoch}"]  # 0: no maximum
    parts += [f"{key} {value:.4f}" for key, value in row.items()]
    parts.append(f"{seconds:.2f} s")
    return "  ".join(parts)
