"""Messages that say what they mean (issue 22, item 10): a near-miss backbone gets "did you mean", a
changed label file says how many rows differ, and the sweep says why a trial stopped in words."""

from __future__ import annotations

from types import SimpleNamespace

from click.testing import CliRunner


def test_a_near_miss_backbone_gets_did_you_mean(tmp_path):
    from headstart.pipeline.cli import main

    (tmp_path / "d" / "a").mkdir(parents=True)
    for typed, meant in (("mobilenetv2", "mobilenet_v2"), ("MobileNet-V2", "mobilenet_v2"), ("resnet50v2", "resnet50_v2")):
        for command in ("extract-features", "run"):
            result = CliRunner().invoke(main, [command, str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                                               "--backbone", typed])
            assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
            assert f"unknown backbone {typed!r} (did you mean {meant!r}? choose from" in result.output
    far = CliRunner().invoke(main, ["extract-features", str(tmp_path / "d"), "--out", "o.h5", "--backbone", "zzz"])
    assert "did you mean" not in far.output and "unknown backbone 'zzz' (choose from xception" in far.output


def test_label_rows_compare_by_split_and_labels_and_bad_rows_by_split():
    from headstart.pipeline.data.label_changes import _BAD_IMAGE, _BAD_ROW, _same

    assert _same(("train", ("cat",)), ("train", ("cat",)))
    assert not _same(("train", ("cat",)), ("train", ("dog",)))  # relabelled
    assert not _same(("train", ("cat",)), ("test", ("cat",)))  # moved
    assert not _same(None, ("train", ("cat",))) and not _same(("train", ("cat",)), None)  # added, removed
    assert not _same(("train", _BAD_ROW), ("train", ("dog",)))  # a bad row fixed: its image is new to the cache
    assert _same(("train", _BAD_ROW), ("train", _BAD_ROW))
    assert _same(("train", _BAD_IMAGE), ("train", ("dog",)))  # a bad image: its labels were never stored


def test_the_sweep_says_why_a_trial_stopped_in_words():
    from headstart.pipeline.sweep.teller import _trial_line

    trial = SimpleNamespace(state=SimpleNamespace(name="COMPLETE"), value=0.3, number=0)
    objective = SimpleNamespace(measure="loss", history_key="val_loss", rank=lambda value: value)
    for stopped, word in (("early", "early stop"), ("pruned", "pruned"), ("epochs", "all epochs")):
        run = SimpleNamespace(stopped=stopped, validation={"loss": 0.3, "accuracy": 0.9}, epochs_run=30, seconds=0.5,
                              objective=0.3)
        line = _trial_line([trial], 0, SimpleNamespace(cache="features"), run, objective, 8)
        assert line.startswith(f"trial   0 features {word}") and "  epochs 30  " in line, line
