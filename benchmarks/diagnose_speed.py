"""Benchmark: `headstart diagnose` on the real-photo cache and the neighbour search at 100,000 rows.

1. Real photos (../shared/assets, 2,000 cats and dogs, MobileNetV2 0.35 ImageNet at 128 px, split
   70/10/20 as tests/conftest.py does): the whole `diagnose` with its seconds per step, the counts,
   and the top findings (look at OUT/real/label_issues.png and duplicates.png).
2. A generated cache of 100,000 rows × 1,280 float16 features (200 clusters plus planted copies):
   the neighbour search, side by side in one process: exact blocked numpy (the baseline, at most
   ``--exact-rows`` rows, then extrapolated by N²) versus faiss IVF on a PCA projection, with the
   recall of faiss' neighbours against the exact ones and of the planted copies. Memory of the
   exact search is O(block × N): the peak RSS is printed.

    python benchmarks/diagnose_speed.py [--out /tmp/diagnose_bench] [--rows 100000] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402


def bench_real(out: Path) -> None:
    from conftest import ASSETS, MNV2_035, layout_cats_vs_dogs_2k

    from headstart.pipeline.config import DiagnoseConfig, ExtractConfig
    from headstart.pipeline.diagnose.diagnosis import diagnose
    from headstart.pipeline.commands.extraction import extract_features

    cache = out / "real_features.h5"
    if not cache.exists():
        images = layout_cats_vs_dogs_2k(ASSETS, out / "real_images")
        t = time.perf_counter()
        extract_features(ExtractConfig(source=str(images), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                       weights=str(ASSETS / "weights" / MNV2_035), image_size=128))
        print(f"real photos: extracted in {time.perf_counter() - t:.1f} s (not part of diagnose)")
    d = diagnose(DiagnoseConfig(features=str(cache), out=str(out / "real"), overwrite=True))
    print(d.summary)
    print("seconds:", json.dumps({k: round(v, 2) for k, v in d.seconds.items()}))


def bench_neighbours(rows: int, dim: int, exact_rows: int) -> None:
    import resource

    from headstart.pipeline.diagnose import neighbours as nb

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, dim)).astype(np.float32)
    x = (centres[rng.integers(0, 200, rows)] + rng.normal(0, 1.0, (rows, dim))).astype(np.float16)
    copies = rng.choice(rows, 100, replace=False)
    x[copies[:50]] = (x[copies[50:]] + rng.normal(0, 0.02, (50, dim))).astype(np.float16)
    t = time.perf_counter()
    unit = nb.normalise_features(x)
    print(f"\n{rows} × {dim} generated rows: normalise {time.perf_counter() - t:.1f} s")

    m = min(exact_rows, rows)
    sub = np.ascontiguousarray(unit[:m])
    t = time.perf_counter()
    exact_idx, _ = nb.top_k_neighbours(sub, 10) if m <= nb.EXACT_LIMIT else _forced_exact(nb, sub)
    exact_s = time.perf_counter() - t
    have_faiss = nb.search_method(nb.EXACT_LIMIT + 1) != "exact"
    print(f"exact blocked numpy, {m} rows: {exact_s:.1f} s; extrapolated to {rows} rows (N²): "
          f"~{exact_s * (rows / m) ** 2:.0f} s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if not have_faiss:
        print("faiss not installed: the search beyond", nb.EXACT_LIMIT, "rows is the exact one")
        return
    t = time.perf_counter()
    approx_idx, _ = nb._faiss_neighbours(sub, 10)
    faiss_sub = time.perf_counter() - t
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_idx, approx_idx)])
    print(f"faiss IVF/PCA-128, {m} rows: {faiss_sub:.1f} s (exact/faiss = {exact_s / faiss_sub:.1f}×), "
          f"recall@10 vs exact {recall:.3f}")
    t = time.perf_counter()
    idx, sims = nb.top_k_neighbours(unit, 10)
    faiss_s = time.perf_counter() - t
    pairs = {(p.a, p.b) for p in nb.near_duplicate_pairs(idx, sims, 0.95)}
    found = sum((min(a, b), max(a, b)) in pairs for a, b in zip(copies[:50], copies[50:]))
    print(f"faiss IVF/PCA-128, {rows} rows: {faiss_s:.1f} s (estimated exact/faiss = "
          f"{exact_s * (rows / m) ** 2 / faiss_s:.0f}×); planted copies found {found}/50; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def _forced_exact(nb, x):
    limit = nb.EXACT_LIMIT
    nb.EXACT_LIMIT = len(x)
    try:
        return nb.top_k_neighbours(x, 10)
    finally:
        nb.EXACT_LIMIT = limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/diagnose_bench")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--exact-rows", type=int, default=10_000, help="rows the exact baseline searches")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_real:
        bench_real(out)
    bench_neighbours(args.rows, args.dim, args.exact_rows)


if __name__ == "__main__":
    main()
