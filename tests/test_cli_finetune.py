"""The end-to-end path through the CLI: extract-features → train-head → finetune → evaluate → predict."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from headstart.pipeline.cli import main
from conftest import BACKBONE, make_splits, make_weights_file


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    data = make_splits(tmp_path / "images")
    weights = make_weights_file(tmp_path / "w.weights.h5")
    cache, head, tuned = tmp_path / "f.h5", tmp_path / "head", tmp_path / "tuned"
    r = invoke("extract-features", data, "--out", cache, "--backbone", BACKBONE["backbone"], "--alpha",
               BACKBONE["alpha"], "--image-size", BACKBONE["image_size"], "--weights", weights,
               "--batch-size", 8, "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("train-head", cache, "--out", head, "--epochs", 10, "--lr", 0.01, "--batch-size", 8, "--quiet")
    assert r.exit_code == 0, r.output

    conflict = invoke("finetune", data, "--head", head, "--out", tuned, "--image-size", 64)
    assert conflict.exit_code == 2 and "image-size" in conflict.output and not tuned.exists()
    missing = invoke("finetune", data, "--head", tmp_path / "nohead", "--out", tuned)
    assert missing.exit_code == 2 and "nohead" in missing.output

    r = invoke("finetune", data, "--head", head, "--out", tuned, "--epochs", 1, "--batch-size", 8,
               "--parity-samples", 4)
    assert r.exit_code == 0, r.output
    # A live line through the epoch (issue 22, item 3); in a log its first update is printed at once.
    assert "finetune epoch 1: 16/16 (100%)" in r.output, r.output
    assert (tuned / "model.keras").is_file()
    metrics = json.loads((tuned / "metrics.json").read_text())

    r = invoke("evaluate", tuned / "model.keras", data, "--split", "test", "--json")
    assert r.exit_code == 0, r.output
    evaluated = json.loads(r.stdout)  # one JSON document, nothing before it (issue 22, item 2)
    assert abs(evaluated["accuracy"] - metrics["test"]["accuracy"]) < 1e-9
    r = invoke("evaluate", tuned / "model.keras", data)
    assert r.exit_code == 0 and "confusion matrix" in r.output
    assert evaluated["balanced_accuracy"] == pytest.approx(metrics["test"]["balanced_accuracy"])
    assert evaluated["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])
    assert f"balanced accuracy {evaluated['balanced_accuracy']:.4f}, macro-F1 {evaluated['macro_f1']:.4f}" in r.output

    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = next((data / "test" / "cats").iterdir())
    csv_path = tmp_path / "p.csv"
    r = invoke("predict", tuned / "model.keras", good, bad, "--csv", csv_path)
    assert r.exit_code == 1, r.output  # every row printed, then the exit status says one was not read (issue 21)
    assert "Error: 1 of 2 input(s) could not be read (their lines say why)" in r.output
    lines = r.output.strip().splitlines()
    assert any(str(good) in line and ("cats" in line or "dogs" in line) for line in lines)
    assert any(str(bad) in line and "error" in line for line in lines)
    assert len(csv_path.read_text().strip().splitlines()) == 3
