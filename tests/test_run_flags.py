"""README's flags are the CLI's: every stage option is a `run` flag or README says it is TOML-only, and
every flag README names exists where README says it does (issue 22, item 5)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
from click.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def readme_toml_only() -> dict[str, set[str]]:
    """README's table of TOML-only keys: section → keys."""
    rows = re.findall(r"^\| `\[(\w+)\]` \| (.+?) \|$", README.read_text(encoding="utf-8"), flags=re.M)
    return {section: set(re.findall(r"`(\w+)`", keys)) for section, keys in rows}


def test_every_stage_option_is_a_run_flag_or_readme_says_it_is_toml_only():
    from headstart.pipeline.options.facts import SECTIONS
    from headstart.pipeline.options.run_flags import RUN_OPTIONS
    from headstart.pipeline.run.toml_config import RUNNER_SET

    flagged = {target for option in RUN_OPTIONS for target in option.targets}
    toml_only = {section: {f.name for f in dataclasses.fields(cls)
                           if f.name not in RUNNER_SET[section] and (section, f.name) not in flagged}
                 for section, cls in SECTIONS.items()}
    assert readme_toml_only() == toml_only


def test_run_takes_the_distribution_flags_the_training_commands_take():
    from headstart.pipeline.cli import main

    run = _options(main.commands["run"])
    for flag in ("--strategy", "--mixed-precision", "--no-mixed-precision", "--jit-compile", "--no-jit-compile"):
        assert flag in run and flag in _options(main.commands["finetune"]) | {"--no-mixed-precision",
                                                                              "--no-jit-compile"}, flag
    shown = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--strategy [auto|default|mirrored|multiworker]" in shown


def test_run_distribution_flags_reach_both_training_stages():
    from headstart.pipeline.run.toml_config import resolve_run_config

    config = resolve_run_config("photos", "runs/x", flags={"strategy": "default", "mixed_precision": True,
                                                           "jit_compile": True})
    for stage in (config.head, config.finetune):
        assert (stage.strategy, stage.mixed_precision, stage.jit_compile) == ("default", True, True)
    assert resolve_run_config("photos", "runs/x", flags={"mixed_precision": False}).finetune.mixed_precision is False


def test_every_flag_readme_names_exists():
    from headstart.pipeline.cli import main

    known = {opt for command in main.commands.values() for opt in _options(command)} | _options(main) | {"--help"}
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w#-])(--[a-z][a-z0-9-]*)", text))
    not_ours = {"--upgrade", "--logdir"}  # pip's and tensorboard's own
    assert named - known - not_ours == set()


def test_readme_flags_are_on_the_commands_readme_lists():
    """"`--strategy …` on `train-head`, `finetune` and `run`" and "`--class-weight …` (train-head,
    finetune, run; …)": each named command takes the flag."""
    from headstart.pipeline.cli import main

    text = " ".join(README.read_text(encoding="utf-8").split())
    pattern = re.compile(r"`(--[a-z][a-z0-9-]*)[^`]*`[^.`]{0,40}? (?:on |\()((?: ?`?[a-z-]+`?(?:,| and)?)+)")
    checked = 0
    for flag, listed in pattern.findall(text):
        commands = [c for c in re.findall(r"[a-z-]+", listed) if c in main.commands and c != "and"]
        if len(commands) < 2:
            continue
        for command in commands:
            assert flag in _options(main.commands[command]), f"README: {flag} on {command}"
        checked += 1
    assert checked >= 4  # --strategy, --class-weight, --monitor, --weights
