"""Benchmark: `--class-weight balanced` against `none` on the real photos with the training dogs cut to 70.

The 2,000 photos of ``../shared/assets/cats_vs_dogs_2k`` are laid out 70/10/20 per class by number
(as ``tests/conftest.py`` ``layout_cats_vs_dogs_2k``) and extracted once (MobileNetV2 0.35, ImageNet
weights, 128 px: the test suite's ``real_photo_cache``), or ``--cache`` reuses such a cache. The
imbalance costs no re-extraction: the training split keeps all 700 cats and its first 70 dogs (by
key), the other 630 training dogs go through train-head's ``--exclude`` (validation and test are
unchanged: 100 + 100 and 200 + 200). Then, in this one process, for each seed, train-head runs with
``--class-weight none`` and ``--class-weight balanced`` (w = n / (k · n_c): cats 0.55, dogs 5.5),
the guide's head recipe otherwise (20 epochs, Adam 1e-3, batch 64, early stopping on val_loss).
Printed per seed and as mean ± standard deviation over seeds: test accuracy, balanced accuracy,
macro-F1 and dog recall of both, and balanced − none.

    python benchmarks/class_weight.py [--cache features.h5] [--seeds 0,1,2,3,4] [--keep-dogs 70]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ASSETS = REPO.parent / "shared" / "assets"
WEIGHTS = ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
MEASURES = ("accuracy", "balanced_accuracy", "macro_f1")


def real_photo_cache(root: Path) -> Path:
    """Lays out and extracts the 2,000 photos as the test suite's ``real_photo_cache`` does."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import layout_cats_vs_dogs_2k
    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.commands.extraction import extract_features

    images = layout_cats_vs_dogs_2k(ASSETS, root / "images")
    cache = root / "features.h5"
    extract_features(ExtractConfig(source=str(images), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(WEIGHTS), image_size=128))
    return cache


def write_cut(cache: Path, cls: str, keep: int, path: Path) -> dict[str, int]:
    """Writes an --exclude CSV of every training row of class ``cls`` after its first ``keep`` (by
    key); returns the training rows per class that remain."""
    from headstart.features.cache import open_cache

    with open_cache(cache) as c:
        split = c.split("train")
        names = list(c.class_names)
        rows = sorted((k, names[int(y)]) for k, y in zip(split.keys, split.labels))
    of_class = [k for k, name in rows if name == cls]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["key"])
        writer.writerows([k] for k in of_class[keep:])
    counts = {name: sum(1 for _, n in rows if n == name) for name in names}
    counts[cls] = min(keep, counts[cls])
    return counts


def train(cache: Path, exclude: Path, out: Path, class_weight: str, seed: int) -> dict:
    """One train-head run; returns its test measures and dog recall."""
    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.commands.head_training import train_head

    result = train_head(HeadConfig(features=str(cache), out=str(out), exclude=str(exclude), seed=seed,
                                   class_weight=class_weight, overwrite=True))
    test = result.metrics["test"]
    return {**{k: test[k] for k in MEASURES}, "dog_recall": test["per_class"]["dogs"]["recall"],
            "best_epoch": result.best_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="A real_photo_cache-style cache (default: extract one).")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--keep-dogs", type=int, default=70)
    args = parser.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = args.cache or real_photo_cache(root)
        counts = write_cut(cache, "dogs", args.keep_dogs, root / "cut.csv")
        print(f"training rows: {counts}; validation and test unchanged")
        rows = {"none": [], "balanced": []}
        for seed in (int(s) for s in args.seeds.split(",")):
            for mode in rows:
                rows[mode].append(train(cache, root / "cut.csv", root / f"{mode}-{seed}", mode, seed))
            print(f"seed {seed}: " + "; ".join(
                f"{mode} acc {r[-1]['accuracy']:.4f} bal {r[-1]['balanced_accuracy']:.4f} "
                f"F1 {r[-1]['macro_f1']:.4f} dog recall {r[-1]['dog_recall']:.4f}" for mode, r in rows.items()))
        print(f"\nover {len(rows['none'])} seeds (mean ± std):")
        for key in (*MEASURES, "dog_recall"):
            none = np.array([r[key] for r in rows["none"]])
            bal = np.array([r[key] for r in rows["balanced"]])
            print(f"  test {key:<18} none {none.mean():.4f} ± {none.std():.4f}   balanced {bal.mean():.4f} ± "
                  f"{bal.std():.4f}   balanced − none {np.mean(bal - none):+.4f} ± {np.std(bal - none):.4f}")


if __name__ == "__main__":
    main()
