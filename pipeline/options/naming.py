"""How each audience names a setting in an error message: the CLI by its flag, Python by its argument.

Library errors name a setting by its field (``Arg("image_size")``, ``features/errors.py``); the CLI
boundary (``cli_errors.library_call``) renders them with ``CLI_NAMES`` and the Python API
(``api.py``) with ``ARGUMENT_NAMES``, both read from the option table, so no message spells a flag
and no message is rewritten with a pattern. No TensorFlow here, nor click.
"""

from __future__ import annotations

import functools

from headstart.features.errors import Naming
from headstart.pipeline.options.facts import FACTS, flag_of
from headstart.pipeline.options.run_flags import RUN_OPTIONS


@functools.cache
def _flags() -> dict[str, str]:
    """Field → flag, for every field of a stage command whose flag is not ``--field-name`` (the option
    table has no field spelled two ways: ``split_specs`` is ``--split`` wherever it appears)."""
    return {name: flag_of(section, name) for section, facts in FACTS.items() for name, described in facts.items()
            if described.flag}


@functools.cache
def _run_flags() -> dict[str, str]:
    """``"section.field"`` → the ``headstart run`` flag that sets it ("head.epochs" → "--head-epochs")."""
    return {".".join(target): option.flag.split("/")[0] for option in RUN_OPTIONS for target in option.targets}


def flag_named(field: str) -> str:
    """The flag that sets ``field`` on the command line.

    Args:
        field: a config field ("image_size" → "--image-size", "split_specs" → "--split"; "no_views" →
            "--no-views"), or a dotted field of ``run_pipeline``'s config ("head.epochs" →
            "--head-epochs"; one no flag sets → its ``--config`` key, "[head] weight_decay").
    """
    section, dot, name = field.partition(".")
    if dot:
        return _run_flags().get(field) or (f"--{name.replace('_', '-')}" if section == "top" else f"[{section}] {name}")
    return _flags().get(field) or "--" + field.replace("_", "-")


def argument_named(field: str) -> str:
    """The Python argument that sets ``field``: the field itself; a top-level key of ``run_pipeline``'s
    config ("top.recipe") is the ``RunConfig`` field ("recipe")."""
    return field.removeprefix("top.")


#: The command line's words: ``Arg("weights", placeholder="PATH")`` → "--weights PATH".
CLI_NAMES = Naming(name_of=flag_named, python=False)

#: Python's words: ``Arg("weights", placeholder="PATH")`` → "weights=PATH"; "head.epochs" stays dotted.
ARGUMENT_NAMES = Naming(name_of=argument_named, python=True)
