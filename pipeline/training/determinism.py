"""``--deterministic``: TensorFlow's op determinism switched on for one stage, and off again after it."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow op determinism (``--deterministic``) for the duration of the block, then as before.

    With a seed it makes two CPU runs give bit-identical weights (train-head and finetune).
    """
    # enable_op_determinism is process-wide and would leak into whatever runs next in the same
    # process (other tests, finetune after train-head); restore the previous state on exit. TF has
    # no public switch-off, hence the guarded private import.
    if not enabled:
        yield
        return
    import tensorflow as tf

    try:
        from tensorflow.python.framework import config as tf_config

        was_enabled = tf_config.is_op_determinism_enabled()
        disable = tf_config.disable_op_determinism
    except (ImportError, AttributeError):  # pragma: no cover - older/newer TF layouts
        was_enabled, disable = True, None
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled and disable is not None:
            disable()
