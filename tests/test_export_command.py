"""`headstart export`: deployable files from a model you already have (issue 22, item 1).

From a train-head run (the chain rebuilt from the head's recipe and checked against its cache), from a
sweep directory's best head, from a finetune run or its model.keras, and from a `headstart run`
directory; each format checked by its own runtime; the one --out policy; `finetune --export` on a
finished run and `run --export` export without training again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from conftest import REPO, make_splits, make_weights_file, subprocess_env


def cli(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


#: A tiny `headstart run`: MobileNet 0.25 at 32 px on 32 generated images, one fine-tuning epoch; the
#: guide's fixed recipe, so that `finetune --out` with the same flags finds the same configuration.
RUN_FLAGS = ["--recipe", "guide", "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--extract-batch-size", "8",
             "--head-epochs", "10", "--head-lr", "0.01", "--head-batch-size", "8", "--epochs", "1",
             "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished `headstart run`: its head/ (a train-head run) and finetune/ (a finetune run)."""
    root = tmp_path_factory.mktemp("export_command")
    data = make_splits(root / "images")
    weights = make_weights_file(root / "mobilenet_025.weights.h5")
    flags = [*RUN_FLAGS, "--weights", str(weights)]
    done = cli("run", data, "--out", root / "run", *flags)
    assert done.exit_code == 0, done.output
    return SimpleNamespace(root=root, data=data, weights=weights, flags=flags, run=root / "run",
                           head=root / "run" / "head", ft=root / "run" / "finetune")


def headstart(tmp_path, *args) -> subprocess.CompletedProcess:
    """The CLI in its own interpreter, so that what native code writes to stderr is seen too."""
    return subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, env=subprocess_env(tmp_path / "tmp"), cwd=REPO, timeout=600)


def record(out: Path) -> dict:
    return json.loads((out / "export.json").read_text())


def test_refusals_are_one_line_and_leave_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text("source = 'x'\n")
    cases = [
        (["export", tmp_path / "nothing", "--out", tmp_path / "o", "--format", "onnx"], "no such run directory or model"),
        (["export", tmp_path / "run", "--out", tmp_path / "o"], "--format is required"),
        (["export", tmp_path / "run", "--out", tmp_path / "o", "--format", "onnx", "--quantize", "int8"],
         "--quantize int8 applies to --format tflite only"),
        (["export", tmp_path / "run", "--out", tmp_path / "o", "--format", "coreml"], "'coreml' is not one of"),
        (["export", tmp_path / "run", "--out", tmp_path / "o", "--format", "onnx"],
         "this headstart run has no finished finetune stage yet"),
        (["export", tmp_path / "run", "--out", tmp_path / "o", "--format", "onnx", "--weights", tmp_path / "w.h5"],
         "--weights: file"),
    ]
    for args, expected in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()


def test_a_sweep_directory_means_its_best_head_and_a_run_directory_its_finetune(tmp_path):
    from headstart.pipeline.commands.exporting import resolve_export_input

    best = tmp_path / "sweep" / "best"
    best.mkdir(parents=True)
    head = {"kind": "head", "class_names": ["a", "b"], "head": {},
            "cache": {"path": "f.h5", "config": {"backbone": "mobilenet", "weights": "none", "alpha": 0.25,
                                                 "image_size": 32, "pooling": "avg", "weights_fingerprint": "x"}}}
    (best / "run.json").write_text(json.dumps(head))
    (best / "head.keras").write_bytes(b"")
    (tmp_path / "sweep" / "leaderboard.csv").write_text("rank\n")
    found = resolve_export_input(tmp_path / "sweep")
    assert found.kind == "head" and found.run.path == best and "best head of the sweep" in found.what
    assert resolve_export_input(best / "head.keras").run.path == best  # the model file of a head run
    run = tmp_path / "run"
    (run / "finetune").mkdir(parents=True)
    (run / "stages.json").write_text("{}")
    (run / "finetune" / "run.json").write_text(json.dumps(
        {"kind": "finetune", "class_names": ["a", "b"], "backbone": head["cache"]["config"]}))
    (run / "finetune" / "model.keras").write_bytes(b"")
    found = resolve_export_input(run)
    assert found.kind == "finetune" and found.model_file == run / "finetune" / "model.keras"
    loose = tmp_path / "loose.keras"
    loose.write_bytes(b"")
    assert resolve_export_input(loose).kind == "model" and resolve_export_input(loose).run is None


@pytest.mark.slow
def test_a_head_run_is_rebuilt_checked_exported_and_predicted(trained, tmp_path):
    out = tmp_path / "exported"
    result = headstart(tmp_path, "export", trained.head, "--out", out, "--format", "saved_model", "--format",
                       "tflite")
    assert result.returncode == 0, result.stderr
    assert "parity: 8 validation images" in result.stderr and "export tflite: test accuracy" in result.stderr
    # Item 7: no converter or runtime notices, no Python warnings (each status line is ours).
    for noise in ("fully_quantize", "XNNPACK", "Warning", "INFO:", "absl"):
        assert noise not in result.stderr, result.stderr
    written = record(out)
    assert written["complete"] and written["input"]["kind"] == "head" and written["class_names"] == ["cats", "dogs"]
    assert written["parity"]["max_abs_diff"] <= written["parity"]["tolerance"]
    assert written["checks"]["split"] == "test"
    for fmt in ("saved_model", "tflite"):
        check = written["checks"][fmt]
        assert check["images"] == 8 and check["agreement"] == 1.0 and check["max_abs_logit_diff"] < 1e-3, check
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.tflite", "saved_model"]
    shown = cli("inspect", out)  # item 8: inspect describes an export too
    assert shown.exit_code == 0 and shown.output.startswith(f"{out}  (headstart export)\n"), shown.output
    assert f"  tflite: {out / 'model.tflite'}: test accuracy" in shown.output
    # A .tflite file holds no class names: predict takes them from export.json, and LiteRT says nothing.
    image = next((trained.data / "test" / "dogs").glob("*.jpg"))
    shown = headstart(tmp_path, "predict", out / "model.tflite", image)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("\t")[1] in ("cats", "dogs")  # the names, not "0" / "1"
    assert "XNNPACK" not in shown.stderr and "INFO:" not in shown.stderr, shown.stderr
    assert "predict: 1/1 (100%)" in shown.stderr  # the progress line (item 3)
    # The same again is already done; another format is added beside them (issue 27: it was refused);
    # other options are refused by the --out policy; --overwrite replaces.
    stamp = (out / "model.tflite").stat().st_mtime_ns
    again = cli("export", trained.head / "head.keras", "--out", out, "--format", "tflite", "--format", "saved_model")
    assert again.exit_code == 0 and "already done" in again.output, again.output
    assert (out / "model.tflite").stat().st_mtime_ns == stamp
    added = cli("export", trained.head, "--out", out, "--format", "onnx")
    assert added.exit_code == 0 and "exporting onnx to" in added.output, added.output
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.tflite", "saved_model"]
    assert (out / "model.tflite").stat().st_mtime_ns == stamp  # what was there is kept, not written again
    written = record(out)
    assert written["complete"] and written["options"]["formats"] == ["onnx", "saved_model", "tflite"]
    assert {"onnx", "saved_model", "tflite"} <= set(written["checks"]) and written["checks"]["onnx"]["agreement"] == 1.0
    subset = cli("export", trained.head, "--out", out, "--format", "onnx")
    assert subset.exit_code == 0 and "already done" in subset.output, subset.output
    other = cli("export", trained.head, "--out", out, "--format", "tflite", "--quantize", "float16")
    assert other.exit_code == 2 and "with another configuration (--quantize 'none' there, 'float16' now)" \
        in other.output, other.output
    replaced = cli("export", trained.head, "--out", out, "--format", "onnx", "--overwrite", "--quiet")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]  # nothing stale left


@pytest.mark.slow
def test_a_finetune_run_and_its_model_file_are_one_model(trained, tmp_path, capfd):
    from headstart.features.file_hash import sha256_file
    from headstart.pipeline import ExportConfig, export

    out = tmp_path / "exported"
    result = export(ExportConfig(model=str(trained.ft), out=str(out), formats=("onnx",)))
    assert not result.reused and result.checks["onnx"]["agreement"] == 1.0 and result.parity is None
    assert record(out)["input"]["kind"] == "finetune"
    again = export(ExportConfig(model=str(trained.ft / "model.keras"), out=str(out), formats=("onnx",)))
    assert again.reused and again.exports == result.exports
    # A model.keras alone needs --source; a source with other classes is refused.
    alone = tmp_path / "alone" / "model.keras"
    alone.parent.mkdir()
    shutil.copy(trained.ft / "model.keras", alone)
    with pytest.raises(Exception, match="give source=SOURCE"):  # the API names its argument
        export(ExportConfig(model=str(alone), out=str(tmp_path / "x"), formats=("onnx",)))
    assert not (tmp_path / "x").exists()
    capfd.readouterr()
    given = export(ExportConfig(model=str(alone), out=str(tmp_path / "y"), formats=("tflite",), quantize="int8",
                                source=str(trained.data)))
    check = given.checks["tflite"]
    assert check["quantize"] == "int8" and check["images"] == 8 and check["agreement"] >= 0.5, check
    assert record(tmp_path / "y")["class_names"] == ["cats", "dogs"]
    # The converter's "fully_quantize: 0, inference_type: 6, …" notice, written by native code, is dropped (item 7).
    assert "fully_quantize" not in capfd.readouterr().err
    # finetune --export on the finished run: the exports are added, nothing is trained again.
    before = sha256_file(trained.ft / "model.keras")
    added = cli("finetune", trained.data, "--head", trained.head, "--out", trained.ft, "--epochs", 1,
                "--batch-size", 8, "--export", "onnx")
    assert added.exit_code == 0, added.output
    assert "already done" in added.output and "adding the exports onnx" in added.output
    assert sha256_file(trained.ft / "model.keras") == before
    run = json.loads((trained.ft / "run.json").read_text())
    metrics = json.loads((trained.ft / "metrics.json").read_text())
    assert run["exports"]["onnx"].endswith("model.onnx") and metrics["exports"]["onnx"]["agreement"] == 1.0


@pytest.mark.slow
def test_run_export_is_a_step_after_evaluate_that_trains_nothing_again(trained):
    run_dir = trained.run
    assert not (run_dir / "export").exists()
    again = cli("run", trained.data, "--out", run_dir, *trained.flags, "--export", "tflite")
    assert again.exit_code == 0, again.output  # no --overwrite needed
    stages = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert [stages[s]["status"] for s in ("extract", "head", "finetune", "evaluate")] == ["reused"] * 4
    assert stages["export"]["status"] == "ran" and stages["export"]["checks"]["tflite"]["agreement"] == 1.0
    assert record(run_dir / "export")["input"]["kind"] == "finetune" and "exports: " in again.output
    # The same code as the command: `headstart export RUN_DIR` into the same folder is already done.
    same = cli("export", run_dir, "--out", run_dir / "export", "--format", "tflite")
    assert same.exit_code == 0 and "already done" in same.output, same.output
    assert not os.path.exists(run_dir / "finetune" / "model.tflite")
