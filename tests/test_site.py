"""The documentation site (mkdocs.yml, docs/) holds together: every page in the nav exists and every
page is in the nav, README.md stays a front page that links to them, every relative link of README.md
and the pages reaches an existing file and heading (the same anchors on GitHub and on the site), and
`mkdocs build --strict` passes (issue 22, item 11)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # PyYAML: optuna's dependency, so always installed

from doc_pages import DOCS, README, REPO, doc_pages, page_name, prose

MKDOCS_YML = REPO / "mkdocs.yml"


class _Loader(yaml.SafeLoader):
    """mkdocs.yml with its `!!python/…` tags (the slug function) read as plain values."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, relative to docs/, in order."""
    config = yaml.load(MKDOCS_YML.read_text(encoding="utf-8"), Loader=_Loader)
    assert config["docs_dir"] == "docs"
    found: list[str] = []

    def walk(item):
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, list):
            for entry in item:
                walk(entry)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)

    walk(config["nav"])
    return found


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    pages = nav_pages()
    assert len(pages) == len(set(pages)), "a page twice in the nav"
    assert [p for p in pages if not (DOCS / p).is_file()] == []
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(pages)


def test_readme_is_a_front_page_that_links_to_every_page():
    """At most 300 lines (issue 22, item 11), and a link to each page of the site."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    linked = {target.split("#")[0] for target in re.findall(r"\]\(docs/([^)\s]+)\)", text)}
    missing = [p for p in nav_pages() if p not in linked and p not in ("index.md",)
               and not p.startswith("scaling_")]  # the two scaling pages hang under scaling-out.md
    assert missing == []


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it, and as the site does (mkdocs.yml: pymdownx.slugs,
    case "lower"): Markdown marks dropped, lower case, anything but letters, digits, `_`, `-` and
    spaces removed, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", prose(path.read_text(encoding="utf-8")), flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of a page whose file or heading does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


def test_every_relative_link_reaches_a_file_and_heading():
    for page in doc_pages():
        assert broken_links(page) == [], page_name(page)


def test_a_broken_link_is_caught(tmp_path):
    """The check above can fail: a missing file, a missing heading, and a heading that exists."""
    (tmp_path / "other.md").write_text("# Other\n\n## `--out`: reuse, refusal, one writer\n\n## Notes\n## Notes\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#--out-reuse-refusal-one-writer) [b](other.md#notes-1) [c](missing.md)\n"
                    "[d](other.md#no-such-heading) [e](https://example.org/x#y) ![f](pic.png)\n"
                    "```console\n$ echo [not a link](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md: no file " + str(tmp_path / "missing.md"),
                                  "other.md#no-such-heading: no heading with anchor #no-such-heading",
                                  "pic.png: no file " + str(tmp_path / "pic.png")]


def test_anchors_are_githubs():
    """The anchors the pages link to, as GitHub spells them."""
    assert slug("The recipe chosen on validation (`headstart run --recipe auto`)") == \
        "the-recipe-chosen-on-validation-headstart-run---recipe-auto"
    assert slug("Batched sweep step: where the time goes — `benchmarks/sweep_speed.py`") == \
        "batched-sweep-step-where-the-time-goes--benchmarkssweep_speedpy"
    assert slug("`--out`: reuse, refusal, one writer") == "--out-reuse-refusal-one-writer"


def test_mkdocs_build_strict_passes(tmp_path):
    """The site builds with no warning (a broken link or anchor, a page outside the nav, an API entry
    that does not resolve), offline, and the API page holds the functions' rendered docstrings. About
    2 s; skipped, saying why, without the docs extra (.ci/run installs it, and builds the site too)."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WARNING" not in out.stderr, out.stderr[-3000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "Runs the frozen backbone over every requested split and writes the feature cache." in api
    assert "ExtractConfig" in api and "OptionError" in api
    for page in nav_pages():
        built = site / ("index.html" if page == "index.md" else Path(page).with_suffix("") / "index.html")
        assert built.is_file(), page
