"""Dataset + frozen backbone → feature cache, pipelined and resumable.

The input is an element-level ``tf.data.Dataset`` of dicts (``image`` float32 (S, S, 3) raw 0–255,
``label`` int64, ``key`` string, ``error`` string, empty when the image decoded). Bad images arrive
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

from headstart.features.errors import BadImagesError
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


@dataclass
class Progress:
    """Passed to the ``on_progress`` callback after every committed batch."""

    split: str
    done: int
    total: int | None
    images_per_second: float


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


def extract_split(
    writer: StoreWriter,
    split: str,
    dataset,
    extractor,
    *,
    batch_size: int = 64,
    total: int | None = None,
    augment=None,
    views: int = 0,
    seed: int = 0,
    max_bad: int | None = None,
    bad_so_far: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
) -> SplitReport:
    """Runs ``extractor`` over one split and commits the features batch by batch.

    Resumes from the writer's ``consumed`` count, so a killed run started again continues where the
    last committed batch ended. Batch boundaries stay where an uninterrupted run puts them (every
    commit covers exactly ``batch_size`` source items), which keeps the features bit-identical.

    Args:
        writer: an open store writer.
        split: split name, e.g. "train".
        dataset: element-level dataset of dicts (see the module docstring), in a fixed order.
        extractor: Keras model, (B, S, S, 3) raw 0–255 → (B, *feature_shape).
        batch_size: images per forward pass and per commit.
        total: number of source items in the split, for progress; None when unknown.
        augment: Keras model applied with ``training=True`` before the extractor for each of the
            ``views`` extra views; required when ``views`` > 0.
        views: number of augmented views to store per image (training split only).
        seed: seeds the augmentation per batch, so a resumed run draws the same views.
        max_bad: fail once more than this many images have been skipped in the whole run.
        bad_so_far: images skipped by earlier splits of the same run, counted against ``max_bad``.
        on_progress: called after each commit.

    Returns:
        A SplitReport for this split.

    Raises:
        BadImagesError: more than ``max_bad`` bad images. Committed batches stay in the cache.
    """
    import tensorflow as tf

    consumed, committed = writer.progress(split)
    report = SplitReport(split, rows=committed, consumed=consumed, resumed_from=consumed)
    if writer.is_done(split):
        return report

    # One signature with a free batch dimension: a single trace serves every batch, the short last
    # one included, and it happens here rather than inside the timed loop.
    signature = [tf.TensorSpec((None, *extractor.input_shape[1:]), tf.float32)]
    forward = tf.function(lambda x: extractor(x, training=False), input_signature=signature)
    forward.get_concrete_function()
    view_forward = None
    if views:
        if augment is None:
            raise ValueError("views > 0 needs an augmentation model")
        view_forward = tf.function(
            lambda x: extractor(augment(x, training=True), training=False), input_signature=signature
        )
        view_forward.get_concrete_function()

    # Whatever the caller built, ending the split must not wait on tf.data's autotune thread.
    batches = without_autotune_thread(dataset.skip(consumed).batch(batch_size).prefetch(tf.data.AUTOTUNE))
    commits: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def _write_loop() -> None:
        # HDF5 writes happen here so they overlap the next forward pass.
        while True:
            item = commits.get()
            if item is None:
                return
            if failure:
                continue
            try:
                writer.append(split, **item)
            except BaseException as exc:  # re-raised in the main thread
                failure.append(exc)

    thread = threading.Thread(target=_write_loop, name=f"store-writer-{split}", daemon=True)
    thread.start()
    start = time.perf_counter()
    batch_index = consumed // batch_size
    try:
        for batch in batches:
            if failure:
                break
            errors = [e.decode() for e in batch["error"].numpy()]
            keys = [k.decode() for k in batch["key"].numpy()]
            good = np.array([not e for e in errors])
            skipped = [(k, e) for k, e in zip(keys, errors) if e]
            # The whole batch goes through the backbone (static shapes, one trace); bad rows are
            # zero images whose outputs are dropped here.
            feats = forward(batch["image"]).numpy()[good]
            item = {
                "features": feats,
                "labels": batch["label"].numpy()[good].astype(np.int64),
                "keys": [k for k, g in zip(keys, good) if g],
                "pixel_std": pixel_std(batch["image"])[good],
                "skipped": skipped,
                "consumed": report.consumed + len(keys),
            }
            if views:
                stack = []
                for k in range(views):
                    _reseed(augment, seed, split, batch_index, k)
                    stack.append(view_forward(batch["image"]).numpy()[good])
                item["views"] = np.stack(stack, axis=1)
            commits.put(item)
            report.consumed += len(keys)
            report.rows += int(good.sum())
            report.skipped.extend(skipped)
            batch_index += 1
            if max_bad is not None and bad_so_far + len(report.skipped) > max_bad:
                raise BadImagesError(
                    f"{bad_so_far + len(report.skipped)} images skipped, more than --max-bad "
                    f"{max_bad}; last: {skipped[-1][0]} ({skipped[-1][1]})"
                )
            if on_progress is not None:
                elapsed = time.perf_counter() - start
                on_progress(Progress(split, report.consumed, total,
                                     (report.consumed - consumed) / max(elapsed, 1e-9)))
    finally:
        commits.put(None)
        thread.join()
        report.seconds = time.perf_counter() - start
    if failure:
        raise failure[0]
    writer.finish_split(split)
    return report


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
    for layer in augment._flatten_layers():
        for i, generator in enumerate(getattr(layer, "_seed_generators", [])):
            generator.state.assign(np.array([base + i, 0], dtype=generator.state.dtype))
