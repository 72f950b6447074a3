"""Many heads trained at once on one cache: one compiled step updates every trial of a group.

As DINOv2's linear evaluation (``dinov2/eval/linear.py``) trains its whole grid of linear
classifiers on the same features in one pass, the trials of a group (same cache, batch size and
views, hence the same batches) share each batch. ``BatchedHeads`` holds one ``HeadStack`` per
architecture (``headstart.pipeline.training.head_stack``), each on a trial axis of free length, and its
step is traced once per cache for the whole sweep: a group is loaded into the stacks, a trial
that stops leaves them by a gather, and nothing is traced again.

This is the one head trainer: ``train-head`` (and diagnose's fold heads) train as a group of one
trial (``training.head_fit.fit_head``), so a one-configuration sweep and train-head give the same
weights bit for bit. Each trial computes what train-head's recipe says: initial weights drawn by
``build_head`` after ``keras.utils.set_random_seed(seed)``, the head's own pooling and
normalisation layers, Keras's Adam and decoupled weight decay formulas, Keras's loss formulas
(softmax, one sigmoid logit for two classes, or one per class for a multi-label cache; each row's
loss times its ``--class-weight`` weight), the batch plan of ``FeatureRows.plan``, and early
stopping per trial on the ``--monitor`` column, or on the training loss without a validation split
(``training.group_member``). Dropout masks come from one stateless draw per step shared by the group
(see ``HeadStack.logits``). A trial among others differs from the same trial alone by float
rounding only (the stacked sums run over a longer trial axis; tests/test_sweep.py states the
tolerance). A stopped or pruned trial is reported at once with its best epoch's weights.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TYPE_CHECKING

import numpy as np

from headstart.pipeline.training.head_params import SweepCache
from headstart.pipeline.training.group_member import Member, TrialRun, finish, validation_pass
from headstart.pipeline.training.objective import sweep_objective
from headstart.pipeline.training.head_params import TrialParams
from headstart.pipeline.training.head_stack import HeadStack, stack_accuracy, stack_loss
from headstart.pipeline.training.early_stopping import epoch_limit

if TYPE_CHECKING:
    import tensorflow as tf

    from headstart.pipeline.training.head_data import FeatureRows
    from headstart.pipeline.training.objective import Objective


def _initial_weights(params: TrialParams, cache: SweepCache, seed: int, memo: dict) -> dict[str, list[np.ndarray]]:
    """The Dense weights ``train-head --seed seed`` starts this trial's head from, by layer name."""
    import keras

    from headstart.pipeline.model.head import build_head

    # A dropout rate above 0 gives the Dropout layers a SeedGenerator, which draws from the global
    # generator before the Dense initialisers do: it changes their draws, its value does not.
    key = (seed, params.head_kind, params.hidden_units, params.normalize, params.dropout > 0)
    if key not in memo:
        # The same calls in the same order as train-head (seed, then the builder).
        keras.utils.set_random_seed(seed)
        head = build_head(cache.feature_shape, len(cache.class_names), dropout=params.dropout,
                          kind=params.head_kind, hidden_units=params.hidden_units or 1, normalize=params.normalize,
                          multi_label=cache.multi_label)
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
        self.num_classes, self.multi_label = len(cache.class_names), cache.multi_label
        self.stacks: dict[tuple, HeadStack] = {}
        self.norms: list[str] = []
        self.normalizers: list[Any] = []
        self.order: list[int] = []  # stacked position → trial index
        self._memo: dict = {}
        self.step_count = tf.Variable(0, dtype=tf.int64, trainable=False)
        targets = (None, self.num_classes) if self.multi_label else (None, 1) if self.num_classes == 2 else (None,)
        self._specs = (tf.TensorSpec((None, *cache.feature_shape), tf.float32), tf.TensorSpec(targets, tf.float32),
                       tf.TensorSpec((None,), tf.float32))  # features, targets, per-row loss weights
        self.train_step = self.predict = None

    def load(self, trials: Sequence[TrialParams], seeds: Sequence[int] | None = None) -> None:
        """Makes ``trials`` the stacked members, at their initial weights and step 0.

        ``seeds``: each trial's initial weights are ``train-head --seed seeds[i]``'s (default: the
        sweep's seed for all); the batch plan and dropout stream stay the group's (``self.seed``).
        """
        seeds = [self.seed] * len(trials) if seeds is None else list(seeds)
        initial = [_initial_weights(t, self.cache, s, self._memo) for t, s in zip(trials, seeds)]
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

        spec_x, spec_y, spec_w = self._specs
        # Free batch dimension: the epoch's short last batch reuses the one trace.
        self.train_step = tf.function(self._train_step, jit_compile=self.jit_compile,
                                      input_signature=[spec_x, spec_y, spec_w], autograph=False)
        self.predict = tf.function(self._predict, jit_compile=self.jit_compile, input_signature=[spec_x],
                                   autograph=False)

    def keep(self, trials: set[int]) -> None:
        """Drops every member not in ``trials`` from the stacks (no new trace)."""
        for stack in self.stacks.values():
            positions = [p for p, i in enumerate(stack.members) if i in trials]
            if len(positions) < len(stack.members):
                stack.keep(positions)
        self.order = [i for s in self.stacks.values() for i in s.members]

    def _features(self, x: tf.Tensor) -> list[tf.Tensor]:
        import tensorflow as tf

        variants = tf.stack([norm(x, training=False) for norm in self.normalizers])  # (V, B, C)
        return [tf.gather(variants, s.norm_index) for s in self.stacks.values()]     # (T_s, B, C)

    def _train_step(self, x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        import tensorflow as tf

        self.step_count.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.step_count])
        features = self._features(x)
        noise = (tf.random.stateless_uniform(tf.shape(features[0])[1:], seed), seed)  # one draw for every stack
        stacks = list(self.stacks.values())
        with tf.GradientTape() as tape:
            tape.watch([s.vars for s in stacks])
            logits = [s.logits(f, noise) for s, f in zip(stacks, features)]
            losses = [stack_loss(z, y, w, s.smoothing, self.num_classes, self.multi_label)
                      for s, z in zip(stacks, logits)]
            # Members share no weight: the gradient of the sum wrt one member's is its own loss's.
            total = tf.add_n([tf.reduce_sum(loss) for loss in losses])
        grads = tape.gradient(total, [s.vars for s in stacks], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        for s, g in zip(stacks, grads):
            s.apply(g, self.step_count)
        accuracy = [stack_accuracy(z, y, self.num_classes, self.multi_label) for z in logits]
        return tf.concat(losses, 0), tf.concat(accuracy, 0)

    def _predict(self, x: tf.Tensor) -> tf.Tensor:
        import tensorflow as tf

        return tf.concat([s.logits(f, None) for s, f in zip(self.stacks.values(), self._features(x))], 0)

    def weights_at(self, position: int) -> dict[str, list[np.ndarray]]:
        """The Dense weights of the member at stacked ``position`` (see ``order``)."""
        for s in self.stacks.values():
            if position < len(s.members):
                return s.weights_of(position)
            position -= len(s.members)
        raise IndexError(position)


#: Bytes of validation features predicted at once: the streamed loader's split never sits in memory whole.
VALIDATION_CHUNK_BYTES = 64 << 20

#: ``on_log(epoch (1-based), {index: that epoch's history row}, seconds of the epoch)``.
EpochLog = Callable[[int, dict[int, dict[str, float]], float], None]


def train_group(cache: SweepCache, trials: Sequence[TrialParams], *, seed: int, epochs: int, patience: int,
                monitor: str = "val_loss", sample_weights: np.ndarray | None = None,
                on_epoch: Callable[[int, dict[int, float]], set[int]] | None = None,
                on_done: Callable[[int, TrialRun], None] | None = None, jit_compile: bool = False,
                heads: BatchedHeads | None = None, trial_seeds: Sequence[int] | None = None,
                on_log: EpochLog | None = None) -> list[TrialRun]:
    """Trains ``trials`` together; all must share ``batch_size`` and ``views`` (one batch plan).

    ``train-head`` is a group of one trial (``commands.head_training``); a sweep's groups hold many.

    Args:
        cache: the cache the trials train on (single- or multi-label). Without a "validation"
            split in ``cache.rows`` early stopping watches the training loss (``monitor`` unused).
        trials: the group's parameters.
        seed: the sweep's seed: every head starts as ``train-head --seed seed`` would.
        epochs: most epochs per trial; 0: until early stopping (``early_stopping.epoch_limit``).
        patience: epochs without a better monitored value before a trial stops.
        monitor: ``--monitor`` (``objective.sweep_objective``: a multi-label cache's val_loss is mAP).
        sample_weights: float32 (N,), each training row's loss weight (``--class-weight``), or None.
        on_epoch: called once per epoch as ``on_epoch(epoch (1-based), {index: monitored value})``
            for the trials still training; returns the indices to prune (one call, so the pruner
            reads the study once per epoch rather than once per trial).
        on_done: called as ``on_done(index, run)`` as soon as a trial stops.
        jit_compile: compile the step with XLA (worth it on a GPU).
        heads: the sweep's BatchedHeads for this cache (its traces serve every group); None
            makes one for this group.
        trial_seeds: each trial's initial-weights seed (``train-head --seed``; None: ``seed``); batches, dropout: ``seed``.
        on_log: called once per epoch, before early stopping decides, with every training trial's
            history row (train-head's epoch line and its callbacks' epoch end); it may raise to stop.

    Returns:
        One TrialRun per trial, in order.
    """
    if len({(t.batch_size, t.views and bool(cache.views)) for t in trials}) > 1:
        raise ValueError("a group's trials must share batch_size and views")
    objective = sweep_objective(monitor, cache.multi_label)
    start = time.perf_counter()
    group = heads or BatchedHeads(cache, seed, jit_compile)
    group.load(trials, trial_seeds)
    members = [Member(objective, patience, validation="validation" in cache.rows) for _ in trials]
    train, targets, weights = _group_data(cache, trials[0].views, sample_weights)
    runs: list[TrialRun | None] = [None] * len(members)
    limit = epoch_limit(epochs)
    for epoch in range(limit):
        active = {i for i in group.order if members[i].stopped is None}
        if len(active) < len(group.order):
            group.keep(active)  # finished trials leave the stacks: a gather, no new trace
        logits, measured = _run_epoch(group, members, cache, objective, train, targets, weights,
                                      seed=seed, epoch=epoch, batch_size=trials[0].batch_size, on_log=on_log)
        pruned = on_epoch(epoch + 1, measured) if on_epoch is not None else set()
        for position, i in enumerate(group.order):
            kept = None if logits is None else logits[position]
            if i in measured and members[i].finished(i in pruned, epoch + 1 == limit, kept,
                                                     lambda p=position: group.weights_at(p)):
                runs[i] = finish(members[i], cache, (time.perf_counter() - start) / len(members))
                if on_done is not None:
                    on_done(i, runs[i])
        if all(m.stopped is not None for m in members):
            break
    return runs  # type: ignore[return-value]


def _run_epoch(group: BatchedHeads, members: list[Member], cache: SweepCache, objective: Objective, train: FeatureRows,
               targets: np.ndarray, weights: np.ndarray, *, seed: int, epoch: int, batch_size: int,
               on_log: EpochLog | None) -> tuple[np.ndarray | None, dict[int, float]]:
    """One epoch of the stacked members: train, validate, record each member's row.

    Returns:
        The validation logits (T, N_val, L) (None without validation), and {index: monitored value}
        of the members still training.
    """
    start = time.perf_counter()
    sums = _train_epoch(group, train, targets, weights, seed, epoch, batch_size)
    logits = _predict_validation(group, cache.rows.get("validation"))
    val = {} if logits is None else validation_pass(logits, cache, objective)
    seconds = time.perf_counter() - start
    measured, rows = {}, {}
    for position, i in enumerate(group.order):
        member = members[i]
        if member.stopped is None:
            member.record(sums[:, position] / train.n, {k: v[position] for k, v in val.items()},
                          None if logits is None else logits[position], epoch + 1,
                          lambda p=position: group.weights_at(p))
            member.epoch_seconds.append(seconds)
            measured[i] = member.history[member.stopping.monitor][-1]
            rows[i] = {key: values[-1] for key, values in member.history.items()}
    if on_log is not None:
        on_log(epoch + 1, rows, seconds)
    return logits, measured


def _predict_validation(group: BatchedHeads, rows: FeatureRows | None) -> np.ndarray | None:
    """Every member's validation logits (T, N_val, L), predicted a chunk of rows at a time; None
    without a validation split."""
    if rows is None:
        return None
    chunk = max(1, VALIDATION_CHUNK_BYTES // max(1, rows.row_bytes))
    return np.concatenate([group.predict(x).numpy() for x, _ in rows.eval_batches(chunk)], axis=1)


def _group_data(cache: SweepCache, views: bool, sample_weights: np.ndarray | None) -> tuple[Any, ...]:
    """The group's training rows, their targets (``head_labels``' form, float32) and loss weights (N,)."""
    from headstart.pipeline.model.head import head_labels

    targets = head_labels(cache.labels["train"], len(cache.class_names), cache.multi_label).astype(np.float32)
    # Unweighted rows weigh 1: w · l is then l exactly, the loss train-head computes without weights.
    weights = np.ones(len(targets), np.float32) if sample_weights is None else sample_weights.astype(np.float32)
    return cache.train_rows(views), targets, weights


def _train_epoch(group: BatchedHeads, train: FeatureRows, targets: np.ndarray, weights: np.ndarray, seed: int, epoch: int,
                 batch_size: int) -> np.ndarray:
    """One epoch of every member over the planned batches; (2, T) sums of loss and accuracy × rows."""
    sums = np.zeros((2, len(group.order)))
    for x, rows in train.train_batches(train.plan(seed, epoch), batch_size):
        losses, accuracies = group.train_step(x, targets[rows], weights[rows])
        sums += np.stack([losses.numpy(), accuracies.numpy()]) * len(rows)
    return sums
