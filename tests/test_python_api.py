"""The Python API: `from headstart.pipeline import extract_features, train_head, finetune, evaluate, …`
loads lazily, names the functions the CLI calls, and the README's "From Python" example runs (the site's
Python API page, docs/api.md, shows the same example and documents every name)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_class_folders

README = Path(__file__).resolve().parents[1] / "README.md"
API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_api_name_resolves_to_the_function_the_cli_calls():
    import headstart.pipeline as api
    from headstart.pipeline.config import FinetuneConfig, HeadConfig
    from headstart.pipeline.commands.evaluation import evaluate_model
    from headstart.pipeline.finetuning.finetuning import finetune
    from headstart.pipeline.commands.head_training import train_head

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    # The API's functions are the CLI's, wrapped so that their errors name Python arguments.
    assert api.train_head.__wrapped__ is train_head and api.finetune.__wrapped__ is finetune
    assert api.evaluate.__wrapped__ is evaluate_model
    assert api.HeadConfig is HeadConfig and api.FinetuneConfig is FinetuneConfig
    assert {"extract_features", "train_head", "finetune", "evaluate", "predict", "run_pipeline"} <= set(dir(api))
    with pytest.raises(AttributeError, match="no attribute 'trian_head'"):
        api.trian_head  # noqa: B018


def test_importing_the_api_does_not_start_tensorflow():
    probe = ("import sys\n"
             "from headstart.pipeline import (ExtractConfig, HeadConfig, FinetuneConfig, extract_features, train_head,\n"
             "                                finetune, evaluate, predict, run_pipeline, OptionError)\n"
             "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def readme_python_example(page: Path = README) -> str:
    section = page.read_text(encoding="utf-8").split("## From Python", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    return block


def test_the_api_page_shows_the_readme_example():
    """docs/api.md's example is the README's, so the run below checks both."""
    assert readme_python_example(API_PAGE) == readme_python_example(README)


def test_the_api_page_documents_every_public_name():
    """Every name `headstart.pipeline` exports has an entry on docs/api.md that points at the object the
    name stands for (the functions: the stage function the API wraps), and no entry points elsewhere."""
    import headstart.pipeline as api
    from headstart.pipeline.api import FUNCTIONS

    def target(name: str) -> str:
        module, _, attribute = api._API[name].partition(":")
        if module == "headstart.pipeline.api":
            module, attribute = FUNCTIONS[name]
        return f"{module.removeprefix('headstart.')}.{attribute}"

    # The page names the source modules from the repository root (mkdocs.yml: paths ["."]).
    entries = set(re.findall(r"^::: ([\w.]+)$", API_PAGE.read_text(encoding="utf-8"), flags=re.M))
    assert entries == {target(name) for name in api.__all__}


@pytest.mark.slow
def test_the_readme_example_runs_offline_as_written(tmp_path):
    """The README's Python example, extracted and run as it is on a photos/ folder split into
    train/validation/test, with no network and an empty Keras cache: weights="shipped" needs neither."""
    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(tmp_path / "photos" / split, per_class=n, seed=seed)
    (tmp_path / "keras").mkdir()
    (tmp_path / "example.py").write_text(readme_python_example(), encoding="utf-8")
    # Offline: any connection fails at once (a proxy on a closed port, and no name resolves).
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "sitecustomize.py").write_text(
        "import socket\n"
        "def _offline(*args, **kwargs):\n"
        "    raise socket.gaierror(-3, 'Temporary failure in name resolution')\n"
        "socket.getaddrinfo = _offline\n", encoding="utf-8")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "PYTHONPATH": str(tmp_path / "offline")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has: the API keeps TensorFlow quiet itself
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "16 training images cached with mobilenet_v2" in text
    assert re.search(r"head: test accuracy [01]\.\d{3} \(best epoch \d+\)", text), text
    assert re.search(r"fine-tuned: test accuracy [01]\.\d{3} \[\[", text), text
    assert "photos/test" in text
    assert "refused: epochs must be 0 or more, got -1" in text  # the Python argument, not --epochs
    assert (tmp_path / "runs" / "tuned" / "model.keras").is_file()
    models = tmp_path / "keras" / "models"
    assert not models.exists() or not any(models.iterdir())  # nothing was downloaded into Keras' cache
    # TensorFlow's start-up lines (absl, CUDA, oneDNN) are not shown to API users.
    for noise in ("absl::InitializeLog", "cuda", "oneDNN", "cpu_feature_guard"):
        assert noise not in out.stderr, out.stderr[-3000:]


def test_no_module_of_the_package_shadows_an_api_name():
    """Importing a submodule sets it as an attribute of its package: a ``pipeline/finetune/`` package
    would replace the API's ``headstart.pipeline.finetune`` function with a module once anything
    imported it (the concept's package is ``finetuning/`` for that reason)."""
    import pkgutil

    import headstart.pipeline as api

    modules = {m.name for m in pkgutil.iter_modules(api.__path__)}
    assert not modules & set(api.__all__), modules & set(api.__all__)
