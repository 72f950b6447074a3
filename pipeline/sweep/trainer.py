"""Many heads trained at once on one cache: one compiled step updates every trial of a group.

As DINOv2's linear evaluation (``dinov2/eval/linear.py``) trains its whole grid of linear
classifiers on the same features in one pass, the trials of a group (same cache, batch size and
views, hence the same batches) share each batch. Heads of one architecture are stacked on a
leading trial axis — kernels (T, C, L), one batched matmul for all — and updated by a vectorised
copy of Keras's Adam whose learning rate, weight decay, dropout and label smoothing are (T,)
vectors, so one ``tf.function`` step costs about as many ops for 64 trials as for one.

What each trial computes is what ``train-head`` computes for the same configuration: initial
weights drawn by ``build_head`` after ``keras.utils.set_random_seed(seed)``, the head's own pooling
and normalisation layers, Keras's Adam and decoupled weight decay formulas, Keras's loss formulas,
the batch plan of ``FeatureRows.plan``, and train-head's early-stopping rule per trial (val_loss
strictly lower, patience, best weights kept). Only the dropout masks come from another random
stream; without dropout a trial matches train-head to float rounding (tests/test_sweep.py states
the tolerance). A stopped or pruned trial is reported at once with its best epoch's weights; it
leaves the stacks when half the stacked trials are done (one new trace for a smaller step).
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

    key = (params.head_kind, params.hidden_units, params.normalize)
    if key not in memo:
        # The same calls in the same order as train-head (seed, then the builder), so the draws
        # of the initialisers are the same; dropout's rate never changes what they draw.
        keras.utils.set_random_seed(seed)
        head = build_head(cache.feature_shape, len(cache.class_names), dropout=params.dropout,
                          kind=params.head_kind, hidden_units=params.hidden_units or 1, normalize=params.normalize)
        memo[key] = {name: head.get_layer(name).get_weights() for name in ("hidden", "logits")
                     if name in [layer.name for layer in head.layers]}
    return memo[key]


def _normalizers(cache: SweepCache, names: Sequence[str]) -> list[Any]:
    """Per normalisation, the head's own layers before dropout (pooling, normalise) as a model."""
    import keras

    from headstart.pipeline.model.head import adapt_head, build_head

    out = []
    for name in names:
        head = build_head(cache.feature_shape, len(cache.class_names), normalize=name)
        adapt_head(head, (x for x, _ in cache.rows["train"].eval_batches(4096)))
        out.append(keras.Model(head.input, head.get_layer("dropout").input))
    return out


class _Stack:
    """The heads of one architecture in a group, their weights stacked on a leading trial axis.

    A linear head is ``W (T, C, L), b (T, L)``; a hidden one adds ``W1 (T, C, H), b1 (T, H)``. Adam's
    moments have the same shapes; learning rate, weight decay, dropout and label smoothing are (T,)
    vectors, so every trial keeps its own hyper-parameters inside one batched update.
    """

    def __init__(self, members: list[int], trials: Sequence[TrialParams], initial: list[dict]) -> None:
        import tensorflow as tf

        self.members = members
        self.hidden = trials[members[0]].head_kind == "hidden"
        layers = ["hidden", "logits"] if self.hidden else ["logits"]
        self.names = [(layer, part) for layer in layers for part in ("kernel", "bias")]
        self.vars = [tf.Variable(np.stack([initial[i][layer][k] for i in members]).astype(np.float32))
                     for layer in layers for k in (0, 1)]
        self.m = [tf.Variable(tf.zeros_like(v)) for v in self.vars]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in self.vars]
        pick = lambda f: tf.constant([float(f(trials[i])) for i in members], tf.float32)  # noqa: E731
        self.lr, self.wd = pick(lambda t: t.lr), pick(lambda t: t.weight_decay)
        self.rate, self.smoothing = pick(lambda t: t.dropout), pick(lambda t: t.label_smoothing)

    def keep(self, positions: list[int]) -> None:
        """Keeps only the members at ``positions``: weights, Adam moments and hyper-parameters."""
        import tensorflow as tf

        if not positions:
            self.members = []
            return
        index = np.asarray(positions, dtype=np.int64)
        take = lambda t: tf.gather(t, index)  # noqa: E731
        self.members = [self.members[p] for p in positions]
        self.vars = [tf.Variable(take(v)) for v in self.vars]
        self.m = [tf.Variable(take(m)) for m in self.m]
        self.v = [tf.Variable(take(v)) for v in self.v]
        self.lr, self.wd, self.rate, self.smoothing = map(take, (self.lr, self.wd, self.rate, self.smoothing))

    def logits(self, x: Any, training: bool, seed: Any) -> Any:
        """x (T, B, C) normalised features of each member → logits (T, B, L)."""
        import tensorflow as tf

        def dropout(h: Any, salt: int) -> Any:
            if not training:
                return h
            keep = tf.random.stateless_uniform(tf.shape(h), seed + salt) >= self.rate[:, None, None]
            return tf.where(keep, h / (1.0 - self.rate[:, None, None]), 0.0)

        h = dropout(x, 0)
        weights = list(self.vars)
        if self.hidden:
            w1, b1 = weights[:2]
            h = dropout(tf.nn.relu(tf.einsum("tbc,tch->tbh", h, w1) + b1[:, None, :]), 1)
        w, b = weights[-2:]
        return tf.einsum("tbc,tcl->tbl", h, w) + b[:, None, :]

    def apply(self, grads: list[Any], step: Any) -> None:
        """Keras's Adam (and its decoupled weight decay on kernels), for every member at once."""
        import tensorflow as tf

        beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
        t = tf.cast(step, tf.float32)
        alpha = self.lr * tf.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for (_, part), var, m, v, g in zip(self.names, self.vars, self.m, self.v, grads):
            shape = [-1] + [1] * (len(var.shape) - 1)
            if part == "kernel":
                var.assign(var - var * tf.reshape(self.wd * self.lr, shape))
            m.assign_add((g - m) * (1 - beta_1))
            v.assign_add((tf.square(g) - v) * (1 - beta_2))
            var.assign_sub(m * tf.reshape(alpha, shape) / (tf.sqrt(v) + epsilon))

    def weights_of(self, j: int) -> dict[str, list[np.ndarray]]:
        """Member ``j``'s Dense weights by layer name, as NumPy copies."""
        out: dict[str, list[np.ndarray]] = {}
        for (layer, _), var in zip(self.names, self.vars):
            out.setdefault(layer, []).append(var[j].numpy())
        return out


def _loss(logits: Any, y: Any, smoothing: Any, num_classes: int) -> Any:
    """Per-member mean training loss (T,), as Keras's losses compute it, with label smoothing."""
    import tensorflow as tf

    ls = smoothing[:, None, None]
    if num_classes == 2:
        target = y[None] * (1.0 - ls) + 0.5 * ls
        per = tf.nn.relu(logits) - logits * target + tf.math.log1p(tf.exp(-tf.abs(logits)))
        return tf.reduce_mean(per, axis=[1, 2])
    one_hot = tf.one_hot(tf.cast(y, tf.int32), num_classes)[None]
    target = one_hot * (1.0 - ls) + ls / num_classes
    return tf.reduce_mean(-tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=-1), axis=1)


def _accuracy(logits: Any, y: Any, num_classes: int) -> Any:
    import tensorflow as tf

    if num_classes == 2:
        return tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), y[None]), tf.float32), axis=[1, 2])
    hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.cast(y, tf.int64)[None])
    return tf.reduce_mean(tf.cast(hit, tf.float32), axis=1)


class _Group:
    """All stacks of a group and the compiled train step / predict over them."""

    def __init__(self, cache: SweepCache, trials: Sequence[TrialParams], seed: int, jit_compile: bool) -> None:
        import tensorflow as tf

        self.num_classes = len(cache.class_names)
        memo: dict = {}
        initial = [_initial_weights(t, cache, seed, memo) for t in trials]
        norms = list(dict.fromkeys(t.normalize for t in trials))
        self.normalizers = _normalizers(cache, norms)
        by_arch: dict[tuple, list[int]] = {}
        for i, t in enumerate(trials):
            by_arch.setdefault((t.head_kind, t.hidden_units), []).append(i)
        self.stacks = [_Stack(members, trials, initial) for members in by_arch.values()]
        self.step_count = tf.Variable(0, dtype=tf.int64)
        self.seed, self.trials, self.norms = seed, trials, norms
        self._specs = (tf.TensorSpec((None, *cache.feature_shape), tf.float32),
                       tf.TensorSpec((None, 1) if self.num_classes == 2 else (None,), tf.float32))
        self._jit = jit_compile
        self._trace()

    def _trace(self) -> None:
        import tensorflow as tf

        self.norm_index = [tf.constant([self.norms.index(self.trials[i].normalize) for i in s.members])
                           for s in self.stacks]
        self.order = [i for s in self.stacks for i in s.members]  # stacked position → trial index
        spec_x, spec_y = self._specs
        # Free batch dimension: the epoch's short last batch reuses the one trace.
        self.train_step = tf.function(self._train_step, jit_compile=self._jit, input_signature=[spec_x, spec_y],
                                      autograph=False)  # plain Python loops over stacks: nothing to convert
        self.predict = tf.function(self._predict, jit_compile=self._jit, input_signature=[spec_x], autograph=False)

    def keep(self, trials: set[int]) -> None:
        """Drops every member not in ``trials`` from the stacks and traces the smaller step."""
        for stack in self.stacks:
            stack.keep([p for p, i in enumerate(stack.members) if i in trials])
        self.stacks = [s for s in self.stacks if s.members]
        self._trace()

    def _features(self, x: Any) -> list[Any]:
        import tensorflow as tf

        variants = tf.stack([norm(x, training=False) for norm in self.normalizers])  # (V, B, C)
        return [tf.gather(variants, index) for index in self.norm_index]              # (T_s, B, C)

    def _train_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        self.step_count.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.step_count])
        variables = [v for s in self.stacks for v in s.vars]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            logits = [s.logits(f, True, seed) for s, f in zip(self.stacks, self._features(x))]
            losses = [_loss(z, y, s.smoothing, self.num_classes) for s, z in zip(self.stacks, logits)]
            # Members share no weight: the gradient of the sum wrt one member's is its own loss's.
            total = tf.add_n([tf.reduce_sum(loss) for loss in losses])
        grads = tape.gradient(total, variables)
        at = 0
        for s in self.stacks:
            s.apply(grads[at:at + len(s.vars)], self.step_count)
            at += len(s.vars)
        accuracy = [_accuracy(z, y, self.num_classes) for z in logits]
        return tf.concat(losses, 0), tf.concat(accuracy, 0)

    def _predict(self, x: Any) -> Any:
        import tensorflow as tf

        return tf.concat([s.logits(f, False, None) for s, f in zip(self.stacks, self._features(x))], 0)

    def weights_of(self, i: int) -> dict[str, list[np.ndarray]]:
        position = self.order.index(i)
        for s in self.stacks:
            if position < len(s.members):
                return s.weights_of(position)
            position -= len(s.members)
        raise IndexError(i)


class _Member:
    """One trial's early-stopping state (train-head's rule)."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        self.best_value, self.best_epoch, self.wait = math.inf, 0, 0
        self.best_weights: dict | None = None
        self.stopped: str | None = None


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
    group = _Group(cache, trials, seed, jit_compile)
    members = [_Member() for _ in trials]
    train = cache.train_rows(trials[0].views)
    targets = head_labels(cache.labels["train"], num_classes).astype(np.float32)
    val_x = np.concatenate([x for x, _ in cache.rows["validation"].eval_batches(1 << 16)])
    runs: list[TrialRun | None] = [None] * len(members)
    for epoch in range(epochs):
        active = {i for i in group.order if members[i].stopped is None}
        if len(active) * 2 <= len(group.order):
            # Half the stacked trials are done: one new trace costs less than carrying them on.
            group.keep(active)
        sums = np.zeros((2, len(group.order)))
        for x, rows in train.train_batches(train.plan(seed, epoch), trials[0].batch_size):
            losses, accuracies = group.train_step(x, targets[rows])
            sums += np.stack([losses.numpy(), accuracies.numpy()]) * len(rows)
        logits = group.predict(val_x).numpy()
        for position, i in enumerate(group.order):
            member = members[i]
            if member.stopped is not None:
                continue  # still updated in the stack (cheaper than a new trace); its best is kept
            _record_epoch(member, sums[:, position] / train.n, logits[position], cache, epoch + 1, patience,
                          lambda i=i: group.weights_of(i))
            if on_epoch is not None and member.stopped is None and on_epoch(i, epoch + 1, member.history["val_loss"][-1]):
                member.stopped = "pruned"
            if member.stopped is None and epoch + 1 == epochs:
                member.stopped = "epochs"
            if member.stopped is not None:
                if member.best_weights is None:  # never finite: keep the last weights, as train-head does
                    member.best_epoch, member.best_weights = epoch + 1, (group.weights_of(i), logits[position])
                runs[i] = _finish(member, cache, (time.perf_counter() - start) / len(members))
                if on_done is not None:
                    on_done(i, runs[i])
        if all(m.stopped is not None for m in members):
            break
    return runs  # type: ignore[return-value]


def _record_epoch(member: _Member, train_means: np.ndarray, val_logits: np.ndarray, cache: SweepCache,
                  epoch: int, patience: int, weights: Callable[[], dict]) -> None:
    """Appends one epoch to the trial's history and applies train-head's early-stopping rule."""
    val_loss, val_acc = _val_loss_accuracy(val_logits, cache)
    history = member.history
    history["loss"].append(float(train_means[0]))
    history["accuracy"].append(float(train_means[1]))
    history["val_loss"].append(val_loss)
    history["val_accuracy"].append(val_acc)
    if math.isfinite(val_loss) and val_loss < member.best_value:
        member.best_value, member.best_epoch, member.wait = val_loss, epoch, 0
        member.best_weights = (weights(), val_logits)
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


def _finish(member: _Member, cache: SweepCache, seconds: float) -> TrialRun:
    """The trial's record: history, best epoch, and validation measures of its best weights."""
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.report.metrics import classification_metrics

    weights, logits = member.best_weights
    labels = cache.labels["validation"]
    validation = classification_metrics(labels, predict_classes(logits, len(cache.class_names)), cache.class_names)
    validation["loss"] = _val_loss_accuracy(logits, cache)[0]
    return TrialRun(history=member.history, best_epoch=member.best_epoch, stopped=member.stopped or "epochs",
                    validation=validation, seconds=seconds, weights=weights)
