"""Benchmark: `extract-features` end to end versus the bare backbone forward pass.

Both run in this one process on the same generated JPEGs (mixed sizes), alternating for
``--repeats`` rounds; we report the ratio of the best of each and the median of the per-round ratios
(target ≥ 0.90 for Xception at 150 px, weights none). This machine is shared and noisy, so one round
proves little; the median of paired rounds is the figure to quote.
Then peak RSS of extraction over N and 4N images, each in a fresh subprocess (target: < 10% more).

    python benchmarks/extract_throughput.py [--images 256] [--backbone xception] [--image-size 150]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """Writes ``count`` JPEGs of mixed sizes into two class folders; returns root."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sizes = [(180, 240), (320, 240), (150, 150), (400, 300), (256, 200)]
    for i in range(count):
        cls = "a" if i % 2 == 0 else "b"
        h, w = sizes[i % len(sizes)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return root


def bare_forward(folder: Path, args) -> float:
    """Images/s of the extractor alone on pre-decoded, pre-resized arrays in memory."""
    import numpy as np
    import tensorflow as tf

    from headstart.features.chain import build_extractor
    from headstart.pipeline.data.image import load_image

    files = sorted(folder.rglob("*.jpg"))
    images = np.stack([load_image(str(f), args.image_size) for f in files])
    model, _ = build_extractor(args.backbone, weights="none", image_size=args.image_size, alpha=args.alpha)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    forward(images[: args.batch_size])  # trace outside the timing, as extraction also traces once
    start = time.perf_counter()
    for i in range(0, len(images), args.batch_size):
        forward(images[i: i + args.batch_size]).numpy()
    return len(images) / (time.perf_counter() - start)


def end_to_end(folder: Path, out: Path, args) -> tuple[float, float]:
    """(images/s of the extraction loop, images/s including model build) of extract_features."""
    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.commands.extraction import extract_features

    out.unlink(missing_ok=True)
    config = ExtractConfig(source=str(folder), out=str(out), backbone=args.backbone, weights="none",
                           alpha=args.alpha, image_size=args.image_size, batch_size=args.batch_size,
                           validation_fraction=0.0, test_fraction=0.0, splits=("train",))
    start = time.perf_counter()
    summary = extract_features(config)
    wall = time.perf_counter() - start
    rows = summary.splits["train"]["rows"]
    return summary.splits["train"]["images_per_second"], rows / wall


def peak_rss_mb(folder: Path, out: Path, args) -> float:
    """Peak RSS (MiB) of a fresh `headstart extract-features` process over ``folder``."""
    cmd = [sys.executable, "-m", "headstart.pipeline.cli", "extract-features", str(folder), "--out", str(out),
           "--backbone", args.backbone, "--weights", "none", "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size), "--validation-fraction", "0", "--test-fraction", "0",
           "--splits", "train", "--quiet", "--overwrite"]
    if args.alpha:
        cmd += ["--alpha", str(args.alpha)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"extraction failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--source", type=Path, default=None,
                        help="a folder of class folders of real JPEGs (e.g. ../shared/assets/cats_vs_dogs_2k) "
                             "instead of generated noise JPEGs, which are the costliest to decode")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.source.resolve() if args.source else write_jpegs(tmp / "small", args.images)
        bare, loop, wall = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_forward(folder, args))
            e2e_loop, e2e_wall = end_to_end(folder, tmp / "f.h5", args)
            loop.append(e2e_loop)
            wall.append(e2e_wall)
        count = len(list(folder.rglob("*.jpg")))
        print(f"{args.backbone} {args.image_size}px, {count} JPEGs from {args.source or 'noise'}, batch {args.batch_size}, "
              f"{args.repeats} alternating rounds")
        print(f"bare forward pass:        {max(bare):7.1f} images/s (best)")
        for name, runs in (("extract-features loop:    ", loop), ("extract-features w/ build:", wall)):
            paired = statistics.median(r / b for r, b in zip(runs, bare))
            print(f"{name}{max(runs):7.1f} images/s (best)  ratio best/best {max(runs) / max(bare):.3f}, "
                  f"median per round {paired:.3f}")
        if not args.skip_memory:
            big = write_jpegs(tmp / "big", args.images * 4, seed=1)
            small_rss = peak_rss_mb(folder, tmp / "m1.h5", args)
            big_rss = peak_rss_mb(big, tmp / "m4.h5", args)
            print(f"peak RSS: {args.images} images {small_rss:.0f} MiB, {4 * args.images} images "
                  f"{big_rss:.0f} MiB (+{100 * (big_rss / small_rss - 1):.1f}%)")


if __name__ == "__main__":
    main()
