"""``headstart diagnose``: audit a feature cache for label issues, duplicates, leaks and outliers.

The recipe, over the cache read once into memory (``dataset.load_cache_rows``):

1. out-of-fold probabilities from K train-head heads (``out_of_fold``), the test split scored by
   their mean;
2. label issues from those probabilities with cleanlab (``label_issues``);
3. one blocked nearest-neighbour search on centred unit features (``neighbours``): near-duplicate
   pairs far closer than their class's typical neighbour, confirmed on the images' pixels, plus
   byte-identical source files (``duplicates``); pairs across splits are leaks;
4. outliers: cleanlab's OOD score on the same neighbours, near-constant images from the cache's
   per-row pixel_std (``outliers``);
5. class balance from inspect's summary; then the CSVs, report.json and grids (``report``, ``grids``).

With caches of the same images from other backbones (``config.other_caches``), step 1–2 run on
each and the label issues list the images all of them flag first (``agreement``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.config import DiagnoseConfig, HeadConfig


@dataclass
class Diagnosis:
    """What ``diagnose`` found; the arrays are aligned with ``rows`` (see dataset.CacheRows)."""

    rows: object
    labels: object           # label_issues.LabelIssues of the first cache
    duplicates: object       # duplicates.Duplicates: pairs (leaks first), thresholds, steps
    outliers: object         # outliers.Outliers
    balance: dict
    agreement: object = None  # agreement.Agreement when several caches were given
    seconds: dict = field(default_factory=dict)
    out: str = ""
    counts: dict = field(default_factory=dict)
    summary: str = ""


def diagnose(config: DiagnoseConfig, *, reporter: Reporter = QUIET) -> Diagnosis:
    """Audits the cache ``config.features`` and writes the report into ``config.out``.

    Returns:
        A Diagnosis; ``summary`` is the terminal table.

    Raises:
        OptionError, RunDirError (--out holds another report), RunDirBusyError (another process
        writes --out), DataError (no train split, too few rows, other caches of other images),
        StoreError (a cache cannot be read).
    """
    from headstart.pipeline.diagnose.agreement import align_cache
    from headstart.pipeline.diagnose.dataset import load_cache_rows
    from headstart.pipeline.options.checks import check_config
    from headstart.pipeline.store.out_dir import REUSE, claim

    from headstart.pipeline.store.run_layout import chosen_cache

    if str(chosen_cache(config.features)) != str(config.features):  # a `headstart run` directory
        reporter.line(f"{config.features}: using {chosen_cache(config.features)}, the run's chosen cache")
        config = dataclasses.replace(config, features=str(chosen_cache(config.features)))
    check_config("diagnose", config)
    t0 = time.perf_counter()
    rows = load_cache_rows(config.features)
    others = [load_cache_rows(path) for path in config.other_caches]
    orders = [align_cache(rows, other) for other in others]  # refused before anything is written
    identity = {CACHE_IDENTITY: ",".join([rows.fingerprint, *(o.fingerprint for o in others)])}
    with claim(config.out, command="diagnose", what="diagnose report", section="diagnose",
               wanted={**_resolved(config), **identity},
               read_recorded=lambda: _recorded(config.out), overwrite=config.overwrite) as state:
        if state == REUSE:
            reporter.line(f"{config.out}: already done (a diagnose report with these options on this cache)")
            report = _read_report(config.out)
            return Diagnosis(None, None, None, None, {}, out=config.out, counts=report.get("counts", {}),
                             summary=report.get("summary", ""))
        from headstart.pipeline.diagnose.report import mark_started

        mark_started(config, rows.fingerprint, [o.fingerprint for o in others])  # unfinished until the end
        return _diagnose(config, rows, others, orders, time.perf_counter() - t0, reporter)


#: How report.json's identity of the caches it diagnosed is named in a refusal.
CACHE_IDENTITY = "CACHE (fingerprint)"


def _read_report(out: str) -> dict:
    import json

    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        return json.load(f)


def _recorded(out: str) -> tuple[dict | None, bool]:
    """(the options and caches a finished report recorded, or None; whether there is one)."""
    try:
        report = _read_report(out)
        fingerprints = [report["cache"]["fingerprint"], *report["cache"].get("other_fingerprints", [])]
        # A report from before "complete" was written only at the end: finished.
        return {**report["config"], CACHE_IDENTITY: ",".join(fingerprints)}, report.get("complete", True) is True
    except (OSError, ValueError, KeyError, TypeError):
        return None, False


def _resolved(config: DiagnoseConfig) -> dict:
    from headstart.pipeline.config import config_to_dict

    return {**config_to_dict(config), "features": os.path.abspath(config.features), "out": os.path.abspath(config.out),
            "other_caches": [os.path.abspath(p) for p in config.other_caches]}


def _diagnose(config: DiagnoseConfig, rows, others: list, orders: list, load_seconds: float,
              reporter: Reporter) -> Diagnosis:
    """The diagnosis of the loaded rows, written into the claimed ``config.out``."""
    from headstart.pipeline.diagnose import grids, report
    from headstart.pipeline.diagnose import neighbours as nb
    from headstart.pipeline.diagnose.duplicates import find_duplicates
    from headstart.pipeline.diagnose.outliers import find_outliers

    seconds: dict[str, float] = {"load": load_seconds}
    t0 = time.perf_counter() - load_seconds
    reporter.line(f"{config.features}: {len(rows.keys)} rows, {len(rows.class_names)} classes")
    label_issues, agreement = _all_label_issues(rows, others, orders, config, reporter, seconds)
    t = time.perf_counter()
    x = nb.normalise_features(rows.features)
    indices, sims = nb.top_k_neighbours(x, config.neighbours)
    seconds["neighbours"] = time.perf_counter() - t
    t = time.perf_counter()
    duplicates = find_duplicates(rows, x, indices, sims, threshold=config.duplicate_threshold,
                                 neighbours=config.neighbours)
    seconds["duplicates"] = time.perf_counter() - t
    t = time.perf_counter()
    outliers = find_outliers(x, indices, sims, rows.pixel_std, constant_std=config.constant_std)
    seconds["outliers"] = time.perf_counter() - t
    diagnosis = Diagnosis(rows, label_issues, duplicates, outliers, _balance(config.features), agreement,
                          seconds, out=config.out)
    t = time.perf_counter()
    grids.write_grids(diagnosis, config.grid)
    seconds["grids"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    diagnosis.summary = report.format_summary(diagnosis)
    report.write_report(diagnosis, config)
    return diagnosis


def _all_label_issues(rows, others: list, orders: list, config: DiagnoseConfig, reporter, seconds: dict):
    """The first cache's label issues, and the Agreement of all caches (None with one cache)."""
    from headstart.pipeline.diagnose.agreement import combine_issues

    first, probs = _label_issues(rows.features, rows, config, reporter, seconds)
    if not others:
        return first, None
    issues, all_probs = [first], [probs]
    for other, order in zip(others, orders):
        reporter.line(f"{other.path}: the same {len(rows.keys)} rows through another backbone")
        more, more_probs = _label_issues(other.features[order], rows, config, reporter, seconds)
        issues.append(more)
        all_probs.append(more_probs)
    return first, combine_issues([rows, *others], issues, all_probs)


def _label_issues(features: np.ndarray, rows, config: DiagnoseConfig, reporter, seconds: dict):
    """cleanlab's label issues from out-of-fold probabilities of ``features`` (aligned with ``rows``)."""
    from headstart.pipeline.diagnose.label_issues import find_label_issues
    from headstart.pipeline.diagnose.out_of_fold import out_of_fold_probabilities

    t = time.perf_counter()
    labelled, test = rows.where("train", "validation"), rows.where("test")
    oof = out_of_fold_probabilities(features[labelled], rows.labels[labelled], len(rows.class_names),
                                    HeadConfig(seed=config.seed), folds=config.folds,
                                    extra=features[test] if len(test) else None, reporter=reporter)
    probs = np.zeros((len(rows.keys), len(rows.class_names)))
    probs[labelled] = oof.probs
    if len(test):
        probs[test] = oof.extra_probs
    seconds["out_of_fold"] = seconds.get("out_of_fold", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    issues = find_label_issues(rows.labels, probs)
    seconds["label_issues"] = seconds.get("label_issues", 0.0) + time.perf_counter() - t
    return issues, probs


def _balance(path: str) -> dict:
    """Class counts per split (inspect's summary) and the imbalance ratio max/min of each split."""
    from headstart.features.cache import summarize_cache

    summary = summarize_cache(path)
    out = {}
    for name, split in summary["splits"].items():
        counts = split["class_counts"]
        present = [n for n in counts.values() if n > 0]
        ratio = (max(present) / min(present)) if present else None
        out[name] = {"class_counts": counts, "rows": split["rows"], "imbalance_ratio": ratio,
                     "empty_classes": [c for c, n in counts.items() if n == 0]}
    return out
