"""Documentation stays true: every command and option shows in `--help`, and every `headstart …`
command in the README's code blocks names a real command with options it accepts (the idea of
sqlite-utils' tests/test_docs.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from headstart.pipeline.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
GLOBAL_OPTIONS = {opt for p in main.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def readme_commands() -> list[str]:
    """Every `headstart …` command line inside the README's fenced code blocks."""
    text = README.read_text(encoding="utf-8")
    found = []
    for lang, block in re.findall(r"^```([a-z]*)\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            if lang == "console":  # a transcript: commands follow "$ ", the rest is output
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            for part in re.split(r"&&|;|\|\|?", line):
                part = part.strip()
                if part.startswith("headstart ") or part == "headstart":
                    found.append(part)
    return found


def test_every_command_and_option_is_in_help():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for name, command in main.commands.items():
        assert name in top.output, f"{name} missing from headstart --help"
        shown = runner.invoke(main, [name, "--help"])
        assert shown.exit_code == 0, shown.output
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    assert opt in shown.output, f"{name} {opt} missing from --help"
                assert param.help, f"{name} {param.opts} has no help text"
            else:
                assert param.human_readable_name.upper() in shown.output, f"{name} argument {param.name}"


def test_readme_has_headstart_commands():
    commands = readme_commands()
    assert len(commands) >= 8
    for name in ("run", "demo", "inspect", "extract-features", "train-head"):
        assert any(shlex.split(c, comments=True)[1:2] == [name] for c in commands), f"README never shows {name}"


@pytest.mark.parametrize("line", readme_commands())
def test_readme_commands_are_accepted_by_the_cli(line):
    tokens = shlex.split(line, comments=True)
    assert tokens[0] == "headstart"
    rest = tokens[1:]
    while rest and rest[0].startswith("-"):
        assert rest[0] in GLOBAL_OPTIONS, f"{line}: unknown global option {rest[0]}"
        rest = rest[1:]
    if not rest:
        return
    name = rest[0]
    assert name in main.commands, f"{line}: no command '{name}' (have: {', '.join(sorted(main.commands))})"
    accepted = _options(main.commands[name])
    for token in rest[1:]:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in accepted, f"{line}: '{name}' has no option {option}"
