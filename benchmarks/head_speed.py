"""Benchmark: an epoch of `train-head` on cached features versus an epoch of the guide's first workflow.

The guide's first workflow trains the full model end to end with the backbone frozen:
raw image → augmentation → preprocessing → frozen backbone (BatchNorm in inference) → pooling →
head. Every epoch pays the backbone's forward pass again. The fast workflow pays it once
(`extract-features`) and then trains the same head on the cache.

Both run in this one process on the same generated JPEGs and the same train/validation split (read
back from the cache's keys). The end-to-end model gets its images already decoded in memory, which
flatters it: the real workflow decodes every epoch too. Each side's epoch includes its validation
pass. Per-epoch times are steady state (the first epoch, which traces the graph, is reported
separately). Target: ≥ 100× per epoch for Xception at 150 px with random weights.

Then the total time of extract-once-then-N-epochs (measured: extraction + a full `train_head` run
of N epochs, run directory and all) versus N frozen-backbone epochs (decoding the images, building
the model, then the epochs: measured up to ``--e2e-epochs``, beyond that extrapolated with the best
steady epoch and marked "~").

    python benchmarks/head_speed.py [--images 300] [--backbone xception] [--image-size 150]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """Writes ``count`` JPEGs of mixed sizes, two classes with different mean colours; returns root."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sizes = [(180, 240), (320, 240), (150, 150), (400, 300), (256, 200)]
    for i in range(count):
        cls = i % 2
        h, w = sizes[i % len(sizes)]
        base = np.array([200, 60, 60] if cls else [60, 60, 200], dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        d = root / ("cats", "dogs")[cls]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return root


def extract(folder: Path, out: Path, args) -> float:
    """Runs `extract-features` (train + validation splits); returns its wall time in seconds."""
    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.commands.extraction import extract_features

    config = ExtractConfig(source=str(folder), out=str(out), backbone=args.backbone, weights="none",
                           alpha=args.alpha, image_size=args.image_size, batch_size=args.batch_size,
                           validation_fraction=0.2, test_fraction=0.0, splits=("train", "validation"),
                           overwrite=True)
    start = time.perf_counter()
    extract_features(config)
    return time.perf_counter() - start


def head_run(cache: Path, out: Path, epochs: int, args) -> tuple[float, list[float]]:
    """A full `train_head` run; returns (total seconds, per-epoch seconds)."""
    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.commands.head_training import train_head

    start = time.perf_counter()
    config = HeadConfig(features=str(cache), out=str(out), epochs=epochs, patience=epochs,
                        batch_size=args.head_batch_size, overwrite=True)
    train_head(config)
    total = time.perf_counter() - start
    import json

    return total, json.loads((out / "run.json").read_text())["timings"]["epoch_seconds"]


def end_to_end_epochs(folder: Path, cache: Path, epochs: int, args) -> tuple[float, list[float]]:
    """The guide's first workflow (augment → frozen backbone → head), trained end to end.

    Returns:
        (setup seconds: decoding the images and building the model, seconds of each epoch).
    """
    import keras
    import numpy as np

    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.features.cache import open_cache
    from headstart.pipeline.data.augment import build_augmentation
    from headstart.pipeline.data.image import load_image
    from headstart.pipeline.model.head import build_head, compile_head, head_labels

    start = time.perf_counter()
    data = {}
    with open_cache(cache) as c:
        for split in ("train", "validation"):
            s = c.split(split)
            images = np.stack([load_image(str(folder / key), args.image_size) for key in s.keys])
            data[split] = (images, head_labels(s.labels, 2))
    keras.utils.set_random_seed(0)
    base, preprocessing, pooling, info = build_backbone_parts(args.backbone, weights="none",
                                                              image_size=args.image_size, alpha=args.alpha)
    base.trainable = False  # the guide's frozen backbone; BatchNorm is frozen in every chain
    model = compile_head(build_chain(base, preprocessing, pooling, head=build_head(info.feature_shape, 2),
                                     augmentation=build_augmentation()), 2, 1e-3)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    seconds: list[float] = []
    setup = time.perf_counter() - start
    model.fit(*data["train"], validation_data=data["validation"], epochs=epochs,
              batch_size=args.batch_size, verbose=0, callbacks=[Timer()])
    return setup, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32, help="end-to-end and extraction batch")
    parser.add_argument("--head-batch-size", type=int, default=64, help="train-head batch (its default)")
    parser.add_argument("--e2e-epochs", type=int, default=3, help="end-to-end epochs actually run")
    parser.add_argument("--ns", default="1,5,20")
    args = parser.parse_args()
    ns = [int(n) for n in args.ns.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_jpegs(tmp / "images", args.images)
        cache = tmp / "features.h5"
        extract_seconds = extract(folder, cache, args)
        head_totals = {}
        head_epochs: list[float] = []
        for n in ns:
            head_totals[n], epochs = head_run(cache, tmp / f"run{n}", n, args)
            head_epochs.extend(epochs[1:])
        e2e_setup, e2e = end_to_end_epochs(folder, cache, max(2, args.e2e_epochs), args)

    # Best of the steady epochs on both sides: the fairest figure on a machine shared with others.
    head_epoch = min(head_epochs)
    e2e_first, e2e_epoch = e2e[0], min(e2e[1:])
    print(f"{args.images} images, {args.backbone} at {args.image_size} px, weights none")
    print(f"extract-features (once):           {extract_seconds:8.2f} s")
    print(f"train-head epoch (steady, best):   {head_epoch * 1000:8.2f} ms")
    print(f"end-to-end epoch (steady, best):   {e2e_epoch * 1000:8.2f} ms  (first epoch {e2e_first:.2f} s, "
          f"setup {e2e_setup:.2f} s)")
    print(f"per-epoch speed-up:                {e2e_epoch / head_epoch:8.1f}x  (target >= 100x)")
    print(f"{'N':>3} | {'extract + N head epochs':>24} | {'N frozen e2e epochs':>20} | ratio")
    for n in ns:
        if n <= len(e2e):
            frozen, mark = e2e_setup + sum(e2e[:n]), " "
        else:
            frozen, mark = e2e_setup + sum(e2e) + (n - len(e2e)) * e2e_epoch, "~"
        fast = extract_seconds + head_totals[n]
        print(f"{n:>3} | {fast:22.2f} s | {mark}{frozen:18.2f} s | {frozen / fast:5.1f}x")


if __name__ == "__main__":
    main()
