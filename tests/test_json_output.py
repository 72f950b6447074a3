"""Every `--json` prints one JSON document on stdout and nothing else (issue 22, item 2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import click
import pytest

from conftest import BACKBONE, REPO, make_cache, make_splits, subprocess_env

#: The commands with --json, each parsed below; a new one must join the test.
JSON_COMMANDS = {"backbones", "evaluate", "inspect"}


def headstart(tmp_path, *args) -> subprocess.CompletedProcess:
    """The CLI in its own interpreter: stdout holds exactly what the command printed there."""
    return subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, env=subprocess_env(tmp_path / "tmp"), cwd=REPO, timeout=300)


def test_the_commands_with_json_are_the_ones_tested():
    from headstart.pipeline.cli import main

    with_json = {name for name, command in main.commands.items()
                 if any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params)}
    assert with_json == JSON_COMMANDS


def test_json_text_is_valid_json_for_nan_infinity_and_numpy():
    import numpy as np

    from headstart.pipeline.store.files import json_text

    text = json_text({"loss": float("nan"), "big": math.inf, "n": np.int64(3), "x": np.float32(0.5), "p": REPO})
    assert json.loads(text) == {"loss": None, "big": None, "n": 3, "x": 0.5, "p": str(REPO)}


def test_backbones_and_inspect_print_one_json_document(tmp_path):
    cache = make_cache(tmp_path / "features.h5")
    for args in (("backbones", "--json"), ("inspect", cache, "--json")):
        out = headstart(tmp_path, *args)
        assert out.returncode == 0, out.stderr
        assert isinstance(json.loads(out.stdout), (list, dict)), args


@pytest.mark.slow
def test_evaluate_json_is_one_document_and_its_headline_rounds(tmp_path):
    """A saved model (random MobileNet 0.25 at 32 px, a head) evaluated with and without --json."""
    import keras

    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.store.files import save_model_atomic, write_json_atomic

    data = make_splits(tmp_path / "images")
    base, pre, pool, info = build_backbone_parts(BACKBONE["backbone"], weights="none", image_size=32,
                                                 alpha=BACKBONE["alpha"], pooling="avg")
    keras.utils.set_random_seed(0)
    model = build_chain(base, pre, pool, head=build_head(info.feature_shape, 2))
    run = tmp_path / "run"
    run.mkdir()
    save_model_atomic(model, run / "model.keras")
    write_json_atomic(run / "run.json", {"kind": "finetune", "class_names": ["cats", "dogs"]})
    out = headstart(tmp_path, "evaluate", run, data, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rows"] == 8 and result["class_names"] == ["cats", "dogs"] and 0 <= result["accuracy"] <= 1
    text = headstart(tmp_path, "evaluate", run, data)
    first = text.stdout.splitlines()[0]
    assert first.startswith(f"{run} on split 'test': 8 images, accuracy ") and first.count("accuracy 0.") <= 2
    assert all(len(word.split(".")[-1]) <= 4 for word in first.replace(",", "").split() if word[:2] == "0."), first
    assert "evaluate test:" in text.stderr  # the progress line, on stderr
