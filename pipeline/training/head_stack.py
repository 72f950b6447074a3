"""One head architecture's trials stacked on a trial axis: weights, Adam, dropout, loss.

Heads of one architecture are stacked on a leading trial axis of free length — kernels
(T, C, L), one batched matmul for all — so ``headstart.pipeline.training.head_group.BatchedHeads``
traces its step once and loads any group into it. Each formula is Keras's: Adam and its
decoupled weight decay (TensorFlow's fused Adam kernel, scaled per trial), binary (one logit, or
one per class of a multi-label head) or categorical cross-entropy from logits with label smoothing
and per-row class weights, and accuracy as train-head's metrics count it.
"""

from __future__ import annotations

from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from headstart.pipeline.training.head_params import TrialParams

if TYPE_CHECKING:
    import tensorflow as tf


def _free_variable(shape: Sequence[int]) -> Any:
    """An empty float32 variable whose leading (trial) axis may take any length."""
    import tensorflow as tf

    return tf.Variable(tf.zeros((0, *shape)), shape=tf.TensorShape([None, *shape]), trainable=False)


class HeadStack:
    """The heads of one architecture: weights, Adam moments and hyper-parameters on a trial axis.

    A linear head is ``W (T, C, L), b (T, L)``; a hidden one adds ``W1 (T, C, H), b1 (T, H)``. The
    trial axis has no fixed length, so loading another group's trials or dropping finished ones
    assigns new values and never traces the step again. Learning rate, weight decay, dropout and
    label smoothing are (T,) vectors: every member keeps its own.
    """

    def __init__(self, shapes: dict[str, list[tuple[int, ...]]]) -> None:
        import tensorflow as tf

        self.hidden = "hidden" in shapes
        self.names = [(layer, part) for layer in shapes for part in ("kernel", "bias")]
        self.shapes = [tuple(shape) for layer in shapes for shape in shapes[layer]]
        self.vars, self.m, self.v, self.scratch = ([_free_variable(shape) for shape in self.shapes] for _ in range(4))
        self.lr, self.wd, self.rate, self.smoothing = (_free_variable(()) for _ in range(4))
        self.norm_index = tf.Variable(tf.zeros((0,), tf.int32), shape=tf.TensorShape([None]), trainable=False)
        self.members: list[int] = []

    def _state(self) -> list[Any]:
        return [*self.vars, *self.m, *self.v, self.lr, self.wd, self.rate, self.smoothing, self.norm_index]

    def load(self, members: list[int], trials: Sequence[TrialParams], initial: list[dict], norms: list[str]) -> None:
        """Makes ``members`` (indices into ``trials``) the stack, from their initial weights."""
        self.members = list(members)
        for (layer, part), shape, var, m, v in zip(self.names, self.shapes, self.vars, self.m, self.v):
            k = 0 if part == "kernel" else 1
            value = np.zeros((len(members), *shape), np.float32)
            for j, i in enumerate(members):
                value[j] = initial[i][layer][k]
            var.assign(value)
            m.assign(np.zeros_like(value))
            v.assign(np.zeros_like(value))
        for target, field_of in ((self.lr, lambda t: t.lr), (self.wd, lambda t: t.weight_decay),
                                 (self.rate, lambda t: t.dropout), (self.smoothing, lambda t: t.label_smoothing)):
            target.assign(np.array([field_of(trials[i]) for i in members], np.float32))
        self.norm_index.assign(np.array([norms.index(trials[i].normalize) for i in members], np.int32))

    def keep(self, positions: list[int]) -> None:
        """Keeps only the members at ``positions``, with their weights, moments and hyper-parameters."""
        import tensorflow as tf

        index = tf.constant(positions, tf.int32)
        for variable in self._state():
            variable.assign(tf.gather(variable, index))
        self.members = [self.members[p] for p in positions]

    def logits(self, x: tf.Tensor, noise: tuple[tf.Tensor, tf.Tensor] | None) -> tf.Tensor:
        """x (T, B, C) normalised features of each member → logits (T, B, L).

        ``noise`` is None for inference, else ``(uniform (B, C), seed)``: one uniform draw per
        position shared by every member, each dropping where it falls below its own rate. Every
        member's mask is Bernoulli at its rate, as a trial alone draws; drawing once instead of T
        times is a large part of a CPU step's saving (two members' masks are nested, which no
        single trial can tell).
        """
        import tensorflow as tf

        rate = self.rate[:, None, None]

        def dropout(h: tf.Tensor, uniform: tf.Tensor | None) -> tf.Tensor:
            return h if noise is None else tf.where(uniform[None] >= rate, h / (1.0 - rate), 0.0)

        h = dropout(x, None if noise is None else noise[0])
        if self.hidden:
            w1, b1 = self.vars[:2]
            h = tf.nn.relu(tf.einsum("tbc,tch->tbh", h, w1) + b1[:, None, :])
            if noise is not None:
                h = dropout(h, tf.random.stateless_uniform(tf.shape(h)[1:], noise[1] + 1))
        w, b = self.vars[-2:]
        return tf.einsum("tbc,tcl->tbl", h, w) + b[:, None, :]

    def apply(self, grads: list[tf.Tensor], step: tf.Variable) -> None:
        """Keras's Adam, and its decoupled weight decay on kernels, for every member at once.

        TensorFlow's fused Adam kernel (one pass over weights and moments, where a dozen
        element-wise ops would each make one: the cost that dominated a batched CPU step) takes
        one learning rate, so it writes the unit-rate step into ``scratch``, which each member
        then scales by its own rate: ``var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.
        """
        import tensorflow as tf

        t = tf.cast(step, tf.float32)
        powers = tf.pow(tf.constant(0.9, tf.float32), t), tf.pow(tf.constant(0.999, tf.float32), t)
        for (_, part), var, m, v, scratch, g in zip(self.names, self.vars, self.m, self.v, self.scratch, grads):
            shape = [-1] + [1] * (len(var.shape) - 1)
            if part == "kernel":
                var.assign_sub(var * tf.reshape(self.wd * self.lr, shape))  # Keras: before the update
            scratch.assign(tf.zeros_like(var))
            tf.raw_ops.ResourceApplyAdam(var=scratch.handle, m=m.handle, v=v.handle, beta1_power=powers[0],
                                         beta2_power=powers[1], lr=1.0, beta1=0.9, beta2=0.999, epsilon=1e-7,
                                         grad=g)
            var.assign_add(scratch * tf.reshape(self.lr, shape))

    def weights_of(self, j: int) -> dict[str, list[np.ndarray]]:
        """Member ``j``'s Dense weights by layer name, as NumPy copies."""
        out: dict[str, list[np.ndarray]] = {}
        for (layer, _), var in zip(self.names, self.vars):
            out.setdefault(layer, []).append(var[j].numpy())
        return out


def stack_loss(logits: tf.Tensor, y: tf.Tensor, w: tf.Tensor, smoothing: tf.Variable, num_classes: int,
               multi_label: bool = False) -> tf.Tensor:
    """Per-member mean training loss (T,), as Keras's losses compute it, with label smoothing.

    Args:
        logits: (T, B, L). y: the batch's targets, ``model.head.head_labels``'s form: (B, 1) for two
            classes, (B, C) multi-hot rows, or (B,) class indices.
        w: (B,) per-row loss weights (ones without ``--class-weight``).
        smoothing: (T,) label smoothing of each member.

    Returns:
        (T,): Σ_b w_b · l_b / B, Keras's "sum_over_batch_size" reduction of a weighted batch, where
        l_b is the row's cross-entropy (for sigmoid logits the binary one averaged over the logits,
        as Keras's ``binary_crossentropy`` averages its last axis).
    """
    import tensorflow as tf

    ls = smoothing[:, None, None]
    if num_classes == 2 or multi_label:
        target = y[None] * (1.0 - ls) + 0.5 * ls
        per = tf.nn.relu(logits) - logits * target + tf.math.log1p(tf.exp(-tf.abs(logits)))
        return tf.reduce_mean(tf.reduce_mean(per, axis=-1) * w[None], axis=1)
    one_hot = tf.one_hot(tf.cast(y, tf.int32), num_classes)[None]
    target = one_hot * (1.0 - ls) + ls / num_classes
    return tf.reduce_mean(-tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=-1) * w[None], axis=1)


def stack_accuracy(logits: tf.Tensor, y: tf.Tensor, num_classes: int, multi_label: bool = False) -> tf.Tensor:
    """Per-member training accuracy (T,), unweighted as train-head's compiled metric: for sigmoid
    logits the share of (row, logit) pairs on the right side of 0 (``BinaryAccuracy(threshold=0)``)."""
    import tensorflow as tf

    if num_classes == 2 or multi_label:
        return tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), y[None]), tf.float32), axis=[1, 2])
    hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.cast(y, tf.int64)[None])
    return tf.reduce_mean(tf.cast(hit, tf.float32), axis=1)
