"""Benchmark: the time per epoch of `finetune()` versus a plain hand-written `model.fit`.

Both sides fine-tune the same model (rebuilt from one head run: same backbone weights, head weights,
`--unfreeze`, optimizer and learning rate) on the same `tf.data` input (``labelled_dataset``: the
source's decode path, shuffled, batched, prefetched), with the same validation split, in this one
process. They run alternately, R rounds, so drift in machine load hits both. An epoch is timed by
the same callback on both sides, from ``on_epoch_begin`` to ``on_epoch_end`` after validation; on
the `finetune()` side it runs after the resume backup's commit, so the backup is inside the time.
The first epoch (graph tracing) is reported apart. Of the rest it prints the best and the median
wall time and the median CPU time of this process (all threads): on a machine shared with other jobs
wall times swing by 2-4x between epochs, while CPU time only counts work done here.

`finetune()` also pays fixed costs the plain fit does not: the parity check, evaluating the seeded
and fine-tuned model, the test split, saving `model.keras` and the run files. Their total is printed
as "fixed overhead per run".

    python benchmarks/finetune_overhead.py [--source DIR] [--images 400] [--backbone mobilenet_v2]
        [--alpha 0.35] [--image-size 128] [--weights none|PATH] [--epochs 3] [--rounds 2]

Without ``--source`` it writes ``--images`` JPEGs of two colour classes to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """Writes ``count`` JPEGs of mixed sizes as ``{train,validation}/{cats,dogs}/``; returns root."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sizes = [(180, 240), (320, 240), (150, 150), (256, 200)]
    for i in range(count):
        cls = i % 2
        split = "validation" if i % 5 == 0 else "train"
        h, w = sizes[i % len(sizes)]
        base = np.array([200, 60, 60] if cls else [60, 60, 200], dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        d = root / split / ("cats", "dogs")[cls]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return root


def make_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall and CPU seconds (all threads of this process) per epoch, validation included."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t0)
            self.cpu.append(time.process_time() - self._c0)

    return EpochTimer()


def plain_fit(head_dir: Path, source_dir: Path, args):
    """The hand-written side: the same model (rebuilt by the same recipe), same data, `model.fit`,
    nothing else. Returns (timer, total)."""
    import keras

    from headstart.pipeline.data.augment import build_augmentation
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.model.unfreeze import parse_unfreeze
    from headstart.pipeline.model.assembly import unfreeze_backbone
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.training.labelled_dataset import labelled_dataset

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    rebuilt = RunDir.open(head_dir, kind="head", recipe=True).rebuild(
        augmentation=build_augmentation("flip,rotate=0.1", seed=0))
    model, size = rebuilt.model, rebuilt.info.image_size
    unfreeze_backbone(model, parse_unfreeze("all"))
    compile_head(model, 2, 1e-5)
    source = resolve_source(str(source_dir))
    buffer = max(64, min(source.count("train"), (256 << 20) // (size * size * 12)))
    train = labelled_dataset(source, "train", image_size=size, num_classes=2, batch_size=args.batch_size,
                             shuffle_seed=0, shuffle_buffer=buffer)
    val = labelled_dataset(source, "validation", image_size=size, num_classes=2, batch_size=args.batch_size)
    timer = make_timer()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")  # as finetune() does
        model.fit(train, validation_data=val, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[timer])
    return timer, time.perf_counter() - start


def headstart_finetune(head_dir: Path, source_dir: Path, out: Path, args):
    """The `finetune()` side; returns (epoch timer, total seconds of the call)."""
    import json

    from headstart.pipeline.config import FinetuneConfig
    from headstart.pipeline.finetuning.finetuning import finetune

    timer = make_timer()
    start = time.perf_counter()
    result = finetune(FinetuneConfig(source=str(source_dir), head=str(head_dir), out=str(out), epochs=args.epochs,
                            batch_size=args.batch_size, patience=args.epochs, overwrite=True), callbacks=[timer])
    backup = json.loads((out / "run.json").read_text())["timings"]["backup_seconds"]
    print(f"    finetune() resume backup per epoch: {', '.join(f'{b:.2f}' for b in backup)} s")
    return timer, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder with train/ and validation/ class folders")
    parser.add_argument("--images", type=int, default=400, help="generated images when no --source")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch traces the graph)")

    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.source or write_jpegs(tmp / "images", args.images)
        extract_features(ExtractConfig(source=str(source), out=str(tmp / "f.h5"), backbone=args.backbone,
                                       alpha=args.alpha, weights=args.weights, image_size=args.image_size,
                                       splits=("train", "validation")))
        train_head(HeadConfig(features=str(tmp / "f.h5"), out=str(tmp / "head"), epochs=5))
        print(f"{args.backbone} alpha {args.alpha} at {args.image_size} px, weights {args.weights}, "
              f"{source}, batch {args.batch_size}, {args.epochs} epochs x {args.rounds} rounds")
        results = {"plain model.fit": [], "finetune()": []}
        for r in range(args.rounds):
            for name in (("plain model.fit", "finetune()") if r % 2 == 0 else ("finetune()", "plain model.fit")):
                if name == "finetune()":
                    timer, total = headstart_finetune(tmp / "head", source, tmp / "ft", args)
                else:
                    timer, total = plain_fit(tmp / "head", source, args)
                results[name].append((timer, total))
                print(f"  round {r + 1} {name:16s} epochs {', '.join(f'{s:.2f}' for s in timer.seconds)} s "
                      f"(CPU {', '.join(f'{s:.1f}' for s in timer.cpu)} s); call {total:.1f} s")
        rows = {}
        for name, runs in results.items():
            wall = [s for timer, _ in runs for s in timer.seconds[1:]]
            cpu = [s for timer, _ in runs for s in timer.cpu[1:]]
            rows[name] = {"best": min(wall), "median": statistics.median(wall), "cpu": statistics.median(cpu),
                          "first": statistics.median([t.seconds[0] for t, _ in runs]),
                          "fixed": statistics.median([total - sum(t.seconds) for t, total in runs])}
        plain, ours = rows["plain model.fit"], rows["finetune()"]
        for key, label in (("best", "per epoch, best wall"), ("median", "per epoch, median wall"),
                           ("cpu", "per epoch, median CPU")):
            print(f"{label + ' (first excluded):':38s} plain {plain[key]:7.3f} s, finetune() {ours[key]:7.3f} s, "
                  f"overhead {100 * (ours[key] / plain[key] - 1):+.1f}% (target <= 10%)")
        print(f"{'first epoch (tracing):':38s} plain {plain['first']:7.2f} s, finetune() {ours['first']:7.2f} s")
        print(f"fixed cost per run outside the epochs: plain {plain['fixed']:.1f} s (build), "
              f"finetune() {ours['fixed']:.1f} s (build, parity, evaluations, saving)")


if __name__ == "__main__":
    main()
