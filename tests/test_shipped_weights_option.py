"""`--weights shipped` / `weights="shipped"`, and API errors that name Python arguments (issue 22, item 4)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import make_splits


def cli(*args):
    from headstart.pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_shipped_is_refused_in_one_line_for_a_backbone_nothing_ships_for(tmp_path):
    data = make_splits(tmp_path / "images", per_class=(3, 1, 1))
    for command in (["extract-features", data, "--out", tmp_path / "f.h5"],
                    ["run", data, "--out", tmp_path / "run"]):
        result = cli(*command, "--weights", "shipped", "--backbone", "mobilenet_v2", "--alpha", "0.5")
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            "Error: --weights shipped: the weights inside headstart are mobilenet_v2 alpha 0.35 (--backbone "
            "mobilenet_v2 --alpha 0.35), not mobilenet_v2 alpha 0.5; use --weights imagenet or a local .h5 file "
            "for other backbones")
    assert not (tmp_path / "run").exists() and not (tmp_path / "f.h5").exists()
    result = cli("extract-features", data, "--out", tmp_path / "f.h5", "--weights", "missing.h5")
    assert result.exit_code == 2 and "or use 'imagenet', 'none', 'shipped'" in result.output


def test_every_command_with_weights_says_it_takes_shipped():
    from headstart.pipeline.cli import main

    for name in ("extract-features", "finetune", "run", "demo", "export"):
        shown = CliRunner().invoke(main, [name, "--help"])
        text = " ".join(shown.output.split())
        assert "shipped" in text, name


def test_api_errors_name_python_arguments():
    from headstart.pipeline import ExtractConfig, HeadConfig, OptionError, extract_features, train_head
    from headstart.features.errors import WeightsError

    with pytest.raises(OptionError, match=r"^epochs must be 0 or more, got -1$"):
        train_head(HeadConfig(features="x.h5", out="o", epochs=-1))
    with pytest.raises(WeightsError, match=r"^weights: file nothing.h5 does not exist"):
        extract_features(ExtractConfig(source=".", out="f.h5", weights="nothing.h5"))
    with pytest.raises(WeightsError, match=r"^weights='shipped': the weights inside headstart are mobilenet_v2 "
                                           r"alpha 0.35 \(backbone='mobilenet_v2' alpha=0.35\), not xception; use "
                                           "weights='imagenet'"):
        extract_features(ExtractConfig(source=".", out="f.h5", weights="shipped"))  # xception by default


@pytest.mark.slow
def test_extract_features_with_shipped_weights_records_the_word(tmp_path):
    data = make_splits(tmp_path / "images", per_class=(3, 1, 1))
    result = cli("extract-features", data, "--out", tmp_path / "f.h5", "--backbone", "mobilenet_v2", "--alpha",
                 "0.35", "--image-size", "32", "--weights", "shipped", "--quiet")
    assert result.exit_code == 0, result.output
    info = cli("inspect", tmp_path / "f.h5", "--json")
    config = json.loads(info.stdout)["config"]
    # The word, not an installation's path: a rebuild finds the file wherever headstart is installed.
    assert config["weights"] == "shipped" and len(config["weights_fingerprint"]) == 64
