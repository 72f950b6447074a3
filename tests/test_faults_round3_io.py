"""Faults and bad input, round three (issue 28, items 5-10 and the exit-code rule): hangs on named
pipes, config files that cannot be read back, full disks, deep nesting, unbounded numbers, small
tracebacks. Items 1-4 and 11 (SavedModel loading, folder keys, concurrent sweeps, diagnose) are
tested beside their own code.

Every fault as the issue describes it, what it did before issue 28 and what it does now. A process
that could hang runs in a subprocess with a timeout, so a hang fails the test instead of stalling
it. Full and read-only disks are real: a small tmpfs mounted for the test (root can mount here;
the tests skip where mounting is refused).

| # | fault | before | now | test |
|---|---|---|---|---|
| 5 | FIFO as the cache: train-head, inspect, sweep, merge-features, diagnose | hung for ever | one line "not a regular file (a named pipe)", exit 2 | a_fifo_as_the_cache… |
| 5 | FIFO as --exclude: train-head, finetune, run | hung (run: after extracting, in the stage key) | refused before any work, exit 2 | a_fifo_as_exclude… |
| 6 | `data/emo😀` (and combining, right-to-left) in config.toml | `\\ud83d\\ude00`: invalid TOML, no resume | written as is by tomli_w, read back equal | non_bmp_combining_and_rtl… |
| 6 | a name that is not UTF-8 | (invalid TOML) | one line naming it | a_name_that_is_not_utf8… |
| 7 | disk full during export | ResourceExhaustedError traceback, `.saved_model.tmp/` left | "cannot write …/saved_model: No space left on device", exit 1, no temporary, export.json not complete | export_on_a_full_disk… |
| 7 | disk full during sweep | three tracebacks, StorageInternalError | one line naming study.db, exit 1; the same command resumes once there is space | sweep_on_a_full_disk… |
| 8 | 1,000 levels in --config TOML/JSON, --class-weight JSON, run.json | RecursionError traceback | "refused before parsing: nested deeper than 100 levels", exit 2 | deep_nesting_is_refused… |
| 8 | 1,000 levels in one JSONL label line | RecursionError traceback | that row skipped with the reason; the others read | a_deep_jsonl_line… |
| 9 | predict --batch-size 0 / -3; evaluate --batch-size 0, --grid-size 0 | InvalidArgumentError traceback | "--batch-size must be at least 1, got 0", exit 2, before TensorFlow | numbers_out_of_range… |
| 9 | a numeric option without a range | batch sizes unbounded above | every numeric option has a range; batch sizes 1..65536 | every_numeric_option_is_bounded |
| 9 | --tensorboard on a read-only path | PermissionDeniedError traceback | "--tensorboard DIR: cannot write there (Read-only file system)", exit 1, before any work | tensorboard_on_a_read_only… |
| 10 | --exclude CSV with a byte-order mark | "no 'key' column (columns: \\ufeffkey)" | read like a label file | an_exclude_csv_with_a_bom… |
| 10 | truncated model.keras | "File not found" | "not a complete .keras file (truncated …)" | a_truncated_model_keras… |
| 10 | finetune on a full disk | "No space left on device" (no file), a half-written epoch filling backup/ | names the file and what stays backed up; no partial epoch | finetune_on_a_full_disk… |
| 10 | exit codes for machine problems | 2 in train-head/diagnose/sweep/extract-features, 1 elsewhere | 2 input, 1 machine, 75 busy, 130/143 signals, as docs/troubleshooting.md says | the_exit_code_rule… |
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_cache, make_class_folders, subprocess_env
from headstart.pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
FIFO_REASON = "not a regular file (a named pipe)"
EXTRACT = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", "none", "--batch-size", "4"]


def _invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def _one_line_error(output: str, code: int, actual: int, *names: str) -> str:
    """Exit ``code``, no traceback, exactly one "Error: …" line holding every one of ``names``."""
    assert actual == code, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    for name in names:
        assert name in errors[0], output
    return errors[0]


def _headstart(args: list, tmp: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """``headstart ARGS`` in a fresh interpreter; a hang fails the test after ``timeout`` seconds."""
    try:
        return subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", *map(str, args)], capture_output=True,
                              text=True, env=subprocess_env(tmp / "tmp"), cwd=tmp, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"headstart {' '.join(map(str, args))} still running after {timeout} s")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "c.h5")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, *, read_only: bool = False):
    """A real small file system at ``path`` (tmpfs); skips the test where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Fills ``disk`` up to ``leave`` bytes free."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


# -- 5. a named pipe as the cache or as --exclude ---------------------------------------------------

FIFO_CACHE = {
    "train-head": ["train-head", "{fifo}", "--out", "out"],
    "inspect": ["inspect", "{fifo}"],
    "sweep": ["sweep", "{fifo}", "--out", "out", "--trials", "1"],
    "merge-features": ["merge-features", "merged.h5", "{fifo}", "{cache}"],
    "diagnose": ["diagnose", "{fifo}", "--out", "out"],
}


@pytest.mark.parametrize("command", list(FIFO_CACHE))
def test_a_fifo_as_the_cache_is_refused_without_waiting(tmp_path, cache, command):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    args = [a.format(fifo=fifo, cache=cache) for a in FIFO_CACHE[command]]
    done = _headstart(args, tmp_path)
    _one_line_error(done.stderr, 2, done.returncode, str(fifo), FIFO_REASON)
    assert not (tmp_path / "out").exists() and not (tmp_path / "merged.h5").exists()


FIFO_EXCLUDE = {
    "train-head": ["train-head", "{cache}", "--out", "out"],
    "finetune": ["finetune", "{images}", "--head", "{images}", "--out", "out"],
    "run": ["run", "{images}", "--out", "out", *EXTRACT],
}


@pytest.mark.parametrize("command", list(FIFO_EXCLUDE))
def test_a_fifo_as_exclude_is_refused_before_any_work(tmp_path, cache, command):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    images = make_class_folders(tmp_path / "images", per_class=3)
    args = [a.format(cache=cache, images=images) for a in FIFO_EXCLUDE[command]] + ["--exclude", fifo]
    done = _headstart(args, tmp_path)
    _one_line_error(done.stderr, 2, done.returncode, "--exclude", str(fifo.name), FIFO_REASON)
    assert not (tmp_path / "out").exists()  # run used to extract the features first, then hang


# -- 6. config.toml round-trips every path ----------------------------------------------------------

NAMES = {"non-BMP": "emo😀", "combining": "cafe\u0301", "right-to-left": "שלום", "Arabic": "بيانات"}


@pytest.mark.parametrize("kind", list(NAMES))
def test_non_bmp_combining_and_rtl_paths_round_trip_through_config_toml(tmp_path, kind):
    import tomllib

    from headstart.pipeline.run.toml_config import read_config_file, resolve_run_config, to_toml

    name = NAMES[kind]
    source = make_class_folders(tmp_path / f"data/{name}", classes=(f"cats {name}", "dogs"), per_class=2)
    flags = {"label_column": f"label {name}", "images": str(tmp_path / f"images {name}"), "epochs": 3}
    config = resolve_run_config(str(source), str(tmp_path / f"runs/{name}"), flags=flags)
    text = to_toml(config)
    assert name in text and "\\ud83d" not in text  # before: JSON escapes, surrogate pairs no TOML reader takes
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    assert tomllib.loads(text)["source"] == str(source)
    again = resolve_run_config(None, None, file_values=read_config_file(tmp_path / "config.toml"))
    assert (again.source, again.out) == (config.source, config.out)
    assert again.extract.label_column == f"label {name}" and again.extract.images == flags["images"]
    assert again.finetune.epochs == 3 and to_toml(again) == text  # reproduced exactly


def test_a_name_that_is_not_utf8_is_one_line_not_a_broken_file(tmp_path):
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.run.toml_config import resolve_run_config, to_toml

    config = resolve_run_config(os.fsdecode(b"data/caf\xe9"), str(tmp_path / "run"))
    with pytest.raises(OptionError) as raised:
        to_toml(config)
    assert str(raised.value) == ("config.toml cannot hold a name that is not valid UTF-8 (source = data/caf\\udce9); "
                                 "rename that file or folder")


# -- 7. full disks during export and sweep -----------------------------------------------------------


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory) -> Path:
    """A model.keras (MobileNet 0.25, 32 px, random weights) without a run directory around it."""
    import keras

    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.store.files import save_model_atomic

    folder = tmp_path_factory.mktemp("bare_model")
    keras.utils.set_random_seed(0)
    base, pre, pool, _ = build_backbone_parts("mobilenet", weights="none", image_size=32, alpha=0.25)
    save_model_atomic(build_chain(base, pre, pool, head=build_head((256,), 2)), folder / "model.keras")
    return folder / "model.keras"


@pytest.mark.slow
def test_export_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, bare_model):
    images = make_class_folders(tmp_path / "images", per_class=3)
    with _tmpfs(tmp_path / "disk", "700k") as disk:  # the SavedModel needs about 1.3 MB
        result = _invoke(["export", bare_model, "--out", disk / "export", "--format", "saved_model",
                          "--source", images])
        _one_line_error(result.output, 1, result.exit_code, str(disk / "export" / "saved_model"),
                        "No space left on device")
        left = [p.name for p in (disk / "export").rglob("*")]
        assert not [n for n in left if ".tmp" in n] and "saved_model" not in left, left
        record = disk / "export" / "export.json"
        assert not record.exists() or json.loads(record.read_text())["complete"] is False


@pytest.mark.slow
def test_sweep_on_a_full_disk_is_one_line_and_resumes_once_there_is_space(tmp_path, cache):
    with _tmpfs(tmp_path / "disk", "700k") as disk:
        _fill(disk, 400_000)  # the study opens; its trials fill the disk
        done = _headstart(["sweep", cache, "--out", disk / "sweep", "--trials", 200], tmp_path, timeout=300)
        _one_line_error(done.stderr, 1, done.returncode, str(disk / "sweep" / "study.db"), "database or disk is full")
        assert not (disk / "sweep" / "leaderboard.csv").exists() and not (disk / "sweep" / "best").exists()
        (disk / "filler").unlink()  # and room for the WAL that filled the rest:
        assert subprocess.run(["mount", "-o", "remount,size=20m", str(disk)]).returncode == 0
        # The trials the full disk left RUNNING are failed after the heartbeat's grace and asked again.
        again = _headstart(["sweep", cache, "--out", disk / "sweep", "--trials", 3], tmp_path, timeout=300)
        assert again.returncode == 0, again.stderr
        assert (disk / "sweep" / "leaderboard.csv").is_file() and (disk / "sweep" / "best" / "run.json").is_file()


# -- 8. nesting depth bounded before parsing ---------------------------------------------------------

DEEP = "[" * 1000 + "]" * 1000


def _deep_files(tmp: Path) -> dict[str, Path]:
    (tmp / "deep.toml").write_text(f"x = {DEEP}\n")
    (tmp / "deep.json").write_text(f'{{"x": {DEEP}}}')
    (tmp / "run" / "head").mkdir(parents=True)
    (tmp / "run" / "head" / "run.json").write_text(f'{{"kind": {DEEP}}}')
    return {"toml": tmp / "deep.toml", "json": tmp / "deep.json", "run.json": tmp / "run" / "head" / "run.json"}


DEEP_ROWS = {
    "run --config TOML": (["run", "--config", "{toml}"], "{toml}"),
    "run --config JSON": (["run", "--config", "{json}"], "{json}"),
    "sweep --config TOML": (["sweep", "{cache}", "--out", "{tmp}/s", "--config", "{toml}"], "{toml}"),
    "train-head --class-weight JSON": (["train-head", "{cache}", "--out", "{tmp}/h", "--class-weight", "{json}"],
                                       "{json}"),
    "inspect a run.json": (["inspect", "{tmp}/run/head"], "{runjson}"),
}


@pytest.mark.parametrize("row", list(DEEP_ROWS))
def test_deep_nesting_is_refused_before_parsing_in_one_line(tmp_path, cache, row):
    files = _deep_files(tmp_path)
    values = {"toml": files["toml"], "json": files["json"], "runjson": files["run.json"], "cache": cache,
              "tmp": tmp_path}
    args, named = DEEP_ROWS[row]
    result = _invoke([a.format(**values) for a in args])
    _one_line_error(result.output, 2, result.exit_code, named.format(**values), "nested deeper than 100 levels")


def test_a_deep_jsonl_line_is_one_unusable_row_and_the_others_are_read(tmp_path):
    from headstart.pipeline.data.label_file import read_label_file

    images = make_class_folders(tmp_path, per_class=2)
    lines = [json.dumps({"path": str(p.resolve()), "label": p.parent.name}) for p in sorted(images.rglob("*.jpg"))]
    lines.insert(1, f'{{"path": "x.jpg", "label": {DEEP}}}')
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    table = read_label_file(tmp_path / "labels.jsonl", spec="labels.jsonl")
    assert [(bad.key, bad.reason) for bad in table.bad] == [
        ("labels.jsonl line 2", "refused before parsing: nested deeper than 100 levels")]
    assert len(table.rows) == 4


def test_bounded_parse_limits_depth_and_size_but_not_brackets_in_strings():
    from headstart.features.bounded_parse import MAX_DEPTH, ParseLimitError, check_document, loads_json, loads_toml

    assert loads_json('{"a": "' + "[" * 5000 + '"}')["a"] == "[" * 5000  # brackets inside a string nest nothing
    assert loads_toml("a = '" + "{" * 500 + "'  # " + "[" * 500 + "\n")["a"] == "{" * 500
    assert loads_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(ParseLimitError, match="nested deeper than 100"):
        loads_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(ParseLimitError, match="over the limit of 0.0 MB"):
        check_document("[]" * 100, max_bytes=10)


# -- 9. numbers out of range; --tensorboard on a read-only path ---------------------------------------


def test_numbers_out_of_range_are_one_line_before_tensorflow(tmp_path):
    images = make_class_folders(tmp_path / "images", per_class=2)
    model = tmp_path / "model.keras"
    model.write_bytes(b"not reached")
    for args, flag, value in ((["predict", model, images, "--batch-size", "0"], "--batch-size", "0"),
                              (["predict", model, images, "--batch-size", "-3"], "--batch-size", "-3"),
                              (["evaluate", model, images, "--batch-size", "0"], "--batch-size", "0"),
                              (["evaluate", model, images, "--grid-size", "0"], "--grid-size", "0"),
                              (["predict", model, images, "--batch-size", "100000"], "--batch-size", "100000")):
        result = _invoke(args)
        line = _one_line_error(result.output, 2, result.exit_code, flag, f"got {value}")
        assert "must be at" in line


def test_every_numeric_option_is_bounded_in_the_options_table():
    import click

    from headstart.pipeline.options.facts import FACTS, field_kind, flag_of
    from headstart.pipeline.options.run_flags import RUN_OPTIONS

    numeric = {(s, n) for s, fields in FACTS.items() for n in fields if field_kind(s, n) in ("int", "float")}
    unbounded = {(s, n) for s, n in numeric if FACTS[s][n].bounds is None and n != "alpha"}
    assert not unbounded  # alpha: each backbone's own widths (features.registry) say which are valid
    for s, n in numeric:
        if "batch_size" in n:
            assert FACTS[s][n].bounds.problem(0) and FACTS[s][n].bounds.problem(2**16 + 1), (s, n)
    flags = {flag_of(s, n) for s, n in numeric} | {"--sweep"}  # run's --sweep N: checked with [sweep] trials
    # headstart run's own flags (--extract-batch-size, …) set the same fields, so the same ranges check them.
    flags |= {option.flag for option in RUN_OPTIONS if set(option.targets) & numeric}
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types.IntParamType,
                                                                             click.types.FloatParamType)):
                assert set(param.opts) & flags, f"{name} {param.opts}: a number no range checks"


def test_tensorboard_on_a_read_only_path_is_refused_before_any_work(tmp_path, cache):
    with _tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        for args in (["train-head", cache, "--out", tmp_path / "head", "--epochs", "1"],
                     ["sweep", cache, "--out", tmp_path / "sweep", "--trials", "1"]):
            result = _invoke([*args, "--tensorboard", ro / "tb"])
            _one_line_error(result.output, 1, result.exit_code, f"--tensorboard {ro / 'tb'}",
                            "cannot write there (Read-only file system)")
        assert not (tmp_path / "head").exists() and not (tmp_path / "sweep").exists()


# -- 10. smaller: a BOM in --exclude, a truncated model.keras, finetune on a full disk ----------------


def test_an_exclude_csv_with_a_bom_is_read_like_a_label_file(tmp_path):
    from headstart.pipeline.data.exclusion import read_exclude_keys

    # What a spreadsheet saves as "CSV UTF-8": a byte-order mark before the header.
    (tmp_path / "drop.csv").write_bytes("\ufeffkey,note\ncats/a.jpg,blurry\ndogs/b.jpg,\n".encode("utf-8"))
    assert read_exclude_keys(str(tmp_path / "drop.csv")) == ["cats/a.jpg", "dogs/b.jpg"]


def test_a_truncated_model_keras_is_named_as_truncated(tmp_path, bare_model):
    images = make_class_folders(tmp_path / "images", per_class=1)
    cut = tmp_path / "model.keras"
    cut.write_bytes(bare_model.read_bytes()[:300_000])
    result = _invoke(["predict", cut, images])
    _one_line_error(result.output, 2, result.exit_code, str(cut), "not a complete .keras file (truncated")


@pytest.fixture(scope="module")
def head_run(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("head_run")
    images = make_class_folders(tmp / "images", per_class=4)
    assert _invoke(["extract-features", images, "--out", tmp / "f.h5", *EXTRACT]).exit_code == 0
    assert _invoke(["train-head", tmp / "f.h5", "--out", tmp / "head", "--epochs", "1"]).exit_code == 0
    return {"images": images, "head": tmp / "head"}


@pytest.mark.slow
def test_finetune_on_a_full_disk_names_the_file_and_leaves_no_partial_epoch(tmp_path, head_run):
    with _tmpfs(tmp_path / "disk", "2m") as disk:  # the run's small files fit; one epoch's backup does not
        result = _invoke(["finetune", head_run["images"], "--head", head_run["head"], "--out", disk / "ft",
                          "--epochs", "2", "--batch-size", "4"])
        line = _one_line_error(result.output, 1, result.exit_code, str(disk / "ft" / "backup"),
                               "No space left on device", "run the same command again to resume")
        assert re.search(r"epoch-001\.npz", line), line
        left = [p.name for p in (disk / "ft").rglob("*")]
        assert not [n for n in left if n.endswith(".npz") or ".tmp" in n] and "run.json" not in left, left


# -- the exit-code rule: 2 input, 1 machine, 75 busy, 130/143 signals ---------------------------------


def test_the_exit_code_rule_is_written_where_users_look():
    text = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    section = text[text.index("**Exit codes.**"):].split("\n- **", 1)[0]
    for code, words in ((2, "usage"), (1, "disk"), (75, "busy"), (130, "Ctrl-C"), (143, "SIGTERM")):
        assert re.search(rf"`{code}`[^`]*{words}", section, re.IGNORECASE | re.DOTALL), (code, section)


def test_the_exit_code_rule_holds_for_input_machine_and_busy(tmp_path, cache):
    from headstart.pipeline.store.out_dir import LOCK_FILE

    assert _invoke(["train-head", cache, "--no-such-option"]).exit_code == 2  # usage
    result = _invoke(["train-head", tmp_path / "missing.h5", "--out", tmp_path / "h"])
    _one_line_error(result.output, 2, result.exit_code, "missing.h5")  # bad input
    images = make_class_folders(tmp_path / "images", per_class=3)
    with _tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:  # the machine: was 2 here, 1 elsewhere
        for args in (["train-head", cache, "--out", ro / "h"], ["diagnose", cache, "--out", ro / "d"],
                     ["extract-features", images, "--out", ro / "f.h5", *EXTRACT]):
            result = _invoke(args)
            _one_line_error(result.output, 1, result.exit_code, str(ro), "Read-only file system")
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / LOCK_FILE, "w") as held:  # another writer holds the directory
        fcntl.flock(held, fcntl.LOCK_EX)
        result = _invoke(["train-head", cache, "--out", busy, "--epochs", "1"])
    _one_line_error(result.output, 75, result.exit_code, str(busy), "in use by")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_exit_code_rule_holds_for_signals(tmp_path, signum, code):
    # SIGINT as a terminal gives it: a suite started in the background (`pytest &` from a script)
    # passes on SIGINT ignored, which library_call rightly leaves alone, and the child then slept
    # through it. "ready" is printed inside the call, once the handlers are installed.
    script = ("import signal, sys, time\nfrom headstart.pipeline.cli_errors import library_call\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "library_call(lambda: (print('ready', flush=True), time.sleep(60)))()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(tmp_path))
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and "interrupted; run the same command again to resume" in err, err
