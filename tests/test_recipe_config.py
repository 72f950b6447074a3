"""--recipe auto decides only what was left open: the explicit settings, their TOML, the search space."""

from __future__ import annotations

import dataclasses

import pytest


def _resolve(flags=None, file_values=None):
    from headstart.pipeline.run.toml_config import resolve_run_config

    return resolve_run_config("data", "runs/x", file_values=file_values, flags=flags)


def test_flags_and_file_keys_are_recorded_as_explicit():
    config = _resolve(flags={"lr": 1e-4, "augment": "none"}, file_values={"head": {"dropout": 0.3}})
    assert config.recipe == "auto" and config.budget is None
    assert {"finetune.lr", "finetune.augment", "extract.augment", "head.dropout"} <= set(config.explicit)
    assert not config.is_explicit("finetune", "unfreeze") and not config.is_explicit("extract", "image_size")
    # A setting given with its default value is still the user's choice.
    assert _resolve(flags={"lr": 1e-5}).is_explicit("finetune", "lr")


def test_config_toml_under_auto_keeps_only_the_settings_given_and_reads_back_the_same():
    from headstart.pipeline.run.toml_config import read_config_file, resolve_run_config, result_settings, \
        run_config_dict, to_toml

    config = _resolve(flags={"lr": 1e-4, "budget": 7.5}, file_values={"head": {"dropout": 0.3}})
    text = to_toml(config)
    assert 'recipe = "auto"' in text and "budget = 7.5" in text
    assert "lr = 0.0001" in text and "dropout = 0.3" in text
    assert "unfreeze" not in text and "image_size" not in text  # left open: auto decides them
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "config.toml"
    path.write_text(text, encoding="utf-8")
    again = resolve_run_config(None, None, file_values=read_config_file(path))
    assert again.explicit == config.explicit
    assert result_settings(run_config_dict(again)) == result_settings(run_config_dict(config))
    # Under the guide every value is written, and the explicit set does not shape results.
    guide = _resolve(flags={"recipe": "guide"})
    assert "unfreeze" in to_toml(guide) and "set explicitly" not in result_settings(run_config_dict(guide))
    # The same values given or left open are two different auto runs.
    assert result_settings(run_config_dict(_resolve(flags={"lr": 1e-5}))) != \
        result_settings(run_config_dict(_resolve()))


def test_recipe_and_budget_are_checked_before_anything_runs():
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.run.runner import check_run_config

    with pytest.raises(OptionError, match="--recipe must be one of auto, guide"):
        check_run_config(_resolve(flags={"recipe": "fast"}))
    with pytest.raises(OptionError, match="--budget must be"):
        check_run_config(_resolve(flags={"budget": 0.0}))


def test_the_sweep_searches_only_the_head_options_left_open():
    from headstart.pipeline.run.auto.head import TRIAL_EPOCHS, head_searchable, search_space

    space = search_space(_resolve(flags={"head_lr": 3e-3}, file_values={"head": {"head_kind": "hidden"}}))
    assert space.lr == (3e-3, 3e-3) and space.head_kind == ("hidden",)
    assert space.dropout == (0.0, 0.6) and space.epochs == TRIAL_EPOCHS == 0  # until early stopping
    everything = {k: v for k, v in (("lr", 1e-3), ("dropout", 0.2), ("weight_decay", 0.0), ("label_smoothing", 0.0),
                                    ("batch_size", 64), ("head_kind", "linear"), ("hidden_units", 256),
                                    ("normalize", "none"), ("views", True))}
    assert not head_searchable(_resolve(file_values={"head": everything}))


def test_finetune_runs_on_the_cache_and_tries_rates_only_when_open():
    from types import SimpleNamespace

    from headstart.pipeline.run.auto.finetune import auto_tap, on_cache_config

    def steps(config):
        return SimpleNamespace(config=config, open=lambda name: name not in config.explicit)

    open_all = on_cache_config(steps(_resolve()), 30)
    assert (open_all.on_cache, open_all.augment, open_all.probe, open_all.unfreeze, open_all.epochs) == \
        (True, "auto", "lr", "all", 30)  # the view trials choose the views the fit trains on
    given = on_cache_config(steps(_resolve(flags={"augment": "flip", "lr": 1e-4, "unfreeze": "top:5"})), 30)
    assert (given.augment, given.probe, given.lr, given.unfreeze) == ("flip", "none", 1e-4, "top:5")
    assert on_cache_config(steps(_resolve(flags={"epochs": 4})), 30).epochs == 4
    untapped = on_cache_config(steps(_resolve()), 30, tapped=False)  # a hub backbone: end to end, nothing probed
    assert (untapped.on_cache, untapped.probe, untapped.augment) == (False, "none", "none")
    # The tap: one per backbone, the user's when given, none for a hub model.
    assert auto_tap(_resolve()) == "top:6"  # the default backbone, Xception: its last block
    assert auto_tap(_resolve(flags={"backbone": "mobilenet_v2"})) == "top:30"
    assert auto_tap(_resolve(file_values={"extract": {"tap": "top:12"}})) == "top:12"


def test_the_augmentation_plan_is_made_again_at_the_chosen_size_said_and_kept_on_resume():
    from types import SimpleNamespace

    from headstart.pipeline.run.auto.plan import Speeds, plan_recipe
    from headstart.pipeline.run.auto.finetune import on_cache_config
    from headstart.pipeline.run.auto.steps import augment_plan_step

    config = _resolve()
    rows = {"train": 1400, "validation": 200, "test": 400}
    plan = plan_recipe(Speeds(config.extract.image_size, 200.0, rows), native_size=224, search_head=True,
                       audit_candidates=7, probe_lrs=(), probe_depth=False, budget_minutes=8, on_cache=True)
    assert plan.audit and plan.image_sizes == [150, 224]
    first = {"splits": rows, "images_per_second": 200.0, "seconds": 20.0}
    candidates = {150: (first, {"seconds": 30.0}), 224: ({"seconds": 45.0}, {"seconds": 30.0})}
    state, lines = {}, []

    def save(name, record):
        state[name] = record
        return record

    steps = SimpleNamespace(config=config, state=state, save=save, console=SimpleNamespace(line=lines.append),
                            open=lambda name: name not in config.explicit, fixed=False)
    same = augment_plan_step(steps, plan, 150, candidates)
    assert same.views == plan.views and same.audit and not lines  # nothing cut at the first size
    state.clear()
    cut = augment_plan_step(steps, dataclasses.replace(plan, budget_seconds=110.0), 224, candidates)
    # 105 s spent (the 224 px extraction and both sweeps; the first extraction is not search) of 110
    assert state["augment_plan"]["spent"] == 105.0 and not cut.audit
    assert len(lines) == 1 and "at 224 px would take about" in lines[0] and "no augmentation trials" in lines[0]
    again = augment_plan_step(steps, dataclasses.replace(plan, budget_seconds=110.0), 224, candidates)
    assert again == cut and len(lines) == 1  # a resumed run keeps the plan it printed
    tuned = on_cache_config(steps, 30, plan=cut)
    assert tuned.augment == "none" and on_cache_config(steps, 30, plan=same).trial_views == same.views
