"""--backbone hub:PRESET: a tiny ViT preset written locally with save_to_preset, through
extract-features → train-head → finetune → predict, like a registry backbone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_class_folders

keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A 32 px ViT (patch 8: 16 patches + a class token, width 16) and its converter, as a preset dir."""
    root = tmp_path_factory.mktemp("hub") / "tiny_vit"
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2,
                                            hidden_dim=16, mlp_dim=32, use_class_token=True)
    backbone.save_to_preset(str(root))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1).save_to_preset(str(root))
    return root


def test_hub_extractor_holds_the_converter_and_pools_tokens(preset):
    from headstart.features.chain import build_extractor

    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    cls, info = build_extractor(f"hub:{preset}", weights="preset", image_size=32, pooling="cls")
    mean, _ = build_extractor(f"hub:{preset}", weights="preset", image_size=32, pooling="avg")
    assert info.feature_shape == (16,) and info.preprocessing == "hub" and info.weights == "preset"
    assert info.hub["keras_hub"] == keras_hub.__version__ and info.hub["backbone_class"] == "ViTBackbone"
    assert info.hub["converter"]["scale"] == pytest.approx(1 / 127.5) and info.hub["converter"]["offset"] == -1
    assert "hub" in info.to_dict()
    tokens = np.asarray(cls.get_layer("backbone")(cls.get_layer("preprocessing")(images)))
    assert tokens.shape == (3, 17, 16)
    np.testing.assert_allclose(np.asarray(cls(images)), tokens[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mean(images)), tokens.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_hub_refusals(preset):
    from headstart.features.chain import build_extractor
    from headstart.features.errors import FeaturesError, ImageSizeError, WeightsError

    with pytest.raises(ImageSizeError, match="use image_size=32"):
        build_extractor(f"hub:{preset}", weights="preset", image_size=64)
    with pytest.raises(WeightsError, match="preset's weights"):
        build_extractor(f"hub:{preset}", weights="/tmp/w.h5", image_size=32)
    with pytest.raises(FeaturesError, match="cannot load this preset"):
        build_extractor(f"hub:{preset}_missing", weights="preset", image_size=32)
    with pytest.raises(FeaturesError, match="alpha applies only"):
        build_extractor(f"hub:{preset}", weights="preset", image_size=32, alpha=0.5)
    with pytest.raises(FeaturesError, match="token outputs"):
        build_extractor("mobilenet", weights="none", image_size=32, alpha=0.25, pooling="cls")


@pytest.mark.slow
def test_hub_backbone_through_extract_train_head_finetune_and_a_fresh_predict(preset, tmp_path):
    data = tmp_path / "images"
    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(data / split, per_class=n, seed=seed)
    cache, head, tuned = tmp_path / "f.h5", tmp_path / "head", tmp_path / "tuned"

    def invoke(*args):
        from headstart.pipeline.cli import main

        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    invoke("extract-features", data, "--out", cache, "--backbone", f"hub:{preset}", "--image-size", 32,
           "--pooling", "cls", "--batch-size", 8, "--quiet")
    invoke("train-head", cache, "--out", head, "--epochs", 5, "--lr", 0.01, "--batch-size", 8, "--quiet")
    invoke("finetune", data, "--head", head, "--out", tuned, "--epochs", 1, "--batch-size", 8,
           "--parity-samples", 4, "--quiet")
    inspected = json.loads(invoke("inspect", cache, "--json").output)
    assert json.dumps(inspected).count(keras_hub.__version__) >= 1  # provenance: the KerasHub version
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]
    # A fresh process that never imported keras_hub loads model.keras in safe mode.
    image = next((data / "test" / "cats").glob("*.jpg"))
    done = subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", "predict", str(tuned / "model.keras"),
                           str(image)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\t")[1] in ("cats", "dogs")
