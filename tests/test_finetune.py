"""`finetune`: assembly, parity, BatchNorm kept frozen, unfreeze modes, stage gate, resume, refusals.

Speed: MobileNet (v1) alpha 0.25 at 32 px — real depthwise convolutions and BatchNorm, the smallest
graph in the registry — from a weights file whose BatchNorm statistics were calibrated on noise, so
features carry the images' colours and a head learns the two colour classes in seconds. One
fine-tune run is shared by the checks that only read its outputs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from headstart.features.reporter import LineReporter

from conftest import BACKBONE, make_splits, make_weights_file
from headstart.features.errors import WeightsError
from headstart.pipeline.config import ExtractConfig, FinetuneConfig, HeadConfig
from headstart.pipeline.errors import OptionError, ParityError, RunDirError

def config_for(prepared, out: Path, **kwargs) -> FinetuneConfig:
    values = {"source": str(prepared.data), "head": str(prepared.head), "out": str(out), "epochs": 2,
              "batch_size": 8, "seed": 0, "parity_samples": 8}
    values.update(kwargs)
    return FinetuneConfig(**values)


def with_backbone(config: FinetuneConfig, **options) -> FinetuneConfig:
    # FinetuneConfig may not carry backbone options yet; finetune() reads them with getattr.
    for name, value in options.items():
        setattr(config, name, value)
    return config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Images, a weights file, a float32 feature cache and a trained head run."""
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    root = tmp_path_factory.mktemp("finetune")
    data = make_splits(root / "images")
    weights = make_weights_file(root / "mobilenet_025.weights.h5")
    extract_features(ExtractConfig(source=str(data), out=str(root / "features.h5"), weights=str(weights),
                                   batch_size=8, **BACKBONE))
    head = train_head(HeadConfig(features=str(root / "features.h5"), out=str(root / "head"), epochs=20,
                                 lr=1e-2, patience=20, batch_size=8))
    assert head.val_accuracy == 1.0, head.summary  # a head that learned: the gate has something to keep
    return SimpleNamespace(root=root, data=data, weights=weights, features=root / "features.h5",
                           head=root / "head", head_result=head)


@pytest.fixture(scope="module")
def main_run(prepared):
    from headstart.pipeline.finetuning.finetuning import finetune

    lines: list[str] = []
    result = finetune(config_for(prepared, prepared.root / "ft", export=("saved_model", "onnx", "tflite")),
                      reporter=LineReporter(lines.append))
    return SimpleNamespace(result=result, lines=lines, run_dir=Path(result.run_dir))


def bn_state(model) -> list[np.ndarray]:
    from headstart.features.chain import batchnorm_layers

    return [np.array(w) for layer in batchnorm_layers(model) for w in layer.get_weights()]


@pytest.mark.slow
def test_run_directory_parity_and_gate(main_run, prepared):
    run_dir, result = main_run.run_dir, main_run.result
    for name in ("model.keras", "run.json", "metrics.json", "history.csv", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["kind"] == "finetune" and run["stage"] == "finetune"
    assert run["backbone"]["backbone"] == "mobilenet" and run["backbone"]["image_size"] == 32
    assert run["class_names"] == ["cats", "dogs"] and run["versions"]["keras"] == keras.__version__
    metrics = json.loads((run_dir / "metrics.json").read_text())
    parity = metrics["parity"]
    assert parity["max_abs_diff"] <= parity["tolerance"] and parity["dtype"] == "float32"
    assert parity["samples"] == 8 and parity["split"] == "validation"
    assert any(line.startswith("parity: 8 validation images") for line in main_run.lines)
    gate = metrics["stage_gate"]
    # One measure decides: the gate compares the validation loss, as early stopping kept the epoch by
    # it (the other way round is test_without_head_trains_head_first_and_gate_keeps_seeded).
    assert set(gate) == {"kept", "measure", "seeded_val_loss", "finetuned_val_loss"} and gate["measure"] == "loss"
    assert gate["kept"] == result.kept == ("seeded" if gate["finetuned_val_loss"] > gate["seeded_val_loss"]
                                           else "finetuned")
    assert metrics["validation"]["accuracy"] == 1.0
    assert gate["seeded_val_loss"] == pytest.approx(prepared.head_result.val_loss, rel=1e-3)
    best = metrics["best_epoch"]
    if gate["kept"] == "finetuned":  # the gate judged the epoch early stopping kept, on the same measure
        assert gate["finetuned_val_loss"] == pytest.approx(json.loads(json.dumps(result.history))["val_loss"][best - 1],
                                                           rel=1e-3)
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == 8
    assert set(metrics["test"]["per_class"]) == {"cats", "dogs"}
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and {"loss", "val_loss", "val_accuracy"} <= set(rows[0])
    assert "stage gate" in result.summary and "kept" in result.summary


@pytest.mark.slow
def test_saved_model_reloads_in_safe_mode_with_frozen_batchnorm(main_run, prepared):
    from headstart.features.backbones import build_base

    model = keras.saving.load_model(main_run.run_dir / "model.keras", safe_mode=True)
    from headstart.pipeline.model.calibration import model_temperature

    record = json.loads((main_run.run_dir / "run.json").read_text())["calibration"]
    chain = ["augmentation", "preprocessing", "backbone", "pooling", "head"]
    if record["method"] == "none":
        # Validation all right with a margin (these colour classes often are) pins down no temperature:
        # the model is left as trained and says why (test_calibration covers a fitted one end to end).
        assert "does not determine a temperature" in record["reason"]
        assert [layer.name for layer in model.layers[1:]] == chain and model_temperature(model) is None
        assert any(line.startswith("calibration: skipped") for line in main_run.lines)
    else:
        # The temperature fitted on validation is the model's last layer, and run.json records the same value.
        assert [layer.name for layer in model.layers[1:]] == [*chain, "temperature"]
        assert record["method"] == "temperature" and model_temperature(model) == pytest.approx(record["temperature"])
        calibration = json.loads((main_run.run_dir / "metrics.json").read_text())["calibration"]
        assert calibration["validation"]["after"]["nll"] <= calibration["validation"]["before"]["nll"] + 1e-9
        assert set(calibration["test"]) == {"temperature", "before", "after"}
        assert any(line.startswith("calibration: temperature") for line in main_run.lines)
    bn = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    original = build_base("mobilenet", weights=str(prepared.weights), image_size=32, alpha=0.25)
    for before, after in zip(bn_state(original), bn_state(model)):
        np.testing.assert_array_equal(before, after)  # gamma, beta, moving mean and variance


@pytest.mark.slow
def test_evaluate_reproduces_the_reported_test_accuracy(main_run, prepared):
    from headstart.pipeline.commands.evaluation import evaluate_model

    metrics = json.loads((main_run.run_dir / "metrics.json").read_text())
    again = evaluate_model(main_run.run_dir / "model.keras", str(prepared.data), "test")
    assert again["accuracy"] == metrics["test"]["accuracy"]
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_exports_predict_like_model_keras(main_run, prepared):
    import tensorflow as tf

    from headstart.pipeline.data.image import load_image

    model = keras.saving.load_model(main_run.run_dir / "model.keras", safe_mode=True)
    files = sorted((prepared.data / "validation").rglob("*.jpg"))
    images = np.stack([load_image(f, 32) for f in files])
    expected = model.predict(images, verbose=0)
    loaded = tf.saved_model.load(str(main_run.run_dir / "saved_model"))  # keep it: serve() needs its variables
    served = loaded.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=main_run.result.exports["tflite"])
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_metrics_record_each_export_against_model_keras_on_the_test_split(main_run):
    metrics = json.loads((main_run.run_dir / "metrics.json").read_text())
    exports = metrics["exports"]
    assert exports["split"] == "test" and set(exports) == {"split", "saved_model", "onnx", "tflite"}
    for fmt in ("saved_model", "onnx", "tflite"):
        row = exports[fmt]
        assert row["images"] == 8 and row["keras_accuracy"] == metrics["test"]["accuracy"], (fmt, row)
        assert row["agreement"] == 1.0 and row["accuracy"] == row["keras_accuracy"], (fmt, row)
        assert row["max_abs_logit_diff"] < 1e-3 and Path(row["path"]).exists()
    assert exports["tflite"]["quantize"] == "none"
    assert any(line.startswith("export onnx: test accuracy") for line in main_run.lines)


@pytest.mark.slow
def test_recompile_takes_effect_and_batchnorm_statistics_stay_bit_identical(prepared, tmp_path):
    from headstart.pipeline.model.head import build_head, compile_head
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.assembly import freeze_backbone, unfreeze_backbone
    from headstart.pipeline.model.unfreeze import parse_unfreeze
    from headstart.pipeline.store.files import save_model_atomic

    keras.utils.set_random_seed(0)
    base, pre, pool, _ = build_backbone_parts("mobilenet", weights=str(prepared.weights), image_size=32,
                                              alpha=0.25, pooling="avg")
    model = build_chain(base, pre, pool, head=build_head((256,), 2))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 2, (16, 1)).astype("float32")
    kernels = [w for layer in base.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
               for w in layer.weights]

    freeze_backbone(model)
    compile_head(model, 2, 1e-2)
    frozen_kernels = [np.array(w) for w in kernels]
    head_before = [np.array(w) for w in model.get_layer("head").weights]
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert all(np.array_equal(a, np.array(w)) for a, w in zip(frozen_kernels, kernels))
    assert not all(np.array_equal(a, np.array(w)) for a, w in zip(head_before, model.get_layer("head").weights))

    unfreeze_backbone(model, parse_unfreeze("all"))
    compile_head(model, 2, 1e-2)  # without this recompile the backbone would stay frozen
    bn_before = bn_state(model)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    changed = [not np.array_equal(a, np.array(w)) for a, w in zip(frozen_kernels, kernels)]
    assert all(changed), f"{changed.count(False)} unfrozen kernels did not move"
    bn_after = bn_state(model)
    assert len(bn_after) == 4 * 27
    for before, after in zip(bn_before, bn_after):
        np.testing.assert_array_equal(before, after)

    save_model_atomic(model, tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    for before, after in zip(bn_before, bn_state(reloaded)):
        np.testing.assert_array_equal(before, after)
    for a, b in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_trainable_counts_per_unfreeze_mode():
    from headstart.features.backbones import build_base, build_pooling, build_preprocessing
    from headstart.pipeline.model.head import build_head
    from headstart.features.chain import batchnorm_layers, build_chain
    from headstart.pipeline.model.assembly import freeze_backbone, trainable_counts, unfreeze_backbone
    from headstart.pipeline.model.unfreeze import parse_unfreeze

    base = build_base("mobilenet", weights="none", image_size=32, alpha=0.25)
    model = build_chain(base, build_preprocessing("mobilenet"), build_pooling("avg"), head=build_head((256,), 3))
    layers = base.layers[1:]

    def expected(start: int) -> int:
        # Conv kernels (and biases, none here) of the unfrozen tail, never BN, plus the head's Dense.
        return sum(len(l.weights) for l in layers[start:] if not isinstance(l, keras.layers.BatchNormalization)) + 2

    freeze_backbone(model)
    assert trainable_counts(model)["trainable_weights"] == 2
    names = unfreeze_backbone(model, parse_unfreeze("all"))
    assert trainable_counts(model)["trainable_weights"] == expected(0) == 27 + 2
    assert len(names) == 27  # every conv layer; BN layers hold no trainable weight
    unfreeze_backbone(model, parse_unfreeze("top:10"))
    assert trainable_counts(model)["trainable_weights"] == expected(len(layers) - 10)
    unfreeze_backbone(model, parse_unfreeze("from:conv_pw_12"))
    start = [l.name for l in layers].index("conv_pw_12")
    assert trainable_counts(model)["trainable_weights"] == expected(start) == 3 + 2
    for layer in batchnorm_layers(model):
        assert not layer.trainable and not layer.trainable_weights
    assert trainable_counts(model)["non_trainable_params"] > 0

    with pytest.raises(OptionError, match="top:N"):
        parse_unfreeze("top:0")
    with pytest.raises(OptionError, match="all, top:N or from:LAYER"):
        parse_unfreeze("some")
    with pytest.raises(OptionError, match="only 85 layers"):
        unfreeze_backbone(model, parse_unfreeze("top:500"))
    with pytest.raises(OptionError, match="did you mean conv_pw_12"):
        unfreeze_backbone(model, parse_unfreeze("from:conv_pw_12x"))


@pytest.mark.slow
def test_parity_detects_a_changed_input_path(prepared, tmp_path):
    from PIL import Image

    from headstart.pipeline.finetuning.finetuning import finetune

    data = tmp_path / "images"
    shutil.copytree(prepared.data, data)
    for path in (data / "validation").rglob("*.jpg"):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(255 - pixels).save(path)  # what extract-features saw is no longer what we read
    with pytest.raises(ParityError, match=r"parity check failed: on \S+ the full model's logits"):
        finetune(config_for(prepared, tmp_path / "ft", source=str(data)))


@pytest.mark.slow
def test_parity_detects_perturbed_weights(prepared):
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.model.head import build_head
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.parity import check_parity

    run = json.loads((prepared.head / "run.json").read_text())
    base, pre, pool, _ = build_backbone_parts("mobilenet", weights=str(prepared.weights), image_size=32,
                                              alpha=0.25, pooling="avg")
    head = build_head((256,), 2)
    head.set_weights(keras.saving.load_model(prepared.head / "head.keras").get_weights())
    model = build_chain(base, pre, pool, head=head)
    source = resolve_source(str(prepared.data))
    ok = check_parity(model, run["cache"], source, samples=4)
    assert ok.max_abs_diff <= ok.tolerance and ok.dtype == "float32"
    kernel = base.get_layer("conv_pw_13")
    kernel.set_weights([w * 1.05 for w in kernel.get_weights()])
    with pytest.raises(ParityError, match="tolerance"):
        check_parity(model, run["cache"], source, samples=4)


@pytest.mark.slow
def test_parity_passes_on_a_float16_cache_within_its_tolerance(prepared, tmp_path):
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.model.head import build_head
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.parity import check_parity
    from headstart.pipeline.commands.head_training import train_head

    extract_features(ExtractConfig(source=str(prepared.data), out=str(tmp_path / "f16.h5"), dtype="float16",
                                   weights=str(prepared.weights), splits=("train", "validation"), **BACKBONE))
    train_head(HeadConfig(features=str(tmp_path / "f16.h5"), out=str(tmp_path / "head"), epochs=3, lr=1e-2))
    run = RunDir.open(tmp_path / "head", kind="head").record
    base, pre, pool, _ = build_backbone_parts("mobilenet", weights=str(prepared.weights), image_size=32,
                                              alpha=0.25, pooling="avg",
                                              expected_fingerprint=run["cache"]["config"]["weights_fingerprint"])
    head = build_head((256,), 2)
    head.set_weights(keras.saving.load_model(tmp_path / "head" / "head.keras").get_weights())
    result = check_parity(build_chain(base, pre, pool, head=head), run["cache"],
                          resolve_source(str(prepared.data)), samples=8)
    assert result.dtype == "float16" and 0 < result.max_abs_diff <= result.tolerance
    assert result.tolerance >= 1e-2


@pytest.mark.slow
def test_mixed_precision_checks_parity_on_a_float32_twin(prepared, tmp_path):
    # In bfloat16 the logits drift far past any tolerance that still catches a wrong input path
    # (measured: 1.3 on a logit of 7), so --mixed-precision used to fail its own parity check.
    from headstart.pipeline.finetuning.finetuning import finetune

    out = tmp_path / "mixed"
    result = finetune(config_for(prepared, out, epochs=1, parity_samples=8, mixed_precision=True))
    assert result.parity.dtype == "float32" and result.parity.max_abs_diff <= result.parity.tolerance
    run = json.loads((out / "run.json").read_text())
    assert run["precision"]["policy"] == "mixed_bfloat16" and run["precision"]["logits_dtype"] == "float32"
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    policies = {layer.dtype_policy.name for layer in model.get_layer("backbone").layers}
    assert "mixed_bfloat16" in policies
    assert model.get_layer("head").get_layer("logits").dtype_policy.name == "float32"


@pytest.mark.slow
def test_refusals(prepared, main_run, tmp_path):
    from headstart.pipeline.finetuning.finetuning import finetune
    from headstart.features.chain import build_backbone_parts

    quiet = {}
    with pytest.raises(RunDirError, match="no such run directory"):
        finetune(config_for(prepared, tmp_path / "a", head=str(tmp_path / "missing")), **quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a train-head run"):
        finetune(config_for(prepared, tmp_path / "a", head=str(tmp_path / "empty")), **quiet)
    with pytest.raises(RunDirError, match="'finetune' run directory"):
        finetune(config_for(prepared, tmp_path / "a", head=str(main_run.run_dir)), **quiet)
    with pytest.raises(OptionError, match="image_size=64 conflicts with the head run's 32"):
        finetune(with_backbone(config_for(prepared, tmp_path / "a"), image_size=64), **quiet)
    with pytest.raises(OptionError, match="^backbone="):
        finetune(with_backbone(config_for(prepared, tmp_path / "a"), backbone="xception"), **quiet)
    with pytest.raises(OptionError, match="unfreeze"):
        finetune(config_for(prepared, tmp_path / "a", unfreeze="top:x"), **quiet)
    with pytest.raises(OptionError, match="export"):
        finetune(config_for(prepared, tmp_path / "a", export=("coreml",)), **quiet)
    exports = {"export": ("saved_model", "onnx", "tflite")}
    with pytest.raises(RunDirError, match=r"holds a finetune run with another configuration \(--lr 1e-05 there, "
                                          r"0\.001 now\); pass --overwrite"):
        finetune(config_for(prepared, main_run.run_dir, lr=1e-3, **exports), **quiet)
    with pytest.raises(RunDirError, match="is not empty and holds no finetune run"):
        finetune(config_for(prepared, prepared.head), **quiet)  # a train-head directory is not a finetune's
    again = finetune(config_for(prepared, main_run.run_dir, **exports), **quiet)
    assert again.reused and again.test_accuracy == main_run.result.test_accuracy  # already done, not redone
    other = make_weights_file(tmp_path / "other.weights.h5", seed=1)
    with pytest.raises(WeightsError, match="other.weights.h5.*not the ones the cached features came from"):
        finetune(with_backbone(config_for(prepared, tmp_path / "b"), weights=str(other)), **quiet)
    with pytest.raises(WeightsError, match="'none'"):
        build_backbone_parts("mobilenet", weights="none", image_size=32, alpha=0.25, pooling="avg",
                             expected_fingerprint="0" * 64)


class _Sabotage(keras.callbacks.Callback):
    """Inverts the seeded head after every batch: fine-tuning that makes the model worse, for sure."""

    def on_train_begin(self, logs=None):
        self.dense = self.model.get_layer("head").get_layer("logits")
        self.seeded = self.dense.get_weights()

    def on_train_batch_end(self, batch, logs=None):
        self.dense.set_weights([-w for w in self.seeded])


@pytest.mark.slow
def test_without_head_trains_head_first_and_gate_keeps_seeded(prepared, tmp_path):
    from headstart.pipeline.finetuning.finetuning import finetune

    config = with_backbone(
        FinetuneConfig(source=str(prepared.data), out=str(tmp_path / "ft"), epochs=1, batch_size=16,
                       head_epochs=20, head_lr=1e-2, head_batch_size=8, patience=20, augment="none"),
        weights=str(prepared.weights), pooling="avg", **BACKBONE)
    lines: list[str] = []
    result = finetune(config, reporter=LineReporter(lines.append), callbacks=[_Sabotage()])
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    head_history = metrics["head_stage"]["history"]
    assert len(head_history["loss"]) == 20 and metrics["parity"] is None
    assert sum(line.startswith("head epoch") for line in lines) == 20
    assert "for 20 epochs (batch 8, lr 0.01)" in lines[0]
    gate = metrics["stage_gate"]
    assert gate["measure"] == "loss" and gate["finetuned_val_loss"] > gate["seeded_val_loss"]
    assert gate["kept"] == result.kept == "seeded"
    assert metrics["validation"]["accuracy"] == 1.0 and "keeping the seeded model" in " ".join(lines)
    assert "kept seeded model" in result.summary


RESUME_SCRIPT = r"""
import sys, time, keras
from headstart.pipeline.config import FinetuneConfig
from headstart.pipeline.finetuning.finetuning import finetune

class Slow(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(float(sys.argv[3]))  # after the epoch's commit: room for the test's SIGKILL

finetune(FinetuneConfig(source=sys.argv[1], head=sys.argv[2], out=sys.argv[4], epochs=3, batch_size=8,
                        patience=10, parity_samples=4, resume=True), callbacks=[Slow()])
"""


@pytest.mark.slow
def test_resume_after_sigkill_restores_epoch_and_optimizer(prepared, main_run, tmp_path):
    from headstart.pipeline.finetuning.finetuning import finetune

    out = tmp_path / "ft"
    state = out / "backup" / "finetune" / "state.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(prepared.data), str(prepared.head), "60",
                             str(out)], env=env, cwd=Path(__file__).parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no epoch completed in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "run.json").exists() and json.loads(state.read_text())["epoch"] == 1

    resume = FinetuneConfig(source=str(prepared.data), head=str(prepared.head), out=str(out), epochs=3,
                            batch_size=8, patience=10, parity_samples=4, resume=True)
    with pytest.raises(RunDirError, match=r"another configuration \(--lr 1e-05 there, 0\.001 now\)"):
        finetune(FinetuneConfig(**{**resume.__dict__, "lr": 1e-3}))
    lines: list[str] = []
    # The same command resumes, --resume or not (the --out policy: same options, unfinished run).
    result = finetune(FinetuneConfig(**{**resume.__dict__, "resume": False}), reporter=LineReporter(lines.append))
    assert "finetune: resuming after epoch 1 of 3" in lines
    assert sum(line.startswith("finetune epoch") for line in lines) == 2
    with open(out / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    assert len(result.history["loss"]) == 3 and result.epochs_run == 3
    # The optimizer's step count matches an uninterrupted run's (main_run: 2 epochs, same batches);
    # a fresh optimizer after the kill would have counted one epoch less. (Keras counts one extra
    # step per epoch on a dataset of unknown length, hence no hard-coded 2 steps per epoch.)
    per_epoch = int(keras.saving.load_model(main_run.run_dir / "model.keras").optimizer.iterations.numpy()) // 2
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert int(model.optimizer.iterations.numpy()) == 3 * per_epoch


@pytest.mark.slow
@pytest.mark.assets
def test_real_cats_vs_dogs_finetune_keeps_head_accuracy(real_photo_cache, tmp_path):
    from headstart.pipeline.commands.evaluation import evaluate_model
    from headstart.pipeline.finetuning.finetuning import finetune
    from headstart.pipeline.commands.head_training import train_head

    # The session's one extraction of the 2,000 photos (MobileNetV2 0.35, shared ImageNet weights,
    # 128 px, split 70/10/20 by number): the head and fine-tuning only read it.
    data, cache = real_photo_cache["images"], real_photo_cache["cache"]
    head = train_head(HeadConfig(features=str(cache), out=str(tmp_path / "head"), seed=0))
    result = finetune(FinetuneConfig(source=str(data), head=str(tmp_path / "head"), out=str(tmp_path / "ft"),
                                     epochs=2), reporter=LineReporter(print))
    print(result.summary)
    assert result.test_accuracy >= head.test_accuracy - 0.005
    again = evaluate_model(tmp_path / "ft", str(data), "test")
    assert again["accuracy"] == result.test_accuracy


@pytest.mark.slow
def test_class_weights_and_monitor_reach_the_fit_and_the_gate(prepared, tmp_path):
    """--class-weight balanced counted from the head's cache, weighted training batches, and
    --monitor balanced_accuracy watched by early stopping (per-epoch measure) and the stage gate."""
    from headstart.pipeline.finetuning.finetuning import finetune

    lines: list[str] = []
    result = finetune(config_for(prepared, tmp_path / "ft", epochs=2, parity_samples=0, class_weight="balanced",
                                 monitor="balanced_accuracy"), reporter=LineReporter(lines.append), callbacks=[_Sabotage()])
    run_dir = Path(result.run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    # make_splits: 8 training images per class → both weights n / (k * n_c) = 16 / (2 * 8) = 1.
    assert run["class_weight"] == {"mode": "balanced", "file": None,
                                   "formula": "n / (k * n_c) over the training split",
                                   "weights": {"cats": 1.0, "dogs": 1.0}, "train_counts": {"cats": 8, "dogs": 8}}
    assert any("16 training labels counted from the cache" in line for line in lines)
    assert run["monitor"] == {"option": "balanced_accuracy", "gate_measure": "balanced_accuracy"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["monitor"] == "val_balanced_accuracy"
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert len(rows) == 2 and all(0.0 <= float(r["val_balanced_accuracy"]) <= 1.0 for r in rows)
    gate = metrics["stage_gate"]
    # The sabotaged fine-tune is worse on balanced accuracy too: the gate compared that measure.
    assert gate["measure"] == "balanced_accuracy" and gate["kept"] == result.kept == "seeded"
    assert gate["seeded_val_balanced_accuracy"] == 1.0 > gate["finetuned_val_balanced_accuracy"]
    assert "keeping the seeded model" in " ".join(lines) and "seeded val balanced acc 1.0000" in result.summary
