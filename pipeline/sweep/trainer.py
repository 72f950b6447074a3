"""Many heads trained at once on one cache: one compiled step updates every trial of a group.

As DINOv2's linear evaluation (``dinov2/eval/linear.py``) trains its whole grid of linear
classifiers on the same features in one pass, the trials of a group (same cache, batch size and
views, hence the same batches) share each batch: one ``tf.function`` runs every head on it and
applies each head's own optimizer. Each head is what ``train-head`` would build and train for the
same configuration — ``build_head`` after ``keras.utils.set_random_seed(seed)``, Adam through
``head_optimizer``, the loss of ``head_training_loss``, the batch plan of ``FeatureRows.plan`` — so a
trial trained here matches the same configuration trained alone (tests/test_sweep.py states the
tolerance). Early stopping is ``train-head``'s rule per trial (val_loss strictly lower, patience,
best weights restored); a stopped or pruned trial leaves the step when the group is recompiled,
which happens once the active trials fall to half of those in the step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from headstart.pipeline.sweep.caches import SweepCache
from headstart.pipeline.sweep.space import TrialParams


@dataclass
class TrialRun:
    """What one trial of a group produced.

    Attributes:
        history: per epoch ``loss, accuracy, val_loss, val_accuracy`` (train-head's history).
        best_epoch: 1-based epoch whose weights were kept.
        stopped: "early" (patience ran out), "pruned" (the pruner stopped it) or "epochs".
        validation: classification metrics of the kept weights on the validation split, plus
            "loss", "balanced_accuracy" and "macro_f1".
        seconds: this trial's share of the group's wall time.
        head: the trained head (best weights), for saving the winner.
    """

    history: dict[str, list[float]]
    best_epoch: int
    stopped: str
    validation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    head: Any = None

    @property
    def epochs_run(self) -> int:
        return len(self.history["val_loss"])


class _Member:
    """One trial's head, optimizer, loss and early-stopping state."""

    def __init__(self, params: TrialParams, cache: SweepCache, seed: int) -> None:
        import keras

        from headstart.pipeline.model.head import (adapt_head, build_head, head_optimizer,
                                                   head_training_loss)

        num_classes = len(cache.class_names)
        # The same calls in the same order as train-head, so the initial weights and the dropout
        # seed generators are the ones a train-head run with this seed starts from.
        keras.utils.set_random_seed(seed)
        config = params.head_config()
        self.head = build_head(cache.feature_shape, num_classes, dropout=config.dropout, kind=config.head_kind,
                               hidden_units=config.hidden_units, normalize=config.normalize)
        adapt_head(self.head, (x for x, _ in cache.rows["train"].eval_batches(4096)))
        self.optimizer = head_optimizer(params.lr, params.weight_decay)
        self.optimizer.build(self.head.trainable_variables)
        self.loss = head_training_loss(num_classes, params.label_smoothing)
        self.history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        self.best_value, self.best_epoch, self.best_weights, self.wait = math.inf, 0, None, 0
        self.stopped: str | None = None


def _compile_step(members: Sequence[_Member], num_classes: int, jit_compile: bool) -> tuple[Any, Any]:
    """One train step and one predict function over ``members``' heads.

    Returns:
        (train_step(x (B, *F), y) → (losses (T,), accuracies (T,)),
         predict(x (N, *F)) → logits (T, N, L)).
    """
    import tensorflow as tf

    heads = [m.head for m in members]
    variables = [m.head.trainable_variables for m in members]

    def accuracy(y: Any, logits: Any) -> Any:
        if num_classes == 2:
            return tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits > 0, y.dtype), y), tf.float32))
        hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.cast(y, tf.int64))
        return tf.reduce_mean(tf.cast(hit, tf.float32))

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def train_step(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            logits = [head(x, training=True) for head in heads]
            losses = [m.loss(y, z) for m, z in zip(members, logits)]
            # Heads share no variable: the gradient of the sum wrt one head is that head's own.
            total = tf.add_n(losses)
        grads = tape.gradient(total, [v for vs in variables for v in vs])
        start = 0
        for member, vs in zip(members, variables):
            member.optimizer.apply_gradients(zip(grads[start:start + len(vs)], vs))
            start += len(vs)
        return tf.stack(losses), tf.stack([accuracy(y, z) for z in logits])

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(x: Any) -> Any:
        return tf.stack([head(x, training=False) for head in heads])

    return train_step, predict


def train_group(cache: SweepCache, trials: Sequence[TrialParams], *, seed: int, epochs: int, patience: int,
                on_epoch: Callable[[int, int, float], bool] | None = None,
                on_done: Callable[[int, TrialRun], None] | None = None,
                jit_compile: bool = False) -> list[TrialRun]:
    """Trains ``trials`` together; all must share ``batch_size`` and ``views`` (one batch plan).

    Args:
        cache: the cache the trials train on.
        trials: the group's parameters.
        seed: the sweep's seed: every head starts as ``train-head --seed seed`` would.
        epochs: most epochs per trial.
        patience: epochs without a lower val_loss before a trial stops.
        on_epoch: called as ``on_epoch(index, epoch (1-based), val_loss)`` after each epoch of each
            active trial; returning True prunes that trial.
        on_done: called as ``on_done(index, run)`` as soon as a trial stops.
        jit_compile: compile the step with XLA (worth it on a GPU).

    Returns:
        One TrialRun per trial, in order.
    """
    from headstart.pipeline.model.head import head_labels

    if len({(t.batch_size, t.views and bool(cache.views)) for t in trials}) > 1:
        raise ValueError("a group's trials must share batch_size and views")
    num_classes = len(cache.class_names)
    start = time.perf_counter()
    members = [_Member(t, cache, seed) for t in trials]
    train = cache.train_rows(trials[0].views)
    targets = head_labels(cache.labels["train"], num_classes)
    val_x = np.concatenate([x for x, _ in cache.rows["validation"].eval_batches(1 << 16)])
    runs: list[TrialRun | None] = [None] * len(members)
    in_step = list(range(len(members)))
    step, predict = _compile_step(members, num_classes, jit_compile)
    for epoch in range(epochs):
        active = [i for i in in_step if members[i].stopped is None]
        if len(active) * 2 <= len(in_step) and active:
            # Half the step's heads are done: a smaller step costs one trace, saves the rest.
            in_step = active
            step, predict = _compile_step([members[i] for i in in_step], num_classes, jit_compile)
        sums = np.zeros((2, len(in_step)))
        for x, rows in train.train_batches(train.plan(seed, epoch), trials[0].batch_size):
            losses, accuracies = step(x, targets[rows])
            sums += np.stack([losses.numpy(), accuracies.numpy()]) * len(rows)
        logits = predict(val_x).numpy()
        for j, i in enumerate(in_step):
            member = members[i]
            if member.stopped is not None:
                continue
            _record_epoch(member, sums[:, j] / train.n, logits[j], cache, epoch + 1, patience)
            if on_epoch is not None and member.stopped is None and on_epoch(i, epoch + 1, member.history["val_loss"][-1]):
                member.stopped = "pruned"
            if member.stopped is None and epoch + 1 == epochs:
                member.stopped = "epochs"
            if member.stopped is not None:
                runs[i] = _finish(member, cache, val_x, (time.perf_counter() - start) / len(members))
                if on_done is not None:
                    on_done(i, runs[i])
        if all(m.stopped is not None for m in members):
            break
    return runs  # type: ignore[return-value]


def _record_epoch(member: _Member, train_means: np.ndarray, val_logits: np.ndarray, cache: SweepCache,
                  epoch: int, patience: int) -> None:
    """Appends one epoch to the trial's history and applies train-head's early-stopping rule."""
    val_loss, val_acc = _val_loss_accuracy(val_logits, cache)
    history = member.history
    history["loss"].append(float(train_means[0]))
    history["accuracy"].append(float(train_means[1]))
    history["val_loss"].append(val_loss)
    history["val_accuracy"].append(val_acc)
    if math.isfinite(val_loss) and val_loss < member.best_value:
        member.best_value, member.best_epoch, member.wait = val_loss, epoch, 0
        member.best_weights = member.head.get_weights()
    else:
        member.wait += 1
        if member.wait >= patience and member.best_weights is not None:
            member.stopped = "early"


def _val_loss_accuracy(logits: np.ndarray, cache: SweepCache) -> tuple[float, float]:
    # The unsmoothed loss, as train-head's _evaluate computes it: trials compare on one scale.
    from headstart.pipeline.model.head import head_labels, head_loss_and_metrics, predict_classes

    num_classes = len(cache.class_names)
    labels = cache.labels["validation"]
    loss_fn, _ = head_loss_and_metrics(num_classes)
    loss = float(loss_fn(head_labels(labels, num_classes), logits))
    return loss, float(np.mean(predict_classes(logits, num_classes) == labels))


def _finish(member: _Member, cache: SweepCache, val_x: np.ndarray, seconds: float) -> TrialRun:
    """Restores the best weights and measures them on validation."""
    from headstart.pipeline.model.head import predict_classes, set_head_weights
    from headstart.pipeline.report.rundir import classification_metrics

    if member.best_weights is None:  # never finite: keep the last weights, as train-head does
        member.best_epoch = len(member.history["val_loss"])
    else:
        set_head_weights(member.head, member.best_weights)
    logits = np.asarray(member.head(val_x, training=False))
    labels = cache.labels["validation"]
    validation = classification_metrics(labels, predict_classes(logits, len(cache.class_names)), cache.class_names)
    per_class = list(validation["per_class"].values())
    recall = [c["recall"] for c in per_class]
    f1 = [2 * c["precision"] * c["recall"] / (c["precision"] + c["recall"]) if c["precision"] + c["recall"] else 0.0
          for c in per_class]
    validation.update(loss=_val_loss_accuracy(logits, cache)[0], balanced_accuracy=float(np.mean(recall)),
                      macro_f1=float(np.mean(f1)))
    run = TrialRun(history=member.history, best_epoch=member.best_epoch, stopped=member.stopped or "epochs",
                   validation=validation, seconds=seconds, head=member.head)
    member.best_weights = None  # the head holds them now; free the copy
    return run
