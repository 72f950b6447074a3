"""`headstart demo`: the generated dataset, the weights fallback line, and the demo end to end at a
reduced size (random backbone, so no network is touched)."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from headstart.features.errors import WeightsError
from headstart.pipeline.cli import main
from headstart.pipeline.run.demo import SHAPES, draw_shape, generate_dataset, probe_imagenet, split_counts


def test_generated_dataset_is_deterministic_and_varied(tmp_path):
    first = generate_dataset(tmp_path / "a", images_per_class=10, seed=3, log=lambda m: None)
    second = generate_dataset(tmp_path / "b", images_per_class=10, seed=3, log=lambda m: None)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(files) == 10 * len(SHAPES)
    assert {p.parts[0] for p in files} == {"train", "validation", "test"}
    assert {p.parts[1] for p in files} == set(SHAPES)
    assert {p.suffix for p in files} == {".png", ".jpg"}
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    other = generate_dataset(tmp_path / "c", images_per_class=10, seed=4, log=lambda m: None)
    assert (other / files[0]).read_bytes() != (first / files[0]).read_bytes()
    # A second call with the same settings reuses the folder (the manifest matches).
    stamp = (first / files[0]).stat().st_mtime_ns
    generate_dataset(first, images_per_class=10, seed=3, log=pytest.fail)
    assert (first / files[0]).stat().st_mtime_ns == stamp


def test_shapes_vary_in_size_colour_and_place():
    images = [draw_shape(np.random.default_rng(i), "square") for i in range(8)]
    assert len({im.shape for im in images}) > 1
    means = np.array([im.reshape(-1, 3).mean(axis=0) for im in images])
    assert means.std(axis=0).min() > 5  # colours differ between images of one class
    assert all(im.dtype == np.uint8 and im.shape[2] == 3 for im in images)


def test_split_counts_follow_70_10_20():
    assert split_counts(150) == {"train": 105, "validation": 15, "test": 30}
    assert min(split_counts(3).values()) == 1


def test_without_imagenet_weights_the_demo_says_why_in_one_line(monkeypatch):
    import headstart.features.backbones as backbones

    def offline(*args, **kwargs):
        raise WeightsError("--weights imagenet: cannot get ImageNet weights for mobilenet_v2 (URL fetch failure "
                           "on https://example: [Errno -2] Name or service not known); pass --weights PATH")

    monkeypatch.setattr(backbones, "build_base", offline)
    lines = []
    assert probe_imagenet(lines.append) == "none"
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "randomly initialised backbone" in lines[0] and "Name or service not known" in lines[0]
    assert "--weights PATH" in lines[0]

    monkeypatch.setattr(backbones, "build_base", lambda *a, **k: object())
    lines.clear()
    assert probe_imagenet(lines.append) == "imagenet" and lines == []


@pytest.mark.slow
def test_demo_end_to_end_at_reduced_size(tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--images-per-class", "9",
                                       "--weights", "none", "--head-epochs", "2", "--epochs", "1"])
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert "randomly initialised backbone (--weights none)" in result.output
    run_dir = tmp_path / "demo" / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["class_names"] == list(SHAPES)
    assert set(summary["stages"]) == {"extract", "head", "finetune", "evaluate"}
    assert summary["stages"]["extract"]["images"] == 27
    table = result.output[result.output.index("headstart demo:"):]
    for text in ("extract-features", "train-head", "finetune", "evaluate", "test accuracy", "images/s",
                 str(run_dir / "summary.png")):
        assert text in table, text
    assert (run_dir / "summary.png").is_file()
    assert seconds < 60, f"reduced demo took {seconds:.0f} s"

    # Again: every stage is reused and nothing is rewritten.
    digest = hashlib.sha256((run_dir / "finetune" / "model.keras").read_bytes()).hexdigest()
    again = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--images-per-class", "9",
                                      "--weights", "none", "--head-epochs", "2", "--epochs", "1"])
    assert again.exit_code == 0, again.output
    assert [s["status"] for s in json.loads((run_dir / "summary.json").read_text())["stages"].values()] == \
        ["reused"] * 4
    assert hashlib.sha256((run_dir / "finetune" / "model.keras").read_bytes()).hexdigest() == digest
