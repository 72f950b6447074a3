"""``headstart run --config FILE``: one TOML (or JSON) file for every stage, flags on top.

A config file has the top-level keys ``source``, ``out`` and ``tensorboard`` and one section per
stage, each mapping onto its dataclass in ``headstart.pipeline.config``::

    source = "tfds:cats_vs_dogs"
    out = "runs/guide"

    [extract]        # ExtractConfig: backbone, weights, alpha, image_size, pooling, dtype, ...
    backbone = "mobilenet_v2"
    [head]           # HeadConfig: epochs, lr, batch_size, dropout, patience, seed, ...
    epochs = 20
    [finetune]       # FinetuneConfig: epochs, lr, batch_size, unfreeze, augment, patience, ...
    lr = 1e-5

Unknown sections or keys and values of the wrong type are refused with one line naming them.
Paths the runner sets itself (a stage's ``out``, ``features``, ``head``…) are refused too. Command-line
flags override the file; the resolved config is written into the run directory as ``config.toml`` and
``headstart run --config RUN_DIR/config.toml`` reproduces the run. No TensorFlow here: ``--help`` and
config errors stay fast.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from headstart.features.errors import Arg
from headstart.features.registry import WEIGHT_WORDS
from headstart.pipeline.config import (CLASS_WEIGHT_MODES, RunConfig, config_from_dict, config_to_dict,
                                      read_settings_file)
from headstart.pipeline.data.source_spec import parse_split_option
from headstart.pipeline.errors import OptionError
# The flags of ``headstart run`` and the sections they set live with every other option fact.
from headstart.pipeline.options.naming import CLI_NAMES
from headstart.pipeline.options.run_flags import RUN_OPTIONS
from headstart.pipeline.options.facts import SECTIONS, result_free

TOP_LEVEL: dict[str, type | tuple[type, ...]] = {"source": str, "out": str, "recipe": str, "budget": (int, float),
                                                 "tensorboard": bool, "diagnose": bool}
#: Keys of each section that ``headstart run`` sets itself (paths inside the run directory, resume).
RUNNER_SET: dict[str, tuple[str, ...]] = {
    "extract": ("source", "out", "overwrite", "shard"),
    "head": ("features", "out", "overwrite", "tensorboard"),  # tensorboard: RUN_DIR/tensorboard/ (top level)
    # finetune takes the backbone and the splits from the head run, i.e. from [extract].
    "finetune": ("source", "head", "out", "overwrite", "resume", "tensorboard", "head_epochs", "head_lr",
                 "head_batch_size",
                 "backbone", "weights", "alpha", "image_size", "pooling", "split_specs",
                 "path_column", "label_column", "images", "multi_label"),
}
#: (section, key) pairs that never change a result (the option table's ``shapes_result=False``): a
#: run directory may be rerun with other values.
NO_RESULT: frozenset[tuple[str, str]] = frozenset(
    {("top", "out")} | {(section, key) for section in (*SECTIONS, "top") for key in result_free(section)})


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a TOML (or ``.json``) run config.

    Returns:
        ``{"source"?, "out"?, "tensorboard"?, "extract": ExtractConfig-values, ...}``: top-level
        values and, per section, the typed values the file sets (absent keys are absent).

    Raises:
        OptionError: missing or unreadable file, bad syntax, unknown section or key, a key the
            runner sets, or a value of the wrong type; the message names the file and the key.
    """
    path = Path(path)
    raw = read_settings_file(path)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise OptionError(Arg("config", path), f": [{key}] must be a section of settings")
            out[key] = _check_section(key, value, f"--config {path} [{key}]")
        elif key == "sweep":
            from headstart.pipeline.sweep.space import check_run_sweep

            out[key] = check_run_sweep(value, f"--config {path} [sweep]")
        elif key in TOP_LEVEL:
            kind = TOP_LEVEL[key]
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind != bool):
                name = kind.__name__ if isinstance(kind, type) else "number"
                raise OptionError(Arg("config", path), f": key '{key}' must be of type {name}, got {value!r}")
            out[key] = value
        else:
            known = ", ".join([*TOP_LEVEL, *(f"[{s}]" for s in SECTIONS), "[sweep]"])
            raise OptionError(Arg("config", path), f": unknown key or section '{key}' (known: {known})")
    return out


def _check_section(section: str, values: dict[str, Any], origin: str) -> dict[str, Any]:
    import difflib

    cls = SECTIONS[section]
    settable = sorted(f.name for f in dataclasses.fields(cls) if f.name not in RUNNER_SET[section])
    for key in values:
        if key in RUNNER_SET[section]:
            raise OptionError(f"{origin}: key '{key}' is set by headstart run itself; remove it")
        if key not in settable:
            close = difflib.get_close_matches(key, settable, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise OptionError(f"{origin}: unknown key '{key}' ({hint}known: {', '.join(settable)})")
    typed = config_from_dict(cls, values, origin=origin)  # unknown keys, wrong types
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    checked = {key: getattr(typed, key) for key in values}
    for key, value in values.items():
        if getattr(cls(), key) is None and value is not None:
            checked[key] = _check_optional(value, types[key], f"{origin}: key '{key}'")
    return checked


def _check_optional(value: Any, annotation: str, where: str) -> Any:
    # config_from_dict cannot type-check fields whose default is None; their annotation can.
    wanted = annotation.split("|")[0].strip()
    ok = {"float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "str": isinstance(value, str)}.get(wanted, True)
    if not ok:
        raise OptionError(f"{where} must be of type {wanted}, got {value!r}")
    return float(value) if wanted == "float" else value


def resolve_run_config(source: str | None, out: str | None, *, file_values: dict[str, Any] | None = None,
                       flags: dict[str, Any] | None = None) -> RunConfig:
    """Merges defaults, a config file and command-line flags (in that order of precedence, last wins).

    Args:
        source: the SOURCE argument, or None to take the file's.
        out: ``--out``, or None to take the file's.
        file_values: ``read_config_file``'s result.
        flags: ``RunOption.dest`` → value; None (or an empty tuple) means "not given".

    Returns:
        The RunConfig; ``source`` is made absolute when it is an existing path, ``out`` always.

    Raises:
        OptionError: no SOURCE or no --out anywhere, or a --split value that does not parse.
    """
    file_values = dict(file_values or {})
    sections = {name: dict(file_values.get(name, {})) for name in SECTIONS}
    top = {k: file_values[k] for k in TOP_LEVEL if file_values.get(k) is not None}
    for option in RUN_OPTIONS:
        value = (flags or {}).get(option.dest)
        if value is None or (option.kind == "multi" and not value):
            continue
        if option.flag == "--split":
            value = parse_split_option(value)
        elif option.kind == "multi":
            value = tuple(value)
        for section, key in option.targets:
            (top if section == "top" else sections[section])[key] = value
    # What the file and the flags set, before anything is resolved: --recipe auto decides only the rest.
    explicit = tuple(sorted(f"{name}.{key}" for name, values in sections.items() for key in values)
                     + (["sweep"] if file_values.get("sweep") or (flags or {}).get("sweep") is not None else []))
    source = source or top.get("source")
    out = out or top.get("out")
    if not source:
        raise OptionError("SOURCE is required (as an argument, or source = \"...\" in ", Arg("config"), ")",
                          field="source")
    if not out:
        raise OptionError(Arg("out"), " is required (or out = \"...\" in ", Arg("config"), ")")
    if not source.startswith("tfds:") and os.path.exists(source):
        source = os.path.abspath(source)
    _absolute_paths(sections)
    sweep = dict(file_values.get("sweep", {}))
    if (flags or {}).get("sweep") is not None:
        from headstart.pipeline.sweep.space import check_run_sweep

        sweep = check_run_sweep({**sweep, "trials": flags["sweep"]}, "--sweep")
    budget = top.get("budget")
    return RunConfig(source=source, out=os.path.abspath(out), recipe=top.get("recipe", RunConfig.recipe),
                     budget=None if budget is None else float(budget),
                     tensorboard=bool(top.get("tensorboard", False)),
                     diagnose=bool(top.get("diagnose", False)), sweep=sweep, explicit=explicit,
                     **{name: cls(**sections[name]) for name, cls in SECTIONS.items()})


def _absolute_paths(sections: dict[str, dict[str, Any]]) -> None:
    """Files the sections name become absolute: config.toml and run.json name them wherever they are read."""
    weights = sections["extract"].get("weights")
    if weights not in (None, *WEIGHT_WORDS) and os.path.isfile(os.path.expanduser(weights)):
        sections["extract"]["weights"] = os.path.abspath(os.path.expanduser(weights))
    if sections["extract"].get("images"):
        sections["extract"]["images"] = os.path.abspath(os.path.expanduser(sections["extract"]["images"]))
    for section in ("head", "finetune"):
        if sections[section].get("exclude"):
            sections[section]["exclude"] = os.path.abspath(os.path.expanduser(sections[section]["exclude"]))
        weights_file = sections[section].get("class_weight")
        if weights_file not in (None, *CLASS_WEIGHT_MODES):  # a --class-weight FILE, likewise
            sections[section]["class_weight"] = os.path.abspath(os.path.expanduser(weights_file))


def run_config_dict(config: RunConfig) -> dict[str, Any]:
    """The config as a JSON-ready dict: top-level keys and one section per stage (runner keys left out)."""
    out: dict[str, Any] = {"source": config.source, "out": config.out, "recipe": config.recipe,
                           "budget": config.budget, "tensorboard": config.tensorboard,
                           "diagnose": config.diagnose, "sweep": dict(config.sweep)}
    if config.recipe == "auto":  # what the user set shapes what auto decides; under guide it does not
        out["explicit"] = list(config.explicit)
    for name in SECTIONS:
        values = config_to_dict(getattr(config, name))
        out[name] = {k: v for k, v in values.items() if k not in RUNNER_SET[name]}
    return out


def result_settings(values: dict[str, Any]) -> dict[str, Any]:
    """A ``run_config_dict``'s settings that shape results, flat and named as the file spells them:
    ``"source"``, then ``"[section] key ="`` (for a refusal: "[finetune] epochs = 4 there, 7 now")."""
    flat: dict[str, Any] = {"source": values.get("source"), "recipe": values.get("recipe", "auto")}
    if flat["recipe"] == "auto":
        flat.update({"budget": values.get("budget"), "set explicitly": values.get("explicit", [])})
    for section in SECTIONS:
        flat.update({f"[{section}] {name} =": value for name, value in sorted((values.get(section) or {}).items())
                     if (section, name) not in NO_RESULT})
    return flat


def run_label(section: str) -> Callable[[str], Arg]:
    """How ``headstart run`` names a field of ``section`` in an error: the dotted field ("head.lr"),
    which the CLI spells as the run flag that sets it ("--head-lr"), else as its ``--config`` key
    ("[head] weight_decay"), and Python as ``run_pipeline``'s field ("head.lr"; ``options.naming``)."""
    return lambda name: Arg(f"{section}.{name}")


#: How many differing options a refusal names before it counts the rest.
NAMED_DIFFERENCES = 4


def describe_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The options two ``result_settings`` differ in, in words, for the ``--out`` refusal; None if none.

    ``"--epochs 2 there, 3 now; --image-size 224 there, auto now"``: each option by the flag that
    sets it (else its ``--config`` key); under ``--recipe auto`` a value not given shows as ``auto``
    (auto decides it), not as the default the record holds nor as the list of given keys.
    """
    words = {"source": "SOURCE", "recipe": "--recipe", "budget": "--budget"}
    if recorded.get("recipe") != wanted.get("recipe"):  # every other setting means something else under each
        return f"--recipe {recorded.get('recipe')} there, {wanted.get('recipe')} now"
    given = [_given(recorded), _given(wanted)]
    parts, named = [], set()
    for key in dict.fromkeys([*wanted, *recorded]):
        if key == "set explicitly":
            continue
        section, _, name = key.strip("[").rstrip(" =").partition("] ")
        dotted = f"{section}.{name}" if name else key
        named.add(dotted)
        old, new = (_shown_value(values.get(key), dotted, g) for values, g in zip((recorded, wanted), given))
        if old != new:
            label = words.get(key) or (CLI_NAMES.spell(run_label(section)(name)) if name else key)
            parts.append(f"{label} {old} there, {new} now")
    if given[0] is not None and given[1] is not None:  # given keys with no value of their own (the sweep)
        for dotted in sorted((given[0] ^ given[1]) - named):
            parts.append(f"[{dotted}] {'given there, left to auto now' if dotted in given[0] else 'left to auto there, given now'}")
    if not parts:
        return None
    more = len(parts) - NAMED_DIFFERENCES
    return "; ".join(parts[:NAMED_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")


def _given(values: Mapping[str, Any]) -> set[str] | None:
    # Under auto, result_settings records which keys were given; None under guide (all are fixed).
    return set(values["set explicitly"] or ()) if "set explicitly" in values else None


def _shown_value(value: object, dotted: str, given: set[str] | None) -> str:
    if given is not None and "." in dotted and dotted not in given:
        return "auto"
    value = _norm(value)
    if value is None:
        return "unset"
    return (", ".join(map(str, value)) or "none") if isinstance(value, list) else str(value)


def stage_values(config: RunConfig, section: str) -> dict[str, Any]:
    """The values of one stage that shape its result (the key of stage reuse)."""
    values = run_config_dict(config)[section]
    return {k: _norm(v) for k, v in values.items() if (section, k) not in NO_RESULT}


def _norm(value: Any) -> Any:
    # Tuples (dataclasses) and lists (TOML, JSON) of the same items are the same setting.
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


def to_toml(config: RunConfig) -> str:
    """Writes the resolved config as TOML that ``read_config_file`` reads back to the same values.

    tomli_w writes the values: every Unicode path and label round-trips (a hand-made writer put
    JSON's surrogate-pair escapes, ``\\ud83d\\ude00``, into the file, which no TOML reader accepts).
    None values are left out (their default is None).

    Raises:
        OptionError: a value TOML cannot hold: a path that is not valid UTF-8 (read from a file
            system with another encoding).
    """
    import tomli_w

    data = run_config_dict(config)
    auto = config.recipe == "auto"
    document: dict[str, Any] = {key: _plain(data[key]) for key in TOP_LEVEL if data[key] is not None}
    for section in SECTIONS:
        document[section] = {k: _plain(v) for k, v in data[section].items()
                             if v is not None and (not auto or config.is_explicit(section, k))}
    if data["sweep"]:
        document["sweep"] = {k: _plain(v) for k, v in data["sweep"].items()}
    header = ["# The resolved configuration of this headstart run. Reproduce the run with",
              "#   headstart run --config config.toml            (flags override; --out for another directory)",
              *(["# recipe = \"auto\": only the settings given are written; auto chose the rest on validation",
                 "# (summary.json's \"recipe\" says what and why)."] if auto else []),
              ""]
    bad = _not_utf8(document)
    if bad:  # a file system's name in another encoding (surrogate escapes): no TOML can hold it
        key, value = bad
        shown = value.encode("utf-8", "backslashreplace").decode()
        raise OptionError(f"config.toml cannot hold a name that is not valid UTF-8 ({key} = {shown}); "
                          f"rename that file or folder")
    return "\n".join(header) + "\n" + tomli_w.dumps(document)


def _not_utf8(table: dict[str, Any], prefix: str = "") -> tuple[str, str] | None:
    """The first (dotted key, string) of ``table`` that UTF-8 cannot encode, or None."""
    for key, value in table.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, dict):
                found = _not_utf8(item, f"{prefix}{key}.")
                if found:
                    return found
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{prefix}{key}", item
    return None


def _plain(value: Any) -> Any:
    # Tuples (dataclasses) become lists; tomli_w writes lists, dicts, str, int, float, bool.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)):
        return value
    raise OptionError(f"cannot write {value!r} to TOML")
