"""``Source``: what every image source offers (named splits of labelled images, keys, counts), and
the one decode step of the input path as a ``tf.data`` map.

Every source yields element-level ``tf.data`` dicts in a deterministic order::

    {"image": float32 (S, S, 3) raw 0–255, "label": int64 (), "key": string (), "error": string ()}

(a multi-label source, ``source.multi_label``: "label" is int64 (C,) multi-hot.) The sources
themselves: ``file_list`` (files below a root: class folders, label files, loose files) and
``sources`` (``open_source``, class folders, TFDS).
"""

from __future__ import annotations

import tensorflow as tf

from headstart.pipeline.errors import DataError


class Source:
    """A labelled image source with named splits.

    Attributes:
        spec: the SOURCE string as given.
        class_names: label index → name, sorted folder names or labels, or the TFDS label names.
        split_names: the splits this source offers, train/validation/test first.
        multi_label: elements carry "label" as an int64 (C,) multi-hot vector (C classes) instead
            of an int64 () index; only label files with a ``labels`` column or ``--multi-label``.
        notes: one-line remarks on how the source was read, for the user (e.g. rows kept once).
    """

    kind = ""
    multi_label = False

    def __init__(self, spec: str):
        self.spec = spec
        self.class_names: list[str] = []
        self.split_names: list[str] = []
        self.notes: list[str] = []

    def describe(self) -> dict:
        """Returns {"source", "kind", "splits": {name: spec}} (+ "root" for directories); JSON-ready.

        Everything here defines the content of the splits, so caches compare it on resume.
        """
        raise NotImplementedError

    def count(self, split: str, *, shard: tuple[int, int] | None = None) -> int | None:
        """Items in a split (or in its shard (I, N)), good and bad; None when not known cheaply."""
        raise NotImplementedError

    def keys(self, split: str) -> list[str]:
        """Keys of every item of a split (all shards), in dataset order."""
        raise NotImplementedError

    def dataset(self, split: str, image_size: int, *, max_pixels: int | None = None,
                shard: tuple[int, int] | None = None) -> tf.data.Dataset:
        """The split as element-level dicts (see the module docstring), in a deterministic order.

        Args:
            split: one of ``split_names``.
            image_size: S; images come out (S, S, 3) float32 raw 0–255.
            max_pixels: decompression-bomb limit; ``MAX_IMAGE_PIXELS`` when None.
            shard: (I, N) keeps only shard I of N (``shard_of``), in order; others are not decoded.

        Raises:
            DataError: an unknown split.
        """
        raise NotImplementedError

    def known_usable(self, split: str) -> tuple[list[int], list[str]] | None:
        """(items per class, reasons of the known-bad items) of a split, before any decoding; None
        when that is not known cheaply (TFDS)."""
        return None

    def _check_split(self, split: str) -> None:
        if split not in self.split_names:
            raise DataError(f"{self.spec}: no split '{split}' (it has {', '.join(self.split_names) or 'none'})")


def decode_map(load, image_size: int):
    """Wraps a Python (payload → (image, reason)) function as a tf.data map over (payload, label, key)."""
    # The shapes are lost through py_function, so they are set again.
    def fn(payload, label, key):
        image, error = tf.py_function(lambda p: load(p.numpy()), [payload], (tf.float32, tf.string))
        image.set_shape((image_size, image_size, 3))
        error.set_shape(())
        return {"image": image, "label": tf.cast(label, tf.int64), "key": key, "error": error}

    return fn
