"""diagnose's files: label_issues.csv, duplicates.csv, outliers.csv, report.json; the terminal table.

report.json is written last, so its presence marks a finished diagnosis (as run.json does for runs).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np

from headstart.pipeline.report.printable import printable

LABEL_COLUMNS = ("key", "split", "given_label", "suggested_label", "score")
#: Added to LABEL_COLUMNS when several caches were compared: "2/2" and whether all caches agree.
AGREEMENT_COLUMNS = ("flagged_by", "consensus")
DUPLICATE_COLUMNS = ("key_a", "split_a", "key_b", "split_b", "similarity", "exact", "leak", "pixel_difference",
                     "found_by")
OUTLIER_COLUMNS = ("key", "split", "kind", "ood_score", "mean_distance", "pixel_std")


def label_issue_rows(d) -> list[dict[str, Any]]:
    """cleanlab's label issues, most suspicious first.

    With several caches (``d.agreement``): every image any cache flags, those all caches flag first;
    the score is the mean over the caches and the suggestion comes from their summed probabilities.
    """
    rows, li, agree = d.rows, d.labels, d.agreement
    names = rows.class_names

    def row(i: int, suggested: int, score: float) -> dict[str, Any]:
        return {"key": rows.keys[i], "split": rows.splits[i], "given_label": names[rows.labels[i]],
                "suggested_label": names[suggested], "score": round(float(score), 6)}

    if agree is None:
        return [row(i, li.suggested[i], li.scores[i]) for i in li.ranking if li.is_issue[i]]
    m = len(agree.caches)
    return [{**row(i, agree.suggested[i], agree.scores[i].mean()), "flagged_by": f"{agree.flagged_by[i]}/{m}",
             "consensus": bool(agree.consensus[i])} for i in agree.ranking]


def duplicate_rows(d) -> list[dict[str, Any]]:
    """Every pair: leaks (across splits) first, then exact copies, then by similarity."""
    rows = d.rows
    return [{"key_a": rows.keys[p.a], "split_a": rows.splits[p.a], "key_b": rows.keys[p.b],
             "split_b": rows.splits[p.b], "similarity": round(p.similarity, 6), "exact": p.exact,
             "leak": bool(rows.splits[p.a] != rows.splits[p.b]),
             "pixel_difference": None if p.pixel_difference is None else round(p.pixel_difference, 3),
             "found_by": p.found_by} for p in d.duplicates.pairs]


def outlier_rows(d) -> list[dict[str, Any]]:
    """Near-constant images (flattest first), then out-of-distribution ones (lowest score first)."""
    rows, o = d.rows, d.outliers
    std = o.pixel_std

    def row(i: int, kind: str) -> dict[str, Any]:
        return {"key": rows.keys[i], "split": rows.splits[i], "kind": kind,
                "ood_score": round(float(o.ood_scores[i]), 6),
                "mean_distance": round(float(o.mean_distance[i]), 6),
                "pixel_std": None if std is None else round(float(std[i]), 3)}

    constant = np.flatnonzero(o.is_constant)
    if std is not None:
        constant = constant[np.argsort(std[constant], kind="stable")]
    ood = np.flatnonzero(o.is_ood & ~o.is_constant)
    ood = ood[np.argsort(o.ood_scores[ood], kind="stable")]
    return [row(i, "near_constant") for i in constant] + [row(i, "out_of_distribution") for i in ood]


def counts(d) -> dict[str, int | None]:
    """Issues found, per kind."""
    dup = duplicate_rows(d)
    agree = d.agreement
    return {"rows": len(d.rows.keys),
            "label_issues": int(d.labels.is_issue.sum()) if agree is None else len(agree.ranking),
            "label_issues_consensus": None if agree is None else int(agree.consensus.sum()),
            "duplicate_pairs": len(dup),
            "leaks": sum(r["leak"] for r in dup),
            "exact_duplicate_pairs": sum(r["exact"] for r in dup),
            "out_of_distribution": int((d.outliers.is_ood & ~d.outliers.is_constant).sum()),
            "near_constant": None if d.outliers.pixel_std is None else int(d.outliers.is_constant.sum())}


def config_record(config) -> dict[str, Any]:
    """The options report.json records (what a rerun's ``--out`` claim compares)."""
    from headstart.pipeline.config import config_to_dict

    return {**config_to_dict(config), "features": os.path.abspath(config.features),
            "other_caches": [os.path.abspath(p) for p in config.other_caches], "out": os.path.abspath(config.out)}


def mark_started(config, fingerprint: str, other_fingerprints: list[str]) -> None:
    """Replaces report.json by an unfinished one before any other file is written.

    A diagnosis killed while it writes (``--overwrite`` included) then leaves a directory marked
    unfinished, which the next run redoes, never an old report.json beside new CSVs that a rerun
    would call "already done" while ``--exclude`` reads the new label_issues.csv.
    """
    from headstart.pipeline.store.files import write_json_atomic

    write_json_atomic(os.path.join(config.out, "report.json"), {
        "kind": "diagnose", "complete": False, "config": config_record(config),
        "cache": {"path": os.path.abspath(config.features), "fingerprint": fingerprint,
                  "other_fingerprints": list(other_fingerprints)}})


def write_report(d, config) -> None:
    """Writes the three CSVs, then report.json (complete), into ``d.out``."""
    from headstart.pipeline.diagnose.neighbours import search_method
    from headstart.pipeline.store.files import write_json_atomic, write_text_atomic
    from headstart.pipeline.store.provenance import library_versions, utc_timestamp

    out = d.out
    label_columns = LABEL_COLUMNS + (AGREEMENT_COLUMNS if d.agreement is not None else ())
    write_text_atomic(os.path.join(out, "label_issues.csv"), _csv(label_columns, label_issue_rows(d)))
    write_text_atomic(os.path.join(out, "duplicates.csv"), _csv(DUPLICATE_COLUMNS, duplicate_rows(d)))
    write_text_atomic(os.path.join(out, "outliers.csv"), _csv(OUTLIER_COLUMNS, outlier_rows(d)))
    d.counts = counts(d)
    import cleanlab

    write_json_atomic(os.path.join(out, "report.json"), {
        "kind": "diagnose",
        "complete": True,
        "config": config_record(config),
        "cache": {"path": os.path.abspath(d.rows.path), "fingerprint": d.rows.fingerprint,
                  "other_fingerprints": [c["fingerprint"] for c in (d.agreement.caches[1:] if d.agreement else [])]},
        "label_issue_agreement": _agreement_record(d),
        "counts": d.counts,
        "summary": d.summary,  # what the terminal showed; a rerun with the same options shows it again
        "thresholds": {
            "label_issues": "cleanlab.filter.find_label_issues(filter_by='prune_by_noise_rate') on "
                            f"{config.folds}-fold out-of-fold probabilities; score = self-confidence",
            "duplicate_cosine_similarity": d.duplicates.thresholds.record(),
            "neighbours": config.neighbours,
            "neighbour_search": search_method(len(d.rows.keys)),
            "out_of_distribution_mean_distance": d.outliers.distance_threshold,
            "near_constant_pixel_std": config.constant_std,
        },
        "near_constant_measured": d.outliers.pixel_std is not None,
        "duplicate_steps": d.duplicates.steps,
        "exact_duplicates": d.duplicates.hashing,
        "class_balance": d.balance,
        "seconds": d.seconds,
        "versions": {**library_versions(), "cleanlab": cleanlab.__version__},
        "files": ["label_issues.csv", "duplicates.csv", "outliers.csv", "label_issues.png",
                  "duplicates.png", "report.json"],
        "created": utc_timestamp(),
    })


def format_summary(d, top: int = 5) -> str:
    """The terminal table: counts per kind, how duplicates were decided, then the top five of each."""
    from headstart.pipeline.report.summary_table import format_summary_table

    c = d.counts or counts(d)
    agree = d.agreement
    issues = (c["label_issues"] if agree is None else
              f"{c['label_issues']} ({c['label_issues_consensus']} flagged by all {len(agree.caches)} caches)")
    lines = [format_summary_table([
        ("rows", c["rows"]),
        ("label issues", issues),
        ("leaks (pairs across splits)", c["leaks"]),
        ("duplicate pairs (exact)", f"{c['duplicate_pairs']} ({c['exact_duplicate_pairs']})"),
        ("out-of-distribution", c["out_of_distribution"]),
        ("near-constant", "not measured (cache from before pixel_std)" if c["near_constant"] is None
         else c["near_constant"]),
        ("imbalance (train max/min)", (d.balance.get("train") or {}).get("imbalance_ratio")),
        ("seconds", f"{d.seconds.get('total', 0.0):.1f}"),
        ("report", d.out),
    ], title="diagnose")]
    lines.extend(_duplicate_lines(d.duplicates))
    sections = [
        ("label issues", [_issue_line(r) for r in label_issue_rows(d)[:top]]),
        ("duplicates", [_pair_line(r) for r in duplicate_rows(d)[:top]]),
        ("outliers", [f"{r['key']} ({r['split']}): {r['kind'].replace('_', '-')}" for r in outlier_rows(d)[:top]]),
    ]
    for title, items in sections:
        if items:
            lines.append(f"top {title}:")
            lines.extend(f"  {printable(item)}" for item in items)  # keys and labels come from the data
    return "\n".join(lines)


def _duplicate_lines(dup, shown: int = 10) -> list[str]:
    """The thresholds per class and what each step let through, in two or three lines."""
    t = dup.thresholds
    if t.mode == "fixed":
        head = f"duplicate threshold: cosine {t.per_class[0]:g} for every class (fixed)"
    else:
        parts = [f"{r['class']} {r['threshold']:.3f}" for r in t.classes[:shown]]
        more = f", ... ({len(t.classes)} classes in report.json)" if len(t.classes) > shown else ""
        head = "duplicate thresholds (cosine, per class from the data): " + ", ".join(parts) + more
    steps = dup.steps
    line = f"duplicate pairs: above the thresholds {steps['features']['pairs']}"
    pixels = steps.get("pixels", {})
    if pixels.get("checked"):
        line += (f" -> same picture {pixels['confirmed']}, not {pixels['rejected']}"
                 + (f", unreadable (kept) {pixels['unreadable']}" if pixels["unreadable"] else "")
                 + f"; same picture by pixels alone {pixels['found_by_pixels_only']}")
    else:
        line += f" (no pixel check: {pixels.get('reason', 'not run')})"
    if "bytes" in steps:
        line += f"; byte-identical {steps['bytes']['pairs']}"
    return [printable(head), f"{line}; reported {steps['reported']}"]


def _agreement_record(d) -> dict | None:
    agree = d.agreement
    if agree is None:
        return None
    return {"caches": agree.caches, "flagged_by_any": len(agree.ranking),
            "consensus": int(agree.consensus.sum()),
            "rule": "each cache's own out-of-fold heads and cleanlab verdict; label_issues.csv lists the "
                    "images all caches flag first, then by how many caches flag them, then by mean score"}


def _issue_line(r: dict[str, Any]) -> str:
    agree = f", flagged by {r['flagged_by']}" if "flagged_by" in r else ""
    return f"{r['key']} ({r['split']}): {r['given_label']} -> {r['suggested_label']}, score {r['score']:.3f}{agree}"


def _pair_line(r: dict[str, Any]) -> str:
    how = "exact copy" if r["exact"] else f"similarity {r['similarity']:.3f}"
    if not r["exact"] and r["pixel_difference"] is not None:
        how += f", pixels differ by {r['pixel_difference']:.1f}"
    leak = "LEAK " if r["leak"] else ""
    return f"{leak}{r['key_a']} ({r['split_a']}) ~ {r['key_b']} ({r['split_b']}), {how}"


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()
