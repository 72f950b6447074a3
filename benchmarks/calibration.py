"""Temperature scaling on real data: test ECE (15 bins) and NLL before → after, and the exports' agreement.

On the 2,000 cat and dog photos of ../shared/assets and scikit-learn's 1,797 digit scans (both laid
out as ``benchmarks/recipe.py`` lays them, 70/10/20 per class), ``headstart run SRC --recipe RECIPE
--export saved_model --export onnx --export tflite`` with MobileNetV2 0.35 and the shared weights;
then summary.json's calibration (the evaluated test split with the model's temperature undone, and
as the model gives it) and export.json's check of each export against model.keras.

    python benchmarks/calibration.py [--out DIR] [--datasets cats,digits] [--recipe guide]

Prints one row per dataset and writes ``DIR/calibration_benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from recipe import BACKBONE, layout_photos


def run(source: Path, out: Path, recipe: str) -> dict:
    """``headstart run`` with every export; returns summary.json plus the exports' checks and wall time."""
    argv = [sys.executable, "-m", "headstart.pipeline.cli", "run", str(source), "--out", str(out), "--recipe", recipe,
            *BACKBONE, "--export", "saved_model", "--export", "onnx", "--export", "tflite", "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode:
        raise SystemExit(f"headstart run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    exports = json.loads((out / "finetune" / "metrics.json").read_text(encoding="utf-8")).get("exports") or {}
    export_json = out / "export" / "export.json"
    if export_json.is_file():
        exports = json.loads(export_json.read_text(encoding="utf-8")).get("checks", exports)
    return {"summary": summary, "exports": exports, "seconds": time.perf_counter() - start}


def row(name: str, result: dict) -> str:
    cal, test = result["summary"]["calibration"], result["summary"]["test"]
    checks = {k: v for k, v in result["exports"].items() if isinstance(v, dict)}
    agree = ", ".join(f"{k} {v.get('agreement')} (max |Δlogit| {v.get('max_abs_logit_diff', float('nan')):.2g})"
                      for k, v in checks.items())
    return (f"| {name} | {test.get('rows')} | {test.get('accuracy'):.4f} | {cal['temperature'][0]:.3f} | "
            f"{cal['before']['ece']:.4f} → {cal['after']['ece']:.4f} | {cal['before']['nll']:.4f} → "
            f"{cal['after']['nll']:.4f} | {agree or '-'} | {result['seconds']:.0f} s |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/calibration-benchmark")
    parser.add_argument("--datasets", default="cats,digits")
    parser.add_argument("--recipe", default="guide")
    args = parser.parse_args(argv)
    from headstart.pipeline.data.bundled import write_digits_folders

    out = Path(args.out)
    sources = {"cats": lambda: layout_photos(out / "data" / "cats_vs_dogs_2k"),
               "digits": lambda: write_digits_folders(out / "data" / "digits")}
    results, lines = {}, ["| dataset | test images | accuracy | T | ECE before → after | NLL before → after | "
                          "exports vs model.keras (agreement) | wall |", "|---" * 8 + "|"]
    for name in args.datasets.split(","):
        results[name] = run(Path(sources[name]()), out / f"{name}-{args.recipe}", args.recipe)
        lines.append(row(name, results[name]))
        print(lines[-1], flush=True)
    (out / "calibration_benchmark.json").write_text(json.dumps(
        {k: {"calibration": v["summary"]["calibration"], "exports": v["exports"], "seconds": v["seconds"]}
         for k, v in results.items()}, indent=2), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
