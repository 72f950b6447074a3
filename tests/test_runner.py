"""`headstart run`: one run directory, stage reuse, refusal of another config, --config round trip,
resume of an interrupted fine-tune, TensorBoard logs, inspect on run directories, summary.png.

Speed: MobileNet (v1) alpha 0.25 at 32 px from a weights file whose BatchNorm statistics were
calibrated on noise (so features carry the images' colours), two colour classes of a few images.
One finished run is shared by the checks that only read it; the others work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_class_folders
from headstart.pipeline.cli import main

pytestmark = pytest.mark.slow


def make_weights_file(path: Path) -> Path:
    """MobileNet 0.25 / 32 px weights with BatchNorm statistics calibrated on noise."""
    from headstart.features.backbones import build_base

    base = build_base("mobilenet", weights="none", image_size=32, alpha=0.25)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # one training-mode pass sets the moving statistics to the batch's
    base(np.random.default_rng(0).uniform(-1, 1, (32, 32, 32, 3)).astype("float32"), training=True)
    base.save_weights(path)
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(root / "images" / split, per_class=n, seed=seed)
    weights = make_weights_file(root / "mobilenet_025.weights.h5")
    # The guide's fixed recipe: these tests are about the runner's stages, reuse and resume (the
    # auto recipe's own tests are tests/test_recipe_run.py).
    options = {"recipe": "guide", "backbone": "mobilenet", "alpha": 0.25, "image_size": 32, "weights": str(weights),
               "extract_batch_size": 8, "head_epochs": 10, "head_lr": 0.01, "head_batch_size": 8,
               "epochs": 2, "batch_size": 8}
    flags = [item for k, v in options.items() for item in (f"--{k.replace('_', '-')}", str(v))]
    return SimpleNamespace(root=root, data=root / "images", options=options, flags=flags)


@pytest.fixture(scope="module")
def finished(env):
    run_dir = env.root / "run"
    result = cli("run", env.data, "--out", run_dir, *env.flags, "--tensorboard")
    assert result.exit_code == 0, result.output
    return SimpleNamespace(run_dir=run_dir, output=result.output)


def stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["stages"]


def test_run_writes_one_run_directory(finished):
    run_dir = finished.run_dir
    for name in ("config.toml", "stages.json", "features.h5", "head/head.keras", "head/run.json",
                 "finetune/model.keras", "finetune/run.json", "summary.json", "summary.png", "samples.npz",
                 "model.keras"):
        assert (run_dir / name).is_file(), name
    # Issue 27: RUN/model.keras is the final model (the guide's fine-tuned one), linked, not copied
    assert (run_dir / "model.keras").stat().st_ino == (run_dir / "finetune" / "model.keras").stat().st_ino
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"].values()] == ["ran"] * 4
    assert summary["class_names"] == ["cats", "dogs"]
    for name in ("head", "finetune", "evaluate"):
        assert 0.0 <= summary["stages"][name]["accuracy"] <= 1.0
        assert summary["stages"][name]["images_per_second"] > 0
    assert summary["stages"]["evaluate"]["accuracy"] == summary["stages"]["finetune"]["accuracy"]
    assert np.sum(summary["test"]["confusion_matrix"]) == 8
    matrix = np.array(summary["test"]["confusion_matrix"])
    recall = np.diag(matrix) / matrix.sum(axis=1)
    assert summary["test"]["balanced_accuracy"] == pytest.approx(recall.mean())
    assert summary["stages"]["evaluate"]["macro_f1"] == summary["test"]["macro_f1"] is not None
    assert (run_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = finished.output.split("stage ", 1)[1]
    for label in ("extract-features", "train-head", "finetune", "evaluate", "images/s", "summary.png"):
        assert label in table
    assert "balanced acc." in table and "macro-F1" in table
    assert f"{summary['stages']['evaluate']['balanced_accuracy']:.4f}" in table
    for stage in ("head", "finetune"):
        events = list((run_dir / "tensorboard" / stage).rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for {stage}"


def test_rerun_reuses_every_stage(env, finished):
    before = digests(finished.run_dir / "finetune")
    result = cli("run", env.data, "--out", finished.run_dir, *env.flags, "--tensorboard")
    assert result.exit_code == 0, result.output
    assert [s["status"] for s in stages(finished.run_dir).values()] == ["reused"] * 4
    assert digests(finished.run_dir / "finetune") == before


def test_global_quiet_prints_only_the_table(env, finished):
    result = cli("--quiet", "run", env.data, "--out", finished.run_dir, *env.flags, "--tensorboard")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("stage ")
    assert "reused:" not in result.output


def test_another_configuration_is_refused_and_nothing_changes(env, finished):
    before = digests(finished.run_dir)
    result = cli("run", env.data, "--out", finished.run_dir, *env.flags, "--epochs", "3")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0, result.output
    assert "(--epochs 2 there, 3 now)" in result.output and "--overwrite" in result.output
    assert digests(finished.run_dir) == before


def test_a_failed_first_run_never_blocks_the_corrected_command(env, tmp_path):
    # Issue 27: weights that cannot load left config.toml, and the corrected command was refused
    # ("holds a run with another configuration ... pass --overwrite").
    run_dir, junk = tmp_path / "run", tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not an HDF5 file")
    failed = cli("run", env.data, "--out", run_dir, *env.flags, "--weights", junk)
    assert failed.exit_code == 2 and "--weights" in failed.output, failed.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml"]  # what the user was left with
    corrected = cli("run", env.data, "--out", run_dir, *env.flags)
    assert corrected.exit_code == 0, corrected.output
    assert (run_dir / "summary.json").is_file()
    assert str(junk) not in (run_dir / "config.toml").read_text()


def test_config_file_reproduces_the_run_and_flags_override_it(env, finished):
    from headstart.pipeline.run.toml_config import run_config_dict, to_toml
    from headstart.pipeline.run.runner import load_run_config

    config_file = finished.run_dir / "config.toml"
    loaded = load_run_config(None, None, config_file=str(config_file))
    assert to_toml(loaded) == config_file.read_text()
    from_flags = load_run_config(str(env.data), str(finished.run_dir), flags={**env.options, "tensorboard": True})
    assert run_config_dict(loaded) == run_config_dict(from_flags)
    assert load_run_config(None, None, config_file=str(config_file), flags={"epochs": 7}).finetune.epochs == 7
    result = cli("run", "--config", config_file)  # source and out come from the file
    assert result.exit_code == 0, result.output
    assert [s["status"] for s in stages(finished.run_dir).values()] == ["reused"] * 4


def test_overwrite_redoes_changed_stages_and_an_interrupted_finetune_resumes(env, finished, tmp_path):
    from headstart.pipeline.run.runner import Console, load_run_config, run_pipeline

    run_dir = tmp_path / "copy"
    shutil.copytree(finished.run_dir, run_dir)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt  # after the backup of epoch 1 was committed

    config = load_run_config(str(env.data), str(run_dir), flags={**env.options, "epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, overwrite=True, console=Console(quiet=True), finetune_callbacks=[Interrupt()])
    assert not (run_dir / "summary.json").exists()
    shown = cli("inspect", run_dir).output
    assert "INCOMPLETE" in shown and "finetune" in shown and "interrupted" in shown
    assert "after epoch 1" in cli("inspect", run_dir / "finetune").output

    result = cli("run", env.data, "--out", run_dir, *env.flags, "--epochs", "3", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1 of 3" in result.output
    done = stages(run_dir)
    assert [done[s]["status"] for s in ("extract", "head", "finetune", "evaluate")] == \
        ["reused", "reused", "resumed", "ran"]
    assert done["finetune"]["epochs_run"] == 3


def test_inspect_describes_run_directories(finished):
    top = cli("inspect", finished.run_dir)
    assert top.exit_code == 0, top.output
    for text in ("(headstart run)", "[extract]", "[finetune]", "train-head", "evaluate", "cats: precision",
                 "summary.png"):
        assert text in top.output, text
    head = cli("inspect", finished.run_dir / "head")
    assert "(train-head run)" in head.output and "test accuracy" in head.output
    ft = cli("inspect", finished.run_dir / "finetune")
    assert "(finetune run)" in ft.output and "stage gate" in ft.output and "parity" in ft.output
    info = json.loads(cli("inspect", finished.run_dir, "--json").output)
    assert info["kind"] == "pipeline-run" and info["complete"] and info["config"]["extract"]["backbone"] == "mobilenet"


def test_summary_plot_draws_curves_confusion_and_samples(tmp_path):
    from headstart.pipeline.store.files import read_history
    from headstart.pipeline.report.summary_plot import plot_summary

    rng = np.random.default_rng(0)
    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.8], "val_loss": [1.1, 0.6], "val_accuracy": [0.5, 0.7]}
    samples = {"images": rng.integers(0, 255, (7, 16, 16, 3), dtype=np.uint8), "labels": np.array([0, 1, 2] * 2 + [0]),
               "predicted": np.array([0, 1, 1] * 2 + [2]), "probability": rng.uniform(0.3, 1, 7)}
    path = tmp_path / "summary.png"
    plot_summary(path, head_history=history, finetune_history=history, head_best=2, finetune_best=1,
                 confusion=[[2, 0, 1], [0, 2, 0], [0, 2, 0]], class_names=["a", "b", "c"], samples=samples, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert read_history(tmp_path / "missing.csv") == {}


def test_config_sections_map_onto_stage_configs_and_round_trip(tmp_path):
    from headstart.pipeline.run.toml_config import read_config_file, resolve_run_config, to_toml

    toml = tmp_path / "run.toml"
    toml.write_text('source = "tfds:cats_vs_dogs"\nout = "runs/x"\n'
                    '[extract]\nbackbone = "mobilenet_v2"\nalpha = 1\nsplit_specs = { train = "train[:80%]" }\n'
                    '[head]\nlr = 1\ndropout = 0\n[finetune]\nexport = ["tflite"]\nunfreeze = "top:20"\n')
    config = resolve_run_config(None, None, file_values=read_config_file(toml), flags={"epochs": 2, "seed": 5})
    assert config.source == "tfds:cats_vs_dogs" and config.out == str((Path.cwd() / "runs/x").resolve())
    assert (config.extract.backbone, config.extract.alpha, config.extract.split_specs) == \
        ("mobilenet_v2", 1.0, {"train": "train[:80%]"})
    assert isinstance(config.head.lr, float) and config.head.dropout == 0.0
    assert config.finetune.export == ("tflite",) and config.finetune.epochs == 2
    assert config.extract.seed == config.head.seed == config.finetune.seed == 5
    written = tmp_path / "config.toml"
    written.write_text(to_toml(config))
    again = resolve_run_config(None, None, file_values=read_config_file(written))
    assert again == config
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"source": "tfds:mnist", "out": "o", "head": {"epochs": 3}}))
    assert resolve_run_config(None, None, file_values=read_config_file(as_json)).head.epochs == 3
