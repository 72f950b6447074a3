"""The labelled image batches a fine-tuning ``fit`` trains and validates on.

The good images of one split of a ``Source`` (a bad file is dropped here, never trained on), as
(image, target) pairs in the target form the head's loss takes, optionally shuffled and weighted
per class (``--class-weight``).
"""

from __future__ import annotations

from typing import Sequence, TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

    from headstart.pipeline.data.source import Source


def labelled_dataset(source: Source, split: str, *, image_size: int, num_classes: int, batch_size: int,
                     shuffle_seed: int | None = None, shuffle_buffer: int = 256, multi_label: bool = False,
                     class_weights: Sequence[float] | None = None) -> tf.data.Dataset:
    """Batches of (image, target) of the good images of one split, for ``fit`` and ``evaluate``.

    Args:
        source: a ``headstart.pipeline.data.sources.Source``.
        split: split name.
        image_size: S.
        num_classes: decides the target: float32 (1,) for two classes (binary cross-entropy against
            one logit), int64 () otherwise.
        batch_size: images per batch.
        shuffle_seed: shuffle (reshuffled every epoch) with this seed; None keeps source order.
        shuffle_buffer: images held by the shuffle buffer.
        multi_label: the source's labels are multi-hot (C,); the target is float32 (C,).
        class_weights: one loss weight per class (``--class-weight``, single-label): each element
            then also carries its class's weight, which ``fit`` applies as a sample weight.

    Returns:
        ``tf.data.Dataset`` of (float32 (B, S, S, 3), target (B, 1), (B,) or (B, C)), plus float32
        (B,) sample weights with ``class_weights``.
    """
    import tensorflow as tf

    weights = None if class_weights is None else tf.constant(list(class_weights), tf.float32)

    def to_pair(element):
        label = element["label"]
        if multi_label:
            target = tf.reshape(tf.cast(label, tf.float32), (num_classes,))
        elif num_classes == 2:
            target = tf.reshape(tf.cast(label, tf.float32), (1,))
        else:
            target = tf.cast(label, tf.int64)
        if weights is None:
            return element["image"], target
        return element["image"], target, tf.gather(weights, tf.cast(label, tf.int64))

    ds = source.dataset(split, image_size).filter(lambda e: tf.equal(tf.strings.length(e["error"]), 0))
    if shuffle_seed is not None:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
