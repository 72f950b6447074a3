"""The benchmarks call the library as it is: every keyword they pass to a function they import from
headstart is one of its parameters. Benchmarks run rarely and no other test runs them, so a renamed
parameter (``log=`` became ``reporter=``) would otherwise break them silently until the next measurement."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _imported(tree: ast.AST) -> dict[str, tuple[str, str]]:
    """Local name → (module, attribute) for every ``from headstart… import name [as local]``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headstart"):
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
    return names


def _bad_keywords(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = _imported(tree)
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names):
            continue
        module, attr = names[node.func.id]
        target = getattr(importlib.import_module(module), attr)
        if not callable(target):
            continue
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        bad += [f"{path.name}:{node.lineno} {attr}({kw.arg}=…)" for kw in node.keywords
                if kw.arg is not None and kw.arg not in params]
    return bad


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_passes_only_keywords_the_library_takes(path):
    assert _bad_keywords(path) == []
