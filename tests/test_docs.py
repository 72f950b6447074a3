"""Documentation stays true: every command and option shows in `--help`, and every `headstart …`
command in the code blocks of README.md and of every page of the site (docs/*.md) names a real
command with options it accepts (the idea of sqlite-utils' tests/test_docs.py)."""

from __future__ import annotations

import re
import shlex

import click
import pytest
from click.testing import CliRunner

from doc_pages import code_blocks, doc_pages, page_name
from headstart.pipeline.cli import main

GLOBAL_OPTIONS = {opt for p in main.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def block_commands(text: str) -> list[str]:
    """Every `headstart …` command line inside the fenced code blocks of ``text``."""
    found = []
    for lang, block in code_blocks(text):
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


def doc_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `headstart …` command in README.md and docs/*.md."""
    return [(page_name(page), line) for page in doc_pages()
            for line in block_commands(page.read_text(encoding="utf-8"))]


def command_problems(line: str) -> list[str]:
    """What is wrong with one documented command line: an unknown global option, command or option."""
    tokens = shlex.split(line, comments=True)
    if tokens[:1] != ["headstart"]:
        return [f"not a headstart command: {line}"]
    rest = tokens[1:]
    while rest and rest[0].startswith("-"):
        if rest[0] not in GLOBAL_OPTIONS:
            return [f"unknown global option {rest[0]}"]
        rest = rest[1:]
    if not rest:
        return []
    name = rest[0]
    if name not in main.commands:
        return [f"no command '{name}' (have: {', '.join(sorted(main.commands))})"]
    accepted = _options(main.commands[name])
    return [f"'{name}' has no option {token.split('=', 1)[0]}" for token in rest[1:]
            if token.startswith("--") and token.split("=", 1)[0] not in accepted]


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


def test_the_docs_show_every_command():
    """Each command of `headstart --help` is shown at work in a code block of README.md or a site
    page, and README.md, the front page, shows the two that do the whole job."""
    def named(line: str) -> str | None:
        return next((t for t in shlex.split(line, comments=True)[1:] if not t.startswith("-")), None)

    shown = {named(line) for _, line in doc_commands()}
    assert set(main.commands) - shown == set(), "never shown in a code block"
    assert {"demo", "run"} <= {named(line) for line in block_commands(doc_pages()[0].read_text("utf-8"))}


DOC_COMMANDS = doc_commands()


@pytest.mark.parametrize("page,line", DOC_COMMANDS, ids=[f"{page}-{i}" for i, (page, _) in enumerate(DOC_COMMANDS)])
def test_documented_commands_are_accepted_by_the_cli(page, line):
    assert command_problems(line) == [], f"{page}: {line}"


def test_a_wrong_command_or_option_in_the_docs_is_caught():
    """The check above can fail: a misspelt option, command or global option is named, also in a
    block indented inside a list item."""
    text = ("```console\n$ headstart train-head features.h5 --out heads/x --epoch 3\ntrain-head\n```\n"
            "```bash\nheadstart --quite run photos/ && headstart trian-head features.h5\n```\n"
            "- an item:\n\n    ```console\n    $ headstart finetune photos --head h --strategy mirored\n    ```\n")
    lines = block_commands(text)
    assert lines == ["headstart train-head features.h5 --out heads/x --epoch 3", "headstart --quite run photos/",
                     "headstart trian-head features.h5", "headstart finetune photos --head h --strategy mirored"]
    assert [command_problems(line) for line in lines] == [
        ["'train-head' has no option --epoch"], ["unknown global option --quite"],
        [f"no command 'trian-head' (have: {', '.join(sorted(main.commands))})"], []]
    assert command_problems("headstart finetune photos --head h --strateg mirrored") == [
        "'finetune' has no option --strateg"]
