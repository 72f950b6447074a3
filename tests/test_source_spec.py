"""One source spec: one TF-free parser of --split for every command, one frozen object that reads
back from what caches and runs recorded before it existed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from headstart.pipeline.cli import main
from headstart.pipeline.config import ExtractConfig, config_to_dict
from headstart.pipeline.data.source_spec import SourceSpec, parse_split_option
from headstart.pipeline.errors import OptionError


def _one_error_line(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


@pytest.mark.parametrize("value", ["a b=train", "train", "train=", "=train[:10%]"])
def test_run_and_extract_features_refuse_the_same_split_values(tmp_path, value):
    # `headstart run` had its own parser that accepted "a b=train"; now both use parse_split_option.
    extract = _one_error_line(["extract-features", "tfds:cats_vs_dogs", "--out", str(tmp_path / "f.h5"),
                               "--split", value])
    run = _one_error_line(["run", "tfds:cats_vs_dogs", "--out", str(tmp_path / "run"), "--split", value])
    assert extract == run and value in run
    assert not list(tmp_path.iterdir())


def test_split_names_in_a_config_file_follow_the_same_rules(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('source = "tfds:cats_vs_dogs"\n[extract]\nsplit_specs = { "a b" = "train" }\n')
    line = _one_error_line(["run", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert "split name 'a b'" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


def test_the_parser_needs_no_tensorflow():
    code = ("import sys; from headstart.pipeline.data.source_spec import parse_split_option, SourceSpec; "
            "SourceSpec('tfds:x', parse_split_option(['train=train[:5%]'])); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_spec_is_frozen_ordered_and_checked():
    spec = SourceSpec("tfds:cats_vs_dogs", {"train": "train[:10%]", "validation": "train[10%:20%]"})
    assert spec.is_tfds and list(spec.splits) == ["train", "validation"]
    assert spec == SourceSpec("tfds:cats_vs_dogs", (("train", "train[:10%]"), ("validation", "train[10%:20%]")))
    assert hash(spec) == hash(SourceSpec("tfds:cats_vs_dogs", spec.split_specs))
    with pytest.raises(AttributeError):
        spec.source = "elsewhere"  # type: ignore[misc]
    with pytest.raises(OptionError, match="validation_fraction plus test_fraction"):
        SourceSpec("imgs", validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(OptionError, match="test_fraction must be in"):
        SourceSpec("imgs", test_fraction=-0.1)
    assert parse_split_option(["a=x", " b = y "]) == {"a": "x", "b": "y"}


def test_spec_reads_back_from_a_cache_written_before_it_existed():
    # Caches record config_to_dict(ExtractConfig) as provenance.command_config; the spec takes its
    # fields from there under the same names, and from defaults where an older record lacks them.
    config = ExtractConfig(source="/data/imgs", out="f.h5", validation_fraction=0.2, test_fraction=0.05)
    recorded = config_to_dict(config)
    assert SourceSpec.from_record(recorded) == SourceSpec.from_config(config)
    assert SourceSpec.from_record(recorded).to_dict() == {k: recorded[k] for k in (
        "source", "split_specs", "validation_fraction", "test_fraction")}
    old = {"source": "/data/imgs", "split_specs": None}
    assert SourceSpec.from_record(old) == SourceSpec("/data/imgs")
    renamed = SourceSpec.from_record(recorded, source="/moved/imgs")
    assert renamed.source == "/moved/imgs" and renamed.validation_fraction == 0.2
