"""Sources whose items are files below a root: the base of class folders and label files, and
``FilesSource`` for loose files (``predict``).

Each file is decoded on its own inside ``tf.py_function`` (``image.load_or_reason``: header checks,
then TF decode → RGB → ``tf.image.resize``), so a bad file becomes one zero image with a reason in
``error``: it is never dropped and never takes a batch of good images with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tensorflow as tf

from headstart.features.tfdata import without_autotune_thread
from headstart.pipeline.data.image import load_or_reason
from headstart.pipeline.data.source import Source, decode_map
from headstart.pipeline.data.splits import shard_of


class FileListSource(Source):
    """A source whose items are files below ``root``: split → [(key, label)], keys relative to it.

    ``_reasons`` maps the keys of items known to be bad before any decoding (a directory loop, a
    bad row of a label file) to their reason; they stay items of their split, so they are skipped
    and reported one at a time like bad images. A label is an int, or a multi-hot tuple (C,) for a
    multi-label source.
    """

    def __init__(self, spec: str, root: Path):
        super().__init__(spec)
        self.root = root.resolve()
        self._items: dict[str, list[tuple[str, Any]]] = {}
        self._reasons: dict[str, str] = {}

    def count(self, split: str, *, shard: tuple[int, int] | None = None) -> int:
        return len(self._shard_items(split, shard))

    def known_usable(self, split: str) -> tuple[list[int], list[str]]:
        from headstart.pipeline.data.coverage import class_counts

        self._check_split(split)
        good = [label for key, label in self._items[split] if key not in self._reasons]
        reasons = [self._reasons[key] for key, _ in self._items[split] if key in self._reasons]
        return class_counts(good, len(self.class_names)), reasons

    def keys(self, split: str) -> list[str]:
        """Keys (paths relative to the root, forward slashes) of a split, in dataset order."""
        self._check_split(split)
        return [key for key, _ in self._items[split]]

    def _shard_items(self, split: str, shard: tuple[int, int] | None) -> list[tuple[str, Any]]:
        self._check_split(split)
        items = self._items[split]
        if shard is None:
            return items
        index, count = shard
        # Filtering the file list means other shards' files are never even opened.
        return [(key, label) for key, label in items if shard_of(key, count) == index]

    def dataset(self, split: str, image_size: int, *, max_pixels: int | None = None,
                shard: tuple[int, int] | None = None) -> tf.data.Dataset:
        items = self._shard_items(split, shard)
        root = os.fsencode(self.root)
        paths = tf.constant([os.path.join(root, os.fsencode(k)) for k, _ in items], tf.string, shape=(len(items),))
        label_shape = (len(items), len(self.class_names)) if self.multi_label else (len(items),)
        labels = tf.constant([label for _, label in items], tf.int64, shape=label_shape)
        keys = tf.constant([k for k, _ in items], tf.string, shape=(len(items),))
        # Items known bad before decoding (listed so that each is reported once, among the skipped)
        # carry their reason and never reach Python: 100,000 rows naming missing files took a
        # py_function call each.
        known = tf.constant([self._reasons.get(k, "") for k, _ in items], tf.string, shape=(len(items),))

        def load(path: bytes):
            return load_or_reason(os.fsdecode(path), image_size, max_pixels=max_pixels)

        decode = decode_map(load, image_size)

        def element(path, label, key, reason):
            return tf.cond(tf.equal(reason, ""), lambda: decode(path, label, key),
                           lambda: {"image": tf.zeros((image_size, image_size, 3), tf.float32),
                                    "label": tf.cast(label, tf.int64), "key": key, "error": reason})

        ds = without_autotune_thread(tf.data.Dataset.from_tensor_slices((paths, labels, keys, known)))
        return ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class FilesSource(FileListSource):
    """Loose image files (``predict``): one split, "files", of the paths given in their order.

    Unlabelled: every label is 0 and the one class is "?". Keys are the absolute paths, so the
    files are read wherever they are; the rows come back in the order given.
    """

    kind = "files"
    SPLIT = "files"

    def __init__(self, paths: list[str]):
        super().__init__("files", Path(os.sep))
        self.class_names, self.split_names = ["?"], [self.SPLIT]
        self._items = {self.SPLIT: [(os.path.abspath(p), 0) for p in paths]}

    def describe(self) -> dict:
        return {"source": self.spec, "kind": self.kind, "files": len(self._items[self.SPLIT])}
