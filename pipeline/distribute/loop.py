"""The training and evaluation loop of a head-ended model under a tf.distribute strategy.

Why not Keras's own loops (measured with Keras 3.15 / TF 2.21 on 2 logical CPUs and 2 local workers):

* ``train_on_batch`` runs ``strategy.run(step, args=(batch,))`` on the *un-split* batch: every
  replica computes the whole batch (a batch of 8 → 8 rows on each replica). The summed gradient
  equals the single-device one, but nothing runs in parallel.
* ``predict_on_batch`` likewise returns one copy of the outputs per replica (5 rows → 10).
* ``fit``, ``evaluate`` and ``test_on_batch`` fail under ``MultiWorkerMirroredStrategy``: the
  symbolic build calls ``strategy.reduce`` on the ``(x, y)`` nest, and each step's logs are reduced
  with ``strategy.reduce("MEAN", scalar, axis=0)`` (keras-team/keras#20585).

So this module runs the standard tf.distribute custom loop: ``experimental_distribute_dataset``
splits every global batch across the replicas (``DATA`` sharding across workers, so every worker
reads the same planned batches and keeps its share), ``strategy.run`` computes each replica's part,
and the model's own optimizer sums the gradients across replicas. Every row carries the weight
1 / (rows of its *global* batch), so the replicas' weighted loss sums add up to exactly the
single-device batch mean — also for a last batch that does not split evenly (a replica may get no
rows at all), where Keras's per-replica mean ÷ replicas would weigh rows unequally. Loss and
accuracy are the head's (``headstart.pipeline.model.head.head_loss_and_metrics``), summed over rows and workers.

Batches may carry a third element, per-row sample weights (``--class-weight``): a row's loss then
counts w × its loss, the batch loss stays Σ w·l / (rows of the batch) and the reported training loss
Σ w·l / rows, as Keras's ``train_on_batch(..., sample_weight=w)`` computes them; accuracy stays
unweighted, as a compiled (not weighted) metric does.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Sequence

import keras
import tensorflow as tf

from headstart.features.tfdata import without_autotune_thread

from headstart.pipeline.model.head import head_loss_and_metrics

#: Compiled step functions per model, so an epoch does not retrace them.
_STEPS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def planned_dataset(batches: Callable[[], Iterable[tuple[Any, ...]]], x_spec: tuple[tuple, Any],
                    y_spec: tuple[tuple, Any], steps: int, *, weighted: bool = False) -> tf.data.Dataset:
    """A ``tf.data`` dataset of already-planned global batches.

    Args:
        batches: returns a fresh iterator of (x, y) NumPy global batches in training order, or of
            (x, y, w) with ``weighted``.
        x_spec, y_spec: (shape without the batch axis, dtype) of x and y.
        steps: number of batches ``batches()`` yields.
        weighted: the batches carry float32 (B,) sample weights as a third element.
    """
    specs = (x_spec, y_spec, ((), tf.float32)) if weighted else (x_spec, y_spec)
    signature = tuple(tf.TensorSpec((None, *shape), dtype) for shape, dtype in specs)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


def _data_sharded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # AUTO would try to give each worker whole files; the batches here come from one generator or
    # one file list, so every worker reads them all and keeps its replicas' slice of each batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # Each epoch ends its iterator, which must not wait on the autotune thread (features/tfdata.py).
    return without_autotune_thread(dataset.with_options(options))


def _per_row(loss: Any) -> Callable:
    """A Keras loss, unreduced: (y, logits) → float32 (rows,)."""
    unreduced = loss.__class__.from_config({**loss.get_config(), "reduction": None})
    return lambda y, logits: tf.cast(tf.reshape(unreduced(y, logits), [-1]), tf.float32)


def _objectives(num_classes: int) -> tuple[Callable, Callable]:
    """Per-row loss (the head's loss, unreduced) and the number of correct rows, both float32."""
    loss, _ = head_loss_and_metrics(num_classes)
    per_row = _per_row(loss)

    def correct(y, logits):
        if num_classes == 2:  # BinaryAccuracy(threshold=0): a positive logit is class 1
            hit = tf.equal(tf.cast(logits > 0, tf.float32), tf.cast(y, tf.float32))
        else:
            hit = tf.equal(tf.argmax(logits, axis=-1), tf.cast(tf.reshape(y, [-1]), tf.int64))
        return tf.reduce_sum(tf.cast(hit, tf.float32))

    return per_row, correct


def _weighted(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # Each row carries its sample weight (1 without one) and 1 / (rows of its global batch). Both
    # are split with the rows, so a replica's sum of weight × loss / rows is its share of the global
    # batch mean, with no all-reduce of row counts inside the step; a replica that gets no rows
    # contributes nothing.
    def add(x, y, sample=None):
        rows = tf.shape(x)[0]
        sample = tf.ones([rows], tf.float32) if sample is None else tf.cast(tf.reshape(sample, [-1]), tf.float32)
        return x, y, sample, tf.fill([rows], 1.0 / tf.cast(tf.maximum(rows, 1), tf.float32))

    return dataset.map(add)


def _steps(model: Any, num_classes: int) -> dict:
    cached = _STEPS.get(model)
    if cached is not None and cached["num_classes"] == num_classes and cached["optimizer"] is model.optimizer:
        return cached
    strategy = model.distribute_strategy
    per_row, correct = _objectives(num_classes)
    # Training follows the loss the model was compiled with (label smoothing included), as fit
    # does; evaluation keeps the plain head loss, so validation losses compare on one scale.
    train_row = _per_row(model.loss) if isinstance(getattr(model, "loss", None), keras.losses.Loss) else per_row
    with strategy.scope():
        if not model.optimizer.built:  # its variables must exist before the step is traced
            model.optimizer.build(model.trainable_variables)
        totals = {name: _totals_variable(name) for name in ("train", "eval")}
    # The steps reach the model through a weak reference: the cache must not keep a finished
    # stage's model (a whole backbone for finetune) alive.
    ref = weakref.ref(model)

    def gradients(x, y, sample, weights):
        model = ref()
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            losses = train_row(y, logits) * sample
            loss = tf.reduce_sum(losses * weights)
            if model.losses:  # regularisers: once per step overall, so 1/N on each replica
                loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
            scaled = model.optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        stats = tf.stack([tf.reduce_sum(losses), correct(y, logits), tf.cast(tf.shape(x)[0], tf.float32)])
        grads = tape.gradient(scaled, model.trainable_variables)
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                for g, v in zip(grads, model.trainable_variables)], stats

    if model.jit_compile:  # XLA for the computation; the all-reduce and the update stay outside
        gradients = tf.function(gradients, jit_compile=True, reduce_retracing=True)

    def nothing():
        # A replica handed no rows (the last, short batch) skips the model: TF's CPU Conv2D
        # returns a wrongly shaped tensor for an empty batch. It still joins the all-reduce.
        return [tf.zeros_like(v) for v in ref().trainable_variables], tf.zeros([3])

    def train_replica(x, y, sample, weights):
        model = ref()
        grads, stats = tf.cond(tf.shape(x)[0] > 0, lambda: gradients(x, y, sample, weights), nothing)
        # The optimizer sums the replicas' gradients (Keras's TF optimizer all-reduces with SUM).
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        totals["train"].assign_add(stats)

    def eval_replica(x, y, sample, weights):
        def stats():
            logits = ref()(x, training=False)
            return tf.stack([tf.reduce_sum(per_row(y, logits) * sample), correct(y, logits),
                             tf.cast(tf.shape(x)[0], tf.float32)])

        totals["eval"].assign_add(tf.cond(tf.shape(x)[0] > 0, stats, lambda: tf.zeros([3])))

    cached = {"num_classes": num_classes, "optimizer": model.optimizer, "totals": totals,
              "train": _compiled_step(strategy, train_replica), "eval": _compiled_step(strategy, eval_replica)}
    _STEPS[model] = cached
    return cached


def _totals_variable(name: str) -> tf.Variable:
    # (loss sum, correct rows, rows) per replica, summed over replicas and workers only when read:
    # one collective per epoch, as Keras's metrics do, not three per step. Create in strategy scope.
    return tf.Variable(tf.zeros([3]), trainable=False, name=f"headstart_{name}_totals",
                       synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.SUM)


def _compiled_step(strategy: Any, replica_fn: Callable) -> Callable:
    """One distributed step: fetch the next batch and run ``replica_fn`` on every replica.

    One call per batch, fetching the batch inside the graph, as fit does: splitting a batch
    across replicas in eager Python cost ~10 ms per batch here, more than a head's step. (A whole
    epoch in one graph, a while loop over the dataset, ran MobileNetV2 steps 2x slower:
    TensorFlow's graph rewrites, the oneDNN fusions, do not reach into loop bodies.)
    """
    @tf.function
    def step(iterator):
        # "Is there a next batch" is agreed by all workers, even when their shares differ.
        batch = iterator.get_next_as_optional()
        if batch.has_value():
            strategy.run(replica_fn, args=batch.get_value())
            return True
        return False

    return step


class EpochFeed:
    """One distributed iterator that serves every epoch of a fit, ``steps`` batches at a time.

    Creating a distributed iterator is costly, and ending one blocks: under a multi-device strategy
    TF builds per-device datasets of its own, whose tf.data autotune threads the destructor waits
    for (see ``features/tfdata.py``; our options do not reach them). Per short epoch that was a
    large share (figures: docs/measurements.md). So the iterator is made once and epochs are cut
    from it.

    Two ways to build one:

    * ``EpochFeed(strategy, dataset)``: ``dataset`` is one epoch of global batches (reshuffled per
      iteration if it shuffles). With a known cardinality, every epoch is that many batches of
      ``dataset.repeat()``. Otherwise the first epoch runs to the end on an iterator of its own and
      counts its batches, and later epochs take that many from ``dataset.repeat()`` (the same
      batches every epoch, as filtering bad images is deterministic).
    * ``EpochFeed(strategy, dataset, steps=N, repeat=False)``: ``dataset`` already holds every
      epoch back to back, N batches each (the head's planned epochs).
    """

    def __init__(self, strategy: Any, dataset: tf.data.Dataset, *, steps: int | None = None,
                 repeat: bool = True) -> None:
        self._strategy = strategy
        self._dataset = _data_sharded(_weighted(dataset))
        self._repeat = repeat
        cardinality = int(dataset.cardinality())
        self.steps = steps if steps is not None else (cardinality if cardinality >= 0 and repeat else None)
        self._iterator = None

    def next_epoch(self) -> tuple[Any, int | None]:
        """(distributed iterator, batches to take from it; None = until it ends)."""
        if self.steps is None:  # first epoch of unknown length: an iterator of its own
            return iter(self._strategy.experimental_distribute_dataset(self._dataset)), None
        if self._iterator is None:
            dataset = self._dataset.repeat() if self._repeat else self._dataset
            self._iterator = iter(self._strategy.experimental_distribute_dataset(dataset))
        return self._iterator, self.steps


def _run(kind: str, model: Any, num_classes: int, data: tf.data.Dataset | EpochFeed,
         after_step: Callable[[int], None] | None = None) -> dict[str, float]:
    fns = _steps(model, num_classes)
    totals, step = fns["totals"][kind], fns[kind]
    totals.assign(tf.zeros([3]))
    feed = data if isinstance(data, EpochFeed) else EpochFeed(model.distribute_strategy, data, repeat=False)
    iterator, steps = feed.next_epoch()
    index = 0
    while (steps is None or index < steps) and bool(step(iterator)):
        if after_step is not None:
            after_step(index)
        index += 1
    if steps is None:
        feed.steps = index
    elif index < steps:
        raise RuntimeError(f"the input ended after {index} of {steps} batches of an epoch")
    loss_sum, hits, rows = (float(v) for v in totals.read_value().numpy())
    return {"loss": loss_sum / rows if rows else float("nan"), "accuracy": hits / rows if rows else float("nan")}


def train_epoch(model: Any, dataset: tf.data.Dataset | EpochFeed, num_classes: int, *,
                callbacks: keras.callbacks.CallbackList | None = None) -> dict[str, float]:
    """Trains ``model`` (built and compiled in its strategy's scope) for one pass over ``dataset``.

    Args:
        model: ends in the head (``headstart.pipeline.model.head.build_head``); its optimizer is used as compiled.
        dataset: (x, y) global batches, y as ``headstart.pipeline.model.head.head_labels`` gives them; or an
            ``EpochFeed`` of them, which serves this epoch from the fit's one iterator.
        num_classes: number of classes (picks the head's loss).
        callbacks: Keras callbacks (a ``keras.callbacks.CallbackList``, or None): the loop calls their
            ``on_train_batch_end(index)`` after each step (fine-tuning's progress line draws there).

    Returns:
        ``{"loss", "accuracy"}``: the epoch's means over rows, as ``fit`` reports them.
    """
    after_step = None if callbacks is None else callbacks.on_train_batch_end
    return _run("train", model, num_classes, dataset, after_step)


def evaluate(model: Any, dataset: tf.data.Dataset | EpochFeed, num_classes: int) -> dict[str, float]:
    """Loss and accuracy of ``model`` over ``dataset`` or an ``EpochFeed`` (inference mode), rows
    split across replicas."""
    return _run("eval", model, num_classes, dataset)


def distributed_fit(model: Any, x: tf.data.Dataset, *, num_classes: int, epochs: int,
                    validation_data: tf.data.Dataset | None = None,
                    callbacks: Sequence[Any] = ()) -> keras.callbacks.History:
    """``model.fit(x, validation_data=..., epochs=..., callbacks=...)`` for more than one replica.

    Drives the callbacks as ``fit`` does (train begin/end, epoch begin/end with ``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``, train batch end), honours ``model.stop_training``
    and the first epoch a ``BackupAndRestore``-style callback sets in ``on_train_begin``.

    Args:
        model: built and compiled in its strategy's scope, ending in the head.
        x, validation_data: (x, y) global batches (``y`` as ``headstart.pipeline.model.head.head_labels`` gives).
        num_classes: number of classes. epochs: last epoch (exclusive), as for ``fit``.
        callbacks: Keras callbacks.

    Returns:
        The ``History`` callback.
    """
    history = keras.callbacks.History()
    hooks = keras.callbacks.CallbackList([*callbacks, history], model=model, epochs=epochs, verbose=0)
    model.stop_training = False
    hooks.on_train_begin()
    # BackupAndRestore (and finetune's RunBackup) tell fit where to resume through this attribute.
    first = getattr(model, "_initial_epoch", None) or 0
    strategy = model.distribute_strategy
    train = EpochFeed(strategy, x)
    val = EpochFeed(strategy, validation_data) if validation_data is not None else None
    logs: dict[str, float] = {}
    for epoch in range(first, epochs):
        hooks.on_epoch_begin(epoch)
        logs = train_epoch(model, train, num_classes, callbacks=hooks)
        if val is not None:
            logs.update({f"val_{k}": v for k, v in evaluate(model, val, num_classes).items()})
        hooks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    hooks.on_train_end(logs)
    return history


def predict_logits(model: Any, x: Any, replicas: int | None = None) -> Any:
    """``model``'s outputs on one batch, computed in this process.

    Under more than one replica ``predict_on_batch`` returns one copy per replica; a direct call
    reads the (identical) mirrored weights once and works under every strategy.

    Args:
        model: any Keras model. x: one batch.
        replicas: replicas of the model's strategy; None reads ``model.distribute_strategy``.
    """
    if replicas is None:
        replicas = model.distribute_strategy.num_replicas_in_sync
    if replicas <= 1:
        return model.predict_on_batch(x)
    return model(x, training=False)
