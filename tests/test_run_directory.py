"""Issue 27: ``headstart run`` leaves one coherent run directory (``RunLayout``).

One small auto run (two image sizes, a MobileNet 0.25 whose weights are calibrated on noise) is
shared by the acceptance checks: the final model and the chosen cache and head at the top, the
losing size under candidates/, inspect agreeing with summary.json, every model command taking the
run directory, and the decisions' costs adding up to the run's time. ``RunLayout.promote`` itself
is checked without TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from conftest import make_class_folders


def cli(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_promote_swaps_the_chosen_size_to_the_top_by_renaming(tmp_path):
    from headstart.pipeline.store.run_layout import RunLayout

    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    layout = RunLayout(tmp_path, top_size=150)
    for size in (150, 224):
        layout.size_dir(size).mkdir(parents=True, exist_ok=True)
        layout.size_cache(size).write_text(f"cache {size}", encoding="utf-8")
        layout.size_head(size).mkdir()
        (layout.size_head(size) / "head.keras").write_text(f"head {size}", encoding="utf-8")
    inode = layout.size_cache(224).stat().st_ino
    assert layout.size_cache(224) == tmp_path / "candidates" / "size-224" / "features.h5"
    assert layout.promote(224)
    assert layout.cache.read_text() == "cache 224" and layout.cache.stat().st_ino == inode  # renamed, not copied
    assert (layout.head / "head.keras").read_text() == "head 224"
    assert layout.size_cache(150).read_text() == "cache 150"
    assert list(layout.candidates()) == [150] and not layout.candidate_dir(224).exists()
    assert not layout.promote(224)  # already at the top: nothing moves


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    from test_runner import make_weights_file

    root = tmp_path_factory.mktemp("auto_run")
    for split, n, seed in (("train", 8, 0), ("validation", 6, 1), ("test", 4, 2)):
        make_class_folders(root / "images" / split, per_class=n, seed=seed)
    config = root / "small.toml"
    config.write_text("[sweep]\ntrials = 2\n\n[finetune]\nepochs = 2\nbatch_size = 8\n", encoding="utf-8")
    weights = make_weights_file(root / "mobilenet_025.weights.h5")
    out = root / "run"
    result = cli("run", root / "images", "--out", out, "--config", config, "--backbone", "mobilenet",
                 "--alpha", "0.25", "--weights", weights, "--budget", 5)
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    return SimpleNamespace(root=root, out=out, output=result.output, summary=summary,
                           decisions={d["name"]: d for d in summary["recipe"]["decisions"]})


@pytest.mark.slow
def test_the_chosen_model_cache_and_head_are_at_the_top(auto_run):
    from headstart.pipeline.store.rundir import RunDir

    out, decisions = auto_run.out, auto_run.decisions
    size = decisions["image_size"]["chosen"]
    assert (out / "model.keras").read_bytes() == (out / "finetune" / "model.keras").read_bytes()
    assert RunDir(out / "finetune").image_size == size == auto_run.summary["model"]["image_size"]
    head = RunDir(out / "head")
    assert head.image_size == size
    kept = [c for c in decisions["image_size"]["candidates"] if c["kept"]]
    assert [c["value"] for c in kept] == [size]
    measure = decisions["image_size"]["measure"].removeprefix("val_")
    assert kept[0]["score"] == pytest.approx(head.metrics()["validation"][measure])
    gate = [c for c in decisions["finetune"]["candidates"] if c["kept"]]
    final_measure = decisions["finetune"]["measure"].removeprefix("val_")
    assert gate[0]["score"] == pytest.approx(auto_run.summary["validation"][final_measure])
    others = [c["value"] for c in decisions["image_size"]["candidates"] if not c["kept"]]
    assert sorted(int(s) for s in auto_run.summary["candidates"]) == sorted(others)
    for other in others:
        assert (out / "candidates" / f"size-{other}" / "features.h5").is_file()
        assert RunDir(out / "candidates" / f"size-{other}" / "head").image_size == other
    assert not (out / "recipe").exists()


@pytest.mark.slow
def test_inspect_shows_summary_figures_and_labels_candidates(auto_run):
    result = cli("inspect", auto_run.out)
    assert result.exit_code == 0, result.output
    test = auto_run.summary["test"]
    assert f"test {test['accuracy']:.4f}" in result.output or f"{test['accuracy']:.4f}" in result.output
    for name in ("head", "finetune"):
        rec = auto_run.summary["stages"][name]
        assert f"validation {rec['val_accuracy']:.4f}" in result.output
    for size in auto_run.summary["candidates"]:
        assert "candidate (not chosen): " in result.output and f"({size} px)" in result.output
    assert "best epoch None" not in result.output and "[head]:" not in result.output
    info = json.loads(cli("inspect", auto_run.out, "--json").stdout)
    assert info["stages"]["head"]["accuracy"] == auto_run.summary["stages"]["head"]["accuracy"]


@pytest.mark.slow
def test_predict_evaluate_and_export_take_the_run_directory(auto_run):
    out, image_dir = auto_run.out, auto_run.root / "images" / "test"
    on_run, on_file = cli("predict", out, image_dir), cli("predict", out / "finetune" / "model.keras", image_dir)
    assert on_run.exit_code == on_file.exit_code == 0, on_run.stderr
    assert on_run.stdout == on_file.stdout and on_run.stdout.count("\n") == 8
    assert f"using {out / 'model.keras'}, the run's final model" in on_run.stderr
    evaluated = [json.loads(cli("evaluate", m, auto_run.root / "images", "--json").stdout)
                 for m in (out, out / "finetune")]
    assert evaluated[0]["accuracy"] == evaluated[1]["accuracy"] == auto_run.summary["test"]["accuracy"]
    assert evaluated[0]["confusion_matrix"] == evaluated[1]["confusion_matrix"]
    exported = cli("export", out, "--format", "saved_model", "--out", auto_run.root / "export", "--quiet")
    assert exported.exit_code == 0, exported.output + exported.stderr
    from_export = cli("predict", auto_run.root / "export" / "saved_model", image_dir)
    assert [line.split("\t")[1] for line in from_export.stdout.splitlines()] == \
        [line.split("\t")[1] for line in on_file.stdout.splitlines()]
    if auto_run.summary["model"]["from"] == "head":
        assert "fine-tuned model" not in json.loads((auto_run.root / "export" / "export.json").read_text())["input"]["what"]


@pytest.mark.slow
def test_the_decisions_costs_add_up_to_the_run_time_and_plots_exist(auto_run):
    decisions, seconds = auto_run.decisions, auto_run.summary["seconds"]
    assert list(decisions)[-1] == "other" and all(d["seconds"] >= 0 for d in decisions.values())
    assert sum(d["seconds"] for d in decisions.values()) == pytest.approx(seconds, rel=0.05)
    assert "extract / evaluate / other" in auto_run.output
    for path in auto_run.summary["plots"].values():
        assert Path(path).is_file(), path
    if not auto_run.summary["stages"]["finetune"].get("epochs_run"):  # skipped: no empty curves listed
        assert "finetune" not in auto_run.summary["plots"]
        for name in ("lr", "unfreeze"):
            assert decisions[name]["explicit"] or decisions[name]["chosen"] == "not used"
    from headstart.pipeline.report.decisions import format_decisions

    assert "…" not in format_decisions(list(decisions.values()))  # long values wrap, never cut


def test_the_decisions_table_wraps_long_values_and_ends_with_the_time_no_decision_spent():
    from types import SimpleNamespace as NS

    from headstart.pipeline.report.decisions import Decision, format_decisions
    from headstart.pipeline.run.auto.summary import recipe_section

    head = "linear, lr 0.03, dropout 0.09, wd 0.22, smoothing 0.1, batch 64, units 128, norm layer"
    recipe = {"recipe": "auto", "decisions": [Decision("head", head, seconds=11.0).to_dict(),
                                              Decision("lr", 1e-5, seconds=79.0).to_dict()]}
    section = recipe_section(NS(recipe="auto"), {"recipe": recipe}, 100.0)
    assert [d["name"] for d in section["decisions"]] == ["head", "lr", "other"]
    assert sum(d["seconds"] for d in section["decisions"]) == pytest.approx(100.0)
    table = format_decisions(section["decisions"])
    assert "…" not in table and "norm layer" in table and "extract / evaluate / other" in table
    assert recipe_section(NS(recipe="auto"), {"recipe": section}, 120.0)["decisions"][-1]["seconds"] == 30.0


def test_a_run_directory_resolves_to_its_final_model_chosen_head_and_cache(tmp_path):
    from headstart.pipeline.store.run_layout import chosen_cache, describe_model, final_model_dir, stage_dir

    run = tmp_path / "run"
    (run / "finetune").mkdir(parents=True)
    (run / "finetune" / "run.json").write_text('{"recipe": {"probes": {"finetune": false}}}', encoding="utf-8")
    assert final_model_dir(run) is None and stage_dir(run, "head") == run  # not a run yet: no config.toml
    (run / "config.toml").write_text("", encoding="utf-8")
    assert final_model_dir(run) == final_model_dir(run / "model.keras") == run / "finetune"
    assert stage_dir(run, "head") == run / "head" and stage_dir(run, "finetune") == run / "finetune"
    assert chosen_cache(run) == run / "features.h5" and chosen_cache(tmp_path / "x.h5") == tmp_path / "x.h5"
    assert final_model_dir(run / "finetune") is None and describe_model(run / "finetune") is None
    assert "fine-tuning was skipped" in describe_model(run) and "fine-tuned model" not in describe_model(run)


@pytest.mark.slow
def test_diagnose_takes_the_run_directory_and_says_which_cache(auto_run):
    result = cli("diagnose", auto_run.out, "--out", auto_run.root / "diagnose", "--folds", 2)
    assert result.exit_code == 0, result.output
    assert f"using {auto_run.out / 'features.h5'}, the run's chosen cache" in result.output
