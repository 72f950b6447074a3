"""The one reporter: the console prints what the commands printed before it existed; quiet prints nothing."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from headstart.features.reporter import QUIET, Indented, LineReporter, ProgressOnly, Reporter, as_reporter
from headstart.pipeline.cli import main
from headstart.pipeline.run.console import Console

FAST = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
        "--validation-fraction", "0.25", "--test-fraction", "0.25"]


def test_the_quiet_reporter_prints_nothing(capfd):
    assert isinstance(QUIET, Reporter) and isinstance(Console(), Reporter)
    QUIET.line("a line")
    QUIET.warning("warning: a warning")
    QUIET.stage("extract")
    QUIET.stage("extract", end=True)
    line = QUIET.progress("extract train")
    line.update(3, 10, 1.5)
    line.close()
    assert capfd.readouterr() == ("", "")
    assert as_reporter() is QUIET


def test_console_lines_and_warnings_read_as_the_old_log_lines():
    got: list[str] = []
    console = Console(got.append)
    console.line("one")
    console.warning("warning: two")
    console.stage("extract")  # the commands print their own headers: nothing here
    Indented(console).line("three")
    Console(got.append, quiet=True).line("never")
    ProgressOnly(console).line("dropped")
    assert got == ["one", "warning: two", "  three"]
    assert as_reporter(None, got.append).line("four") is None and got[-1] == "four"  # the log= adapter


def test_indented_progress_labels_and_the_adapter_draws_no_lines():
    labels: list[str] = []

    class Recording(LineReporter):
        def progress(self, label):
            labels.append(label)
            return super().progress(label)

    Indented(Recording(print)).progress("evaluate test").update(1, 2, 1.0)
    ProgressOnly(Recording(print)).progress("evaluate test")
    assert labels == ["  evaluate test", "evaluate test"]

    from headstart.pipeline.report.progress import observed

    # the library draws for any reporter but a quiet one (LineReporter is one: it has no lines to draw)
    with observed(ProgressOnly(Recording(print)), "check test", 2) as hook:
        assert hook is not None
    with observed(LineReporter(print), "check test", 2) as hook:
        assert hook is None


@pytest.mark.slow
def test_extract_features_prints_the_same_lines_through_the_console_and_nothing_quietly(image_folder, tmp_path,
                                                                                         capsys):
    out = tmp_path / "f.h5"
    args = ["extract-features", str(image_folder), "--out", str(out), *FAST]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    rate = r"\d+\.\d img/s ETA 0:00"
    # stderr then stdout, as CliRunner mixes them; the progress lines (not a terminal: one each) come
    # from the reporter inside the library, the summary from the command.
    assert re.fullmatch(
        f"extract train: 4/4 \\(100%\\) {rate}\n"
        f"extract validation: 4/4 \\(100%\\) {rate}\n"
        f"extract test: 4/4 \\(100%\\) {rate}\n"
        r"train: 4 rows, 0 skipped, [\d.]+ images/s\n"
        r"validation: 4 rows, 0 skipped, [\d.]+ images/s\n"
        r"test: 4 rows, 0 skipped, [\d.]+ images/s\n"
        f"wrote {re.escape(str(out))} \\(mobilenet_v2, 2 classes, [\\d.]+ s\\)\n", first.output), first.output
    again = CliRunner().invoke(main, args)
    assert again.output == f"{out} is already complete with this configuration; nothing to do\n{out}: already complete\n"

    from headstart.pipeline import ExtractConfig, extract_features

    config = ExtractConfig(source=str(image_folder), out=str(out), backbone="mobilenet_v2", alpha=0.35,
                           weights="none", image_size=32, validation_fraction=0.25, test_fraction=0.25)
    capsys.readouterr()
    assert extract_features(config).already_complete  # the Python API's default: quiet
    assert capsys.readouterr() == ("", "")
    lines: list[str] = []
    extract_features(config, log=lines.append)  # the documented log= still gets each line
    assert lines == [f"{out} is already complete with this configuration; nothing to do"]


def test_the_api_wrapper_is_the_one_place_log_becomes_a_reporter():
    """Library functions take only ``reporter=``; ``headstart.pipeline``'s wrapper turns the documented
    ``log=`` into one, for every API function that takes a reporter, and leaves the others alone."""
    from headstart.pipeline.api import api_function

    def stage(config, *, reporter: Reporter = QUIET):
        reporter.line(f"ran {config}")
        reporter.warning("warning: a warning")
        return reporter

    lines: list[str] = []
    assert isinstance(api_function(stage)(1, log=lines.append), LineReporter)
    assert lines == ["ran 1", "warning: a warning"]
    given = Indented(LineReporter(lines.append))
    assert api_function(stage)(2, reporter=given, log=pytest.fail) is given  # a reporter wins over log=
    assert api_function(stage)(3) is QUIET

    def no_reporter(config):
        return config

    with pytest.raises(TypeError, match="log"):
        api_function(no_reporter)(4, log=print)
