"""JSON and TOML parsed only after their size and nesting depth are checked. No TensorFlow.

Python's ``json`` and ``tomllib`` parse nested arrays and tables by recursion: a file of 1,000
``[`` (a crafted ``--config``, ``--class-weight`` file, run.json or one JSONL label line) ended
in a ``RecursionError`` traceback, and a huge file is read whole into memory first. Every reader
of a JSON/TOML/JSONL input goes through here; the limits are far above anything headstart writes
(run.json nests 4 levels) and the error is a ``ValueError``, which every caller already turns into
one line naming its file ("not valid JSON (…)").
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from headstart.features.regular_file import open_regular

#: Deepest nesting of arrays / objects / inline tables accepted.
MAX_DEPTH = 100
#: Largest JSON or TOML document read whole (a config, run.json, a record of a run).
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
#: Longest line of a JSONL label file.
MAX_LINE_BYTES = 1024 * 1024

_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# TOML's four string forms and its comments: brackets inside them do not nest anything.
_TOML_SKIPPED = re.compile(r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*',
                           re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class ParseLimitError(ValueError):
    """A document over the size or nesting limit; the message says which, with the limit."""


def check_document(text: str, *, toml: bool = False, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
    """Refuses a document too large or too deeply nested to parse safely, without parsing it.

    Args:
        text: the whole document (or one JSONL line).
        toml: skip TOML's strings and comments instead of JSON's strings.
        max_bytes: the size limit, counted in characters (no encoding needed to measure it).

    Raises:
        ParseLimitError: over ``max_bytes`` or nested deeper than ``MAX_DEPTH``.
    """
    if len(text) > max_bytes:
        raise ParseLimitError(f"{len(text) / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.1f} MB")
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # cannot nest deeper than its brackets: the common case costs two counts
    bare = (_TOML_SKIPPED if toml else _JSON_STRINGS).sub("", text)
    depth = 0
    for match in _BRACKETS.finditer(bare):
        depth = depth + 1 if match.group() in "[{" else max(0, depth - 1)
        if depth > MAX_DEPTH:
            raise ParseLimitError(f"nested deeper than {MAX_DEPTH} levels")


def loads_json(text: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """``json.loads`` after ``check_document``. Raises ValueError (ParseLimitError or JSONDecodeError)."""
    check_document(text, max_bytes=max_bytes)
    return json.loads(text)


def loads_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads`` after ``check_document``. Raises ParseLimitError or TOMLDecodeError (both ValueError)."""
    import tomllib

    check_document(text, toml=True)
    return tomllib.loads(text)


def read_text(path: str | os.PathLike, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> str:
    """A document's UTF-8 text, refused by its size before it is read.

    Raises:
        ParseLimitError: larger than ``max_bytes``. OSError, UnicodeDecodeError: as ``open``.
    """
    with open_regular(path) as f:  # a named pipe would be waited on for ever
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ParseLimitError(f"{size / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.1f} MB")
        return f.read(max_bytes + 1).decode("utf-8")
