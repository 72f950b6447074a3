"""Measurement: what `headstart diagnose` reports on two real datasets of different nature.

The 2,000 cat and dog photos (../shared/assets, split 70/10/20 as tests/conftest.py does) and
scikit-learn's 1,797 bundled 8×8 digit scans (``write_digits_folders``), each extracted with two
backbones, MobileNetV2 alpha 0.35 and 0.5 (the shared ImageNet weights, 128 px). For each cache:
near-duplicate pairs, leaks, exact copies, label issues; for each dataset the label issues that
both backbones flag (the consensus). Neither dataset has a known copy across splits: on the
digits every pixel grid is distinct except for a few exact repeats in the original data, so a
pair that is not the same picture is a false alarm. Caches are kept in ``--work`` between runs.

    python benchmarks/diagnose_thresholds.py [--work /tmp/diagnose_thresholds] [--extra-args ...]

``--extra-args`` is passed to every diagnose (e.g. ``--duplicate-threshold 0.95``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
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
    from headstart.pipeline.stages.extraction import extract_features

    folders = {"photos": work / "photos",
               "digits": work / "digits"}
    if not folders["photos"].exists():
        layout_cats_vs_dogs_2k(ASSETS, folders["photos"])
    write_digits_folders(folders["digits"])
    caches: dict[str, dict[str, Path]] = {}
    for name, folder in folders.items():
        for alpha, weights in ALPHAS.items():
            path = work / f"{name}_{alpha}.h5"
            if not path.exists():
                t = time.perf_counter()
                extract_features(ExtractConfig(source=str(folder), out=str(path), backbone="mobilenet_v2",
                                               alpha=float(alpha), weights=str(ASSETS / "weights" / weights),
                                               image_size=128), log=lambda *_: None)
                print(f"{path.name}: extracted in {time.perf_counter() - t:.0f} s", flush=True)
            caches.setdefault(name, {})[alpha] = path
    return caches


def diagnose_one(cache: Path, out: Path, extra: list[str]) -> dict:
    """Runs the CLI on one cache; returns report.json's counts and the label-issue keys."""
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    result = CliRunner().invoke(main, ["diagnose", str(cache), "--out", str(out), "--overwrite", "--quiet", *extra])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    report = json.loads((out / "report.json").read_text())
    with open(out / "label_issues.csv", newline="", encoding="utf-8") as f:
        keys = [r["key"] for r in csv.DictReader(f)]
    return {"counts": report["counts"], "keys": keys, "summary": result.output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/diagnose_thresholds")
    parser.add_argument("--extra-args", default="", help="more diagnose options, one shell-quoted string")
    parser.add_argument("--tag", default="now", help="name of the report folders of this run")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra_args)
    table = []
    for name, by_alpha in make_caches(work).items():
        found = {}
        for alpha, cache in by_alpha.items():
            t = time.perf_counter()
            found[alpha] = diagnose_one(cache, work / f"report_{args.tag}_{name}_{alpha}", extra)
            c = found[alpha]["counts"]
            table.append((name, alpha, c["duplicate_pairs"], c["leaks"], c["exact_duplicate_pairs"],
                          c["label_issues"], f"{time.perf_counter() - t:.0f}"))
            print(found[alpha]["summary"], flush=True)
        both = set(found["0.35"]["keys"]) & set(found["0.5"]["keys"])
        table.append((name, "both", "", "", "", f"consensus {len(both)}", ""))
    print("\n| data | alpha | near-duplicate pairs | leaks | exact pairs | label issues | seconds |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
