"""The docs' flags are the CLI's: every stage option is a `run` flag or the docs say it is TOML-only, and
every flag README.md or a site page (docs/*.md) names exists where the text says it does (issue 22,
items 5 and 11)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
from click.testing import CliRunner

from doc_pages import doc_pages, page_name


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def docs_toml_only() -> dict[str, set[str]]:
    """The docs' table of TOML-only keys (docs/run.md): section → keys, from every page that has one."""
    found: dict[str, set[str]] = {}
    for page in doc_pages():
        rows = re.findall(r"^\| `\[(\w+)\]` \| (.+?) \|$", page.read_text(encoding="utf-8"), flags=re.M)
        for section, keys in rows:
            found.setdefault(section, set()).update(re.findall(r"`(\w+)`", keys))
    return found


def test_every_stage_option_is_a_run_flag_or_the_docs_say_it_is_toml_only():
    from headstart.pipeline.options.facts import SECTIONS
    from headstart.pipeline.options.run_flags import RUN_OPTIONS
    from headstart.pipeline.run.toml_config import RUNNER_SET

    flagged = {target for option in RUN_OPTIONS for target in option.targets}
    toml_only = {section: {f.name for f in dataclasses.fields(cls)
                           if f.name not in RUNNER_SET[section] and (section, f.name) not in flagged}
                 for section, cls in SECTIONS.items()}
    assert docs_toml_only() == toml_only


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


def _known_flags() -> set[str]:
    from headstart.pipeline.cli import main

    return {opt for command in main.commands.values() for opt in _options(command)} | _options(main) | {"--help"}


#: Flags of other programs that the docs name: pip's, tensorboard's, mkdocs', docker's and Slurm's own.
NOT_OURS = {"--upgrade", "--logdir", "--strict", "--site-dir", "--rm", "--array"}


def unknown_flags(text: str) -> set[str]:
    """The ``--flags`` ``text`` names that no headstart command takes."""
    named = set(re.findall(r"(?<![\w#-])(--[a-z][a-z0-9-]*)", text))
    return named - _known_flags() - NOT_OURS


def misplaced_flags(text: str) -> tuple[list[str], int]:
    """"`--strategy …` on `train-head`, `finetune` and `run`" and "`--class-weight …` (train-head,
    finetune, run; …)": (each "FLAG on COMMAND" where COMMAND lacks FLAG, how many such lists were read)."""
    from headstart.pipeline.cli import main

    text = " ".join(text.split())
    pattern = re.compile(r"`(--[a-z][a-z0-9-]*)[^`]*`[^.`]{0,40}? (?:on |\()((?: ?`?[a-z-]+`?(?:,| and)?)+)")
    wrong, checked = [], 0
    for flag, listed in pattern.findall(text):
        commands = [c for c in re.findall(r"[a-z-]+", listed) if c in main.commands and c != "and"]
        if len(commands) < 2:
            continue
        wrong += [f"{flag} on {command}" for command in commands if flag not in _options(main.commands[command])]
        checked += 1
    return wrong, checked


def test_every_flag_the_docs_name_exists():
    for page in doc_pages():
        assert unknown_flags(page.read_text(encoding="utf-8")) == set(), page_name(page)


def test_the_docs_flags_are_on_the_commands_they_list():
    checked = 0
    for page in doc_pages():
        wrong, n = misplaced_flags(page.read_text(encoding="utf-8"))
        assert wrong == [], page_name(page)
        checked += n
    assert checked >= 4  # --strategy, --class-weight, --monitor, --weights


def test_a_wrong_flag_in_the_docs_is_caught():
    """The checks above can fail: a flag no command takes, and a flag said to be on a command that lacks it."""
    assert unknown_flags("train with `--epoch 3`, or `--epochs 3` (`pip install --upgrade`)") == {"--epoch"}
    wrong, checked = misplaced_flags("`--strategy auto|mirrored` on `train-head`, `sweep` and `run`.")
    assert (wrong, checked) == (["--strategy on sweep"], 1)
