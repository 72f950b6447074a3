"""The documentation the doc tests read: README.md (the front page) and every page of the site
(docs/*.md, mkdocs.yml's docs_dir), so that text moved from one to the other stays checked."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"


def doc_pages() -> list[Path]:
    """README.md, then the site's pages in name order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```([a-z]*)\n(.*?)^```", text, flags=re.S | re.M)


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
