"""Dataset + frozen backbone → feature cache, pipelined and resumable.

The input is an element-level ``tf.data.Dataset`` of dicts (``image`` float32 (S, S, 3) raw 0–255,
``label`` int64 () — or int64 (C,) multi-hot for a multi-label source, stored as the cache's
(N, C) label rows — ``key`` string, ``error`` string, empty when the image decoded). Bad images arrive
as zero images with a reason, so they are skipped one at a time and batches never lose good images.

Overlap: ``tf.data`` prefetching decodes the next batches while the backbone runs, and a writer
thread commits the previous batch to HDF5, so the forward pass is the only thing on the critical
path.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.features.errors import Arg, BadImagesError
from headstart.features.store import StoreWriter
from headstart.features.tfdata import without_autotune_thread


@dataclass
class SplitReport:
    """What happened to one split: rows written, images skipped, throughput."""

    split: str
    rows: int = 0
    consumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0

    @property
    def images_per_second(self) -> float:
        done = self.consumed - self.resumed_from
        return done / self.seconds if self.seconds > 0 else 0.0


def find_bad_images(dataset, *, batch_size: int = 64) -> list[tuple[str, str]]:
    """Decodes a whole split without the backbone and returns every (key, reason) that failed.

    Used by ``--strict`` so the first bad file stops the run before any feature is written.

    Args:
        dataset: element-level dataset as described in the module docstring.
        batch_size: decoding batch; has no effect on the result.
    """
    import tensorflow as tf

    bad = []
    slim = dataset.map(lambda e: {"key": e["key"], "error": e["error"]})
    for batch in without_autotune_thread(slim.batch(batch_size).prefetch(tf.data.AUTOTUNE)):
        for key, error in zip(batch["key"].numpy(), batch["error"].numpy()):
            if error:
                bad.append((key.decode(), error.decode()))
    return bad


@dataclass(frozen=True)
class AugmentedViews:
    """Extra augmented views stored per image (the training split's fast-path augmentation).

    Attributes:
        model: Keras model applied with ``training=True`` before the extractor, once per view.
        count: views per image (at least 1).
        seed: seeds the augmentation per (split, batch, view), so a resumed run draws the same views.
        originals: the originals' rows looked up by key (``cached_originals``) instead of computed:
            a cache of views of images another cache already holds (an augmentation trial's item
            cache) then costs one backbone pass per view, not one more for the originals.
    """

    model: object
    count: int
    seed: int = 0
    originals: Callable[[list[str]], dict] | None = None


#: The cache-config keys two caches must share for one's rows to stand in for the other's.
_NUMBERS_KEYS = ("backbone", "alpha", "weights_fingerprint", "image_size", "pooling", "preprocessing",
                 "feature_shape", "dtype", "tap", "exif_orientation")


def cached_originals(path: str, split: str, writer: StoreWriter) -> Callable[[list[str]], dict]:
    """Looks up rows of ``path``'s ``split`` by key, as ``StoreWriter.append`` takes them.

    Args:
        path: a finished cache of the same backbone, weights, size, tap and source.
        split: its split.
        writer: the cache the rows go into: its backbone, weights, size, tap, feature shape and dtype
            must be ``path``'s, or ``StoreError`` names the first that differs.

    Returns:
        keys → {"features" (n, *feature_shape), "pixel_std" (n,) when recorded, "activations"
        (n, *tap_shape) when tapped}; a key the cache lacks raises ``StoreError`` naming it.
    """
    from headstart.features.cache import open_cache
    from headstart.features.errors import StoreError

    cache = open_cache(path)
    # What shapes the cached numbers (the tap's shape follows from backbone, size and tap).
    for key in _NUMBERS_KEYS:
        if cache.config.get(key) != writer.config.get(key):
            raise StoreError(f"{path}: its {key} {cache.config.get(key)!r} is not the views' cache's "
                             f"{writer.config.get(key)!r}; its rows cannot be copied")
    data = cache.split(split)
    index = {key: i for i, key in enumerate(data.keys)}

    def rows(keys: list[str]) -> dict:
        missing = [k for k in keys if k not in index]
        if missing:
            raise StoreError(f"{path}: split '{split}' has no row for {missing[0]} (the views' source changed?)")
        at = np.array([index[k] for k in keys], dtype=np.int64)
        order = np.argsort(at)  # h5py reads increasing indices; put them back in the batch's order
        back = np.argsort(order)
        read = lambda ds: np.asarray(ds[at[order]])[back] if len(at) else np.asarray(ds[:0])  # noqa: E731
        out = {"features": read(data.features)}
        if data.pixel_std is not None:
            out["pixel_std"] = data.pixel_std[at]
        if data.activations is not None:
            out["activations"] = read(data.activations)
        return out

    return rows


def extract_split(
    writer: StoreWriter,
    split: str,
    dataset,
    extractor,
    *,
    batch_size: int = 64,
    total: int | None = None,
    views: AugmentedViews | None = None,
    max_bad: int | None = None,
    bad_so_far: int = 0,
    reporter: Reporter = QUIET,
) -> SplitReport:
    """Runs ``extractor`` over one split and commits the features batch by batch.

    Resumes from the writer's ``consumed`` count; every commit covers exactly ``batch_size``
    source items, so batch boundaries (and the features, bit for bit) are those of an
    uninterrupted run.

    Args:
        writer: an open store writer.
        split: split name, e.g. "train".
        dataset: element-level dataset of dicts (see the module docstring), in a fixed order.
        extractor: Keras model, (B, S, S, 3) raw 0–255 → (B, *feature_shape).
        batch_size: images per forward pass and per commit.
        total: number of source items in the split, for progress; None when unknown.
        views: augmented views to store per image, or None.
        max_bad: fail once more than this many images have been skipped in the whole run.
        bad_so_far: images skipped by earlier splits of the same run, counted against ``max_bad``.
        reporter: draws the progress line ``extract SPLIT`` after each commit.

    Returns:
        A SplitReport for this split.

    Raises:
        BadImagesError: more than ``max_bad`` bad images. Committed batches stay in the cache.
    """
    consumed, committed = writer.progress(split)
    report = SplitReport(split, rows=committed, consumed=consumed, resumed_from=consumed)
    if writer.is_done(split):
        return report
    start, line = time.perf_counter(), None
    try:
        with _BackgroundCommits(writer, split) as commits:
            for item in _items(dataset, extractor, views, report, split=split, batch_size=batch_size,
                               feature_shape=writer.feature_shape, tap_shape=writer.tap_shape):
                if commits.failed:
                    break
                _count(report, item)
                commits.put(item)
                _check_max_bad(report, item["skipped"], max_bad=max_bad, bad_so_far=bad_so_far)
                rate = (report.consumed - consumed) / max(time.perf_counter() - start, 1e-9)
                line = line or reporter.progress(f"extract {split}")  # opened at the first commit
                line.update(report.consumed, total, rate)
    finally:
        report.seconds = time.perf_counter() - start
        if line is not None:
            line.close()
    writer.finish_split(split)
    return report


def _items(dataset, extractor, views: AugmentedViews | None, report: SplitReport, *, split: str, batch_size: int,
           feature_shape: tuple[int, ...], tap_shape: tuple[int, ...] | None):
    """The split's batches after the committed ones, each as the commit it makes (features, and views)."""
    # Copied originals need no forward of their own (and no trace of it).
    forward = _traced_forward(extractor) if not (views and views.originals is not None) else None
    view_forward = _traced_forward(extractor, views.model) if views else None
    batch_index = report.consumed // batch_size
    for batch in _batches(dataset, skip=report.consumed, batch_size=batch_size):
        if views and views.originals is not None:
            item = _features_of(batch, None, consumed=report.consumed, feature_shape=feature_shape,
                                tap_shape=tap_shape, lookup=views.originals)
        else:
            item = _features_of(batch, forward, consumed=report.consumed, feature_shape=feature_shape,
                                tap_shape=tap_shape)
        if views:
            item["views"], view_activations = _views_of(batch, view_forward, views, item["good"], split=split,
                                                        batch_index=batch_index, feature_shape=feature_shape,
                                                        tap_shape=tap_shape)
            if view_activations is not None:
                item["view_activations"] = view_activations
        batch_index += 1
        yield item


def _traced_forward(extractor, augment=None):
    """``extractor`` (after ``augment`` in training mode, when given) as one traced function.

    One signature with a free batch dimension: a single trace serves every batch, the short last
    one included, and it happens here rather than inside the timed loop.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *extractor.input_shape[1:]), tf.float32)]
    if augment is None:
        forward = tf.function(lambda x: extractor(x, training=False), input_signature=signature)
    else:
        forward = tf.function(lambda x: extractor(augment(x, training=True), training=False),
                              input_signature=signature)
    forward.get_concrete_function()
    return forward


def _batches(dataset, *, skip: int, batch_size: int):
    import tensorflow as tf

    # Whatever the caller built, ending the split must not wait on tf.data's autotune thread.
    return without_autotune_thread(dataset.skip(skip).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _outputs(outputs, good: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, activations or None) of the good rows, from a plain or a tapped extractor."""
    if isinstance(outputs, (list, tuple)):
        return outputs[0].numpy()[good], outputs[1].numpy()[good]
    return outputs.numpy()[good], None


def _features_of(batch, forward, *, consumed: int, feature_shape: tuple[int, ...],
                 tap_shape: tuple[int, ...] | None = None, lookup: Callable[[list[str]], dict] | None = None) -> dict:
    """One batch through the backbone → the rows ``StoreWriter.append`` takes (+ "good", its mask).

    A tapped extractor (two outputs) adds "activations" (B_good, *tap_shape). With ``lookup``
    (``cached_originals``) the good rows are copied from another cache instead of computed."""
    errors = [e.decode() for e in batch["error"].numpy()]
    keys = [k.decode() for k in batch["key"].numpy()]
    good = np.array([not e for e in errors])
    # The whole batch goes through the backbone (static shapes, one trace); bad rows are zero
    # images whose outputs are dropped here. A batch without a good image (a label file naming
    # missing files) skips the backbone: 100,000 such rows were 1,563 forward passes for nothing.
    activations = None
    if good.any() and lookup is not None:
        found = lookup([k for k, g in zip(keys, good) if g])
        features, activations = found["features"], found.get("activations")
        stds = found["pixel_std"] if "pixel_std" in found else pixel_std(batch["image"])[good]
    elif good.any():
        features, activations = _outputs(forward(batch["image"]), good)
        stds = pixel_std(batch["image"])[good]
    else:
        features, stds = np.zeros((0, *feature_shape), np.float32), np.zeros((0,), np.float32)
        if tap_shape:
            activations = np.zeros((0, *tap_shape), np.float16)
    item = {} if activations is None else {"activations": activations}
    return item | {
        "features": features,
        "labels": batch["label"].numpy()[good].astype(np.int64),
        "keys": [k for k, g in zip(keys, good) if g],
        "pixel_std": stds,
        "skipped": [(k, e) for k, e in zip(keys, errors) if e],
        "consumed": consumed + len(keys),
        "good": good,
    }


def _views_of(batch, view_forward, views: AugmentedViews, good: np.ndarray, *, split: str,
              batch_index: int, feature_shape: tuple[int, ...],
              tap_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The augmented views of one batch, reseeded per view.

    Returns:
        (views (B_good, K, *feature_shape), their activations (B_good, K, *tap_shape) or None
        without a tap).
    """
    if not good.any():  # nothing to keep: no forward pass (see _features_of)
        empty = None if not tap_shape else np.zeros((0, views.count, *tap_shape), np.float16)
        return np.zeros((0, views.count, *feature_shape), np.float32), empty
    stack, taps = [], []
    for k in range(views.count):
        _reseed(views.model, views.seed, split, batch_index, k)
        features, activations = _outputs(view_forward(batch["image"]), good)
        stack.append(features)
        taps.append(activations)
    return np.stack(stack, axis=1), (np.stack(taps, axis=1) if tap_shape else None)


def _count(report: SplitReport, item: dict) -> None:
    report.rows += int(item["good"].sum())
    report.skipped.extend(item["skipped"])
    report.consumed = item["consumed"]


def _check_max_bad(report: SplitReport, skipped: list, *, max_bad: int | None, bad_so_far: int) -> None:
    bad = bad_so_far + len(report.skipped)
    if max_bad is not None and bad > max_bad:
        raise BadImagesError(f"{bad} images skipped, more than ", Arg("max_bad", max_bad),
                             f"; last: {skipped[-1][0]} ({skipped[-1][1]})", field="max_bad", value=max_bad)


class _BackgroundCommits:
    """A writer thread that commits batches to HDF5, so writes overlap the next forward pass.

    ``put`` queues a batch (at most two wait); the first failure in the thread stops further
    writes, shows in ``failed``, and is raised when the ``with`` block ends.
    """

    def __init__(self, writer: StoreWriter, split: str):
        self._writer, self._split = writer, split
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name=f"store-writer-{split}", daemon=True)

    @property
    def failed(self) -> bool:
        return bool(self._failure)

    def put(self, item: dict) -> None:
        self._queue.put({k: v for k, v in item.items() if k != "good"})

    def __enter__(self) -> _BackgroundCommits:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._failure and exc_info[0] is None:
            raise self._failure[0]

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._failure:
                continue  # drain the queue; the main thread stops at its next batch
            try:
                self._writer.append(self._split, **item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self._failure.append(exc)


def pixel_std(images) -> np.ndarray:
    """Standard deviation of each image's pixels over height, width and channels.

    Measured while the decoded pixels are at hand, so ``headstart diagnose`` can flag blank,
    black or flat-colour images without decoding anything again. Near 0 means near-constant.

    Args:
        images: (B, S, S, 3) raw 0–255 pixels (a tensor or array).

    Returns:
        (B,) float32.
    """
    import tensorflow as tf

    flat = tf.reshape(images, (tf.shape(images)[0], -1))
    return tf.math.reduce_std(flat, axis=1).numpy().astype(np.float32)


def _reseed(augment, seed: int, split: str, batch_index: int, view: int) -> None:
    # Keras random layers draw from SeedGenerator state that advances with every call; resetting it
    # from (seed, split, batch, view) makes a resumed run draw exactly the views the killed run would.
    digest = hashlib.sha256(f"{seed}/{split}/{batch_index}/{view}".encode()).digest()
    base = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    # Keras has no public way to reach a model's seed generators: _flatten_layers (all nested
    # layers) and _seed_generators are what Layer itself uses to track them.
    for layer in augment._flatten_layers():
        for i, generator in enumerate(getattr(layer, "_seed_generators", [])):
            generator.state.assign(np.array([base + i, 0], dtype=generator.state.dtype))
