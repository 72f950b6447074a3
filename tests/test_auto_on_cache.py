"""``--recipe auto`` decides fine-tuning and the head on the cache, with paired uncertainty (issue 26, items 4–5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recipe_images import SHIPPED, write_set


def test_a_paired_win_needs_more_than_two_standard_errors_of_the_disagreements():
    from headstart.pipeline.evidence.paired import compare_paired

    head = np.array([True] * 90 + [False] * 10)
    # 6 images flipped to right, 1 to wrong: +0.05 with 7 disagreements, SE sqrt(7)/100 = 0.026: not beyond 2 SE.
    tuned = head.copy()
    tuned[90:96], tuned[0] = True, False
    close = compare_paired(head, tuned)
    assert (close.changed, round(close.difference, 4), round(close.se, 4)) == (7, 0.05, 0.0265)
    assert not close.beats
    tuned[96:100] = True  # 10 right, 1 wrong: +0.09 ± 0.033
    assert compare_paired(head, tuned).beats
    assert not compare_paired(tuned, head).beats  # worse never beats
    assert not compare_paired(head, head).beats  # a tie goes to the incumbent
    with pytest.raises(ValueError):
        compare_paired(head, head[:5])


def test_the_fine_tune_line_says_why_in_one_line():
    from headstart.pipeline.evidence.paired import compare_paired
    from headstart.pipeline.run.auto.finetune import finetune_line

    head = np.array([True] * 80 + [False] * 20)
    better, same = head.copy(), head.copy()
    better[80:100] = True
    wins, ties = compare_paired(head, better).to_dict(), compare_paired(head, same).to_dict()
    assert finetune_line("finetuned", wins, 1e-4).startswith("fine-tuned on the cache (lr 0.0001) beats the head")
    assert "no end-to-end re-run" in finetune_line("finetuned", wins, 1e-4)
    skipped = finetune_line("seeded", ties, 1e-3)
    assert skipped.startswith("fine-tuning skipped") and "0.8000 vs 0.8000 (+0.0000 ± 0.0000, 100 images)" in skipped
    assert "within the noise" in finetune_line("finetuned", ties, 1e-5)
    assert "\n" not in skipped + finetune_line("finetuned", None, 1e-5)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_logistic_probe_folds_its_standardisation_into_a_dense_layer(monkeypatch, classes):
    from sklearn.linear_model import LogisticRegression

    from headstart.pipeline.evidence import baselines

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.5, 2.0, 5.0, 1.0], size=(90, 4)).astype(np.float32)
    y = np.arange(90) % classes
    x[:, 0] += y
    rows = baselines._Rows({"train": x, "validation": x}, {"train": y, "validation": y},
                           [str(c) for c in range(classes)], False)
    monkeypatch.setattr(baselines, "_read_rows", lambda *a, **k: rows)
    kernel, bias = baselines.logistic_head_weights("cache.h5", 0.1)
    assert kernel.shape == (4, 1 if classes == 2 else classes) and bias.shape == (kernel.shape[1],)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    reference = LogisticRegression(C=0.1, max_iter=2000, random_state=0).fit((x - mean) / std, y)
    expected = reference.decision_function((x - mean) / std).reshape(len(x), -1)
    np.testing.assert_allclose(x @ kernel + bias, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_auto_fine_tunes_on_the_cache_and_a_winning_logistic_probe_becomes_the_head(tmp_path, monkeypatch):
    """The whole auto run, small: the tap, on-cache fits (no end-to-end probe), the paired decisions.

    The generated shapes are too easy for either candidate to beat the other by more than the noise,
    so the paired test is told the challenger won: the logistic probe must then become a head run
    that the fine-tune starts from (its parity check on images ties the Dense weights to the chain)
    and that ``predict`` reaches through the fine-tuned model.
    """
    import dataclasses

    from headstart.pipeline.cli import main
    from headstart.pipeline.evidence import paired

    real = paired.compare_paired
    monkeypatch.setattr(paired, "compare_paired", lambda a, b: dataclasses.replace(real(a, b), beats=True))
    images = write_set(tmp_path / "images", ("circle", "square"), counts=(("train", 16), ("validation", 8),
                                                                           ("test", 6)), size=48)
    config = tmp_path / "small.toml"
    config.write_text("[sweep]\ntrials = 2\n\n[finetune]\nepochs = 1\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["run", images, "--out", out, "--config", config, "--backbone", "mobilenet_v2", "--alpha", "0.35",
            "--weights", SHIPPED, "--image-size", 32]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tap top:30" in result.output and "probe lr" not in result.output  # no end-to-end probe
    assert result.output.count("on the cache at lr") == 3
    assert "head: the logistic probe (L2, C=" in result.output and "beats the sweep's" in result.output
    decisions = {d["name"]: d for d in json.loads((out / "summary.json").read_text())["recipe"]["decisions"]}
    assert decisions["head"]["chosen"].startswith("logistic probe")
    assert "±" in decisions["head"]["candidates"][1]["note"] and "±" in decisions["finetune"]["candidates"][1]["note"]
    assert {c["value"] for c in decisions["lr"]["candidates"]} == {1e-5, 1e-4, 1e-3}
    assert decisions["unfreeze"]["chosen"] == "top:30"
    head = json.loads((out / "logistic-head" / "run.json").read_text())
    assert head["kind"] == "head" and head["head"]["kind"] == "linear"
    finetune = json.loads((out / "finetune" / "run.json").read_text())
    assert Path(finetune["config"]["head"]) == out / "logistic-head" and finetune["config"]["on_cache"]
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    assert metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]  # the probe's weights, in the chain
    predicted = CliRunner().invoke(main, ["predict", str(out / "finetune"), str(images / "test")],
                                   catch_exceptions=False)
    assert predicted.exit_code == 0 and predicted.output.count("circle") + predicted.output.count("square") >= 12
