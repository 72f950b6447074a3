"""Benchmark: fine-tuning the backbone's top layers on cached activations against end to end.

Two measurements, side by side in this one process:

1. **Speed.** The same layers (the head and the backbone's last N layers, BatchNorm frozen) of one
   chain, trained one epoch at a time on the same training images: end to end (raw images decoded,
   the whole backbone forward, the top layers backward: what ``finetune --unfreeze top:N`` does) and
   on the cache (``extract-features --tap top:N`` activations through the top layers alone: what
   ``finetune --on-cache`` does). The two alternate for R rounds so load drift hits both; the first
   epoch of each (tracing) is left out; the median epoch times, their ratio, and the median of the
   rounds' own ratios (each round sees one load: the steadier figure on a shared machine) are printed.
2. **Accuracy.** ``headstart finetune`` from the same head, end to end (the guide's settings:
   ``--unfreeze all``, lr 1e-5, 10 epochs) and ``--on-cache`` (every layer above the tap, lr 1e-4,
   up to 30 epochs with early stopping: affordable because an epoch is cheap), test accuracy and
   wall time of each, with the head's own test accuracy.

    python benchmarks/top_blocks.py [--datasets digits,cats] [--tap top:30] [--image-size 128]
        [--rounds 3] [--out DIR] [--skip-accuracy] [--backbone xception --views 0]

Data: scikit-learn's digit scans (``write_digits_folders``, 70/10/20) and the 2,000 photos in
``../shared/assets`` (left out when absent), with MobileNetV2 0.35 and its real ImageNet weights
(the ``../shared`` file, else the copy shipped with headstart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from recipe import ASSETS, WEIGHTS, layout_photos  # noqa: E402 - benchmarks/ is on the path above


def backbone_options(args) -> dict:
    """The backbone: MobileNetV2 0.35 with real ImageNet weights by default, or ``--backbone`` with random ones."""
    if args.backbone == "mobilenet_v2":
        return {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": str(WEIGHTS) if WEIGHTS.is_file() else "shipped"}
    return {"backbone": args.backbone, "alpha": None, "weights": "none"}


def prepare(name: str, source: Path, out: Path, tap: str, image_size: int, backbone: dict, views: int,
            log) -> tuple[Path, Path]:
    """Extracts the cache with the tap (and ``views`` views) and trains the guide's head; returns (cache, head run)."""
    from headstart.features.reporter import LineReporter
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    label = f"{name}-{backbone['backbone']}-{image_size}-{tap.replace(':', '')}"
    cache, head = out / f"{label}.h5", out / f"{label}-head"
    start = time.perf_counter()
    extract_features(ExtractConfig(source=str(source), out=str(cache), image_size=image_size, tap=tap, augment_views=views,
                                   dtype="float16", **backbone), reporter=LineReporter(log))
    log(f"{name}: extraction with --tap {tap} --augment-views {views}: {time.perf_counter() - start:.1f} s")
    train_head(HeadConfig(features=str(cache), out=str(head)))
    return cache, head


def epoch_speed(source: Path, head: Path, rounds: int, batch_size: int, log) -> dict:
    """Median seconds per epoch (training, then validation: a finetune epoch) of the same top layers, trained
    end to end and on the cache."""
    import keras

    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.model.assembly import unfreeze_backbone
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.model.unfreeze import Unfreeze
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.finetuning.on_cache import cache_tap, cached_dataset, load_rows, top_block_model
    from headstart.pipeline.training.labelled_dataset import labelled_dataset

    run = RunDir.open(head, kind="head", recipe=True)
    model = run.rebuild().model
    tap = cache_tap(run.cache)
    classes = run.num_classes
    unfreeze_backbone(model, Unfreeze("top", count=int(tap["top_layers"])))
    compile_head(model, classes, 1e-4)
    top = top_block_model(model, tap)
    compile_head(top, classes, 1e-4)
    source = open_source(run.source_spec())
    size = int(model.input_shape[1])
    images, images_val = (labelled_dataset(source, split, image_size=size, num_classes=classes, batch_size=batch_size,
                                           shuffle_seed=0 if split == "train" else None, shuffle_buffer=1024)
                          for split in ("train", "validation"))
    cached, cached_val = (cached_dataset(load_rows(run.cache, split, num_classes=classes, multi_label=False,
                                                   views=split == "train"), batch_size=batch_size,
                                         seed=0 if split == "train" else None) for split in ("train", "validation"))
    times = {"end_to_end": [], "on_cache": []}
    sides = (("end_to_end", (model, images, images_val)), ("on_cache", (top, cached, cached_val)))
    for r in range(rounds + 1):  # round 0 traces both; it is not counted
        for side, (m, data, val) in sides:
            start = time.perf_counter()
            m.fit(data, validation_data=val, epochs=1, verbose=0)
            if r:
                times[side].append(time.perf_counter() - start)
        if r:
            log(f"  round {r}: end to end {times['end_to_end'][-1]:.2f} s, on the cache {times['on_cache'][-1]:.3f} s")
    keras.backend.clear_session()
    e2e, onc = statistics.median(times["end_to_end"]), statistics.median(times["on_cache"])
    # Each round runs both sides back to back, so a round's ratio sees one load; the median of those
    # paired ratios moves less with the load than the ratio of the two medians.
    paired = statistics.median(a / b for a, b in zip(times["end_to_end"], times["on_cache"]))
    return {"backbone": run.chain.backbone.name, "image_size": size, "top_layers": int(tap["top_layers"]), "tap_layer": tap["layer"], "tap_shape": tap["shape"],
            "train_rows": int(source.count("train")), "end_to_end_s": round(e2e, 3),
            "on_cache_s": round(onc, 4), "speedup": round(e2e / onc, 1),
            "paired_speedup": round(paired, 1),
            "round_ratios": [round(a / b, 1) for a, b in zip(times["end_to_end"], times["on_cache"])],
            "rounds": rounds}


def accuracy(name: str, source: Path, head: Path, out: Path, log) -> dict:
    """``finetune`` end to end (guide) and ``--on-cache`` from the same head: test accuracy and time."""
    from headstart.pipeline.config import FinetuneConfig
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.finetuning.finetuning import finetune

    rows = {"head": {"test_accuracy": RunDir.open(head, kind="head").metrics()["test"]["accuracy"]}}
    runs = {"end_to_end": FinetuneConfig(source=str(source), head=str(head), out=str(out / f"{name}-e2e")),
            "on_cache": FinetuneConfig(source=str(source), head=str(head), out=str(out / f"{name}-onc"),
                                       on_cache=True, lr=1e-4, epochs=30)}
    for side, config in runs.items():
        start = time.perf_counter()
        finetune(config)
        seconds = time.perf_counter() - start
        metrics = RunDir.open(config.out, kind="finetune").metrics()
        rows[side] = {"test_accuracy": metrics["test"]["accuracy"], "seconds": round(seconds, 1),
                      "epochs_run": metrics.get("epochs_run"), "best_epoch": metrics.get("best_epoch"),
                      "kept": metrics.get("stage_gate", {}).get("kept")}
        log(f"  {side}: test accuracy {rows[side]['test_accuracy']:.4f}, {seconds:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,cats")
    parser.add_argument("--tap", default="top:30")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="/tmp/headstart-top-blocks")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--views", type=int, default=2, help="augmented views cached per training image")
    parser.add_argument("--backbone", default="mobilenet_v2",
                        help="mobilenet_v2 (0.35, real ImageNet weights) or another registry name (random weights: "
                             "speed only, with --skip-accuracy)")
    args = parser.parse_args(argv)
    from headstart.pipeline.data.bundled import write_digits_folders

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = {"digits": lambda: write_digits_folders(out / "data" / "digits"),
               "cats": lambda: layout_photos(out / "data" / "cats") if ASSETS.is_dir() else None}
    report = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        source = sources[name]()
        if source is None:
            print(f"{name}: skipped ({ASSETS} is absent)")
            continue
        print(f"== {name}", flush=True)
        _, head = prepare(name, source, out, args.tap, args.image_size, backbone_options(args), args.views,
                          lambda line: print(line, flush=True))
        report[name] = {"speed": epoch_speed(source, head, args.rounds, args.batch_size, print)}
        print(f"{name}: {json.dumps(report[name]['speed'])}", flush=True)
        if not args.skip_accuracy:
            report[name]["accuracy"] = accuracy(name, source, head, out, print)
    (out / f"top_blocks-{args.backbone}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"{'dataset':8} {'epoch e2e':>10} {'on cache':>9} {'ratio':>6} {'paired':>7} {'head':>7} {'e2e ft':>7} {'on-cache ft':>11}")
    for name, r in report.items():
        s, a = r["speed"], r.get("accuracy", {})
        acc = lambda k: f"{a[k]['test_accuracy']:.4f}" if k in a else "-"  # noqa: E731
        print(f"{name:8} {s['end_to_end_s']:>9.2f}s {s['on_cache_s']:>8.3f}s {s['speedup']:>5.1f}x {s['paired_speedup']:>6.1f}x {acc('head'):>7} "
              f"{acc('end_to_end'):>7} {acc('on_cache'):>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
