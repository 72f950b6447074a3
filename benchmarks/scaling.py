"""Benchmark: throughput with 1 vs 2 logical devices and 1 vs 2 workers, side by side.

Three measurements, each under the default strategy (1 device), ``mirrored`` over 2 logical CPU
devices (``HEADSTART_LOGICAL_CPUS=2``) and ``multiworker`` with 2 local worker processes
(``TF_CONFIG``, 127.0.0.1 ports):

* **extraction** — images/s. 1 vs 2 devices: the extractor's forward pass (``model.predict`` on
  in-memory images, under the default strategy vs ``MirroredStrategy``). 1 vs 2 workers: the real
  scale-out path, ``extract_features`` (decoding and HDF5 writes included, as it reports them) in
  one process vs ``--shard 0/2`` and ``--shard 1/2`` in two concurrent processes: all images over the
  slower shard's time. ``merge-features`` then takes the extra seconds printed below the table.
* **train-head epoch** — rows/s of ``train_head`` on a synthetic feature cache (validation included).
* **fine-tune epoch** — images/s of one training epoch of the full model (backbone + head, BatchNorm
  frozen): ``model.fit`` on 1 device (what ``finetune`` runs there) and
  ``headstart.pipeline.distribute.loop.distributed_fit`` (what it runs on more than one replica) on 1 device,
  2 devices and 2 workers.

The first epoch (tracing) is dropped; of the rest the fastest is reported (on a shared machine other
processes only ever add time). Overhead = how much lower the throughput is than on 1 device. On a
2-core CPU no speed-up is expected — replicas share the same cores — the point is that distribution
runs and costs little (target: overhead ≤ 15%).

    python benchmarks/scaling.py [--images 384] [--image-size 128] [--rows 16384] [--dim 1280]
        [--epochs 5] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """Writes ``count`` JPEGs of two colour classes as ``root/{a,b}/NNNNN.jpg``; returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        base = np.array([200, 60, 60] if i % 2 else [60, 60, 200], dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (160, 200, 3)), 0, 255).astype(np.uint8)
        d = root / ("a", "b")[i % 2]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(d / f"{i:05d}.jpg", quality=90)
    return root


def write_cache(path: Path, rows: int, dim: int) -> Path:
    """A feature cache of two Gaussian blobs: ``rows`` train rows, ``rows // 8`` validation rows."""
    import numpy as np

    from headstart.features.store import create_or_resume

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, size=(2, dim)).astype(np.float32)
    counts = {"train": rows, "validation": rows // 8}
    writer = create_or_resume(str(path), config={"benchmark": "scaling", "rows": rows, "dim": dim},
                              provenance={}, class_names=["a", "b"], splits=list(counts),
                              feature_shape=(dim,), dtype="float32")
    for split, n in counts.items():
        for start in range(0, n, 4096):
            labels = np.arange(start, min(start + 4096, n)) % 2
            feats = centres[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32)
            writer.append(split, features=feats, labels=labels, keys=[f"{split}/{i}" for i in range(start, start + len(labels))],
                          consumed=start + len(labels))
        writer.finish_split(split)
    writer.finalize()
    return path


# ---- child: one strategy, all in-process measurements ------------------------------------------

def _full_model(args):
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head, compile_head

    base, preprocessing, pooling, info = build_backbone_parts("mobilenet_v2", weights="none",
                                                              image_size=args.image_size, alpha=0.35)
    base.trainable = False  # as the extractor (BatchNorm is frozen in every chain)
    extractor = build_chain(base, preprocessing, pooling, name="extractor")
    model = build_chain(base, preprocessing, pooling, head=build_head(info.feature_shape, 2, dropout=0.2))
    return extractor, compile_head(model, 2, 1e-4)


def child(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.distribute.strategy import resolve_strategy
    from headstart.features.tfdata import without_autotune_thread
    from headstart.pipeline.distribute.loop import distributed_fit
    from headstart.pipeline.commands.head_training import train_head

    strategy, info = resolve_strategy(args.strategy)
    out: dict = {"strategy": info.strategy, "replicas": info.replicas, "workers": info.workers}
    n, size = args.images, args.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.float32).reshape(-1, 1)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        extractor, model = _full_model(args)
    if info["workers"] == 1:  # Keras's predict does not run under MultiWorkerMirroredStrategy
        data = without_autotune_thread(tf.data.Dataset.from_tensor_slices(images).batch(args.batch_size))
        times, gaps = [], []

        class BatchTimer(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch, logs=None):
                self.stamps.append(time.perf_counter())

        for _ in range(args.epochs):
            timer = BatchTimer()
            timer.stamps = []
            t0 = time.perf_counter()
            extractor.predict(data, verbose=0, callbacks=[timer])
            times.append(time.perf_counter() - t0)
            gaps.append(np.diff(timer.stamps))
        out["extract_forward"] = n / min(times[1:])
        # Between batches only: the call's fixed cost (distributing the dataset, making and ending
        # its iterators) is left out here, and reported apart.
        out["extract_steady"] = args.batch_size / float(np.median(np.concatenate(gaps[1:])))
        out["extract_fixed_s"] = min(times[1:]) - n / out["extract_steady"]

    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch_size)
    if args.strategy == "default":
        times = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            model.fit(data, epochs=1, verbose=0, shuffle=False)
            times.append(time.perf_counter() - t0)
        out["finetune_fit"] = n / min(times[1:])
    # The distributed loop as finetune runs it: one fit, epochs timed by a callback.
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    distributed_fit(model, data, num_classes=2, epochs=args.epochs, callbacks=[EpochTimer()])
    out["finetune_loop"] = n / min(times[1:])

    run = Path(args.workdir) / f"head-{args.tag}"
    result = train_head(HeadConfig(features=args.cache, out=str(run), epochs=args.epochs, patience=args.epochs,
                                   batch_size=64, strategy=args.strategy, overwrite=True))
    if info["is_chief"]:
        epochs = json.loads((run / "run.json").read_text())["timings"]["epoch_seconds"]
        rows = sum(json.loads((run / "run.json").read_text())["cache"]["splits"].values())
        out["head_epoch"] = rows / min(epochs[1:])
    out["is_chief"] = info["is_chief"]
    del result
    return out


def child_extract(args) -> dict:
    """Runs extract_features (one shard or all) and returns its own images/s and rows."""
    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.commands.extraction import extract_features

    summary = extract_features(ExtractConfig(
        source=args.source, out=args.result + ".h5", backbone="mobilenet_v2", weights="none", alpha=0.35,
        image_size=args.image_size, batch_size=args.batch_size, splits=("train",), validation_fraction=0.0,
        test_fraction=0.0, shard=args.shard or None))
    info = summary.splits["train"]
    return {"rows": info["rows"], "images_per_second": info["images_per_second"], "path": summary.path}


# ---- parent ------------------------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _spawn(args, strategy: str, tag: str, env: dict) -> tuple[subprocess.Popen, Path]:
    result = Path(args.workdir) / f"{tag}.json"
    cmd = [sys.executable, __file__, "--child", "--strategy", strategy, "--tag", tag, "--result", str(result),
           "--cache", args.cache, "--workdir", args.workdir, "--images", str(args.images),
           "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "HEADSTART_LOGICAL_CPUS")}
    return _popen(cmd, {**clean, "PYTHONPATH": str(REPO), **env}, result)


def _popen(cmd: list[str], env: dict, result: Path) -> tuple[subprocess.Popen, Path]:
    # TensorFlow's C++ log lines (gRPC shutdown chatter of the workers) go to a file, shown on failure.
    log = open(f"{result}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), result


def _wait(procs) -> list[dict]:
    out = []
    for proc, result in procs:
        if proc.wait(timeout=900) != 0:
            tail = Path(f"{result}.log").read_text()[-3000:]
            raise SystemExit(f"a benchmark process failed (exit {proc.returncode}):\n{tail}")
        out.append(json.loads(result.read_text()))
    return out


def extraction_jobs(args, images: Path) -> dict:
    """images/s of extract_features in one process vs two concurrent --shard processes; merge time."""
    from headstart.pipeline.commands.merging import merge_features

    def spawn(tag: str, shard: str) -> tuple[subprocess.Popen, Path]:
        result = Path(args.workdir) / f"{tag}.json"
        cmd = [sys.executable, __file__, "--child-extract", "--source", str(images), "--shard", shard,
               "--result", str(result), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
        return _popen(cmd, {**os.environ, "PYTHONPATH": str(REPO)}, result)

    [one] = _wait([spawn("extract-one", "")])
    shards = _wait([spawn(f"extract-{i}", f"{i}/2") for i in range(2)])
    slowest = max(r["rows"] / r["images_per_second"] for r in shards)
    t0 = time.perf_counter()
    merge_features(str(Path(args.workdir) / "merged.h5"), [r["path"] for r in shards])
    return {"one": one["images_per_second"], "two": sum(r["rows"] for r in shards) / slowest,
            "merge_seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="images per extraction / fine-tune epoch")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=16384, help="train rows of the feature cache")
    parser.add_argument("--dim", type=int, default=1280, help="feature width of the cache")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (passes) per measurement; the first is dropped")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-extract", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="", help=argparse.SUPPRESS)
    parser.add_argument("--shard", default="", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.child_extract:
        Path(args.result).write_text(json.dumps(child(args) if args.child else child_extract(args)))
        return

    with tempfile.TemporaryDirectory(prefix="headstart-scaling-") as tmp:
        args.workdir = tmp
        args.cache = str(write_cache(Path(tmp) / "features.h5", args.rows, args.dim))
        images = write_jpegs(Path(tmp) / "images", args.images)
        print(f"{args.images} images of {args.image_size} px (MobileNetV2 0.35, random weights), batch "
              f"{args.batch_size}; cache {args.rows} + {args.rows // 8} rows × {args.dim}; {os.cpu_count()} CPUs",
              flush=True)
        runs = {}
        runs["1 device"] = _wait([_spawn(args, "default", "single", {})])[0]
        runs["2 devices"] = _wait([_spawn(args, "mirrored", "mirrored", {"HEADSTART_LOGICAL_CPUS": "2"})])[0]
        workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
        procs = [_spawn(args, "multiworker", f"worker{i}", {"TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}) for i in range(2)]
        runs["2 workers"] = next(r for r in _wait(procs) if r["is_chief"])
        extraction = extraction_jobs(args, images)

    rows = [
        ("extraction forward pass, Keras predict, per call (images/s)", "extract_forward", None),
        ("extraction forward pass, Keras predict, between batches (images/s)", "extract_steady", None),
        ("extract_features: 1 process vs 2 --shard processes (images/s)", None, extraction),
        ("train-head epoch (rows/s)", "head_epoch", None),
        ("fine-tune epoch, model.fit (images/s)", "finetune_fit", None),
        ("fine-tune epoch, distribute_loop (images/s)", "finetune_loop", None),
    ]
    names = list(runs)
    print(f"\n{'':66}" + "".join(f"{n:>12}" for n in names) + "   overhead vs 1 device")
    for label, key, job in rows:
        values = ([job["one"], None, job["two"]] if job else [runs[n].get(key) for n in names])
        cells = "".join(f"{v:12.1f}" if v else f"{'-':>12}" for v in values)
        base = values[0] if key != "finetune_loop" else runs["1 device"].get("finetune_fit")
        over = ", ".join(f"{n}: {100 * (1 - v / base):.0f}%" for n, v in zip(names[1:], values[1:]) if v and base)
        print(f"{label:66}{cells}   {over}")
    fixed = ", ".join(f"{n} {runs[n]['extract_fixed_s']:.2f} s" for n in names if "extract_fixed_s" in runs[n])
    print(f"\nfixed cost of one predict call beyond its batches: {fixed}")
    print(f"merge-features of the 2 shards: {extraction['merge_seconds']:.2f} s. overhead = 1 − throughput / "
          f"1-device throughput (negative: faster); the fine-tune loop row compares with model.fit.")


if __name__ == "__main__":
    main()
