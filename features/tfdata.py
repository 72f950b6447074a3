"""``tf.data`` settings every headstart input pipeline shares.

TF's autotuning runs a model thread per iterator that sleeps between optimisation rounds, and an
iterator's destructor waits for that thread to wake up. So ending (or abandoning) an iterator can
block for seconds, at random, at every split and epoch (figures: docs/measurements.md).
With the model thread off there is no wait; ``AUTOTUNE`` map parallelism then means one call per
CPU core, and ``prefetch(AUTOTUNE)`` keeps its own buffer sizing, which runs without that thread.
"""

from __future__ import annotations


def without_autotune_thread(dataset):
    """Returns ``dataset`` with tf.data's autotune model thread turned off (see the module doc).

    Options flow downstream, so applying this once to a source dataset covers every dataset built
    from it. Elements and their order are unchanged.

    Args:
        dataset: any ``tf.data.Dataset``.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
