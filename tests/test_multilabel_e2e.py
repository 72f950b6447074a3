"""A multi-label set end to end through the CLI: extract-features → train-head → finetune →
evaluate → predict, on generated images whose labels are the shapes they contain.

Each image is grey noise holding a random subset of {circle, square, triangle}, each shape drawn
in its own colour at a random place. The label file is a CSV with a ``labels`` column (labels
separated by "|" or spaces, the split given per row), read by the label-file source.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO

#: The ImageNet MobileNetV2 0.35 that ships inside the package (features/weights/), at 32 px: no
#: network or ../shared needed. A random backbone's pooled features do not carry these shapes well
#: enough (logistic regression on MobileNet 0.25 random features: test mAP 0.73; on these: 0.98).
BACKBONE = {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 32}
WEIGHTS = REPO / "features" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SHAPES = {"circle": (220, 40, 40), "square": (40, 200, 40), "triangle": (40, 60, 230)}
SPLITS = {"train": 96, "validation": 40, "test": 40}


def invoke(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def draw_shapes(path: Path, shapes: list[str], rng: np.random.Generator, size: int = 40) -> None:
    """Grey noise with each named shape drawn in its colour (about a quarter of the image wide)."""
    from PIL import Image, ImageDraw

    noise = rng.integers(118, 139, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    for name in shapes:
        s = int(rng.integers(16, 22))
        x, y = (int(v) for v in rng.integers(0, size - s, 2))
        box = (x, y, x + s, y + s)
        if name == "circle":
            draw.ellipse(box, fill=SHAPES[name])
        elif name == "square":
            draw.rectangle(box, fill=SHAPES[name])
        else:
            draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=SHAPES[name])
    image.save(path, quality=95)


def make_shape_set(root: Path, seed: int = 0) -> tuple[Path, dict[str, list[str]]]:
    """A flat folder of images and labels.csv (path, labels, split); returns (csv, key → shapes)."""
    rng = np.random.default_rng(seed)
    folder = root / "pictures"
    folder.mkdir(parents=True)
    rows, truth = [], {}
    for split, n in SPLITS.items():
        for i in range(n):
            shapes = [name for name in SHAPES if rng.random() < 0.45]
            key = f"{split}_{i:03d}.jpg"
            draw_shapes(folder / key, shapes, rng)
            # Labels separated by "|" or spaces; a row without shapes has an empty label set,
            # which the label file refuses (an empty label is a bad row), so give it one shape.
            if not shapes:
                shapes = [list(SHAPES)[i % 3]]
                draw_shapes(folder / key, shapes, rng)
            rows.append((f"pictures/{key}", "|".join(shapes) if i % 2 else " ".join(shapes), split))
            truth[f"pictures/{key}"] = shapes
    table = root / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return table, truth


def bn_state(model) -> list[np.ndarray]:
    import keras

    backbone = model.get_layer("backbone")
    return [np.array(w) for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
            for w in layer.weights]


@pytest.mark.slow
def test_multi_label_shapes_end_to_end(tmp_path):
    import keras

    table, truth = make_shape_set(tmp_path / "data")
    weights = WEIGHTS
    cache, head, tuned = tmp_path / "f.h5", tmp_path / "head", tmp_path / "tuned"
    r = invoke("extract-features", table, "--out", cache, "--backbone", BACKBONE["backbone"], "--alpha",
               BACKBONE["alpha"], "--image-size", BACKBONE["image_size"], "--weights", weights,
               "--batch-size", 16, "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("inspect", cache)
    assert r.exit_code == 0 and "multi-label" in r.output, r.output

    r = invoke("train-head", cache, "--out", head, "--epochs", 40, "--lr", 0.02, "--batch-size", 16, "--quiet")
    assert r.exit_code == 0, r.output
    head_metrics = json.loads((head / "metrics.json").read_text())
    names = json.loads((head / "run.json").read_text())["class_names"]
    assert names == sorted(SHAPES) and head_metrics["monitor"] == "val_map"
    # The label-frequency baseline (every image scored alike) has AP = each class's positive
    # share of the test split; the head must beat it clearly.
    test_rows = [shapes for key, shapes in truth.items() if "/test_" in key]
    baseline = np.mean([np.mean([name in shapes for shapes in test_rows]) for name in names])
    assert head_metrics["test"]["map"] > baseline + 0.25, (head_metrics["test"]["map"], baseline)
    assert (head / "thresholds.json").is_file()

    r = invoke("finetune", table, "--head", head, "--out", tuned, "--epochs", 1, "--batch-size", 16,
               "--lr", 1e-4, "--parity-samples", 8, "--quiet")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tuned / "metrics.json").read_text())
    run = json.loads((tuned / "run.json").read_text())
    saved = json.loads((tuned / "thresholds.json").read_text())
    # Parity: the rebuilt chain gives the head's logits on the cached images.
    assert metrics["parity"]["samples"] == 8
    assert metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]
    # BatchNorm: fine-tuning left every BatchNorm weight and statistic as the weights file has it.
    model = keras.saving.load_model(tuned / "model.keras", safe_mode=True, compile=False)
    from headstart.features.backbones import build_base

    seeded = build_base(BACKBONE["backbone"], weights="none", image_size=32, alpha=BACKBONE["alpha"])
    seeded.load_weights(weights)
    reference = [np.array(w) for layer in seeded.layers if isinstance(layer, keras.layers.BatchNormalization)
                 for w in layer.weights]
    assert len(reference) == len(bn_state(model)) > 0
    for before, after in zip(reference, bn_state(model)):
        np.testing.assert_array_equal(before, after)
    assert run["task"] == "multi_label" and run["thresholds"] == saved == metrics["thresholds"]
    assert metrics["stage_gate"]["measure"] == "map"
    assert "val_map" in metrics["unfreeze"] or "val_map" in (tuned / "history.csv").read_text()
    assert metrics["test"]["map"] > baseline + 0.25

    r = invoke("inspect", tuned)
    assert r.exit_code == 0 and "task: multi-label; thresholds" in r.output and "test mAP" in r.output, r.output

    # evaluate uses the saved thresholds and reproduces finetune's test measures.
    r = invoke("evaluate", tuned, table, "--split", "test", "--json")
    assert r.exit_code == 0, r.output
    evaluated = json.loads(r.output[r.output.index("{"):])
    for key in ("map", "micro_f1", "macro_f1", "exact_match"):
        assert evaluated[key] == pytest.approx(metrics["test"][key])
    assert {n: evaluated["per_class"][n]["threshold"] for n in names} == pytest.approx(saved["thresholds"])
    r = invoke("evaluate", tuned, table)
    assert r.exit_code == 0 and "mAP" in r.output and "threshold" in r.output

    # predict prints each image's label set with its probabilities, at the saved thresholds.
    images = [tmp_path / "data" / key for key in list(truth)[-6:]]
    out_csv = tmp_path / "p.csv"
    r = invoke("predict", tuned, *images, "--csv", out_csv)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()  # the rows; the progress line is on stderr
    assert len(lines) == 6
    with open(out_csv, newline="", encoding="utf-8") as f:
        table_rows = list(csv.DictReader(f))
    assert list(table_rows[0]) == ["path", "labels", *names, "error"]
    for line, row in zip(lines, table_rows):
        chosen = {n for n in names if float(row[n]) >= saved["thresholds"][n]}
        assert set(filter(None, row["labels"].split("|"))) == chosen
        path, label_set, shown = line.split("\t")
        assert path == row["path"] and label_set == (row["labels"] or "(no label)")
        pairs = dict(item.rsplit(" ", 1) for item in shown.split(", ")) if chosen else {}
        assert set(pairs) == chosen
        for name in chosen:  # printed to 4 decimals, the CSV holds 6
            assert float(pairs[name]) == pytest.approx(float(row[name]), abs=1e-4)
