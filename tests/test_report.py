"""report.html: written by every `headstart run` and by `headstart report RUN_DIR`, self-contained, its
numbers those of summary.json; loaded in a real (headless) Chromium, where every image must load and
no console error may appear. The docs site's pages get the same browser check.

Speed: the guide recipe with MobileNet (v1) alpha 0.25 at 32 px (tests/test_runner.py's set-up),
two colour classes; two test images carry the other class's colour, so the test split has mistakes
to show. ``HEADSTART_SCREENSHOT=PATH`` saves the browser's screenshot there too (README's picture:
``HEADSTART_SCREENSHOT=docs/images/report.png python -m pytest tests/test_report.py -k browser``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from conftest import BACKBONE, make_class_folders, make_weights_file
from headstart.pipeline.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: The flags the report's browser runs with: no sandbox (root in CI), no GPU, nothing from the network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(root / "images" / split, per_class=n, seed=seed)
    # A mistake in each off-diagonal cell; validation gets them too, else every validation image is
    # right with a margin and no temperature can be fitted (finetune then leaves the model as it is).
    for split in ("validation", "test"):
        for name, other in (("cats", "dogs"), ("dogs", "cats")):
            first = sorted((root / "images" / split / other).iterdir())[0]
            shutil.copy(first, root / "images" / split / name / f"odd_{first.name}")
    weights = make_weights_file(root / "weights.weights.h5")
    result = cli("run", root / "images", "--out", root / "run", "--recipe", "guide", "--backbone", BACKBONE["backbone"],
                 "--alpha", BACKBONE["alpha"], "--image-size", BACKBONE["image_size"], "--weights", weights,
                 "--head-epochs", 10, "--head-lr", 0.01, "--head-batch-size", 8, "--epochs", 1, "--batch-size", 8)
    assert result.exit_code == 0, result.output
    run_dir = root / "run"
    return SimpleNamespace(run_dir=run_dir, output=result.output,
                           summary=json.loads((run_dir / "summary.json").read_text()),
                           html=(run_dir / "report.html").read_text(encoding="utf-8"))


def lookup(summary: dict, dotted: str):
    value = summary
    for part in dotted.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@pytest.mark.slow
def test_run_writes_a_self_contained_report_with_summary_numbers(finished):
    summary, html = finished.summary, finished.html
    assert "report: " in finished.output and finished.output.rstrip().count("report.html") >= 1
    assert summary["report"] == str(finished.run_dir / "report.html")
    # No network and no script: every picture is inline, nothing is fetched.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<script" not in html
    assert html.count('src="data:image/png;base64,') >= 2 + 2  # two curves, thumbnails, mistakes
    assert "<h2>Recipe</h2>" in html and "guide: fixed settings" in html  # the guide tries nothing
    for section in ("Stages", "Training curves", "Confusion matrix", "Most confident mistakes", "Calibration"):
        assert f"<h2>{section}</h2>" in html, section
    assert html.count('class="thumb"') >= 2 and "odd_" in html  # the planted mistakes, as thumbnails
    spans = dict(re.findall(r'data-summary="([^"]+)">([^<]*)<', html))
    assert {"test.accuracy", "calibration.before.ece", "calibration.after.nll", "test.confusion_matrix.0.1"} <= set(spans)
    for key, text in spans.items():
        assert text == shown(lookup(summary, key)), key
    calibration = summary["calibration"]
    assert calibration["temperature"] and calibration["after"]["nll"] is not None
    assert "<svg" in html and html.count("<polyline") == 2  # reliability diagram, before and after


@pytest.mark.slow
def test_report_command_rewrites_it_inspect_shows_the_temperature_and_refusals(finished, tmp_path):
    (finished.run_dir / "report.html").unlink()
    result = cli("report", finished.run_dir)
    assert result.exit_code == 0, result.output
    assert (finished.run_dir / "report.html").read_text(encoding="utf-8") == finished.html
    t = finished.summary["calibration"]["temperature"][0]
    shown_by_inspect = cli("inspect", finished.run_dir / "finetune").output
    assert f"calibration: temperature {t:.3f} (test ECE " in shown_by_inspect, shown_by_inspect
    result = cli("report", tmp_path)
    assert result.exit_code == 2 and str(tmp_path) in result.output and "summary.json" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_decisions_leaderboard_and_diagnose_sections_from_their_records(tmp_path):
    """The sections a guide run leaves out, from the records auto, a sweep and diagnose write."""
    from headstart.pipeline.run.report_html import render_report
    from headstart.pipeline.run.report_data import ReportData

    summary = {"kind": "headstart-run", "source": "photos <&>", "class_names": ["cat", "dog"], "seconds": 1.0,
               "test": {"split": "test", "rows": 4, "accuracy": 0.75},
               "stages": {"evaluate": {"status": "ran", "accuracy": 0.75, "seconds": 1.0}},
               "recipe": {"recipe": "auto", "decisions": [
                   {"name": "image_size", "chosen": 224, "explicit": False, "measure": "val_loss", "why": "lowest",
                    "candidates": [{"value": 150, "score": 0.31}, {"value": 224, "score": 0.25}]}]}}
    html = render_report(ReportData(run_dir=tmp_path, summary=summary,
                                    leaderboard=(["trial", "val_loss"], [["3", "0.25"], ["1", "0.31"]]),
                                    diagnose={"counts": {"label_issues": 2, "duplicates": 0}, "summary": "2 issues"}))
    assert "photos &lt;&amp;&gt;" in html and "<script" not in html  # data is escaped, never markup
    assert "<h2>Decisions</h2>" in html and '<span class="chosen">224 0.2500</span>' in html
    assert "<h2>Sweep leaderboard</h2>" in html and "<td>0.31</td>" in html
    assert "<h2>Diagnose</h2>" in html and "<td>label_issues</td>" in html and "2 issues" in html
    for absent in ("Confusion matrix", "Most confident mistakes", "Calibration", "Training curves"):
        assert f"<h2>{absent}</h2>" not in html


def browser_check(url: str, screenshot: Path | None = None, *, full_page: bool = True) -> dict:
    """Loads ``url`` in headless Chromium: every image's naturalWidth, console errors, failed requests,
    the data-summary spans' text; saves a screenshot when asked."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium installed (CI installs Debian's chromium: apt-get install -y chromium)")
    import tempfile

    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_FLAGS, viewport={"width": 1000, "height": 760})
        page = browser.new_page()
        errors, failed = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(url, wait_until="load")
        found = page.evaluate("""() => ({
            images: Array.from(document.images).map(i => [i.alt || i.src.slice(0, 60), i.complete, i.naturalWidth]),
            spans: Object.fromEntries(Array.from(document.querySelectorAll('[data-summary]'))
                                      .map(e => [e.dataset.summary, e.textContent])),
            svgs: document.querySelectorAll('svg').length})""")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=full_page)
        browser.close()
    return {**found, "errors": errors, "failed": failed}


@pytest.mark.slow
def test_report_in_a_real_browser(finished, tmp_path):
    shot = tmp_path / "report.png"
    found = browser_check((finished.run_dir / "report.html").as_uri(), shot)
    assert found["images"] and all(ok and width > 0 for _, ok, width in found["images"]), found["images"]
    assert not found["errors"] and not found["failed"], (found["errors"], found["failed"])
    assert found["svgs"] == 1
    for key in ("test.accuracy", "test.rows", "calibration.before.ece", "calibration.after.ece"):
        assert found["spans"][key] == shown(lookup(finished.summary, key)), key
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 300_000
    if os.environ.get("HEADSTART_SCREENSHOT"):
        shutil.copy(shot, os.environ["HEADSTART_SCREENSHOT"])


@pytest.mark.slow
def test_docs_site_pages_in_a_real_browser(tmp_path):
    """Every page of the built site, served over HTTP as a reader gets it (file:// makes Material's
    search fetch a file only its offline plugin writes): images load, no console errors, no failed
    request — nothing is fetched from the internet (fonts: the system's)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = Path(__file__).resolve().parents[1]
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--site-dir", str(site)], cwd=root,
                           capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr[-2000:]
    pages = sorted(p.parent.relative_to(site) for p in site.rglob("index.html") if "assets" not in p.parts)
    assert len(pages) >= 3

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the test's output is the assertions, not an access log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for page in pages:
            found = browser_check(f"{base}/{page.as_posix()}/".replace("/./", "/"))
            broken = [img for img in found["images"] if not (img[1] and img[2] > 0)]
            assert not broken, (page, broken)
            assert not found["errors"] and not found["failed"], (page, found["errors"], found["failed"])
    finally:
        server.shutdown()
