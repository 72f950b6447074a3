"""Text from the data (labels, file names, reasons) made safe to print on a terminal. No TensorFlow.

A label or file name may hold control characters: ``\\r`` or ``\\n`` start what looks like another
line of output (a label ``"cats\\r\\nsplit train: 999 rows"`` forged lines of ``inspect``), ESC
sequences recolour or clear the terminal, bidi controls reorder what is shown. Every line the CLI
prints goes through ``printable_lines``; each such character is shown as its Python escape
(``\\r``, ``\\x1b``, ``\\u202e``). Tabs stay: ``predict`` separates its columns with them.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\r": "\\r", "\n": "\\n", "\x00": "\\x00"}
# Characters that reorder the text around them (bidirectional overrides, isolates and marks).
_BIDI = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def _shown(char: str) -> str:
    if char == "\t":
        return char
    if char in _NAMED:
        return _NAMED[char]
    if char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return char


def printable(text: str) -> str:
    """``text`` with every control, line-separator and bidi character escaped, newlines included."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(_shown(c) for c in text)


def printable_lines(text: str) -> str:
    """Escapes each line of ``text`` (``printable``), keeping the newlines between them."""
    return "\n".join(printable(line) for line in text.split("\n"))


def printable_values(value):
    """``value`` with ``printable`` applied to every string in it (dict keys too, lists, tuples):
    for a formatter that builds lines from data, so a newline in a label cannot end one."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_values(k): printable_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(printable_values(v) for v in value)
    return value
