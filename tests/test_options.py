"""One source of option facts: the CLI's choices, defaults and help come from the registries and the
config dataclasses, and ``headstart run``'s flags point at the same facts."""

from __future__ import annotations

import dataclasses

import click
import pytest

from headstart.features.registry import BACKBONES, DTYPES, POOLINGS, alpha_backbones
from headstart.pipeline.cli import main
from headstart.pipeline.config import EXPORT_FORMATS, ExtractConfig, FinetuneConfig, HeadConfig
from headstart.pipeline.distribute.strategy import STRATEGIES
from headstart.pipeline.options.facts import FACTS, SECTIONS, config_class, field_default, flag_of
from headstart.pipeline.options.run_flags import RUN_OPTIONS

COMMANDS = {"extract-features": "extract", "train-head": "head", "finetune": "finetune"}


def _param(command: str, flag: str) -> click.Option:
    found = [p for p in main.commands[command].params if flag in p.opts]
    assert found, f"{command} has no {flag}"
    return found[0]


def test_choices_come_from_the_registries():
    assert tuple(_param("extract-features", "--pooling").type.choices) == POOLINGS
    assert tuple(_param("finetune", "--pooling").type.choices) == POOLINGS
    assert tuple(_param("extract-features", "--dtype").type.choices) == DTYPES
    assert tuple(_param("finetune", "--export").type.choices) == EXPORT_FORMATS
    for command in ("train-head", "finetune"):
        assert tuple(_param(command, "--strategy").type.choices) == STRATEGIES
    run = {p.opts[0]: p for p in main.commands["run"].params}
    assert tuple(run["--pooling"].type.choices) == POOLINGS
    assert tuple(run["--dtype"].type.choices) == DTYPES
    assert tuple(run["--export"].type.choices) == EXPORT_FORMATS


def test_help_lists_every_registered_backbone():
    for command in ("extract-features", "run"):
        shown = [p for p in main.commands[command].params if "--backbone" in p.opts][0].help
        assert all(name in shown for name in BACKBONES), (command, shown)
    assert all(name in _param("extract-features", "--alpha").help for name in alpha_backbones())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_stage_options_default_to_their_dataclass(command):
    section = COMMANDS[command]
    checked = 0
    for name in FACTS[section]:
        param = _param(command, flag_of(section, name))
        default = field_default(section, name)
        if param.required or param.multiple or param.is_flag:
            continue
        expected = ",".join(default) if isinstance(default, tuple) else default
        assert param.default == expected, (command, name)
        checked += 1
    assert checked >= 5


def test_every_fact_names_a_config_field_and_every_run_flag_a_fact():
    for section, facts in FACTS.items():
        fields = {f.name for f in dataclasses.fields(config_class(section))}
        assert set(facts) <= fields, (section, set(facts) - fields)
    for option in RUN_OPTIONS:
        for section, key in option.targets:
            assert key in FACTS[section], option.flag
    assert {c: s for c, s in SECTIONS.items()} == {"extract": ExtractConfig, "head": HeadConfig,
                                                     "finetune": FinetuneConfig}


def test_run_flag_kinds_follow_the_fields():
    kinds = {o.flag: o.kind for o in RUN_OPTIONS}
    assert kinds["--alpha"] == "float" and kinds["--max-bad"] == "int" and kinds["--image-size"] == "int"
    assert kinds["--split"] == "multi" and kinds["--export"] == "multi"
    assert kinds["--tensorboard/--no-tensorboard"] == "bool" and kinds["--backbone"] == "str"
