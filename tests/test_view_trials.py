"""Augmentation judged by training on cached views: the paired statistics, and the flip on generated shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipe_images import SHIPPED, write_set


def test_the_paired_difference_on_fixed_numbers():
    from headstart.pipeline.evidence.view_trials import NOISE_Z, paired_difference

    # Two seeds, four rows. Differences per seed: (+1, 0, 0, 0)/4 = 0.25 and (+1, +1, 0, -1)/4 = 0.25.
    without = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], float)
    with_ = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], float)
    diff = paired_difference(with_, without)
    assert diff.mean == pytest.approx(0.25) and (diff.seeds, diff.rows) == (2, 4)
    assert diff.se_seeds == 0.0  # both seeds moved the same way
    # Per row, averaged over seeds: (1, 0.5, 0, -0.5); std (ddof 1) = sqrt(0.625 - ...) computed by hand:
    per_row = np.array([1.0, 0.5, 0.0, -0.5])
    assert diff.se_rows == pytest.approx(per_row.std(ddof=1) / 2) == pytest.approx(0.3227486, rel=1e-6)
    assert diff.se == diff.se_rows and not diff.hurts  # +0.25 is within the noise of four rows
    # A clear loss on many rows hurts; the same loss on four rows does not.
    many_without, many_with = np.ones((3, 400)), np.ones((3, 400))
    many_with[:, :60] = 0  # every seed loses the same 60 rows of 400: −0.15
    hurt = paired_difference(many_with, many_without)
    assert hurt.mean == pytest.approx(-0.15) and hurt.hurts
    assert hurt.mean + NOISE_Z * hurt.se < 0
    with pytest.raises(ValueError):
        paired_difference(np.ones((2, 3)), np.ones((3, 2)))


def test_one_seed_has_no_seed_spread_and_a_tie_is_kept():
    from headstart.pipeline.evidence.view_trials import paired_difference

    same = paired_difference(np.ones((1, 10)), np.ones((1, 10)))
    assert same.mean == 0.0 and same.se == 0.0 and not same.hurts  # neutral: kept


def test_views_by_key_gives_each_row_the_views_of_the_caches_holding_it():
    from headstart.pipeline.evidence.view_parts import part_spec, views_by_key

    originals = np.arange(4, dtype=np.float32)[:, None] * 10  # rows a, b, c, d: (4, 1)
    keys = ["a", "b", "c", "d"]
    whole = (["d", "c", "b", "a"], np.array([[[31], [32]], [[21], [22]], [[11], [12]], [[1], [2]]], np.float32))
    # A cache of every row, in another order: matched by key.
    assert views_by_key(originals, keys, [whole])[:, :, 0].tolist() == [[1, 2], [11, 12], [21, 22], [31, 32]]
    # Items' parts: a and c hold one item's views, b another's, d none; padded with the row's original.
    parts = [(["c", "a"], np.array([[[25], [26]], [[5], [6]]], np.float32)), (["b"], np.array([[[15], [16]]], np.float32)),
             (["zz"], np.array([[[99], [99]]], np.float32))]  # a row outside the split is ignored
    assert views_by_key(originals, keys, parts)[:, :, 0].tolist() == [[5, 6], [15, 16], [25, 26], [30, 30]]
    assert views_by_key(originals, keys, [])[:, :, 0].tolist() == [[0], [10], [20], [30]]  # nothing: the original
    assert part_spec(0, 1) is None and part_spec(2, 5) == "2/5"


def test_the_budget_plan_counts_the_view_trials():
    from headstart.pipeline.run.auto.plan import TRIAL_SECONDS_PER_1K_ROWS, Speeds, plan_recipe
    from headstart.pipeline.evidence.view_trials import SEEDS, VIEWS

    speeds = Speeds(image_size=150, images_per_second=200.0, rows={"train": 1400, "validation": 200, "test": 400})
    plan = plan_recipe(speeds, native_size=None, search_head=False, audit_candidates=7, probe_lrs=(),
                       probe_depth=False, budget_minutes=600)
    audit = 8 * 200 / 200.0  # a validation pass per item and one untransformed
    views = VIEWS * 1400 / 200.0  # each item's views of its part of the training split, all parts once
    # SEEDS heads per item on its originals and views (an epoch draws one version per row), and SEEDS on the originals
    heads = (7 + 1) * SEEDS * TRIAL_SECONDS_PER_1K_ROWS * 1.4
    assert plan.estimates["audit"] == pytest.approx(audit + views + heads)
    assert f"7 augmentations tried on {VIEWS} cached views per image" in plan.describe()


def _trials(tmp_path, classes, candidates=("flip",), keep_views=False):
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.evidence.view_trials import run_view_trials
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    root = write_set(tmp_path / "images", classes, counts=(("train", 32), ("validation", 24)))
    base = ExtractConfig(source=str(root), out=str(tmp_path / "features.h5"), backbone="mobilenet_v2", alpha=0.35,
                         weights=str(SHIPPED), image_size=96, splits=("train", "validation"))
    extract_features(base)
    train_head(HeadConfig(features=base.out, out=str(tmp_path / "head"), epochs=40, patience=5, lr=3e-3))
    head = RunDir.open(tmp_path / "head", kind="head", recipe=True)
    progress, saves = {}, []
    result = run_view_trials(head, base, tmp_path / "trials", extract_features=extract_features,
                             candidates=candidates, resume_record=progress, keep_views=keep_views,
                             save=lambda: saves.append(dict(progress["candidates"])))
    return result, progress, saves


@pytest.mark.slow
def test_the_flip_is_dropped_when_training_with_it_confuses_mirror_image_classes(tmp_path):
    result, progress, saves = _trials(tmp_path, ("left", "right"))
    (flip,) = result.trials
    assert flip.judged_by == "views" and flip.seeds == 3 and (result.train_rows, result.rows) == (64, 48)
    assert flip.without_measure >= 0.75  # the arrows are learnable from the cache ...
    assert flip.difference < 0 and flip.difference + 2 * flip.se < 0  # ... and a mirrored left arrow is "right"
    assert not flip.kept and result.augment == "none"
    assert saves and "flip" in progress["candidates"]  # recorded before it returned
    assert not list((tmp_path / "trials").glob("*.h5"))  # the item's cache is gone once recorded


@pytest.mark.slow
def test_the_flip_is_kept_when_the_classes_are_mirror_symmetric(tmp_path):
    result, _, _ = _trials(tmp_path, ("circle", "square"))
    (flip,) = result.trials
    assert flip.without_measure >= 0.9
    assert flip.kept and flip.difference + 2 * flip.se >= 0 and result.augment == "flip"


@pytest.mark.slow
def test_the_items_share_the_training_rows_out_and_each_trains_on_its_part(tmp_path):
    """Two items trained: each extracts views of its own half of the rows (one pass over the split in all)."""
    from headstart.features.cache import open_cache
    from headstart.pipeline.data.splits import shard_of

    result, _, _ = _trials(tmp_path, ("circle", "square"), candidates=("flip", "brightness=0.2"), keep_views=True)
    parts = {}
    for trial in result.trials:
        assert trial.judged_by == "views" and trial.kept and trial.views_cache
        with open_cache(trial.views_cache) as cache:
            train = cache.split("train")
            parts[trial.item] = set(train.keys)
            assert train.views.shape[1] == 2 and len(train) == trial.view_rows
    flip, brightness = parts["flip"], parts["brightness=0.2"]
    assert flip and brightness and not flip & brightness and len(flip | brightness) == result.train_rows == 64
    assert {shard_of(k, 2) for k in flip} == {0} and {shard_of(k, 2) for k in brightness} == {1}  # stable on resume


def _kill_after_the_first_trained_item(argv: list[str], progress) -> dict:
    """Runs ``headstart ARGV`` in its own process; SIGKILLs it once one item has been trained on views.

    Returns the recorded candidates at the kill.
    """
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "headstart.pipeline.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no item was trained in time"
            try:
                done = json.loads(progress.read_text())["view_trials"]["candidates"]
                if any(c["judged_by"] == "views" for c in done.values()):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return done


@pytest.mark.slow
def test_finetune_augment_auto_killed_during_the_trials_resumes_with_the_same_command(tmp_path):
    import json

    from click.testing import CliRunner

    from headstart.pipeline.cli import main
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    root = write_set(tmp_path / "images", ("left", "right"), counts=(("train", 16), ("validation", 12)))
    cache = tmp_path / "features.h5"
    extract_features(ExtractConfig(source=str(root), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(SHIPPED), image_size=96, splits=("train", "validation")))
    train_head(HeadConfig(features=str(cache), out=str(tmp_path / "head"), epochs=40, patience=5, lr=3e-3))
    out = tmp_path / "ft"
    argv = ["finetune", str(root), "--head", str(tmp_path / "head"), "--out", str(out), "--augment", "auto",
            "--epochs", "1", "--batch-size", "8"]
    before = _kill_after_the_first_trained_item(argv, out / "backup" / "progress.json")
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())["recipe"]["augment"]
    after = {c["item"]: c for c in record["candidates"]}
    assert len(after) == 7 and record["audit"]["candidates"]  # every item, and the audit that pre-filtered them
    for item, trial in before.items():
        assert after[item] == trial  # recorded before the kill: not trained again
        assert f"  {item}: " not in result.output
    assert "flip" not in record["augment"].split(",")
    assert not (out / "view_trials").exists()  # every item's cache deleted once recorded
    assert (record["rows"], record["train_rows"]) == (24, 32)


@pytest.mark.slow
def test_on_cache_fine_tune_trains_on_the_views_of_the_kept_items_only(tmp_path, monkeypatch):
    """``finetune --on-cache --augment auto`` (what auto runs): the trials' caches carry the head cache's
    tap; the kept item's views join the fit, the dropped flip's neither trains nor stays on disk."""
    import json

    from click.testing import CliRunner

    from headstart.pipeline.cli import main
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.evidence import audit
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    monkeypatch.setattr(audit, "AUDIT_CANDIDATES", ("flip", "brightness=0.2"))  # two trials, not seven
    root = write_set(tmp_path / "images", ("left", "right"), counts=(("train", 24), ("validation", 16)))
    cache = tmp_path / "features.h5"
    extract_features(ExtractConfig(source=str(root), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(SHIPPED), image_size=96, splits=("train", "validation"), tap="top:30"))
    train_head(HeadConfig(features=str(cache), out=str(tmp_path / "head"), epochs=40, patience=5, lr=3e-3))
    out = tmp_path / "ft"
    result = CliRunner().invoke(main, ["finetune", str(root), "--head", str(tmp_path / "head"), "--out", str(out),
                                       "--on-cache", "--augment", "auto", "--epochs", "1", "--batch-size", "8",
                                       "--parity-samples", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    trials = {c["item"]: c for c in json.loads((out / "run.json").read_text())["recipe"]["augment"]["candidates"]}
    assert not trials["flip"]["kept"] and trials["flip"]["views_cache"] is None
    assert trials["brightness=0.2"]["kept"]  # a brightness change does not turn a left arrow into a right one
    views = json.loads((out / "metrics.json").read_text())["on_cache"]["views"]
    assert views["items"] == ["brightness=0.2"] and views["per_row"] == 2  # VIEWS of the one kept item
    assert [Path(p).name for p in views["caches"]] == ["views-brightness-0-2.h5"]
    assert sorted(p.name for p in (out / "view_trials").iterdir()) == ["views-brightness-0-2.h5"]  # flip's deleted
    assert "training on the originals and 2 cached views per row of the augmentation the view trials kept " \
           "(brightness=0.2)" in result.output


def test_the_fit_names_the_views_it_draws_from_in_one_line():
    from headstart.pipeline.finetuning.choices import kept_views
    from headstart.pipeline.finetuning.on_cache import _views_line

    trials = {"view_trials": {"candidates": [
        {"item": "flip", "kept": False, "views_cache": None},
        {"item": "zoom=0.1", "kept": True, "views_cache": "v/views-zoom-0-1.h5"},
        {"item": "contrast=0.2", "kept": True, "views_cache": None}]}}  # kept, but by a run without --on-cache
    assert kept_views(trials) == [("zoom=0.1", "v/views-zoom-0-1.h5")]
    assert kept_views({}) is None  # no trials ran: --augment was given
    assert _views_line([("zoom=0.1", "x.h5")], 3).endswith("2 cached views per row of the augmentation the view "
                                                             "trials kept (zoom=0.1)")
    assert _views_line([("zoom=0.1", "x.h5"), ("flip", "y.h5")], 2).endswith(
        "up to 1 cached views per row of the augmentation the view trials kept, each row's of one item (zoom=0.1, flip)")
    assert _views_line([], 1) == "training on the originals only: the view trials kept no augmentation"
    assert _views_line(None, 3) == "training on the originals and the head cache's 2 views per row"
