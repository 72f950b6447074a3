"""The source spec: what a SOURCE argument and its split options mean, checked once, TF-free.

A ``SourceSpec`` is the SOURCE (``tfds:NAME``, a folder, or a ``.csv``/``.jsonl`` label file) plus
the options that choose its splits: ``--split NAME=SPEC`` overrides (TFDS sources) and the
validation and test fractions (a source without splits), and those that say how a label file is
read (``--path-column``, ``--label-column``, ``--images``, ``--multi-label``). It is built once (from ``--split`` strings with ``parse_split_option``, from a
stage config with ``from_config``, or from what a cache or run recorded with ``from_record``),
frozen, and passed whole to ``headstart.pipeline.data.sources.open_source``.

It records itself with the keys the stage configs have always used (``source``, ``split_specs``,
``validation_fraction``, ``test_fraction``, and the label-file keys only when set): a cache's
``provenance.command_config`` and a finetune ``run.json["source"]`` hold exactly those, so what
earlier versions wrote reads back unchanged and compares equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from headstart.pipeline.config import ExtractConfig
from headstart.pipeline.data.label_file import is_label_file
from headstart.features.regular_file import not_regular_reason
from headstart.features.errors import Arg
from headstart.pipeline.errors import DataError, OptionError

_SPLIT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_EXAMPLE = "train=train[:80%]"


def parse_split_option(values: Iterable[str]) -> dict[str, str]:
    """Parses repeated ``--split NAME=SPEC`` values (the one parser of the option).

    Args:
        values: e.g. ("train=train[:80%]", "validation=train[80%:]").

    Returns:
        {name: spec} in the given order.

    Raises:
        OptionError: a value without "=", an empty or odd name, an empty spec, or a name twice.
    """
    specs: dict[str, str] = {}
    for value in values:
        name, sep, spec = str(value).partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise OptionError(Arg("split_specs"), f" must be NAME=SPEC, got '{value}' (expected NAME=SPEC, e.g. {_EXAMPLE})",
                          value=value, rule="must be NAME=SPEC")
        _check_split_name(name, value)
        if name in specs:
            raise OptionError(Arg("split_specs"), f" '{value}': split '{name}' is given twice", value=value)
        specs[name] = spec
    return specs


def _check_split_name(name: str, value: str) -> None:
    if not _SPLIT_NAME.match(name):
        raise OptionError(Arg("split_specs"), f" '{value}': split name '{name}' must be letters, digits, '_', '-' or '.'",
                          value=value)


_KINDS = "a folder of class folders, a .csv/.jsonl label file, or tfds:NAME"


def check_source_path(source: str) -> Path | None:
    """Checks that a folder SOURCE is a directory, a label-file SOURCE a file (``tfds:NAME`` passes
    unchecked), so a mistyped path fails before TensorFlow starts.

    Returns:
        The folder or label file (user-expanded), or None for a TFDS source.

    Raises:
        DataError: a missing path, a label file that is not a file, any other file.
    """
    if source.startswith("tfds:"):
        return None
    path = Path(source).expanduser()
    if is_label_file(source):
        if not path.is_file():
            what = not_regular_reason(path) if path.exists() else None
            raise DataError(f"{source}: {what or 'no such label file'} (give {_KINDS})")
        return path
    if not path.exists():
        raise DataError(f"{source}: no such directory (give {_KINDS})")
    if not path.is_dir():
        raise DataError(f"{source}: not a directory (give {_KINDS})")
    return path


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Checks the held-out shares of a single class-folder tree.

    Raises:
        OptionError: a fraction outside [0, 1), or both together leaving no training data.
    """
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise OptionError.invalid(name, value, "must be in [0, 1)")
    if validation_fraction + test_fraction >= 1.0:
        raise OptionError(Arg("validation_fraction"), " plus ", Arg("test_fraction"), " must leave some training data")


@dataclass(frozen=True)
class SourceSpec:
    """A SOURCE and the options that choose its splits; checked when built.

    Attributes:
        source: ``tfds:NAME`` (NAME may carry a config/version), a directory, or a ``.csv`` /
            ``.jsonl`` label file.
        split_specs: ``--split`` overrides as ((name, TFDS split spec), …) in the given order; a
            mapping is accepted and kept in its order.
        validation_fraction: share held out for validation when the source has no splits.
        test_fraction: share held out for testing when the source has no splits.
        path_column, label_column: ``--path-column`` / ``--label-column`` of a label file.
        images: ``--images DIR``: the folder a label file's relative paths and bare ids resolve in.
        multi_label: ``--multi-label``: read a label file's label column as label sets.

    Raises:
        OptionError: a split name that ``--split`` would refuse, an empty spec, fractions out
            of range (``check_fractions``), or a label-file option with another kind of SOURCE.
    """

    source: str
    split_specs: tuple[tuple[str, str], ...] = ()
    validation_fraction: float = ExtractConfig.validation_fraction
    test_fraction: float = ExtractConfig.test_fraction
    path_column: str | None = None
    label_column: str | None = None
    images: str | None = None
    multi_label: bool = False

    def __post_init__(self) -> None:
        pairs = tuple((self.split_specs or {}).items()) if isinstance(self.split_specs, Mapping) \
            else tuple(tuple(p) for p in self.split_specs)
        # A mapping from a TOML file never went through parse_split_option; hold it to the same rules.
        parse_split_option(f"{name}={spec}" for name, spec in pairs)
        object.__setattr__(self, "split_specs", tuple((str(n).strip(), str(s).strip()) for n, s in pairs))
        object.__setattr__(self, "validation_fraction", float(self.validation_fraction))
        object.__setattr__(self, "test_fraction", float(self.test_fraction))
        check_fractions(self.validation_fraction, self.test_fraction)
        object.__setattr__(self, "multi_label", bool(self.multi_label))
        for name in _LABEL_FILE_KEYS:
            value = getattr(self, name)
            if value not in (None, False) and not self.is_label_file:
                raise OptionError(Arg(name), " applies to label-file sources (.csv, .jsonl) only; "
                                  f"{self.source} is not one", value=value)

    @property
    def is_tfds(self) -> bool:
        """Whether SOURCE names a TFDS dataset (else it is a directory or a label file)."""
        return self.source.startswith("tfds:")

    @property
    def is_label_file(self) -> bool:
        """Whether SOURCE names a ``.csv`` / ``.jsonl`` label file."""
        return not self.is_tfds and is_label_file(self.source)

    @property
    def splits(self) -> dict[str, str]:
        """The ``--split`` overrides as {name: spec}."""
        return dict(self.split_specs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the keys the stage configs use: source, split_specs, the fractions, and
        the label-file keys only where set (so a folder's record is what it always was)."""
        label_keys = {k: getattr(self, k) for k in _LABEL_FILE_KEYS if getattr(self, k) not in (None, False)}
        return {"source": self.source, "split_specs": self.splits,
                "validation_fraction": self.validation_fraction, "test_fraction": self.test_fraction,
                **label_keys}

    @classmethod
    def from_config(cls, config: ExtractConfig, *, source: str | None = None) -> SourceSpec:
        """The spec of a stage config (``ExtractConfig``; others lack the fractions: defaults).

        Args:
            config: a config with ``source`` and ``split_specs`` (and the fractions, if any).
            source: SOURCE, when the config's own is not set (``headstart run`` keeps it top level).
        """
        return cls(source or config.source, getattr(config, "split_specs", None) or (),
                   getattr(config, "validation_fraction", cls.validation_fraction),
                   getattr(config, "test_fraction", cls.test_fraction),
                   **{k: getattr(config, k, getattr(cls, k)) for k in _LABEL_FILE_KEYS})

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None, *, source: str | None = None,
                    split_specs: Mapping[str, str] | None = None,
                    label_options: Mapping[str, Any] | None = None) -> SourceSpec:
        """Reads a spec back from what a cache (``provenance.command_config``) or run recorded.

        Keys missing from an older record take their defaults. ``source`` and non-empty
        ``split_specs`` replace the recorded ones (the same source, named again by the user), and
        so do the label-file options in ``label_options`` that are set (not None, not False).
        """
        record = {k: v for k, v in (record or {}).items() if v is not None}
        given = {k: v for k, v in (label_options or {}).items() if k in _LABEL_FILE_KEYS and v not in (None, False)}
        return cls(source if source is not None else str(record.get("source", "")),
                   split_specs or record.get("split_specs") or (),
                   record.get("validation_fraction", cls.validation_fraction),
                   record.get("test_fraction", cls.test_fraction),
                   **{k: given.get(k, record.get(k, getattr(cls, k))) for k in _LABEL_FILE_KEYS})


#: The fields only a label-file SOURCE takes; recorded only when set.
_LABEL_FILE_KEYS = ("path_column", "label_column", "images", "multi_label")
