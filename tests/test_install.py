"""The installed package: only the ``headstart`` namespace, every subpackage shipped, a version.

Run from an empty temporary directory, so a checkout's own ``pipeline/`` and ``features/`` folders
cannot be picked up from the working directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("bare", ["pipeline", "features"])
def test_the_bare_names_are_not_installed(tmp_path, bare):
    out = _python(f"import {bare}", tmp_path)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, out.stderr or out.stdout
    assert _python(f"import headstart.{bare}", tmp_path).returncode == 0


def test_headstart_version_prints_the_installed_version(tmp_path):
    script = shutil.which("headstart") or str(Path(sys.executable).with_name("headstart"))
    out = subprocess.run([script, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert metadata.version("headstart") in out.stdout and "headstart" in out.stdout.lower()


def test_every_subpackage_is_listed_for_the_wheel():
    # package-dir lists packages explicitly; a subpackage missing here works in an editable
    # install and is silently absent from a wheel.
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {"headstart." + ".".join(p.parent.relative_to(REPO).parts)
             for top in ("pipeline", "features") for p in (REPO / top).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
