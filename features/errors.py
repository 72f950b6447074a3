"""Domain exceptions of the features package, and the structured message every domain error carries.

Each message is one line that names the file or setting at fault. A setting is named by its field
(``Arg("weights")``), never by how one audience spells it: the CLI boundary (``pipeline/cli_errors.py``)
renders it as the flag it documents, the Python API as the argument (``weights=PATH``), and
``str(exc)`` reads as the API does. ``exit_code`` is what the CLI exits with: 2 for bad input (the
user can fix the command), 1 for failures at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Union

_UNSET: Any = object()


@dataclass(frozen=True)
class Arg:
    """A setting named inside an error message.

    Attributes:
        field: the config field or function argument (``"image_size"``; dotted for a section of
            ``run_pipeline``'s config, ``"head.epochs"``).
        value: shown after the name (the flag and ``imagenet`` / ``weights='imagenet'``); None: the name alone.
        placeholder: a word standing for any value (the flag and ``PATH`` / ``weights=PATH``).
        negated: the switch turned off (the CLI's off switch / ``views=False``).
    """

    field: str
    value: Any = None
    placeholder: str | None = None
    negated: bool = False


#: One piece of a message: words, or a setting each audience names its own way.
Part = Union[str, Arg]


@dataclass(frozen=True)
class Naming:
    """How one audience names a setting: the CLI by its flag, Python by its argument.

    Attributes:
        name_of: field → the bare name (``"image_size"`` → the flag or ``"image_size"``); the CLI's is
            also asked for ``"no_FIELD"``, the switch that turns FIELD off.
        python: spell a value as ``name=value`` (Python) rather than the flag, a space and the value (CLI).
    """

    name_of: Callable[[str], str]
    python: bool

    def spell(self, arg: Arg) -> str:
        """``arg`` as this audience writes it (see ``Arg``)."""
        name = self.name_of(arg.field)
        if self.python:
            if arg.negated:
                return f"{name}=False"
            if arg.placeholder or arg.value is not None:
                value = os.fspath(arg.value) if isinstance(arg.value, os.PathLike) else arg.value
                return f"{name}={arg.placeholder or repr(value)}"  # a path as the str a caller would pass
            return name
        if arg.negated:
            return self.name_of(f"no_{arg.field}")
        if arg.placeholder or arg.value is not None:
            value = arg.value
            shown = arg.placeholder or (f"{value:g}" if isinstance(value, float) else str(value))
            return f"{name} {shown}"
        return name


#: Python's words: a field is the argument of the same name (``str(exc)`` and the Python API).
ARGUMENTS = Naming(name_of=lambda field: field, python=True)


class Fault(Exception):
    """A domain error whose message names settings by field (base of ``FeaturesError`` and ``HeadstartError``).

    ``Fault(Arg("epochs"), " must be at least 1, got 0")``, or ``OptionError.invalid("epochs", 0,
    "must be at least 1")``; a plain string works too (a fault of a file, not of a setting).

    Attributes:
        parts: the message, words and ``Arg``s in order.
        field: the setting at fault (default: the first ``Arg`` of the message), or None.
        value: its value (default: that ``Arg``'s), or None.
        rule: the rule broken, in words (default: the message after that ``Arg``, in Python's words;
            the whole message when no ``Arg`` names the field).
    """

    exit_code = 2

    def __init__(self, *message: Part, field: str | None = None, value: Any = _UNSET, rule: str | None = None):
        self.parts: tuple[Part, ...] = tuple(message)
        # The setting at fault: the first Arg (of ``field`` when given; a hint such as "use
        # overwrite" later in the message is not the fault).
        at = next((i for i, part in enumerate(self.parts)
                   if isinstance(part, Arg) and field in (None, part.field)), None)
        named = self.parts[at] if at is not None else None
        self.field = field if field is not None else (named.field if named else None)
        self.value = value if value is not _UNSET else (named.value if named else None)
        after = _render(self.parts[at + 1:], ARGUMENTS) if at is not None else _render(self.parts, ARGUMENTS)
        self.rule = rule if rule is not None else after.lstrip(":; ").strip()
        super().__init__(self.render(ARGUMENTS))

    @classmethod
    def invalid(cls, field: str | Arg, value: Any, rule: str, shown: str | None = None) -> "Fault":
        """``FIELD RULE, got VALUE``: a value its setting does not allow.

        Args:
            field: the setting (a field name, or an ``Arg`` a caller's ``label`` made).
            value: the value given.
            rule: what the value must be, e.g. "must be at least 1".
            shown: how to show the value (default: ``str(value)``).
        """
        arg = field if isinstance(field, Arg) else Arg(field)
        return cls(arg, f" {rule}, got {value if shown is None else shown}", value=value, rule=rule)

    def render(self, naming: Naming) -> str:
        """The message in one audience's words (``options.naming.CLI_NAMES``, ``ARGUMENTS``)."""
        return _render(self.parts, naming)


def _render(parts: tuple[Part, ...], naming: Naming) -> str:
    return "".join(part if isinstance(part, str) else naming.spell(part) for part in parts)


def parts_of(exc: BaseException) -> tuple[Part, ...]:
    """``exc``'s message as parts, to carry into another error's message with its names intact."""
    return exc.parts if isinstance(exc, Fault) else (str(exc),)


class FeaturesError(Fault):
    """Base class of every error the features package raises on purpose."""

    exit_code = 2


class UnknownBackboneError(FeaturesError):
    """A backbone name that is not in the registry."""


class WeightsError(FeaturesError):
    """Weights that cannot be downloaded, found or loaded."""


class WeightsDownloadError(WeightsError):
    """ImageNet weights could not be downloaded (no network, a proxy, a firewall): exit 1."""

    exit_code = 1


class ImageSizeError(FeaturesError):
    """An image size the backbone cannot take."""


class StoreError(FeaturesError):
    """A feature cache that is missing, foreign, incomplete or of an unknown format version."""


class StoreConfigMismatch(StoreError):
    """An existing cache was written with a different configuration.

    Attributes:
        field: the first field that differs (dotted, e.g. "source.sha256"), when known.
        partial: the cache is an interrupted run's ``.partial`` file.
    """

    def __init__(self, *message: Part, field: str | None = None, partial: bool = False):
        super().__init__(*message, field=field)
        self.partial = partial


class StoreExistsError(StoreError):
    """A finished cache exists and ``overwrite`` was not given."""


class StoreInUseError(StoreError):
    """Another process holds the cache file open for writing.

    Exit code 75 (EX_TEMPFAIL), as a run directory another process writes: try again later.
    """

    exit_code = 75


class DiskFullError(StoreError):
    """The disk holding the cache has no room for the next batch; what is committed stays."""

    exit_code = 1


class NonFiniteFeaturesError(FeaturesError):
    """The backbone produced inf or NaN for an image (or float16 storage overflowed)."""

    exit_code = 1


class ShardError(StoreError):
    """Shard caches that do not form one complete set of one configuration, or cannot be indexed."""


class BadImagesError(FeaturesError):
    """More images were skipped than ``max_bad`` allows, or one was bad under ``strict``."""

    exit_code = 1


class TapError(FeaturesError):
    """A tap that does not name a cut of the backbone (``features/tap.py``).

    Attributes:
        field: the setting at fault ("tap"), so a caller can name its own flag or argument.
    """

    def __init__(self, *message: Part, field: str = "tap"):
        super().__init__(*message, field=field)


class ChainConfigError(FeaturesError):
    """A chain description (``features.chain_config.ChainConfig``: run.json's "chain", a model file's
    metadata, export.json) with a field missing or wrong.

    Attributes:
        field: the dotted field at fault ("backbone.weights"); "" for the whole entry.
        expected: what it should be, in words. found: what it was (None when missing).
    """

    def __init__(self, message: str, *, field: str, expected: str, found: Any):
        super().__init__(message, field=field or None, value=found, rule=f"should be {expected}")
        self.field, self.expected, self.found = field, expected, found
