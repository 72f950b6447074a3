"""click options built from the one table of option facts (``headstart.pipeline.options``).

``field_option`` makes the option of one config field: its default and type from the dataclass,
help and choices from its fact. ``run_options`` adds every flag of ``headstart run``
(``options.run_flags.RUN_OPTIONS``), unset → None, so the TOML config and the defaults show through.
"""

from __future__ import annotations

import click

from headstart.pipeline.options.run_flags import RUN_OPTIONS, option_default
from headstart.pipeline.options.facts import fact, field_default, field_kind, flag_of


def field_option(section: str, name: str):
    """The click option of one config field, from its fact in ``headstart.pipeline.options.facts``.

    Default and type come from the dataclass field, help and choices from the fact; a default of
    None is "not given" (the library decides) and is not shown.
    """
    described, default, kind = fact(section, name), field_default(section, name), field_kind(section, name)
    choice = click.Choice(described.choices) if described.choices else None
    kwargs: dict = {"help": described.help}
    if described.metavar:
        kwargs["metavar"] = described.metavar
    if kind == "bool":
        flag = flag_of(section, name)
        if default:  # an option that is on unless switched off
            return click.option(f"{flag}/--no-{flag[2:]}", default=True, show_default=True, **kwargs)
        return click.option(flag, is_flag=True, **kwargs)
    if kind == "multi":
        return click.option(flag_of(section, name), name, multiple=True, type=choice, **kwargs)
    if described.path:
        kwargs["type"] = click.Path(dir_okay=False) if described.path == "file" else click.Path(file_okay=False)
    else:
        kwargs["type"] = choice or {"int": int, "float": float, "str": str}[kind]
    if described.required:
        return click.option(flag_of(section, name), required=True, **kwargs)
    if described.csv:
        default = ",".join(default)
    return click.option(flag_of(section, name), default=default, show_default=default is not None, **kwargs)


def field_options(section: str, *names: str):
    """Adds the options of several fields of one section, in the order given (as --help lists them)."""

    def decorate(fn):
        for name in reversed(names):
            fn = field_option(section, name)(fn)
        return fn

    return decorate


def distribute_options(section: str):
    """--strategy, --mixed-precision and --jit-compile, shared by the training commands."""
    return field_options(section, "strategy", "mixed_precision", "jit_compile")


def run_options(fn):
    """Adds the stage flags of ``headstart run`` (``options.run_flags.RUN_OPTIONS``); unset → None."""
    for option in reversed(RUN_OPTIONS):
        default = option_default(option)
        shown = ("on" if default else "off") if isinstance(default, bool) else \
            None if isinstance(default, (tuple, dict)) else default
        text = option.help + (f"  [default: {shown}]" if shown not in (None, "", ()) else "")
        choice = click.Choice(option.choices) if option.choices else None
        if option.kind == "bool":
            fn = click.option(option.flag, option.dest, default=None, help=text)(fn)
        elif option.kind == "multi":
            fn = click.option(option.flag, option.dest, multiple=True, type=choice or str,
                              metavar="NAME=SPEC" if not choice else None, help=text)(fn)
        else:
            kind = choice or {"int": int, "float": float, "str": str}[option.kind]
            fn = click.option(option.flag, option.dest, type=kind, default=None, help=text)(fn)
    return fn
