"""Exports checked against model.keras by each format's own runtime, on the real photos.

The model: MobileNetV2 alpha 0.35 with the shared ImageNet weights at 128 px and a head trained on
the session's real-photo cache, so the logits are those of a classifier that works (~0.9) and a
wrong conversion shows up as changed predictions, not as noise around zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_image

#: ONNX logits may differ from Keras's by summation order only: relative to max(1, |largest logit|).
ONNX_RTOL = 1e-4


@pytest.fixture(scope="module")
def exported(real_photo_cache, tmp_path_factory):
    """model.keras + saved_model/ + model.onnx + model.tflite (float32) of a trained real-photo model."""
    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.data.sources import resolve_source
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.store.files import save_model_atomic, write_json_atomic
    from headstart.pipeline.commands.export import export_model
    from headstart.pipeline.commands.head_training import train_head

    root = tmp_path_factory.mktemp("export")
    head_run = train_head(HeadConfig(features=str(real_photo_cache["cache"]), out=str(root / "head"), epochs=10,
                                     seed=0))
    base, pre, pool, _ = build_backbone_parts("mobilenet_v2", weights=str(real_photo_cache["weights"]),
                                              image_size=128, alpha=0.35, pooling="avg")
    head = keras.saving.load_model(Path(head_run.run_dir) / "head.keras", safe_mode=True)
    model = build_chain(base, pre, pool, head=head)
    run = root / "run"
    run.mkdir()
    save_model_atomic(model, run / "model.keras")
    write_json_atomic(run / "run.json", {"kind": "finetune", "class_names": ["cats", "dogs"]})
    done = export_model(model, run, ("saved_model", "onnx", "tflite"), class_names=["cats", "dogs"])
    assert all(done.values()), done
    # 100 test and 32 training photos, for the checks that convert again (each runtime pass costs).
    small = root / "small"
    for split, cls, n in (("train", "cats", 16), ("train", "dogs", 16), ("test", "cats", 50), ("test", "dogs", 50)):
        (small / split / cls).mkdir(parents=True)
        for f in sorted((real_photo_cache["images"] / split / cls).glob("*.jpg"))[:n]:
            (small / split / cls / f.name).symlink_to(f.resolve())
    return SimpleNamespace(root=root, run=run, model=model, done=done,
                           small=resolve_source(str(small)), images=real_photo_cache["images"])


@pytest.mark.slow
def test_onnx_and_tflite_predict_like_model_keras_on_real_test_photos(exported):
    from headstart.pipeline.commands.export import check_exports

    report = check_exports(exported.done, exported.model, exported.small, "test")
    assert report["onnx"]["images"] == 100
    keras_accuracy = report["onnx"]["keras_accuracy"]
    assert keras_accuracy > 0.8  # a classifier that works, so agreement means something
    for fmt in ("saved_model", "onnx", "tflite"):
        row = report[fmt]
        assert row["agreement"] == 1.0 and row["accuracy"] == keras_accuracy, (fmt, row)
    # Logit scale of this head is O(1..10); the differences are summation order only.
    assert report["onnx"]["max_abs_logit_diff"] < 1e-3
    assert report["tflite"]["max_abs_logit_diff"] < 1e-3 and report["tflite"]["quantize"] == "none"


@pytest.mark.slow
def test_onnx_logits_within_tolerance_and_class_names_in_metadata(exported):
    import onnxruntime

    from headstart.pipeline.data.image import load_image

    files = sorted((exported.images / "test" / "cats").glob("*.jpg"))[:8] + \
        sorted((exported.images / "test" / "dogs").glob("*.jpg"))[:8]
    images = np.stack([load_image(f, 128) for f in files])
    expected = exported.model.predict(images, verbose=0)
    session = onnxruntime.InferenceSession(exported.done["onnx"], providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    tolerance = ONNX_RTOL * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(got > 0, expected > 0)
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == ["cats", "dogs"]


@pytest.mark.slow
def test_saved_model_serves_encoded_image_bytes(exported, tmp_path):
    import tensorflow as tf

    from headstart.pipeline.data.image import load_image
    from headstart.pipeline.model.head import logits_to_probabilities

    rng = np.random.default_rng(3)
    files = sorted((exported.images / "test" / "dogs").glob("*.jpg"))[:3] + [
        write_image(tmp_path / "a.png", rng, size=(90, 60)),
        write_image(tmp_path / "b.webp", rng, size=(50, 70), fmt="WEBP"),
        write_image(tmp_path / "c.gif", rng, size=(64, 64), fmt="GIF"),
        write_image(tmp_path / "d.bmp", rng, size=(33, 47), fmt="BMP")]
    loaded = tf.saved_model.load(exported.done["saved_model"])
    assert set(loaded.signatures) >= {"serving_default", "serve", "serve_bytes", "class_names"}
    out = loaded.signatures["serve_bytes"](image_bytes=tf.constant([f.read_bytes() for f in files]))
    expected = exported.model.predict(np.stack([load_image(f, 128) for f in files]), verbose=0)
    np.testing.assert_allclose(out["logits"].numpy(), expected, rtol=1e-5, atol=1e-4)
    probabilities = logits_to_probabilities(expected, 2)
    np.testing.assert_allclose(out["probabilities"].numpy(), probabilities, atol=1e-5)
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [["cats", "dogs"][i] for i in probabilities.argmax(axis=1)]
    assert [n.decode() for n in loaded.signatures["class_names"]()["class_names"].numpy()] == ["cats", "dogs"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serve_bytes"](image_bytes=tf.constant([b"not an image"]))


@pytest.mark.slow
def test_tflite_int8_calibrated_on_training_photos_keeps_accuracy(exported, tmp_path):
    from headstart.pipeline.commands.export import calibration_images, check_exports, export_model

    done = export_model(exported.model, tmp_path, ("tflite",), quantize="int8", class_names=["cats", "dogs"],
                        calibration=calibration_images(exported.small, 128))
    assert done["tflite"] and not (tmp_path / "saved_model").exists()  # only what was asked for stays
    row = check_exports(done, exported.model, exported.small, "test", quantize="int8")["tflite"]
    assert row["quantize"] == "int8" and row["images"] == 100
    # int8 quantizes weights and activations: a few borderline photos may flip, accuracy holds.
    assert row["agreement"] >= 0.93 and abs(row["accuracy"] - row["keras_accuracy"]) <= 0.05, row
    assert Path(exported.done["tflite"]).stat().st_size > 2 * Path(done["tflite"]).stat().st_size


def test_int8_without_calibration_images_is_refused(tmp_path):
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.commands.export import export_model

    with pytest.raises(OptionError, match="needs calibration images"):
        export_model(None, tmp_path, ("tflite",), quantize="int8")


@pytest.mark.slow
def test_predict_command_reads_every_export_format(exported):
    from headstart.pipeline.cli import main

    files = [str(f) for f in sorted((exported.images / "test" / "cats").glob("*.jpg"))[:4]]
    outputs = {}
    for model in (exported.run / "model.keras", exported.done["saved_model"], exported.done["onnx"],
                  exported.done["tflite"]):
        result = CliRunner().invoke(main, ["predict", str(model), *files])
        assert result.exit_code == 0, result.output
        outputs[str(model)] = [line.split("\t") for line in result.stdout.strip().splitlines()]  # progress: stderr
    rows = list(outputs.values())
    assert all(len(r) == 4 and all(len(cells) == 3 and cells[1] in ("cats", "dogs") for cells in r) for r in rows)
    for other in rows[1:]:
        assert [c[1] for c in other] == [c[1] for c in rows[0]]
        np.testing.assert_allclose([float(c[2]) for c in other], [float(c[2]) for c in rows[0]], atol=1e-3)


def test_export_refusals_and_a_bad_export_file(tmp_path):
    from headstart.pipeline.cli import main
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.commands.export import check_export_options

    with pytest.raises(OptionError, match="unknown format 'coreml'"):
        check_export_options(("coreml",), "none")
    with pytest.raises(OptionError, match="quantize: unknown mode 'int4'"):
        check_export_options(("tflite",), "int4")
    with pytest.raises(OptionError, match="quantize='int8' applies to export='tflite' only"):
        check_export_options(("onnx",), "int8")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    image = write_image(tmp_path / "a.jpg", np.random.default_rng(0))
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "junk.onnx"), str(image)])
    assert result.exit_code == 2 and "cannot load as a onnx model" in result.output
    assert len(result.output.strip().splitlines()) == 1
