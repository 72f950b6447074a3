"""Many heads trained at once on one cache: one compiled step updates every trial of a group.

As DINOv2's linear evaluation (``dinov2/eval/linear.py``) trains its whole grid of linear
classifiers on the same features in one pass, the trials of a group (same cache, batch size and
views, hence the same batches) share each batch. ``BatchedHeads`` holds one ``HeadStack`` per
architecture (``headstart.pipeline.sweep.stacks``), each on a trial axis of free length, and its
step is traced once per cache for the whole sweep: a group is loaded into the stacks, a trial
that stops leaves them by a gather, and nothing is traced again.

What each trial computes is what ``train-head`` computes for the same configuration: initial
weights drawn by ``build_head`` after ``keras.utils.set_random_seed(seed)``, the head's own pooling
and normalisation layers, Keras's Adam and decoupled weight decay formulas, Keras's loss formulas,
the batch plan of ``FeatureRows.plan``, and train-head's early-stopping rule per trial (the one
``training.early_stopping.EarlyStopping`` on val_loss: strictly lower, patience, best weights kept). Only the dropout masks come from another random
stream (one draw per step shared by the group: see ``HeadStack.logits``); without dropout a trial
matches train-head to float rounding (tests/test_sweep.py states the tolerance). A stopped or
pruned trial is reported at once with its best epoch's weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from headstart.pipeline.sweep.caches import SweepCache
from headstart.pipeline.training.early_stopping import EarlyStopping
from headstart.pipeline.sweep.space import TrialParams
from headstart.pipeline.sweep.stacks import HeadStack, stack_accuracy, stack_loss


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
        weights: the best epoch's Dense weights by layer name ("hidden", "logits").
    """

    history: dict[str, list[float]]
    best_epoch: int
    stopped: str
    validation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    weights: dict = field(default_factory=dict)

    @property
    def epochs_run(self) -> int:
        return len(self.history["val_loss"])


def _initial_weights(params: TrialParams, cache: SweepCache, seed: int, memo: dict) -> dict[str, list[np.ndarray]]:
    """The Dense weights ``train-head --seed seed`` starts this trial's head from, by layer name."""
    import keras

    from headstart.pipeline.model.head import build_head

    # A dropout rate above 0 gives the Dropout layers a SeedGenerator, which draws from the global
    # generator before the Dense initialisers do: it changes their draws, its value does not.
    key = (params.head_kind, params.hidden_units, params.normalize, params.dropout > 0)
    if key not in memo:
        # The same calls in the same order as train-head (seed, then the builder).
        keras.utils.set_random_seed(seed)
        head = build_head(cache.feature_shape, len(cache.class_names), dropout=params.dropout,
                          kind=params.head_kind, hidden_units=params.hidden_units or 1, normalize=params.normalize)
        memo[key] = {name: head.get_layer(name).get_weights() for name in ("hidden", "logits")
                     if name in [layer.name for layer in head.layers]}
    return memo[key]


def _normalizer(cache: SweepCache, name: str) -> Any:
    """The head's own layers before dropout (pooling, normalise) for ``name``, adapted, as a model."""
    import keras

    from headstart.pipeline.model.head import adapt_head, build_head

    head = build_head(cache.feature_shape, len(cache.class_names), normalize=name)
    adapt_head(head, (x for x, _ in cache.rows["train"].eval_batches(4096)))
    return keras.Model(head.input, head.get_layer("dropout").input)


def _architecture(params: TrialParams) -> tuple[str, int | None]:
    return params.head_kind, params.hidden_units if params.head_kind == "hidden" else None


class BatchedHeads:
    """Every head architecture of a sweep on one cache, and one compiled train step / predict over them.

    Kept for the whole sweep: each group's trials are loaded into the stacks (initial weights drawn
    once per architecture and normalisation), finished trials are dropped as they stop, and the
    step is traced once per cache, not once per group or per change of its members. A stack no
    trial of the group uses is empty and costs nothing.

    Args:
        cache: the cache.
        seed: the sweep's seed: every head starts as ``train-head --seed seed`` would.
        jit_compile: compile the step with XLA (worth it on a GPU; recompiles per group shape).
    """

    def __init__(self, cache: SweepCache, seed: int, jit_compile: bool = False) -> None:
        import tensorflow as tf

        self.cache, self.seed, self.jit_compile = cache, seed, jit_compile
        self.num_classes = len(cache.class_names)
        self.stacks: dict[tuple, HeadStack] = {}
        self.norms: list[str] = []
        self.normalizers: list[Any] = []
        self.order: list[int] = []  # stacked position → trial index
        self._memo: dict = {}
        self.step_count = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._specs = (tf.TensorSpec((None, *cache.feature_shape), tf.float32),
                       tf.TensorSpec((None, 1) if self.num_classes == 2 else (None,), tf.float32))
        self.train_step = self.predict = None

    def load(self, trials: Sequence[TrialParams]) -> None:
        """Makes ``trials`` the stacked members, at their initial weights and step 0."""
        initial = [_initial_weights(t, self.cache, self.seed, self._memo) for t in trials]
        grown = False
        for t, weights in zip(trials, initial):
            if t.normalize not in self.norms:
                self.norms.append(t.normalize)
                self.normalizers.append(_normalizer(self.cache, t.normalize))
                grown = True
            if _architecture(t) not in self.stacks:
                self.stacks[_architecture(t)] = HeadStack({layer: [w.shape for w in ws] for layer, ws in weights.items()})
                grown = True
        for arch, stack in self.stacks.items():
            stack.load([i for i, t in enumerate(trials) if _architecture(t) == arch], trials, initial, self.norms)
        self.order = [i for s in self.stacks.values() for i in s.members]
        self.step_count.assign(0)
        if grown or self.train_step is None:
            self._trace()

    def _trace(self) -> None:
        import tensorflow as tf

        spec_x, spec_y = self._specs
        # Free batch dimension: the epoch's short last batch reuses the one trace.
        self.train_step = tf.function(self._train_step, jit_compile=self.jit_compile,
                                      input_signature=[spec_x, spec_y], autograph=False)
        self.predict = tf.function(self._predict, jit_compile=self.jit_compile, input_signature=[spec_x],
                                   autograph=False)

    def keep(self, trials: set[int]) -> None:
        """Drops every member not in ``trials`` from the stacks (no new trace)."""
        for stack in self.stacks.values():
            positions = [p for p, i in enumerate(stack.members) if i in trials]
            if len(positions) < len(stack.members):
                stack.keep(positions)
        self.order = [i for s in self.stacks.values() for i in s.members]

    def _features(self, x: Any) -> list[Any]:
        import tensorflow as tf

        variants = tf.stack([norm(x, training=False) for norm in self.normalizers])  # (V, B, C)
        return [tf.gather(variants, s.norm_index) for s in self.stacks.values()]     # (T_s, B, C)

    def _train_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        self.step_count.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.step_count])
        features = self._features(x)
        noise = (tf.random.stateless_uniform(tf.shape(features[0])[1:], seed), seed)  # one draw for every stack
        stacks = list(self.stacks.values())
        with tf.GradientTape() as tape:
            tape.watch([s.vars for s in stacks])
            logits = [s.logits(f, noise) for s, f in zip(stacks, features)]
            losses = [stack_loss(z, y, s.smoothing, self.num_classes) for s, z in zip(stacks, logits)]
            # Members share no weight: the gradient of the sum wrt one member's is its own loss's.
            total = tf.add_n([tf.reduce_sum(loss) for loss in losses])
        grads = tape.gradient(total, [s.vars for s in stacks], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        for s, g in zip(stacks, grads):
            s.apply(g, self.step_count)
        accuracy = [stack_accuracy(z, y, self.num_classes) for z in logits]
        return tf.concat(losses, 0), tf.concat(accuracy, 0)

    def _predict(self, x: Any) -> Any:
        import tensorflow as tf

        return tf.concat([s.logits(f, None) for s, f in zip(self.stacks.values(), self._features(x))], 0)

    def weights_at(self, position: int) -> dict[str, list[np.ndarray]]:
        """The Dense weights of the member at stacked ``position`` (see ``order``)."""
        for s in self.stacks.values():
            if position < len(s.members):
                return s.weights_of(position)
            position -= len(s.members)
        raise IndexError(position)


class _Member:
    """One trial's history and early stopping: train-head's rule (``training.early_stopping``) on
    the validation loss, the best epoch's weights and validation logits kept."""

    def __init__(self, patience: int) -> None:
        self.history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        self.stopping = EarlyStopping("val_loss", patience)
        self.best_weights: tuple[dict, np.ndarray] | None = None
        self.stopped: str | None = None

    @property
    def best_epoch(self) -> int:
        return self.stopping.best_epoch or 0

    @property
    def best_value(self) -> float:
        return math.inf if self.stopping.best_value is None else self.stopping.best_value


def train_group(cache: SweepCache, trials: Sequence[TrialParams], *, seed: int, epochs: int, patience: int,
                on_epoch: Callable[[int, dict[int, float]], set[int]] | None = None,
                on_done: Callable[[int, TrialRun], None] | None = None,
                jit_compile: bool = False, heads: BatchedHeads | None = None) -> list[TrialRun]:
    """Trains ``trials`` together; all must share ``batch_size`` and ``views`` (one batch plan).

    Args:
        cache: the cache the trials train on.
        trials: the group's parameters.
        seed: the sweep's seed: every head starts as ``train-head --seed seed`` would.
        epochs: most epochs per trial.
        patience: epochs without a lower val_loss before a trial stops.
        on_epoch: called once per epoch as ``on_epoch(epoch (1-based), {index: val_loss})`` for the
            trials still training; returns the indices to prune (one call, so the pruner reads the
            study once per epoch rather than once per trial).
        on_done: called as ``on_done(index, run)`` as soon as a trial stops.
        jit_compile: compile the step with XLA (worth it on a GPU).
        heads: the sweep's BatchedHeads for this cache (its traces serve every group); None
            makes one for this group.

    Returns:
        One TrialRun per trial, in order.
    """
    from headstart.pipeline.model.head import head_labels

    if len({(t.batch_size, t.views and bool(cache.views)) for t in trials}) > 1:
        raise ValueError("a group's trials must share batch_size and views")
    start = time.perf_counter()
    group = heads or BatchedHeads(cache, seed, jit_compile)
    group.load(trials)
    members = [_Member(patience) for _ in trials]
    train = cache.train_rows(trials[0].views)
    targets = head_labels(cache.labels["train"], len(cache.class_names)).astype(np.float32)
    val_x = np.concatenate([x for x, _ in cache.rows["validation"].eval_batches(1 << 16)])
    runs: list[TrialRun | None] = [None] * len(members)
    for epoch in range(epochs):
        active = {i for i in group.order if members[i].stopped is None}
        if len(active) < len(group.order):
            group.keep(active)  # finished trials leave the stacks: a gather, no new trace
        sums = _train_epoch(group, train, targets, seed, epoch, trials[0].batch_size)
        logits = group.predict(val_x).numpy()
        val = _val_loss_accuracy(logits, cache)
        measured = {}
        for position, i in enumerate(group.order):
            if members[i].stopped is None:
                _record_epoch(members[i], sums[:, position] / train.n, (val[0][position], val[1][position]),
                              logits[position], epoch + 1, lambda p=position: group.weights_at(p))
                measured[i] = val[0][position]
        pruned = on_epoch(epoch + 1, measured) if on_epoch is not None else set()
        for position, i in enumerate(group.order):
            if i in measured and _finished(members[i], i in pruned, epoch + 1 == epochs, logits[position],
                                           lambda p=position: group.weights_at(p)):
                runs[i] = _finish(members[i], cache, (time.perf_counter() - start) / len(members))
                if on_done is not None:
                    on_done(i, runs[i])
        if all(m.stopped is not None for m in members):
            break
    return runs  # type: ignore[return-value]


def _train_epoch(group: BatchedHeads, train: Any, targets: np.ndarray, seed: int, epoch: int,
                 batch_size: int) -> np.ndarray:
    """One epoch of every member over the planned batches; (2, T) sums of loss and accuracy × rows."""
    sums = np.zeros((2, len(group.order)))
    for x, rows in train.train_batches(train.plan(seed, epoch), batch_size):
        losses, accuracies = group.train_step(x, targets[rows])
        sums += np.stack([losses.numpy(), accuracies.numpy()]) * len(rows)
    return sums


def _finished(member: _Member, pruned: bool, last: bool, logits: np.ndarray, weights: Callable[[], dict]) -> bool:
    """Whether the trial stops after this epoch (early stopping, the pruner, or its last epoch)."""
    if member.stopped is None and (pruned or last):
        member.stopped = "pruned" if pruned else "epochs"
    if member.stopped is not None and member.best_weights is None:
        # Never finite: keep the last weights, as train-head does.
        member.stopping.best_epoch, member.stopping.best_value = len(member.history["val_loss"]), \
            member.history["val_loss"][-1]
        member.best_weights = (weights(), logits)
    return member.stopped is not None


def _record_epoch(member: _Member, train_means: np.ndarray, val: tuple[float, float], val_logits: np.ndarray,
                  epoch: int, weights: Callable[[], dict]) -> None:
    """Appends one epoch to the trial's history and applies train-head's early-stopping rule."""
    val_loss, val_acc = float(val[0]), float(val[1])
    history = member.history
    history["loss"].append(float(train_means[0]))
    history["accuracy"].append(float(train_means[1]))
    history["val_loss"].append(val_loss)
    history["val_accuracy"].append(val_acc)
    if member.stopping.update(epoch, val_loss):
        member.best_weights = (weights(), val_logits)
    elif member.stopping.exhausted:
        member.stopped = "early"


def _val_loss_accuracy(logits: np.ndarray, cache: SweepCache) -> tuple[np.ndarray, np.ndarray]:
    """Validation loss and accuracy of every member at once: logits (T, N, L) → two (T,) arrays.

    The unsmoothed loss, as train-head's _evaluate computes it (Keras's cross-entropy from logits,
    here in float64: equal to float32 rounding), so trials compare on one scale.
    """
    from headstart.pipeline.model.head import predict_classes

    num_classes = len(cache.class_names)
    labels = cache.labels["validation"]
    z = logits.astype(np.float64).reshape(len(logits), len(labels), -1)
    if num_classes == 2:
        y = labels.astype(np.float64)[None, :, None]
        per = np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))
        loss = per.mean(axis=(1, 2))
    else:
        top = z.max(axis=-1, keepdims=True)
        log_norm = top[..., 0] + np.log(np.exp(z - top).sum(axis=-1))
        loss = (log_norm - np.take_along_axis(z, labels[None, :, None], axis=-1)[..., 0]).mean(axis=1)
    accuracy = np.array([np.mean(predict_classes(member, num_classes) == labels) for member in logits])
    return loss, accuracy


def _finish(member: _Member, cache: SweepCache, seconds: float) -> TrialRun:
    """The trial's record: history, best epoch, and validation measures of its best weights."""
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.report.metrics import classification_metrics

    weights, logits = member.best_weights
    labels = cache.labels["validation"]
    validation = classification_metrics(labels, predict_classes(logits, len(cache.class_names)), cache.class_names)
    validation["loss"] = float(member.best_value)
    return TrialRun(history=member.history, best_epoch=member.best_epoch, stopped=member.stopped or "epochs",
                    validation=validation, seconds=seconds, weights=weights)
