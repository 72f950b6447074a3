"""`headstart --help` and every `headstart CMD --help` answer without importing TensorFlow."""

import subprocess
import sys

import pytest

from headstart.pipeline.cli import main

PROBE = """
import sys
from click.testing import CliRunner
from headstart.pipeline.cli import main
args = sys.argv[1:]
result = CliRunner().invoke(main, args)
assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("tensorflow", "keras", "h5py", "tensorflow_datasets") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("command", [None, *sorted(main.commands)])
def test_help_does_not_import_tensorflow(command):
    args = ["--help"] if command is None else [command, "--help"]
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY:\n" in out.stdout, f"{args} imported {out.stdout.strip()}"


def test_every_command_has_help_text():
    for name, command in main.commands.items():
        assert command.help and len(command.help.strip()) > 20, name
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts} has no help"
