"""``train-head``'s epoch loop: the head trained on planned batches of cached features.

Why a hand-written epoch loop rather than ``model.fit``: the batches must be exactly the same
whether the features sit in memory or stream from HDF5, and for augmented caches each epoch draws
one view per image from a seeded plan. Feeding ``train_on_batch`` from
``headstart.pipeline.training.head_data`` keeps that in plain NumPy, with no generator adapter
reordering or prefetching across epochs. Early stopping is the project's one rule
(``headstart.pipeline.training.early_stopping``, Keras's ``EarlyStopping(restore_best_weights=True)``).

With more than one replica (``--strategy``, ``headstart.pipeline.distribute.strategy``) an epoch
instead runs ``headstart.pipeline.distribute.loop.train_epoch`` over the same planned batches, split
across the replicas (``train_on_batch`` would give each replica the whole batch), all epochs served
from one distributed iterator; early stopping and the restored best weights stay in this loop.

``--class-weight`` arrives as per-row sample weights of the training split: ``train_on_batch``'s
``sample_weight`` (the batch loss is Σ w·l / B, the accuracy stays unweighted), or a third element of
the distributed batches. ``--monitor`` other than val_loss adds its validation measure, computed from
the validation logits each epoch, to the history as ``val_<measure>``; early stopping watches it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

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
        return self.fit


def fit_head(model: Any, train: FeatureRows, train_labels: np.ndarray, val: tuple | None, *, config: Any,
             num_classes: int, log: Callable[[str], None], replicas: int = 1, callbacks: Sequence[Any] = (),
             multi_label: bool = False, sample_weights: np.ndarray | None = None) -> HeadFit:
    """The train-head epoch loop with early stopping (also the recipe of diagnose's fold heads).

    Args:
        model: a compiled head (``build_compiled_head``).
        train: the training rows; ``train_labels`` (N,) their int class indices, or (N, C)
            multi-hot rows for a multi-label head.
        val: (FeatureRows, labels) watched by early stopping, or None to watch the training loss.
            A multi-label head's early stopping watches validation mAP unless ``config.monitor``
            names another measure (``monitor.effective_monitor``).
        config: a ``HeadConfig``: epochs (0: no maximum), batch size, patience, seed and monitor.
        num_classes: number of classes. log: receives one line per epoch.
        replicas: devices the batches are split over (1 without tf.distribute).
        callbacks: Keras callbacks (e.g. ``keras.callbacks.TensorBoard``); they get the hooks ``fit``
            would call: train begin/end, epoch begin/end with the epoch's logs, train batch begin/end.
        multi_label: the head is multi-label (sigmoid per class).
        sample_weights: float32 (N,), each training row's loss weight (``--class-weight``), or None.

    Returns:
        A HeadFit; the best epoch's weights are restored into ``model``.
    """
    import keras

    from headstart.pipeline.model.head import head_labels

    targets = head_labels(train_labels, num_classes, multi_label)
    monitor = effective_monitor(getattr(config, "monitor", "val_loss"), multi_label)
    stopping = EarlyStopping(history_key(monitor, val is not None), config.patience)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history.update({"val_loss": [], "val_accuracy": [], stopping.monitor: []})
    hooks = keras.callbacks.CallbackList(list(callbacks), model=model)
    best_weights, seconds = None, []
    feed = (_distributed_feed(model, train, targets, config.seed, config.epochs, config.batch_size, sample_weights)
            if replicas > 1 else None)
    hooks.on_train_begin()
    for epoch in range(epoch_limit(config.epochs)):
        start = time.perf_counter()
        hooks.on_epoch_begin(epoch)
        logs = _train_epoch(model, feed, train, targets, seed=config.seed, epoch=epoch,
                            batch_size=config.batch_size, num_classes=num_classes, hooks=hooks,
                            sample_weights=sample_weights)
        if val is not None:
            logs.update(_validate(model, val, monitor, num_classes=num_classes, batch_size=config.batch_size,
                                  replicas=replicas, multi_label=multi_label))
        seconds.append(_end_epoch(epoch, config.epochs, logs, history, start, hooks, log))
        if stopping.update(epoch + 1, history[stopping.monitor][-1]):
            best_weights = model.get_weights()
        elif stopping.exhausted:
            log(stopping.stop_message())
            break
    hooks.on_train_end()
    if best_weights is None:
        # Every epoch diverged (NaN/inf); keep the last weights and say so rather than hide it.
        log(stopping.never_finite_message())
        return HeadFit(history, len(seconds), seconds, stopping.monitor)
    model.set_weights(best_weights)
    return HeadFit(history, stopping.best_epoch, seconds, stopping.monitor)


def _end_epoch(epoch: int, epochs: int, logs: dict, history: dict, start: float, hooks: Any,
               log: Callable[[str], None]) -> float:
    """Records the epoch (history, callbacks, its log line) and stops on a non-finite loss; returns its seconds."""
    for key, value in logs.items():
        history[key].append(value)
    seconds = time.perf_counter() - start
    hooks.on_epoch_end(epoch, {key: values[-1] for key, values in history.items()})
    log(_epoch_line(epoch + 1, epochs, history, seconds))
    check_finite_losses("train-head", epoch + 1, {k: v[-1] for k, v in history.items()})
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


def _train_epoch(model: Any, feed: Any, train: FeatureRows, targets: np.ndarray, *, seed: int, epoch: int,
                 batch_size: int, num_classes: int, hooks: Any,
                 sample_weights: np.ndarray | None = None) -> dict[str, float]:
    """One epoch over the planned batches; returns its mean "loss" and "accuracy"."""
    if feed is not None:
        from headstart.pipeline.distribute.loop import train_epoch

        logs = train_epoch(model, feed, num_classes)
        return {"loss": logs["loss"], "accuracy": logs["accuracy"]}
    loss_sum = acc_sum = 0.0
    for step, (x, rows) in enumerate(train.train_batches(train.plan(seed, epoch), batch_size)):
        hooks.on_train_batch_begin(step)
        weights = None if sample_weights is None else sample_weights[rows]
        logs = model.train_on_batch(x, targets[rows], sample_weight=weights, return_dict=True)
        hooks.on_train_batch_end(step, logs)
        # train_on_batch resets metrics per call; weight by batch size as fit's running means do.
        loss_sum += float(logs["loss"]) * len(rows)
        acc_sum += float(logs["accuracy"]) * len(rows)
    return {"loss": loss_sum / train.n, "accuracy": acc_sum / train.n}


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


def _epoch_line(epoch: int, epochs: int, history: dict, seconds: float) -> str:
    parts = [f"epoch {epoch}/{epochs}" if epochs > 0 else f"epoch {epoch}"]  # 0: no maximum
    for key in history:
        if history[key]:
            parts.append(f"{key} {history[key][-1]:.4f}")
    parts.append(f"{seconds:.2f} s")
    return "  ".join(parts)
