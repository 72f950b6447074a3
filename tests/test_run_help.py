"""`headstart run --help` says what the defaults are (issue 27: it still said that with no options the
run follows the Keras guide when the default had become --recipe auto). Read against the dataclasses
(`pipeline/config.py`, the one source of defaults) so help and defaults cannot drift. No TensorFlow."""

from __future__ import annotations

import re
from typing import Any

from click.testing import CliRunner

from headstart.pipeline.cli import main
from headstart.pipeline.config import RunConfig
from headstart.pipeline.options.facts import config_class
from headstart.pipeline.options.run_flags import RUN_OPTIONS


def run_help() -> tuple[str, dict[str, str]]:
    """(the prose before "Options:", one line of whitespace; flag → its help, unwrapped)."""
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    prose, options = result.output.split("\nOptions:\n", 1)
    blocks: dict[str, str] = {}
    flag = None
    for line in options.splitlines():
        match = re.match(r"  (--[\w-]+)", line)
        if match:
            flag = match.group(1)
            blocks[flag] = line[match.end():]
        elif flag:
            blocks[flag] += " " + line.strip()
    return " ".join(prose.split()), {f: " ".join(text.split()) for f, text in blocks.items()}


def dataclass_default(section: str, key: str) -> Any:
    """The default straight from the config dataclass ("top": RunConfig)."""
    return getattr(config_class(section)(), key)


def test_the_prose_names_the_default_recipe():
    prose, _ = run_help()
    assert f"By default (--recipe {RunConfig().recipe})" in prose, prose
    if RunConfig().recipe != "guide":
        assert "With no options" not in prose and "follows the Keras guide end to end" not in prose


def default_mismatches(blocks: dict[str, str]) -> list[str]:
    """Each run flag whose help shows another default than its dataclass field (first target)."""
    wrong = []
    for option in RUN_OPTIONS:
        text = blocks.get(option.flag.split("/")[0])
        if text is None:
            wrong.append(f"{option.flag} is not in run --help")
            continue
        default = dataclass_default(*option.targets[0])
        if isinstance(default, bool):
            expected = "on" if default else "off"
        elif default in (None, "") or isinstance(default, (tuple, dict)):
            expected = None
        else:
            expected = str(default)
        shown = re.findall(r"\[default: ([^\]]+)\]", text)
        if (shown[-1:] or [None])[0] != expected:
            wrong.append(f"{option.flag}: help shows {shown}, the dataclass says {expected!r}")
    return wrong


def test_every_flag_shows_the_dataclass_default():
    _, blocks = run_help()
    assert not default_mismatches(blocks), "\n".join(default_mismatches(blocks))
    assert f"[default: {RunConfig().recipe}]" in blocks["--recipe"]


def test_a_drifted_default_would_be_caught():
    _, blocks = run_help()
    size = dataclass_default("extract", "image_size")
    drifted = {**blocks, "--image-size": blocks["--image-size"].replace(f"[default: {size}]", "[default: 999]")}
    assert default_mismatches(drifted) == [f"--image-size: help shows ['999'], the dataclass says '{size}'"]
    assert default_mismatches({k: v for k, v in blocks.items() if k != "--budget"}) == ["--budget is not in run --help"]
