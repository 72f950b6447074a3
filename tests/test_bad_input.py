"""Every user-facing error is one clear line and exit code 2, and no previous result is touched.

Each case runs the real CLI against a workspace holding a finished-looking run directory (`prev/`,
made with other options), a folder of images and a few broken inputs; the SHA-256 of every file in
the workspace, and the set of paths, must be the same afterwards. Domain errors must be exactly one
line; click's own usage errors (a bad number, an unknown choice) print click's usage lines and one
`Error:` line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_class_folders
from headstart.pipeline.cli import main

#: (id, args with {ws} for the workspace, expected text of the error line, "domain" | "usage")
CASES = [
    # headstart run: paths
    ("run-missing-source", "run {ws}/nothing --out {ws}/new", "nothing: no such directory", "domain"),
    ("run-source-is-file", "run {ws}/notes.txt --out {ws}/new", "notes.txt: not a directory", "domain"),
    ("run-no-source", "run --out {ws}/new", "SOURCE is required", "domain"),
    ("run-no-out", "run {ws}/images", "--out is required", "domain"),
    ("run-out-is-file", "run {ws}/images --out {ws}/notes.txt", "is a file", "domain"),
    ("run-out-foreign", "run {ws}/images --out {ws}/images", "holds no headstart run", "domain"),
    ("run-other-config", "run {ws}/images --out {ws}/prev --epochs 7",
     "(--epochs 4 there, 7 now)", "domain"),
    ("run-other-source", "run {ws}/images2 --out {ws}/prev", "holds a run with another configuration", "domain"),
    ("run-one-class", "run {ws}/oneclass --out {ws}/new", "a classifier needs 2 or more", "domain"),
    ("run-unlabelled", "run {ws}/loose --out {ws}/new", "no class folders (its 2 file(s) are not in a class folder, so "
     "they have no labels); put the images in one folder per class (DIR/<class>/<image>), or give a .csv/.jsonl "
     "label file", "domain"),
    # headstart run: option values
    ("run-bad-int", "run {ws}/images --out {ws}/new --image-size big", "'big' is not a valid integer", "usage"),
    ("run-bad-choice", "run {ws}/images --out {ws}/new --pooling mean", "'mean' is not one of", "usage"),
    ("run-zero-epochs", "run {ws}/images --out {ws}/new --epochs 0", "--epochs must be at least 1", "domain"),
    ("run-zero-head-batch", "run {ws}/images --out {ws}/new --head-batch-size 0", "--head-batch-size must be at least 1",
     "domain"),
    ("run-zero-extract-batch", "run {ws}/images --out {ws}/new --extract-batch-size 0",
     "--extract-batch-size must be at least 1", "domain"),
    ("run-negative-lr", "run {ws}/images --out {ws}/new --head-lr -1", "--head-lr must be a positive number", "domain"),
    ("run-dropout", "run {ws}/images --out {ws}/new --dropout 1.5", "--dropout must be in [0, 1)", "domain"),
    ("run-unfreeze", "run {ws}/images --out {ws}/new --unfreeze top:x", "--unfreeze top:N", "domain"),
    ("run-augment", "run {ws}/images --out {ws}/new --augment wobble", "wobble", "domain"),
    ("run-backbone", "run {ws}/images --out {ws}/new --backbone vgg99", "vgg99", "domain"),
    ("run-alpha", "run {ws}/images --out {ws}/new --alpha 0.5", "--alpha applies only to", "domain"),
    ("run-image-size", "run {ws}/images --out {ws}/new --image-size 8", "8", "domain"),
    ("run-weights", "run {ws}/images --out {ws}/new --weights {ws}/missing.h5", "missing.h5 does not exist", "domain"),
    ("run-fractions", "run {ws}/images --out {ws}/new --validation-fraction 1.5",
     "--validation-fraction must be in [0, 1)", "domain"),
    ("run-split-on-dir", "run {ws}/images --out {ws}/new --split train=train[:50%]",
     "--split applies to tfds: sources only", "domain"),
    ("run-split-syntax", "run {ws}/images --out {ws}/new --split train", "--split must be NAME=SPEC", "domain"),
    # headstart run --config
    ("config-missing", "run --config {ws}/nothing.toml", "nothing.toml: no such file", "domain"),
    ("config-syntax", "run --config {ws}/syntax.toml", "not valid TOML", "domain"),
    ("config-unknown-key", "run --config {ws}/unknown_key.toml", "unknown key 'epoch'", "domain"),
    ("config-unknown-section", "run --config {ws}/unknown_section.toml", "unknown key or section 'trainhead'",
     "domain"),
    ("config-wrong-type", "run --config {ws}/wrong_type.toml", "key 'epochs' must be of type int", "domain"),
    ("config-wrong-optional-type", "run --config {ws}/wrong_alpha.toml", "key 'alpha' must be of type float", "domain"),
    ("config-runner-key", "run --config {ws}/runner_key.toml", "key 'features' is set by headstart run", "domain"),
    ("config-json-type", "run --config {ws}/bad.json", "key 'tensorboard' must be of type bool", "domain"),
    # headstart demo
    ("demo-data-missing", "demo --out {ws}/newdemo --data {ws}/nothing", "nothing: no such directory", "domain"),
    ("demo-too-few-images", "demo --out {ws}/newdemo --images-per-class 1",
     "--images-per-class must be at least 3", "domain"),
    ("demo-weights-missing", "demo --out {ws}/newdemo --weights {ws}/missing.h5", "missing.h5 does not exist",
     "domain"),
    ("demo-out-is-file", "demo --out {ws}/notes.txt", "is a file", "domain"),
    ("demo-zero-epochs", "demo --out {ws}/newdemo --epochs 0", "--epochs must be at least 1", "domain"),
    # the other commands
    ("extract-missing-source", "extract-features {ws}/nothing --out {ws}/f.h5", "nothing: no such directory", "domain"),
    ("extract-out-is-dir", "extract-features {ws}/images --out {ws}/prev", "is a directory", "usage"),
    ("extract-batch-size", "extract-features {ws}/images --out {ws}/f.h5 --batch-size 0",
     "--batch-size must be at least 1", "domain"),
    ("train-head-missing", "train-head {ws}/nothing.h5 --out {ws}/newhead",
     "nothing.h5: no such file; write the cache first with `headstart extract-features SOURCE --out ", "domain"),
    ("train-head-not-hdf5", "train-head {ws}/notes.txt --out {ws}/newhead", "notes.txt", "domain"),
    ("train-head-epochs", "train-head {ws}/prev/features.h5 --out {ws}/newhead --epochs -1",
     "--epochs must be 0 or more", "domain"),  # 0: until early stopping
    ("finetune-head-missing", "finetune {ws}/images --head {ws}/nothing --out {ws}/newft", "nothing", "domain"),
    ("finetune-head-foreign", "finetune {ws}/images --head {ws}/images --out {ws}/newft", "images", "domain"),
    ("finetune-zero-epochs", "finetune {ws}/images --out {ws}/newft --epochs 0", "--epochs must be at least 1",
     "domain"),
    ("finetune-out-not-empty", "finetune {ws}/images --out {ws}/prev", "is not empty and holds no finetune run",
     "domain"),
    ("evaluate-missing-model", "evaluate {ws}/nothing.keras {ws}/images", "nothing.keras", "domain"),
    ("evaluate-not-a-model", "evaluate {ws}/notes.txt {ws}/images", "notes.txt", "domain"),
    ("predict-missing-model", "predict {ws}/nothing.keras {ws}/images", "nothing.keras", "domain"),
    ("inspect-missing", "inspect {ws}/nothing", "nothing: no such file or directory", "domain"),
    ("inspect-foreign-dir", "inspect {ws}/images", "not a headstart run directory", "domain"),
    ("inspect-not-hdf5", "inspect {ws}/notes.txt", "notes.txt", "domain"),
    ("report-missing", "report {ws}/nothing", "nothing: no such directory", "domain"),
    ("report-not-a-run", "report {ws}/images", "not a finished `headstart run` directory (no summary.json)",
     "domain"),
    ("finetune-calibrate", "finetune {ws}/images --out {ws}/newft --calibrate platt", "'platt' is not one of",
     "usage"),
    # option ranges from the option table, for flags and TOML alike, before TensorFlow starts
    ("run-seed-negative", "run {ws}/images --out {ws}/new --seed -1",
     "--seed must be in [0, 4294967295] (a 32-bit seed), got -1", "domain"),
    ("run-seed-too-big", "run {ws}/images --out {ws}/new --seed 4294967296", "--seed must be in [0, 4294967295]",
     "domain"),
    ("config-seed", "run --config {ws}/seed.toml", "--seed must be in [0, 4294967295]", "domain"),
    ("run-image-size-huge", "run {ws}/images --out {ws}/new --image-size 100000",
     "--image-size must be at most 2048, got 100000", "domain"),
    ("extract-image-size-huge", "extract-features {ws}/images --out {ws}/f.h5 --image-size 100000",
     "--image-size must be at most 2048", "domain"),
    ("extract-seed", "extract-features {ws}/images --out {ws}/f.h5 --seed -1", "--seed must be in", "domain"),
    ("train-head-hidden-units", "train-head {ws}/prev/features.h5 --out {ws}/newhead --hidden-units 100000000",
     "--hidden-units must be at most 65536, got 100000000", "domain"),
    ("train-head-seed", "train-head {ws}/prev/features.h5 --out {ws}/newhead --seed -1", "--seed must be in",
     "domain"),
    ("finetune-seed", "finetune {ws}/images --out {ws}/newft --seed 4294967296", "--seed must be in", "domain"),
    ("finetune-image-size", "finetune {ws}/images --out {ws}/newft --image-size 100000",
     "--image-size must be at most 2048", "domain"),
    ("sweep-seed", "sweep {ws}/prev/features.h5 --out {ws}/newsweep --seed -1", "--seed must be in", "domain"),
    ("diagnose-seed", "diagnose {ws}/prev/features.h5 --out {ws}/newdiag --seed -1", "--seed must be in", "domain"),
    ("demo-seed", "demo --out {ws}/newdemo --seed -1", "--seed must be in", "domain"),
    # a damaged run directory is reported as damaged, naming the file and the field
    ("finetune-damaged-names", "finetune {ws}/images --head {ws}/damaged_names --out {ws}/newft",
     "damaged_names/run.json is damaged: 'class_names' should be a list of class names, not 5", "domain"),
    ("finetune-damaged-head", "finetune {ws}/images --head {ws}/damaged_head --out {ws}/newft",
     "damaged_head/run.json is damaged: 'head' should be a table of the head's settings, not null", "domain"),
    ("inspect-damaged-names", "inspect {ws}/damaged_names", "run.json is damaged: 'class_names'", "domain"),
    ("inspect-damaged-head", "inspect {ws}/damaged_head", "run.json is damaged: 'head'", "domain"),
]

CONFIGS = {
    "syntax.toml": "[head\nepochs = 3\n",
    "unknown_key.toml": "source = \"{ws}/images\"\nout = \"{ws}/new\"\n[head]\nepoch = 3\n",
    "unknown_section.toml": "source = \"{ws}/images\"\nout = \"{ws}/new\"\n[trainhead]\nepochs = 3\n",
    "wrong_type.toml": "source = \"{ws}/images\"\nout = \"{ws}/new\"\n[finetune]\nepochs = \"ten\"\n",
    "wrong_alpha.toml": "source = \"{ws}/images\"\nout = \"{ws}/new\"\n[extract]\nalpha = \"wide\"\n",
    "runner_key.toml": "source = \"{ws}/images\"\nout = \"{ws}/new\"\n[head]\nfeatures = \"x.h5\"\n",
    "bad.json": "{{\"source\": \"{ws}/images\", \"out\": \"{ws}/new\", \"tensorboard\": \"yes\"}}",
    "seed.toml": "source = \"{ws}/images\"\nout = \"{ws}/new\"\n[finetune]\nseed = -1\n",
}
#: A train-head run.json as far as the damaged cases need it.
HEAD_RUN = {"kind": "head", "class_names": ["cats", "dogs"], "task": "single_label", "head": {"dropout": 0.2},
            "cache": {"path": "features.h5", "config": {"backbone": "mobilenet", "weights": "none", "alpha": 0.25,
                                                       "image_size": 32, "pooling": "avg",
                                                       "weights_fingerprint": "0" * 64}}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Images, broken inputs and `prev/`: a run directory written with --epochs 4."""
    from headstart.pipeline.run.toml_config import resolve_run_config, to_toml

    ws = tmp_path_factory.mktemp("bad_input")
    make_class_folders(ws / "images", per_class=4)
    make_class_folders(ws / "images2", per_class=4, seed=1)
    make_class_folders(ws / "oneclass", classes=("cats",), per_class=3)
    (ws / "loose").mkdir()
    for image in sorted((ws / "images" / "cats").iterdir())[:2]:  # images with no class folder: no labels
        (ws / "loose" / image.name).write_bytes(image.read_bytes())
    (ws / "notes.txt").write_text("not an image, not HDF5, not a model\n")
    prev = ws / "prev"
    (prev / "head").mkdir(parents=True)
    (prev / "config.toml").write_text(to_toml(resolve_run_config(str(ws / "images"), str(prev), flags={"epochs": 4})))
    for name, content in (("features.h5", b"cache bytes"), ("head/run.json", b"{}"), ("summary.json", b"{}")):
        (prev / name).write_bytes(content)
    for name, text in CONFIGS.items():
        (ws / name).write_text(text.format(ws=ws))
    for name, damage in (("damaged_names", {"class_names": 5}), ("damaged_head", {"head": None})):
        (ws / name).mkdir()
        (ws / name / "run.json").write_text(json.dumps({**HEAD_RUN, **damage}))
        (ws / name / "head.keras").write_bytes(b"a head")
    return ws


def snapshot(root: Path) -> dict[str, str | None]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,args,expected,kind", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(workspace, name, args, expected, kind):
    argv = [a.format(ws=workspace) for a in args.split()]
    assert argv[0] in main.commands, f"no '{argv[0]}' command"
    before = snapshot(workspace)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert expected in errors[0], result.output
    assert "Traceback" not in result.output
    if kind == "domain":
        assert lines == errors, f"expected one line, got:\n{result.output}"
    assert snapshot(workspace) == before, "a refused command changed or created files"


@pytest.mark.parametrize("args", [
    ["train-head", "f.h5", "--out", "r", "--epochs", "abc"],
    ["extract-features", "src", "--out", "f.h5", "--pooling", "median"],
    ["finetune", "src", "--out", "r", "--no-such-option"],
    ["no-such-command"],
])
def test_click_usage_errors_are_one_line_too(args):
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
