"""Quiet, fast, one-line failures: no TensorFlow start-up lines on stderr (unless --verbose), checks
that need no TensorFlow run before it is imported, and `headstart --version`. Every check runs the
CLI in a fresh subprocess: the start-up lines and the import happen once per process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_class_folders

TF_LINE = re.compile(r"^(?:[IWEF]\d{4} |WARNING: All log messages before absl)", re.M)


def headstart(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_a_mistyped_source_path_prints_one_line_and_exits_2(tmp_path):
    out = headstart("extract-features", tmp_path / "photoz", "--out", tmp_path / "f.h5")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert "photoz" in out.stderr and "no such directory" in out.stderr
    assert out.stdout == ""


# Each command with a mistyped path, option value, TOML key or occupied run directory, run in one
# process: none of them may import TensorFlow before refusing.
PROBE = """
import sys
from click.testing import CliRunner
from headstart.pipeline.cli import main
ws = sys.argv[1]
cases = [
    ["extract-features", ws + "/photoz", "--out", ws + "/f.h5"],
    ["extract-features", ws + "/images", "--out", ws + "/f.h5", "--validation-fraction", "1.5"],
    ["train-head", ws + "/nope.h5", "--out", ws + "/head"],
    ["train-head", ws + "/f.h5", "--out", ws + "/head", "--epochs", "0"],
    ["finetune", ws + "/photoz", "--out", ws + "/ft"],
    ["finetune", ws + "/images", "--head", ws + "/nohead", "--out", ws + "/ft"],
    ["finetune", ws + "/images", "--out", ws + "/ft", "--unfreeze", "top:x"],
    ["finetune", ws + "/images", "--out", ws + "/occupied"],
    ["run", ws + "/photoz", "--out", ws + "/run"],
    ["run", "--config", ws + "/bad.toml"],
    ["run", ws + "/images", "--out", ws + "/occupied"],
    ["run", ws + "/oneclass", "--out", ws + "/run"],      # issue 27: these waited ~20 s for TensorFlow
    ["run", ws + "/loose", "--out", ws + "/run"],
    ["extract-features", ws + "/oneclass", "--out", ws + "/f.h5"],
    ["split", ws + "/oneclass", "--out", ws + "/split"],
    ["evaluate", ws + "/nope.keras", ws + "/images"],
    ["predict", ws + "/nope.keras", ws + "/a.jpg"],
    ["demo", "--data", ws + "/photoz"],
    ["sweep", ws + "/nope.h5", "--out", ws + "/sweep"],
    ["diagnose", ws + "/nope.h5", "--out", ws + "/diagnosis"],
    ["extract-features", ws + "/images", "--out", ws + "/f.h5", "--backbone", "resnet5O"],
    ["extract-features", ws + "/images", "--out", ws + "/f.h5", "--weights", "shipped"],
    ["export", ws + "/nope", "--out", ws + "/exp", "--format", "onnx"],
    ["export", ws + "/occupied", "--out", ws + "/exp", "--format", "onnx"],
    ["export", ws + "/occupied", "--out", ws + "/exp", "--format", "onnx", "--quantize", "int8"],
]
for args in cases:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (args, result.exit_code, result.output)
    assert result.output.strip().count("\\n") == 0, (args, result.output)
    heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
    assert not heavy, (args, "imported", heavy)
print("OK")
"""


def test_checks_that_need_no_tensorflow_run_before_it_is_imported(tmp_path):
    make_class_folders(tmp_path / "images", per_class=2)
    make_class_folders(tmp_path / "oneclass", classes=("cats",), per_class=2)
    for image in (tmp_path / "oneclass" / "cats").iterdir():
        (tmp_path / "loose").mkdir(exist_ok=True)
        (tmp_path / "loose" / image.name).write_bytes(image.read_bytes())
    (tmp_path / "bad.toml").write_text('source = "x"\nout = "y"\n[head]\nepoch = 3\n')
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def not_a_model(tmp_path: Path) -> Path:
    import zipfile

    # A whole zip archive (the truncation check before TensorFlow passes it) that Keras cannot load.
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "not a model")
    return path


@pytest.mark.slow
def test_an_error_after_tensorflow_started_is_still_one_line(tmp_path):
    make_class_folders(tmp_path / "images", per_class=2)
    out = headstart("evaluate", not_a_model(tmp_path), tmp_path / "images")  # loading imports TensorFlow
    assert out.returncode == 2
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "cannot load as a Keras model" in out.stderr


@pytest.mark.slow
def test_verbose_shows_tensorflow_start_up_lines_and_our_warnings_stay(tmp_path):
    make_class_folders(tmp_path / "images", per_class=2)
    verbose = headstart("--verbose", "evaluate", not_a_model(tmp_path), tmp_path / "images")
    assert verbose.returncode == 2
    assert TF_LINE.search(verbose.stderr), verbose.stderr  # TF 2.21 always writes some (oneDNN, CPU features)
    assert verbose.stderr.strip().splitlines()[-1].startswith("Error: ")
    # A warning written while TensorFlow is imported is ours to show, not TensorFlow's to hide.
    probe = ("import warnings, sys\n"
             "from headstart.pipeline.startup import quiet_tensorflow_startup\n"
             "quiet_tensorflow_startup()\n"
             "sys.stderr.write('before\\n')\n"
             "import tensorflow as tf\n"
             "warnings.warn('ours after the import')\n"
             "print(int(tf.constant(2) * 3))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "6", out.stderr
    assert not TF_LINE.search(out.stderr), out.stderr
    assert "before" in out.stderr and "ours after the import" in out.stderr


def test_version():
    from headstart.pipeline import __version__

    out = headstart("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(__version__) and "headstart" in out.stdout


def test_tensorflow_python_logger_warnings_are_quiet_unless_verbose():
    """The quiet start-up also silences TensorFlow's Python logger (tf.function retracing notes), which
    ``--verbose`` (no hook) leaves at TensorFlow's own level."""
    probe = """
import logging, sys
from headstart.pipeline.startup import quiet_tensorflow_startup
if sys.argv[1] == "quiet":
    quiet_tensorflow_startup()
import tensorflow as tf
print(tf.get_logger().getEffectiveLevel())
"""
    levels = {mode: subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                   timeout=300).stdout.strip() for mode in ("quiet", "verbose")}
    assert levels["quiet"] == "40", levels  # logging.ERROR
    assert int(levels["verbose"]) < 40, levels
