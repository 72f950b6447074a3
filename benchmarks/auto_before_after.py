"""``headstart run --recipe auto`` before and after fine-tuning moved onto the cache (issue 26, items 4–5).

The same data, backbone and command, run by two installs one after the other (so both see the same
machine load): ``--before-python``, a Python whose ``headstart`` is the commit to compare against
(e.g. a venv with ``pip install --no-deps -e`` of that commit), and this checkout's Python. For each:
test accuracy, wall time, and what auto decided about the head and fine-tuning (with the paired
standard errors the new recipe records).

    python benchmarks/auto_before_after.py --before-python /tmp/base/bin/python [--datasets digits,cats]

Writes ``OUT/auto_WHICH.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import ASSETS, BACKBONE, dataset_sources  # noqa: E402 - benchmarks/recipe.py, beside this file


def run_auto(python: str, source: Path, out: Path) -> dict:
    """One ``headstart run --recipe auto`` in a subprocess; its summary's test accuracy, wall time, decisions."""
    argv = [python, "-m", "headstart.pipeline.cli", "run", str(source), "--out", str(out), "--recipe", "auto",
            *BACKBONE, "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode:
        raise SystemExit(f"{python}: headstart run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    decisions = {d["name"]: d for d in (summary.get("recipe") or {}).get("decisions", [])}
    return {"test": summary["test"]["accuracy"], "seconds": seconds,
            "decisions": {k: {"chosen": decisions[k]["chosen"], "why": decisions[k]["why"],
                              "candidates": decisions[k]["candidates"], "seconds": decisions[k]["seconds"]}
                          for k in ("image_size", "head", "lr", "finetune") if k in decisions}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-python", required=True)
    parser.add_argument("--out", default="runs/auto-before-after")
    parser.add_argument("--datasets", default="digits")
    # Both at once (two processes) see the same load on a busy machine; one after the other on an idle one.
    parser.add_argument("--which", default="before,after", help="before, after, or both (comma-separated)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = dataset_sources(out)
    results = {}
    for name in args.datasets.split(","):
        if name == "cats" and not (ASSETS / "cats_vs_dogs_2k").is_dir():
            continue
        source = sources[name]()
        pythons = {"before": args.before_python, "after": sys.executable}
        results[name] = {which: run_auto(pythons[which], source, out / f"{name}-{which}")
                         for which in args.which.split(",")}
        for which, row in results[name].items():
            print(f"{name} {which}: test {row['test']:.4f}, {row['seconds']:.0f} s", flush=True)
            for key, d in row["decisions"].items():
                print(f"    {key}: {d['chosen']} ({d['why']}; {d['seconds']:.0f} s)", flush=True)
        (out / f"auto_{args.which.replace(',', '_')}.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
