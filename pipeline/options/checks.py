"""Checking option values against the option table (``facts.FACTS``): choices, ranges, required options.

The one check of option values, for flags, ``--config`` files and the Python API alike; it needs no
TensorFlow, so a bad value fails before TensorFlow starts.
"""

from __future__ import annotations

from typing import Any, Callable

from headstart.pipeline.errors import OptionError
from headstart.features.errors import Arg, Part
from headstart.pipeline.options.facts import FACTS, fact


#: The argument of each command that names its input, as ``--help`` spells it.
POSITIONALS = {"extract": ("source", "SOURCE"), "head": ("features", "FEATURES"), "finetune": ("source", "SOURCE"),
               "diagnose": ("features", "CACHE"), "sweep": ("caches", "CACHE"), "export": ("model", "RUN_OR_MODEL"),
               "split": ("source", "SOURCE")}


def check_value(section: str, name: str, value: Any, *, label: str | Arg | None = None) -> None:
    """Refuses a value outside its fact's choices or range, in one line naming the option.

    Args:
        section, name: the config field.
        value: its value (None: not given, nothing to check; a tuple: every element is a choice).
        label: how to name the option (default: the field, ``Arg(name)``, which the CLI spells as its
            flag, e.g. "--image-size", and Python as the argument).

    Raises:
        OptionError: "LABEL must be one of …, got 'x'" / "LABEL must be at least 1, got 0".
    """
    described, label = fact(section, name), label or Arg(name)
    if value is None:
        return
    if described.choices is not None:
        bad = [v for v in (value if isinstance(value, (tuple, list)) else (value,)) if v not in described.choices]
        if bad:
            rule = f"must be one of {', '.join(described.choices)}"
            raise OptionError(label, f" {rule}, got {bad[0]!r}", field=name, value=bad[0], rule=rule)
    problem = described.bounds.problem(value) if described.bounds else None
    if problem:
        raise OptionError(label, f" must be {problem}, got {value}", field=name, value=value, rule=f"must be {problem}")


def check_config(section: str, config: object, *, label: Callable[[str], Part] | None = None) -> None:
    """Checks a section's config against the table: its input given, required options given, every
    value within its choices and range. The one check of option values, for flags, ``--config``
    files and the Python API alike; it needs no TensorFlow.

    Args:
        section: "extract", "head", "finetune", "sweep", "diagnose" or "demo".
        config: that section's dataclass.
        label: field → how to name it (default: ``Arg(field)``; ``headstart run`` names its dotted fields).

    Raises:
        OptionError: naming the first option at fault.
    """
    name = label or Arg
    positional = POSITIONALS.get(section)
    if positional and not getattr(config, positional[0]):
        raise OptionError(f"{positional[1]} is required")
    for field, described in FACTS[section].items():
        value = getattr(config, field)
        if described.required and not value:
            raise OptionError(name(field), " is required", value=value, rule="is required")
        check_value(section, field, value, label=name(field))
