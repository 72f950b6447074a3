"""What report.html shows, read from a finished run directory: the one place the report reads files.

A later change of the run directory's layout touches this module only. Everything comes from the
files a run leaves (no model is loaded, no image decoded again):

    summary.json              the stages, the recipe's decisions, the test measures, calibration
    head/curves.png, finetune/curves.png   the training curves (summary.json's "plots")
    mistakes.npz              the confusion cells' thumbnails and the most confident mistakes
    */leaderboard.csv         a sweep's leaderboard (the head stage's record names it)
    diagnose/report.json      diagnose's findings, with --diagnose

Only summary.json is required; anything else missing (a run from before the report, a multi-label
run without confusion cells) leaves its section out.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.pipeline.errors import RunDirError

#: Leaderboard rows shown.
LEADERBOARD_ROWS = 10
from headstart.pipeline.store.run_layout import MISTAKES, REPORT_HTML, SUMMARY_JSON, RunLayout  # noqa: F401


@dataclass
class ReportData:
    """A run directory's content as report.html needs it.

    Attributes:
        run_dir: the directory.
        summary: summary.json's content.
        curves: (title, PNG bytes) of each stage's training curves.
        mistakes: mistakes.npz's arrays (``run.samples.write_mistakes``), or None.
        leaderboard: (columns, up to ``LEADERBOARD_ROWS`` rows) of the sweep, or None.
        diagnose: diagnose's report.json, or None.
    """

    run_dir: Path
    summary: dict
    curves: list[tuple[str, bytes]] = field(default_factory=list)
    mistakes: dict[str, np.ndarray] | None = None
    leaderboard: tuple[list[str], list[list[str]]] | None = None
    diagnose: dict | None = None


def read_report_data(run_dir: str | Path) -> ReportData:
    """Reads what report.html shows from a finished ``headstart run`` directory.

    Raises:
        RunDirError: no directory, or no readable summary.json (an unfinished or foreign directory).
    """
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY_JSON
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such directory")
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a finished `headstart run` directory (no {SUMMARY_JSON})")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(summary, dict) or summary.get("kind") != "headstart-run":
        raise RunDirError(f"{path}: not a `headstart run` summary (kind {summary.get('kind')!r})"
                          if isinstance(summary, dict) else f"{path}: not a JSON object")
    return ReportData(run_dir=run_dir, summary=summary, curves=_curves(run_dir, summary),
                      mistakes=_npz(run_dir / MISTAKES), leaderboard=_leaderboard(run_dir, summary),
                      diagnose=_json(RunLayout(run_dir).diagnose / "report.json"))


def _curves(run_dir: Path, summary: dict) -> list[tuple[str, bytes]]:
    plots = summary.get("plots") or {}
    found = []
    layout = RunLayout(run_dir)
    for stage, default in (("head", layout.head / "curves.png"), ("finetune", layout.finetune / "curves.png")):
        # The recorded path first; a moved run directory still has its own files.
        for candidate in (Path(plots[stage]) if plots.get(stage) else None, default):
            if candidate is not None and candidate.is_file():
                found.append((stage, candidate.read_bytes()))
                break
    return found


def _npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None  # a damaged picture file costs the pictures, not the report


def _leaderboard(run_dir: Path, summary: dict) -> tuple[list[str], list[list[str]]] | None:
    recorded = ((summary.get("stages") or {}).get("head") or {}).get("sweep") or {}
    candidates = [Path(recorded["leaderboard"])] if recorded.get("leaderboard") else []
    candidates += sorted(run_dir.glob("*/leaderboard.csv"))
    for path in candidates:
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows:
                return rows[0], rows[1:1 + LEADERBOARD_ROWS]
    return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None
