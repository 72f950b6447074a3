"""`inspect` shows sweep directories, diagnose reports and exports too (issue 22, item 8)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import make_cache


def cli(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_an_unfinished_sweep_is_shown_with_how_to_resume(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "study.db").write_bytes(b"")
    result = cli("inspect", sweep)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:3] == [
        f"{sweep}  (sweep)", "  INCOMPLETE: no best/ yet; run the same sweep command again to resume its study",
        "  trials: 0 finished"]


@pytest.mark.slow
def test_sweep_and_diagnose_directories_are_described(tmp_path):
    cache = make_cache(tmp_path / "features.h5")
    assert cli("sweep", cache, "--out", tmp_path / "sweep", "--trials", 3, "--quiet").exit_code == 0
    assert cli("diagnose", cache, "--out", tmp_path / "audit", "--folds", 2, "--quiet").exit_code == 0

    shown = cli("inspect", tmp_path / "sweep")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"{tmp_path / 'sweep'}  (sweep)" and "  trials: 3 finished (3 complete)" in lines
    best = next(line for line in lines if line.startswith("  best: trial "))
    assert "its own head as a train-head run, test accuracy " in best and best.endswith(f"-> {tmp_path / 'sweep/best'}")
    assert sum(line.startswith("    #") for line in lines) == 3
    info = json.loads(cli("inspect", tmp_path / "sweep", "--json").stdout)
    assert info["kind"] == "sweep" and info["trials"]["finished"] == 3 and info["study"]["finished_trials"] == 3

    shown = cli("inspect", tmp_path / "audit")
    assert shown.exit_code == 0, shown.output
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    counts = report["counts"]
    assert shown.output.splitlines()[:3] == [f"{tmp_path / 'audit'}  (diagnose report)",
                                             f"  cache: {report['cache']['path']}", f"  rows: {counts['rows']}"]
    assert f"  label issues: {counts['label_issues']}" in shown.output
    assert f"  duplicate pairs: {counts['duplicate_pairs']} ({counts['exact_duplicate_pairs']} exact)" in shown.output
    info = json.loads(cli("inspect", tmp_path / "audit", "--json").stdout)
    assert info["kind"] == "diagnose-report" and info["counts"] == counts
