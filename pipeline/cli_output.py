"""What the ``headstart`` commands print, and through what: the CLI's one way to write a line.

Every line goes through ``echo``: labels, keys and file names come from the data, and a control
character in one (\\r, \\n, ESC, a bidi control) must not forge or hide output lines, so each is
escaped (``report/printable.py``). ``--json`` prints one valid JSON document and nothing else
(``echo_json``). Status and progress lines go to stderr through a ``Console`` (``console``).
"""

from __future__ import annotations

from typing import Any

import click


def echo(message: object = "", err: bool = False) -> None:
    """Prints one message (any number of lines), control characters escaped."""
    from headstart.pipeline.report.printable import printable_lines

    click.echo(printable_lines(str(message)), err=err)


def echo_json(data: Any) -> None:
    """One valid JSON document on stdout and nothing else (NaN → null): what --json promises."""
    from headstart.pipeline.store.files import json_text

    click.echo(json_text(data))


def console(quiet: bool = False) -> Any:
    """Status lines and live progress lines on stderr that do not write over each other."""
    from headstart.pipeline.run.console import Console

    return Console(lambda m: echo(m, err=True), quiet=quiet)
