"""Structured errors (issue 29): a domain error carries (field, value, rule) and names settings by field;
the CLI boundary renders flags, the Python API arguments, and features/ spells no flag."""

import ast
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import assert_one_line_error

FEATURES = Path(__file__).resolve().parents[1] / "features"
#: A command-line flag as the CLI spells it: "--weights", not "x--y" nor a bare "--".
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def cli(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_fault_carries_field_value_and_rule_and_renders_for_each_audience():
    from headstart.features.errors import Arg, WeightsError
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.options.naming import ARGUMENT_NAMES, CLI_NAMES

    exc = OptionError.invalid("epochs", 0, "must be at least 1")
    assert (exc.field, exc.value, exc.rule) == ("epochs", 0, "must be at least 1")
    assert exc.render(CLI_NAMES) == "--epochs must be at least 1, got 0"
    assert exc.render(ARGUMENT_NAMES) == str(exc) == "epochs must be at least 1, got 0"
    # A field whose flag is not --field-name, a placeholder, a value, a switch turned off, a run field.
    exc = WeightsError("pass ", Arg("weights", placeholder="PATH"), " or ", Arg("split_specs", "a=b"), "; ",
                       Arg("views", negated=True), "; ", Arg("head.epochs"), " or ", Arg("head.weight_decay"))
    assert exc.field == "weights" and exc.value is None
    assert exc.render(CLI_NAMES) == "pass --weights PATH or --split a=b; --no-views; --head-epochs or [head] weight_decay"
    assert exc.render(ARGUMENT_NAMES) == ("pass weights=PATH or split_specs='a=b'; views=False; head.epochs or "
                                          "head.weight_decay")
    # A path reads as the string a caller passes, a float as the command line writes it.
    exc = OptionError(Arg("out", Path("/runs/a")), ": taken; ", Arg("alpha", 1.0))
    assert (exc.render(CLI_NAMES), str(exc)) == ("--out /runs/a: taken; --alpha 1", "out='/runs/a': taken; alpha=1.0")


def test_a_features_error_names_the_flag_via_the_cli_and_the_argument_via_python(tmp_path):
    from headstart.features.errors import WeightsError
    from headstart.pipeline import ExtractConfig, extract_features

    with pytest.raises(WeightsError) as err:
        extract_features(ExtractConfig(source=str(tmp_path), out=str(tmp_path / "f.h5"), weights="nothing.h5"))
    assert str(err.value) == "weights: file nothing.h5 does not exist (or use 'imagenet', 'none', 'shipped')"
    assert (err.value.field, err.value.value) == ("weights", "nothing.h5")
    result = cli("extract-features", tmp_path, "--out", tmp_path / "f.h5", "--weights", "nothing.h5")
    assert assert_one_line_error(result, 2) == \
        "Error: --weights: file nothing.h5 does not exist (or use 'imagenet', 'none', 'shipped')"


def test_a_pipeline_error_names_the_flag_via_the_cli_and_the_argument_via_python(tmp_path):
    from headstart.pipeline import ExtractConfig, HeadConfig, OptionError, extract_features, train_head

    with pytest.raises(OptionError) as err:
        extract_features(ExtractConfig(source=str(tmp_path), out=str(tmp_path / "f.h5"), weights="none", shard="2"))
    assert str(err.value) == "shard '2': expected I/N, e.g. 0/4 for the first of 4 workers"
    assert (err.value.field, err.value.value) == ("shard", "2")
    result = cli("extract-features", tmp_path, "--out", tmp_path / "f.h5", "--weights", "none", "--shard", "2")
    assert assert_one_line_error(result, 2) == "Error: --shard '2': expected I/N, e.g. 0/4 for the first of 4 workers"
    # A range from the option table: its flag on the command line, its argument in Python.
    with pytest.raises(OptionError, match=r"^epochs must be 0 or more, got -1$") as err:
        train_head(HeadConfig(features="x.h5", out="o", epochs=-1))
    assert (err.value.field, err.value.value, err.value.rule) == ("epochs", -1, "must be 0 or more")
    result = cli("train-head", tmp_path / "x.h5", "--out", tmp_path / "o", "--epochs", "-1")
    assert assert_one_line_error(result, 2) == "Error: --epochs must be 0 or more, got -1"


def test_a_range_check_names_the_run_flag_or_the_run_field():
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.options.checks import check_value
    from headstart.pipeline.options.naming import ARGUMENT_NAMES, CLI_NAMES
    from headstart.pipeline.run.toml_config import run_label

    with pytest.raises(OptionError) as err:
        check_value("head", "epochs", -1, label=run_label("head")("epochs"))
    assert err.value.render(CLI_NAMES) == "--head-epochs must be 0 or more, got -1"
    assert err.value.render(ARGUMENT_NAMES) == "head.epochs must be 0 or more, got -1"


def _message_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a module but its docstrings (those may say which flag a function serves)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    # format_backbone_table: the `headstart backbones` listing (not an error); its footer names flags.
    listing = {id(n) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
               and node.name == "format_backbone_table" for n in ast.walk(node)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and id(node) not in listing]


def test_features_spells_no_command_line_flag():
    spelled = [f"{path.name}:{line}: {text!r}" for path in sorted(FEATURES.glob("*.py"))
               for line, text in _message_strings(path) if FLAG.search(text)]
    assert not spelled, "features/ names settings by field (Arg), never by flag:\n" + "\n".join(spelled)
