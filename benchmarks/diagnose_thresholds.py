"""Measurement: what `headstart diagnose` reports on two real datasets of different nature.

The 2,000 cat and dog photos (../shared/assets, split 70/10/20 as tests/conftest.py does) and
scikit-learn's 1,797 bundled 8×8 digit scans (``write_digits_folders``), each extracted with two
backbones, MobileNetV2 alpha 0.35 and 0.5 (the shared ImageNet weights, 128 px). For each cache:
near-duplicate pairs, leaks, exact copies, label issues; for each dataset the label issues that
both backbones flag (the consensus). The digit scans hold no two equal pixel grids, so every pair
reported there is a false alarm. A third set, "digits+12", is the digits with 12 copies of train
scans planted in test (``plant_digit_copies``): 2 byte copies, 3 upscaled 2× nearest (lossless),
4 JPEG quality 75, 3 upscaled 4× bicubic and saved as JPEG; the table counts how many of the
reported pairs are planted ones. Caches are kept in ``--work`` between runs.

    python benchmarks/diagnose_thresholds.py [--work /tmp/diagnose_thresholds] [--extra-args ...]
        [--separately]

``--extra-args`` is passed to every diagnose (e.g. ``--duplicate-threshold 0.95``);
``--separately`` skips the one ``diagnose A B`` call per dataset (code from before it existed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ALPHAS = {"0.35": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
          "0.5": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"}


def make_caches(work: Path) -> dict[str, dict[str, Path]]:
    """Extracts (once) the four caches; returns {dataset: {alpha: cache path}}."""
    from conftest import ASSETS, layout_cats_vs_dogs_2k

    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.data.bundled import write_digits_folders
    from headstart.pipeline.commands.extraction import extract_features

    folders = {"photos": work / "photos",
               "digits": work / "digits",
               "digits+12": work / "digits_planted"}
    if not folders["photos"].exists():
        layout_cats_vs_dogs_2k(ASSETS, folders["photos"])
    write_digits_folders(folders["digits"])
    if not folders["digits+12"].exists():
        plant_digit_copies(folders["digits"], folders["digits+12"])
    caches: dict[str, dict[str, Path]] = {}
    for name, folder in folders.items():
        for alpha, weights in ALPHAS.items():
            path = work / f"{name}_{alpha}.h5"
            if not path.exists():
                t = time.perf_counter()
                extract_features(ExtractConfig(source=str(folder), out=str(path), backbone="mobilenet_v2",
                                               alpha=float(alpha), weights=str(ASSETS / "weights" / weights),
                                               image_size=128))
                print(f"{path.name}: extracted in {time.perf_counter() - t:.0f} s", flush=True)
            caches.setdefault(name, {})[alpha] = path
    return caches


def plant_digit_copies(digits: Path, dest: Path) -> list[tuple[str, str]]:
    """Symlinks the digit folders into ``dest`` and writes 12 copies of train scans into test."""
    import numpy as np
    from PIL import Image

    for f in digits.rglob("*.png"):
        d = dest / f.relative_to(digits)
        d.parent.mkdir(parents=True, exist_ok=True)
        d.symlink_to(os.path.realpath(f))
    train = sorted((digits / "train").rglob("*.png"))
    planted = []
    for n, i in enumerate(np.random.default_rng(0).choice(len(train), 12, replace=False)):
        f = train[i]
        out = dest / "test" / f.parent.name
        with Image.open(f) as img:
            img = img.convert("L")
            if n < 4:
                name = f"copy_jpeg_{n}.jpg"
                img.save(out / name, quality=75)
            elif n < 7:
                name = f"copy_up2_{n}.png"
                img.resize((16, 16), Image.Resampling.NEAREST).save(out / name)
            elif n < 10:
                name = f"copy_up4_{n}.jpg"
                img.resize((32, 32), Image.Resampling.BICUBIC).save(out / name, quality=90)
            else:
                name = f"copy_bytes_{n}.png"
                shutil.copyfile(f, out / name)
        planted.append((f"train/{f.parent.name}/{f.name}", f"test/{f.parent.name}/{name}"))
    return planted


def diagnose_one(caches: list[Path], out: Path, extra: list[str]) -> dict:
    """Runs the CLI on the caches; returns report.json, the label-issue keys and the pairs' keys."""
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    result = CliRunner().invoke(main, ["diagnose", *map(str, caches), "--out", str(out), "--overwrite", "--quiet",
                                       *extra])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    report = json.loads((out / "report.json").read_text())
    with open(out / "label_issues.csv", newline="", encoding="utf-8") as f:
        keys = [r["key"] for r in csv.DictReader(f)]
    with open(out / "duplicates.csv", newline="", encoding="utf-8") as f:
        pairs = [(r["key_a"], r["key_b"]) for r in csv.DictReader(f)]
    return {"report": report, "counts": report["counts"], "keys": keys, "pairs": pairs, "summary": result.output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/diagnose_thresholds")
    parser.add_argument("--extra-args", default="", help="more diagnose options, one shell-quoted string")
    parser.add_argument("--tag", default="now", help="name of the report folders of this run")
    parser.add_argument("--separately", action="store_true", help="no diagnose A B call (code from before it)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra_args)
    table = []
    for name, by_alpha in make_caches(work).items():
        found = {}
        for alpha, cache in by_alpha.items():
            t = time.perf_counter()
            found[alpha] = diagnose_one([cache], work / f"report_{args.tag}_{name}_{alpha}", extra)
            c = found[alpha]["counts"]
            planted = sum(1 for a, b in found[alpha]["pairs"] if "/copy_" in a + b)
            pairs = f"{c['duplicate_pairs']} ({planted} planted)" if name == "digits+12" else c["duplicate_pairs"]
            table.append((name, alpha, pairs, c["leaks"], c["exact_duplicate_pairs"], c["label_issues"],
                          f"{time.perf_counter() - t:.0f}"))
            print(found[alpha]["summary"], flush=True)
        both = set(found["0.35"]["keys"]) & set(found["0.5"]["keys"])
        line = f"both agree on {len(both)}"
        if not args.separately:
            joint = diagnose_one(list(by_alpha.values()), work / f"report_{args.tag}_{name}_both", extra)
            line += f"; diagnose A B: consensus {joint['counts']['label_issues_consensus']} of {joint['counts']['label_issues']}"
        table.append((name, "0.35 + 0.5", "", "", "", line, ""))
    print("\n| data | alpha | near-duplicate pairs | leaks | exact pairs | label issues | seconds |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
