"""`evaluate`, `predict` and the exports, on a small untrained full model (no fine-tuning needed)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from headstart.features.reporter import LineReporter

from conftest import make_class_folders, make_weights_file, write_image
from headstart.pipeline.errors import DataError, OptionError, RunDirError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model.keras (MobileNet 0.25, 32 px, strong augmentation) with a run.json naming its classes."""
    from headstart.pipeline.data.augment import build_augmentation
    from headstart.pipeline.model.head import build_head
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.store.files import save_model_atomic, write_json_atomic

    root = tmp_path_factory.mktemp("evaluation")
    keras.utils.set_random_seed(1)
    weights = make_weights_file(root / "w.weights.h5")
    base, pre, pool, _ = build_backbone_parts("mobilenet", weights=str(weights), image_size=32, alpha=0.25,
                                              pooling="avg")
    # Rotation of up to half a turn: an export that ran the augmentation would not match.
    model = build_chain(base, pre, pool, head=build_head((256,), 2),
                        augmentation=build_augmentation("flip,rotate=0.5", seed=0))
    run = root / "run"
    run.mkdir()
    save_model_atomic(model, run / "model.keras")
    write_json_atomic(run / "run.json", {"kind": "finetune", "class_names": ["cats", "dogs"],
                                         "config": {"batch_size": 4}})
    data = make_class_folders(root / "images", per_class=5)
    (data / "cats" / "broken.jpg").write_bytes(b"not an image at all")
    return SimpleNamespace(root=root, run=run, model_path=run / "model.keras", data=data)


@pytest.mark.slow
def test_evaluate_reports_metrics_confusion_and_grid(saved):
    from headstart.pipeline.data.image import load_image
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.commands.evaluation import evaluate_model

    grid = saved.root / "wrong.png"
    lines: list[str] = []
    # A single class-folder tree: all 11 files in one split by fractions 0/0 → everything is "train".
    metrics = evaluate_model(saved.run, str(saved.data), "train", validation_fraction=0.0, test_fraction=0.0,
                             grid=grid, grid_size=4, reporter=LineReporter(lines.append))
    assert metrics["rows"] == 10 and metrics["skipped"][0][0] == "cats/broken.jpg"
    assert np.array(metrics["confusion_matrix"]).sum() == 10
    assert set(metrics["per_class"]) == {"cats", "dogs"}
    assert metrics["per_class"]["cats"]["support"] == 5
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and metrics["grid"] == str(grid)
    assert lines and "10 images" in lines[0] and "1 skipped" in lines[0]

    # The same numbers by hand: load_image → model.predict → logit > 0 means "dogs".
    model = keras.saving.load_model(saved.model_path)
    source = resolve_source(str(saved.data), validation_fraction=0.0, test_fraction=0.0)
    keys = [k for k in source.keys("train") if "broken" not in k]
    images = np.stack([load_image(saved.data / k, 32) for k in keys])
    logits = model.predict(images, verbose=0).reshape(-1)
    labels = np.array([0 if k.startswith("cats/") else 1 for k in keys])
    assert metrics["accuracy"] == pytest.approx(np.mean((logits > 0) == labels))
    bce = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    assert metrics["loss"] == pytest.approx(bce, rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_evaluate_refusals(saved, tmp_path):
    from headstart.pipeline.commands.evaluation import evaluate_model

    with pytest.raises(RunDirError, match="no such model file"):
        evaluate_model(tmp_path / "nothing.keras", str(saved.data))
    (tmp_path / "junk.keras").write_text("junk")
    with pytest.raises(RunDirError, match="not a complete .keras file"):
        evaluate_model(tmp_path / "junk.keras", str(saved.data))
    import zipfile

    with zipfile.ZipFile(tmp_path / "zipped.keras", "w") as archive:
        archive.writestr("config.json", "not a model")
    with pytest.raises(RunDirError, match="cannot load as a Keras model"):
        evaluate_model(tmp_path / "zipped.keras", str(saved.data))
    with pytest.raises(DataError, match="no split 'test'"):
        evaluate_model(saved.run, str(saved.data), "test", test_fraction=0.0)
    three = make_class_folders(tmp_path / "three", classes=("a", "b", "c"), per_class=2)
    with pytest.raises(DataError, match="differ from the model's"):
        evaluate_model(saved.run, str(three), "train", validation_fraction=0.0, test_fraction=0.0)


@pytest.mark.slow
def test_predict_reports_bad_files_and_keeps_going(saved, tmp_path):
    from headstart.pipeline.commands.prediction import predict_images, write_predictions_csv

    rng = np.random.default_rng(0)
    good_jpg = write_image(tmp_path / "a.jpg", rng, colour=(220, 40, 40))
    good_png = write_image(tmp_path / "b.png", rng, colour=(40, 40, 220))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    folder = tmp_path / "more"
    write_image(folder / "c.jpg", rng)
    write_image(folder / "sub" / "d.webp", rng, fmt="WEBP")
    (folder / ".hidden.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("not listed: not an image extension")
    rows = predict_images(saved.model_path, [good_jpg, empty, tmp_path / "missing.jpg", text, good_png, folder],
                          batch_size=2)
    assert [Path(r.path).name for r in rows] == ["a.jpg", "empty.jpg", "missing.jpg", "notes.png", "b.png",
                                                  "c.jpg", "d.webp"]
    bad = {Path(r.path).name: r for r in rows if r.error}
    assert set(bad) == {"empty.jpg", "missing.jpg", "notes.png"}
    assert all(r.label is None and r.probability is None for r in bad.values())
    for r in rows:
        if not r.error:
            assert r.label in ("cats", "dogs") and 0.5 <= r.probability <= 1.0

    # The same image through evaluate's path and predict's path gives the same probability.
    from headstart.pipeline.data.image import load_image
    from headstart.pipeline.model.head import logits_to_probabilities

    model = keras.saving.load_model(saved.model_path)
    p = logits_to_probabilities(model.predict(load_image(good_jpg, 32)[None], verbose=0), 2)[0]
    assert rows[0].probability == pytest.approx(p.max(), rel=1e-5)

    out = tmp_path / "predictions.csv"
    write_predictions_csv(rows, out)
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 7 and table[1]["error"] and not table[0]["error"]
    named = predict_images(saved.model_path, [good_jpg], class_names=["red", "blue"])
    assert named[0].label in ("red", "blue")
    with pytest.raises(OptionError, match="3 class names"):
        predict_images(saved.model_path, [good_jpg], class_names=["a", "b", "c"])


@pytest.mark.slow
def test_exports_match_model_keras_without_augmentation(saved, tmp_path):
    import tensorflow as tf

    from headstart.pipeline.data.image import load_image
    from ai_edge_litert.interpreter import Interpreter

    from headstart.pipeline.commands.export import export_model

    model = keras.saving.load_model(saved.model_path)
    done = export_model(model, tmp_path, ("saved_model", "tflite"))
    assert set(done) == {"saved_model", "tflite"} and all(done.values())
    images = np.stack([load_image(p, 32) for p in sorted(saved.data.rglob("cats_*.jpg"))])
    expected = model.predict(images, verbose=0)
    loaded = tf.saved_model.load(done["saved_model"])
    np.testing.assert_allclose(loaded.serve(tf.constant(images)).numpy(), expected, rtol=1e-5, atol=1e-5)
    interpreter = Interpreter(model_path=done["tflite"])
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(OptionError, match="unknown format 'coreml'"):
        export_model(model, tmp_path, ("coreml",))
