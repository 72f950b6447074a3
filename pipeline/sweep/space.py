"""The sweep's search space: its defaults, its ``[sweep]`` TOML section, and one trial's parameters.

A ``[sweep]`` section changes any part of the space; every key is optional::

    [sweep]
    lr = [1e-4, 3e-2]                 # a range (searched; log scale for lr and weight_decay) ...
    dropout = 0.2                     # ... or one number (fixed)
    weight_decay = [1e-5, 1.0]
    label_smoothing = [0.0, 0.2]
    batch_size = [32, 64, 128]        # choices (a list), or one value
    head_kind = ["linear", "hidden"]
    hidden_units = [64, 128, 256]     # only for head_kind "hidden"
    normalize = ["none", "l2", "standardize"]
    views = [true, false]             # only for caches with augmented views
    epochs = 30                       # most per trial, with early stopping; 0: no maximum, until early
                                      # stopping ends it (safety cap 1000) ...
    patience = 3                      # ... after this many epochs without a better --monitor value
    parallel = 16                     # trials asked of Optuna and trained together
    pruner = "median"                 # or "none": Optuna's MedianPruner on the per-epoch --monitor value

Anything else is refused with one line naming the file and the key. No TensorFlow or Optuna here:
the CLI validates a file before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError
from headstart.pipeline.config import HEAD_KINDS, NORMALIZATIONS, read_settings_file
from headstart.pipeline.training.head_params import TrialParams

PRUNERS = ("median", "none")
#: Float ranges searched on a log scale (their bounds must be positive).
LOG_SCALE = ("lr", "weight_decay")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges (lo, hi) and choices the sampler draws from; a range with lo == hi is fixed."""

    lr: tuple[float, float] = (1e-4, 3e-2)
    dropout: tuple[float, float] = (0.0, 0.6)
    weight_decay: tuple[float, float] = (1e-5, 1.0)
    label_smoothing: tuple[float, float] = (0.0, 0.2)
    batch_size: tuple[int, ...] = (32, 64, 128)
    head_kind: tuple[str, ...] = HEAD_KINDS
    hidden_units: tuple[int, ...] = (64, 128, 256)
    normalize: tuple[str, ...] = NORMALIZATIONS
    views: tuple[bool, ...] = (True, False)
    epochs: int = 30
    patience: int = 3
    parallel: int = 16
    pruner: str = "median"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists); ``space_from_dict`` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def with_values(self, **values: Any) -> "SearchSpace":
        """This space with some keys set, as a ``[sweep]`` table sets them (and checked the same way).

        A number fixes a range (``lr=1e-3`` is ``(1e-3, 1e-3)``), one value fixes a choice
        (``head_kind="linear"``); lists give ranges or choices; ``epochs``, ``patience`` … as in
        ``[sweep]``. A fixed value is never asked of the sampler, so a caller can search only what
        a user left open, e.g. ``SearchSpace(epochs=0).with_values(lr=config.lr)``.

        Raises:
            OptionError: as ``space_from_dict``, naming the key.
        """
        return space_from_dict({**self.to_dict(), **values}, origin="SearchSpace")


_RANGES = ("lr", "dropout", "weight_decay", "label_smoothing")
_CHOICES: dict[str, tuple[type, tuple | None]] = {
    "batch_size": (int, None), "head_kind": (str, HEAD_KINDS), "hidden_units": (int, None),
    "normalize": (str, NORMALIZATIONS), "views": (bool, (True, False)),
}
_INTS = {"epochs": 0, "patience": 0, "parallel": 1}  # key → smallest allowed value (epochs 0: no maximum)


def space_from_dict(values: dict[str, Any], *, origin: str = "[sweep]") -> SearchSpace:
    """Builds a SearchSpace from a ``[sweep]`` table, refusing anything it does not understand.

    Raises:
        OptionError: an unknown key, a value of the wrong type, an empty or reversed range, a bound
            outside the option's domain, or an unknown choice; the message names ``origin`` and the key.
    """
    known = [f.name for f in dataclasses.fields(SearchSpace)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{origin} {key}"
        if key not in known:
            raise OptionError(f"{origin}: unknown key '{key}' (known: {', '.join(known)})")
        if key in _RANGES:
            kwargs[key] = _range(value, key, where)
        elif key in _CHOICES:
            kwargs[key] = _choices(value, *_CHOICES[key], where)
        elif key in _INTS:
            if not isinstance(value, int) or isinstance(value, bool) or value < _INTS[key]:
                raise OptionError(f"{where} must be an integer of at least {_INTS[key]}, got {value!r}")
            kwargs[key] = value
        elif key == "pruner":
            if value not in PRUNERS:
                raise OptionError(f"{where} must be one of {', '.join(PRUNERS)}, got {value!r}")
            kwargs[key] = value
    return SearchSpace(**kwargs)


def check_run_sweep(values: Any, origin: str) -> dict[str, Any]:
    """Checks ``headstart run``'s ``[sweep]`` table: ``trials`` (0 or more) and the search space.

    Returns:
        The table as given. Raises OptionError like ``space_from_dict``.
    """
    if not isinstance(values, dict):
        raise OptionError(f"{origin} must be a section of settings")
    trials = values.get("trials", 0)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
        raise OptionError(f"{origin} trials must be an integer of at least 0, got {trials!r}")
    space_from_dict({k: v for k, v in values.items() if k != "trials"}, origin=origin)
    return dict(values)


def _range(value: Any, key: str, where: str) -> tuple[float, float]:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if number(value):
        lo = hi = float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(number(v) for v in value):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise OptionError(f"{where} must be a number or a range [low, high], got {value!r}")
    if lo > hi:
        raise OptionError(f"{where}: the range [{lo:g}, {hi:g}] is reversed")
    upper = {"dropout": 1.0, "label_smoothing": 1.0}.get(key)
    if key in LOG_SCALE and lo <= 0:
        raise OptionError(f"{where}: a log-scale range needs positive bounds, got [{lo:g}, {hi:g}]")
    if lo < 0 or (upper is not None and hi >= upper):
        raise OptionError(f"{where} must lie in [0, {upper or 'inf'}), got [{lo:g}, {hi:g}]")
    return lo, hi


def _choices(value: Any, kind: type, allowed: tuple | None, where: str) -> tuple:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise OptionError(f"{where}: the list of choices is empty")
    for v in values:
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
        if not ok or (allowed is not None and v not in allowed) or (kind is int and v < 1):
            expected = f"one of {', '.join(map(str, allowed))}" if allowed else f"a positive {kind.__name__}"
            raise OptionError(f"{where}: choice {v!r} is not {expected}")
    return tuple(dict.fromkeys(values))  # drop repeats, keep order


def read_space_file(path: str | Path) -> SearchSpace:
    """Reads the ``[sweep]`` section of a TOML (or ``.json``) file; other sections are ignored.

    Raises:
        OptionError: missing or unreadable file, bad syntax, or a bad ``[sweep]`` section.
    """
    path = Path(path)
    section = read_settings_file(path).get("sweep", {})
    if not isinstance(section, dict):
        raise OptionError(Arg("config", str(path)), ": [sweep] must be a section of settings")
    return space_from_dict(section, origin=f"--config {path} [sweep]")


def suggest_params(trial: Any, space: SearchSpace, caches: dict[str, bool]) -> TrialParams:
    """Draws one trial's parameters from an Optuna trial (define-by-run).

    Args:
        trial: an ``optuna.Trial`` from ``study.ask()``; a rerun trial returns its fixed values.
        space: the search space.
        caches: cache name → whether it has augmented views, in command-line order.

    Returns:
        The TrialParams. Fixed ranges and single choices are not asked of the sampler; conditional
        parameters (hidden_units, views) are asked only where they apply.
    """
    def pick(name: str, options: tuple) -> Any:
        return options[0] if len(options) == 1 else trial.suggest_categorical(name, list(options))

    def draw(name: str) -> float:
        lo, hi = getattr(space, name)
        return lo if lo == hi else trial.suggest_float(name, lo, hi, log=name in LOG_SCALE)

    cache = pick("cache", tuple(caches))
    kind = pick("head_kind", space.head_kind)
    return TrialParams(
        cache=cache, lr=draw("lr"), dropout=draw("dropout"), weight_decay=draw("weight_decay"),
        label_smoothing=draw("label_smoothing"), batch_size=int(pick("batch_size", space.batch_size)),
        head_kind=kind, hidden_units=int(pick("hidden_units", space.hidden_units)) if kind == "hidden" else None,
        normalize=pick("normalize", space.normalize),
        views=bool(pick("views", space.views)) if caches[cache] else False,
    )


def params_from_record(record: dict[str, Any]) -> TrialParams:
    """TrialParams from its JSON record (``dataclasses.asdict``), e.g. a trial's user attribute."""
    return TrialParams(**{f.name: record.get(f.name) for f in dataclasses.fields(TrialParams)})


__all__ = ["SearchSpace", "TrialParams", "params_from_record", "read_space_file", "space_from_dict",
           "suggest_params"]
