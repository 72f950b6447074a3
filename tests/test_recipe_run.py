"""``headstart run --recipe auto`` end to end: the plan, the decisions, what the user set kept, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipe_images import SHIPPED, write_set

BACKBONE = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", str(SHIPPED)]
COUNTS = (("train", 30), ("validation", 12), ("test", 12))


def _config(tmp_path: Path) -> Path:
    # Four sweep trials and two fine-tuning epochs keep it short; both are the user's settings.
    path = tmp_path / "small.toml"
    path.write_text("[sweep]\ntrials = 4\n\n[finetune]\nepochs = 2\n", encoding="utf-8")
    return path


def _invoke(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _kill_when(args: list[str], ready, what: str):
    """Starts ``headstart ARGS`` in its own process and SIGKILLs it once ``ready()`` returns something
    true; returns that."""
    argv = [sys.executable, "-m", "headstart.pipeline.cli", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, seen = time.monotonic() + 900, None
    while time.monotonic() < deadline and first.poll() is None:
        try:
            seen = ready()
        except (OSError, ValueError, KeyError):
            pass
        if seen:
            break
        time.sleep(0.1)
    assert first.poll() is None, f"the run ended before {what}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    return seen


def _kill_during_the_view_trials(args: list[str], out: Path) -> dict:
    """SIGKILLs ``headstart ARGS`` once the fine-tune's view trials have trained one item; returns the
    items recorded then."""
    progress = out / "finetune" / "backup" / "progress.json"

    def trained() -> dict | None:
        done = json.loads(progress.read_text())["view_trials"]["candidates"]
        return dict(done) if any(c["judged_by"] == "views" for c in done.values()) else None

    return _kill_when(args, trained, "an item was trained on its views")


def _kill_during_the_on_cache_fit(args: list[str], out: Path) -> int:
    """SIGKILLs ``headstart ARGS`` once the first rate's on-cache fit has committed an epoch; returns that epoch."""
    state = out / "finetune" / "backup" / "finetune-lr1e-05" / "state.json"
    return int(_kill_when(args, lambda: json.loads(state.read_text()).get("epoch"), "its first on-cache epoch was saved"))


@pytest.mark.slow
def test_auto_plans_decides_on_validation_records_every_decision_and_resumes_after_a_kill(tmp_path):
    images = write_set(tmp_path / "images", ("circle", "square"), counts=COUNTS)
    out = tmp_path / "run"
    args = ["run", images, "--out", out, "--config", _config(tmp_path), *BACKBONE, "--budget", 30]
    # SIGKILL during the view trials, then during the on-cache fine-tune; the same command then resumes.
    trained = _kill_during_the_view_trials(args, out)
    saved = _kill_during_the_on_cache_fit(args, out)
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"finetune-lr1e-05 epoch {saved}/2" not in result.output  # the saved epoch was not run again
    assert "probe lr" not in result.output and result.output.count("on the cache at lr") == 3
    assert "reused: same source and extraction options" in result.output
    assert "reused: same features and head options" in result.output
    assert "[auto] recipe: will try image sizes 150 and 224, a 4-trial head sweep on each, 7 augmentations tried " \
           "on 2 cached views per image" in result.output, result.output
    assert "decision" in result.output and "fine-tuning rate" in result.output
    summary = json.loads((out / "summary.json").read_text())
    decisions = {d["name"]: d for d in summary["recipe"]["decisions"]}
    # ... and the time no decision spent, so that the costs add up to the run's (issue 27)
    assert list(decisions) == ["image_size", "head", "augment", "lr", "unfreeze", "finetune", "other"]
    assert [c["value"] for c in decisions["image_size"]["candidates"]] == [150, 224]
    assert decisions["image_size"]["chosen"] in (150, 224) and not decisions["image_size"]["explicit"]
    assert {c["value"] for c in decisions["lr"]["candidates"]} == {1e-5, 1e-4, 1e-3}  # each on the cache
    assert decisions["finetune"]["measure"] == "val_accuracy" and "±" in decisions["finetune"]["candidates"][1]["note"]
    assert all(d["seconds"] >= 0 for d in decisions.values())
    assert [b["name"] for b in summary["recipe"]["baselines"]] == ["knn", "logistic"]
    run = json.loads((out / "finetune" / "run.json").read_text())
    assert run["config"]["on_cache"] and run["config"]["probe"] == "lr" and run["config"]["augment"] == "auto"
    trials = {c["item"]: c for c in run["recipe"]["augment"]["candidates"]}
    assert len(trials) == 7 and all(trials[item] == trial for item, trial in trained.items())  # not trained again
    assert [c["value"] for c in decisions["augment"]["candidates"]] == list(trials)  # the trials, in the table
    # The fit trained on the kept items' views (with the tap), and on no dropped item's.
    kept = [item for item, c in trials.items() if c["kept"] and c["judged_by"] == "views"]
    views = json.loads((out / "finetune" / "metrics.json").read_text())["on_cache"]["views"]
    # Each kept item's views of its share of the rows (evidence.view_parts): a row draws from its original
    # and its part's views, as many per image as the plan had them at the chosen size (two, unless the
    # budget cut them to one); an item whose share of this tiny split is empty keeps no cache.
    with_views = [item for item in kept if trials[item]["view_rows"]]
    assert [item for item in kept if trials[item]["views_cache"]] == with_views
    assert views["items"] == with_views and views["per_row"] == (run["config"]["trial_views"] if with_views else 0)
    assert sorted(Path(p).name for p in views["caches"]) == sorted(p.name for p in (out / "finetune" / "view_trials").glob("*.h5"))
    assert all(trials[item]["views_cache"] is None for item in trials if item not in kept)
    assert run["recipe"]["decisions"] == summary["recipe"]["decisions"][:-1]  # the model says how it was chosen
    toml = (out / "config.toml").read_text()
    assert 'recipe = "auto"' in toml and "epochs = 2" in toml and "unfreeze" not in toml
    stages = json.loads((out / "stages.json").read_text())
    assert {"plan", "extract@224", "head@224", "baselines", "head_candidates"} <= set(stages)
    assert "paired" in stages["finetune"]
    again = _invoke(*args)
    assert again.exit_code == 0 and again.output.count("reused") >= 4 and "on the cache at lr" not in again.output
    inspect = _invoke("inspect", out)
    assert inspect.exit_code == 0 and "fine-tuning rate" in inspect.output


def test_what_the_user_set_is_kept_and_nothing_is_searched_for_it(tmp_path):
    images = write_set(tmp_path / "images", ("circle", "square"), counts=COUNTS)
    out = tmp_path / "run"
    result = _invoke("run", images, "--out", out, "--config", _config(tmp_path), *BACKBONE, "--image-size", 64,
                     "--augment", "none", "--lr", "1e-4", "--unfreeze", "all", "--class-weight", "balanced")
    assert result.exit_code == 0, result.output
    # Class weights go through auto's sweep: its best head trained with them.
    head = json.loads((out / "head" / "run.json").read_text())
    assert head["class_weight"]["mode"] == "balanced" and head["sweep"]["trial"] is not None
    decisions = {d["name"]: d for d in json.loads((out / "summary.json").read_text())["recipe"]["decisions"]}
    for name, value in (("image_size", 64), ("augment", "none"), ("lr", 1e-4), ("unfreeze", "all")):
        assert decisions[name]["explicit"] and decisions[name]["chosen"] == value and not decisions[name]["candidates"]
    assert not (out / "recipe").exists()  # no second image size was tried
    run = json.loads((out / "finetune" / "run.json").read_text())
    # The model carries auto's decisions, but fine-tuning itself audited and probed nothing.
    assert not {"augment", "probes"} & set(run["recipe"]) and run["recipe"]["decisions"]
    assert run["config"]["lr"] == 1e-4 and run["config"]["augment"] == "none"
    assert "augmentation audit" not in result.output and "probe lr" not in result.output


@pytest.mark.slow
def test_a_multi_label_source_goes_through_auto_judged_by_map(tmp_path):
    from test_multilabel_e2e import make_shape_set

    table, _ = make_shape_set(tmp_path)
    out = tmp_path / "run"
    result = _invoke("run", table, "--out", out, "--config", _config(tmp_path), *BACKBONE, "--image-size", 32,
                     "--unfreeze", "all")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    decisions = {d["name"]: d for d in summary["recipe"]["decisions"]}
    assert decisions["head"]["measure"] == "val_map" and "sweep trials" in decisions["head"]["why"]
    assert decisions["lr"]["measure"] == "val_map"  # the rates, fitted on the cache, judged by mAP
    assert summary["test"]["task"] == "multi_label" and summary["test"]["map"] > 0.5
    assert [b["measure"] for b in summary["recipe"]["baselines"]] == ["map", "map"]
    # The sweep's best multi-label head seeds fine-tuning (what test_sweep once checked on its own):
    # sigmoid thresholds per class, and the rebuilt chain's parity with the cache.
    head = json.loads((out / "head" / "run.json").read_text())
    assert head["task"] == "multi_label" and set(head["thresholds"]["thresholds"]) == {"circle", "square", "triangle"}
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    assert metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]
