"""The documentation the doc tests read: README.md (the front page) and every page of the site
(docs/*.md, mkdocs.yml's docs_dir), so that text moved from one to the other stays checked."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"


def doc_pages() -> list[Path]:
    """README.md, then the site's pages in name order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


#: A fenced code block, also one indented inside a list item: (indent, language, body).
_FENCE = re.compile(r"^( *)```([a-z]*)\n(.*?)^\1```", flags=re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, the body dedented as the fence is."""
    return [(lang, textwrap.dedent(body) if indent else body) for indent, lang, body in _FENCE.findall(text)]


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return _FENCE.sub("", text)
