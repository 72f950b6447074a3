"""Benchmark: ``headstart sweep`` against the same configurations trained one after another.

On the real-photo cache (MobileNetV2 0.35 at 128 px, 70/10/20 split of ../shared/assets, as the
``real_photo_cache`` test fixture extracts it; pass ``--cache`` to reuse one), in one process:

1. the sweep: ``--trials`` trials (default 64) from an empty study, batched as ``headstart sweep``
   trains them, DIR/best included (the best trial's own head, written as a train-head run and
   scored on test);
2. the baseline: the very same configurations (read back from the study), each trained alone
   through ``train_head`` — train-head's own code, run directory and all — one after another, with
   the same epochs and patience;
3. the default ``train-head`` (the guide's head) on the same cache, for its test accuracy.

The sweep runs first, so it pays TensorFlow's warm-up. Reported: both wall times and their ratio
(goal: the sweep ≥ 5× faster), trials per minute, and the test accuracy of the sweep's best head
against the default head's.

    python benchmarks/sweep_speed.py [--trials 64] [--cache features.h5] [--baseline-trials N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def extract_real_cache(work: Path) -> Path:
    """Extracts the real photos as tests/conftest.py's ``real_photo_cache`` does; returns the cache."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import ASSETS, MNV2_035, layout_cats_vs_dogs_2k

    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.commands.extraction import extract_features

    images = layout_cats_vs_dogs_2k(ASSETS, work / "images")
    cache = work / "features.h5"
    extract_features(ExtractConfig(source=str(images), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(ASSETS / "weights" / MNV2_035), image_size=128))
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--cache", help="an existing real-photo cache (default: extract one)")
    parser.add_argument("--baseline-trials", type=int, default=None,
                        help="train only the first N configurations alone and extrapolate (marked ~)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the sweep directory here")
    args = parser.parse_args()

    # Everything imported now: the library's lazy imports then never load a module edited meanwhile.
    import headstart.pipeline.store.rundir  # noqa: F401
    import headstart.pipeline.store.out_dir  # noqa: F401
    import headstart.pipeline.sweep.best  # noqa: F401
    import headstart.pipeline.sweep.leaderboard  # noqa: F401
    import headstart.pipeline.training.head_group  # noqa: F401
    from headstart.pipeline.config import HeadConfig, SweepConfig
    from headstart.pipeline.commands.head_training import train_head
    from headstart.pipeline.sweep.space import SearchSpace
    from headstart.pipeline.sweep.study import run_sweep, trial_params

    work = Path(tempfile.mkdtemp(prefix="sweep_speed_"))
    cache = Path(args.cache) if args.cache else extract_real_cache(work)
    space = SearchSpace()
    out = Path(args.out) if args.out else work / "sweep"

    t0 = time.perf_counter()
    result = run_sweep(SweepConfig(caches=(str(cache),), out=str(out), trials=args.trials, seed=args.seed,
                                   overwrite=True), space)
    sweep_seconds = time.perf_counter() - t0

    import optuna

    study = optuna.load_study(study_name="headstart-sweep", storage=result.storage)
    configs = [trial_params(t) for t in study.get_trials(deepcopy=False)
               if t.state.name in ("COMPLETE", "PRUNED")]
    alone = configs[:args.baseline_trials] if args.baseline_trials else configs
    t0 = time.perf_counter()
    for i, params in enumerate(alone):
        train_head(params.head_config(features=str(cache), out=str(work / f"alone_{i}"), epochs=space.epochs,
                   patience=space.patience, seed=args.seed))
    alone_seconds = time.perf_counter() - t0
    estimated = len(alone) < len(configs)
    baseline_seconds = alone_seconds * len(configs) / len(alone)

    default = train_head(HeadConfig(features=str(cache), out=str(work / "default"), seed=args.seed))
    mark = "~" if estimated else ""
    print(f"cache: {cache}")
    print(f"sweep: {result.finished} trials in {sweep_seconds:.1f} s "
          f"({60 * result.finished / sweep_seconds:.1f} trials/min), best trial #{result.best.get('number')} "
          f"val_loss {result.best.get('val_loss', float('nan')):.4f}")
    print(f"alone: {len(configs)} configurations via train_head in {mark}{baseline_seconds:.1f} s "
          f"({60 * len(configs) / baseline_seconds:.1f} trials/min; measured {len(alone)})")
    print(f"ratio: sweep is {mark}{baseline_seconds / sweep_seconds:.1f}x faster (goal >= 5x)")
    print(f"test accuracy: sweep best {result.best_test_accuracy:.4f} vs default train-head "
          f"{default.test_accuracy:.4f} ({100 * (result.best_test_accuracy - default.test_accuracy):+.1f} points)")
    print(result.table)


if __name__ == "__main__":
    main()
