"""Which augmentations auto keeps: the old invariance audit against training on cached views, side by side.

On two real datasets (the digit scans of scikit-learn written as PNG folders, and the 2,000 cat and
dog photos of ../shared/assets), with MobileNetV2 0.35 and its shared ImageNet weights at one image
size: extract the cache, train one head (train-head's defaults), then

- the invariance audit (``evidence.audit.audit_head_run``): the head scores transformed validation
  images; an item is kept when accuracy drops by at most max(0.02, 2 SE);
- the view trials (``evidence.view_trials.run_view_trials``) on every candidate, with no pre-filter,
  so each item's figures are shown: heads with and without the item's 2 cached views per training
  image, 3 seeds, paired difference ± SE; kept unless 2 SE below zero. The column "pre-filter" says
  whether auto's audit pre-filter (drop > 0.15) would have dropped it without training.

    python benchmarks/augment_trials.py [--out DIR] [--datasets digits,cats] [--image-size 128]

Prints one table per dataset and writes ``DIR/augment_trials.json``.

``--heads-against REV`` times only the trial heads, which is where a view trial spends most of its
time: every item's cache is extracted once (and kept), then in one process the heads of both arms
are trained by the view trials of git revision REV (``pipeline/evidence/view_trials.py`` as it was
there, loaded from git) and by this checkout's, on the same caches; it prints seconds per item
and both verdicts, and writes ``DIR/heads_against.json``. ``--items`` picks the candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from recipe import ASSETS, WEIGHTS, layout_photos  # noqa: E402 - the same layouts as the recipe benchmark


def bench(name: str, source: Path, out: Path, image_size: int) -> dict:
    """The audit's and the view trials' verdicts on one dataset, with their seconds."""
    from headstart.features.reporter import LineReporter
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.evidence.audit import AUDIT_CANDIDATES, audit_head_run
    from headstart.pipeline.evidence.view_trials import PREFILTER_DROP, run_view_trials
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    out.mkdir(parents=True, exist_ok=True)
    base = ExtractConfig(source=str(source), out=str(out / "features.h5"), backbone="mobilenet_v2", alpha=0.35,
                         weights=str(WEIGHTS), image_size=image_size, splits=("train", "validation"))
    t = time.perf_counter()
    extract_features(base)
    extract_seconds = time.perf_counter() - t
    if not (out / "head" / "run.json").exists():
        train_head(HeadConfig(features=base.out, out=str(out / "head")))
    head = RunDir.open(out / "head", kind="head", recipe=True)
    audit = audit_head_run(head, open_source(SourceSpec(source=str(source))))
    # Each finished item is saved, so a benchmark killed (or crashed) part way resumes from there.
    saved = out / "trials_progress.json"
    progress = json.loads(saved.read_text()) if saved.exists() else {}
    trials = run_view_trials(head, base, out / "trials", extract_features=extract_features,
                             candidates=AUDIT_CANDIDATES, resume_record=progress,
                             save=lambda: saved.write_text(json.dumps(progress)), reporter=LineReporter(print))
    audited = {s.item: s for s in audit.scores}
    rows = []
    for t in trials.trials:
        a = audited[t.item]
        # The trial's own audit_drop is None here (no pre-filter given): the audit's figures go last.
        rows.append({**t.to_dict(), "audit_measure": a.measure, "audit_drop": a.drop, "audit_kept": a.kept,
                     "prefilter_drops": a.drop > PREFILTER_DROP})
    return {"dataset": name, "image_size": image_size, "extract_seconds": extract_seconds,
            "audit": audit.to_dict(), "trials": trials.to_dict(), "rows": rows}


def _module_at(rev: str) -> Any:
    """``evidence/view_trials.py`` as it was at git revision ``rev``, imported under another name."""
    import importlib.util
    import subprocess
    import tempfile

    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pipeline/evidence/view_trials.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "view_trials_before.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("view_trials_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def heads_against(rev: str, source: Path, out: Path, image_size: int, items: list[str]) -> dict:
    """Seconds of the trial heads per item (both arms, every seed), at ``rev`` and here, and both verdicts."""
    from headstart.features.cache import open_cache
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.evidence import view_trials
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    out.mkdir(parents=True, exist_ok=True)
    base = ExtractConfig(source=str(source), out=str(out / "features.h5"), backbone="mobilenet_v2", alpha=0.35,
                         weights=str(WEIGHTS), image_size=image_size, splits=("train", "validation"))
    extract_features(base)
    if not (out / "head" / "run.json").exists():
        train_head(HeadConfig(features=base.out, out=str(out / "head")))
    head = RunDir.open(out / "head", kind="head", recipe=True)
    (out / "trials").mkdir(exist_ok=True)
    modules = {"before": _module_at(rev), "after": view_trials}
    result: dict = {"rev": rev, "image_size": image_size, "items": {}, "seconds": {}}
    without: dict = {}
    for item in items:
        extract = view_trials.view_cache_config(base, item, out / "trials" / f"views-{view_trials._slug(item)}.h5")
        extract_features(extract)
        row: dict = {}
        for name, module in modules.items():
            judge = module._Trials(head, module.trial_config(head), module.SEEDS, extract_features, False)
            with open_cache(base.out) as cache_base, open_cache(extract.out) as cache:
                val, train = cache_base.split("validation"), cache.split("train")
                t = time.perf_counter()
                if name not in without:  # the "without" arm is trained once per run, as run_view_trials does
                    without[name] = judge._scores(train, val, with_views=False, multi_label=cache.multi_label)
                    result["seconds"][f"{name} without"] = time.perf_counter() - t
                    t = time.perf_counter()
                with_scores = judge._scores(train, val, with_views=True, multi_label=cache.multi_label)
                seconds = time.perf_counter() - t
            diff = view_trials.paired_difference(with_scores, without[name])
            row[name] = {"seconds": seconds, "with": float(with_scores.mean()), "without": float(without[name].mean()),
                         "difference": diff.mean, "se": diff.se, "kept": not diff.hurts}
            print(f"{item:>15} {name:>6}: {seconds:6.1f} s  with {row[name]['with']:.4f}  without "
                  f"{row[name]['without']:.4f}  {diff.mean:+.4f} ± {diff.se:.4f}  "
                  f"{'kept' if not diff.hurts else 'dropped'}", flush=True)
        result["items"][item] = row
        (out / "heads_against.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("without arm: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items()))
    return result


def format_table(result: dict) -> str:
    audit, trials = result["audit"], result["trials"]
    lines = [f"### {result['dataset']} ({trials['train_rows']} train / {trials['rows']} "
             f"validation images, {result['image_size']} px)", "",
             f"audit: {audit['seconds']:.0f} s, untransformed {audit['reference']:.3f} → {audit['augment']}; "
             f"view trials: {trials['seconds']:.0f} s → {trials['augment']}", "",
             "| item | audit accuracy (drop) | audit | pre-filter | with views | without | difference ± SE | trials "
             "| seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['item']} | {r['audit_measure']:.3f} ({r['audit_drop']:+.3f}) | "
                     f"{'kept' if r['audit_kept'] else 'dropped'} | {'drops' if r['prefilter_drops'] else '-'} | "
                     f"{r['with_measure']:.4f} | {r['without_measure']:.4f} | "
                     f"{r['difference']:+.4f} ± {r['se']:.4f} | {'kept' if r['kept'] else 'dropped'} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/headstart-augment-trials")
    parser.add_argument("--datasets", default="digits,cats")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--heads-against", metavar="REV", help="time the trial heads at git REV against here")
    parser.add_argument("--items", help="comma-separated candidates (default: the audit's seven)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.heads_against:
        from headstart.pipeline.data.bundled import write_digits_folders
        from headstart.pipeline.evidence.audit import AUDIT_CANDIDATES

        items = args.items.split(",") if args.items else list(AUDIT_CANDIDATES)
        heads_against(args.heads_against, write_digits_folders(out / "digits-images"), out / "digits",
                      args.image_size, items)
        return 0
    results = []
    for name in args.datasets.split(","):
        if name == "digits":
            from headstart.pipeline.data.bundled import write_digits_folders

            source = write_digits_folders(out / "digits-images")
        elif name == "cats":
            if not ASSETS.is_dir():
                print("cats: ../shared/assets is absent; skipped")
                continue
            source = layout_photos(out / "cats-images")
        else:
            raise SystemExit(f"unknown dataset {name!r}: digits or cats")
        results.append(bench(name, source, out / name, args.image_size))
        (out / "augment_trials.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(format_table(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
