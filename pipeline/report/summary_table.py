"""The small two-column result table train-head, finetune and diagnose print at the end."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def format_summary_table(rows: Sequence[tuple[str, Any]], *, title: str | None = None) -> str:
    """Formats label/value pairs as a small two-column table for the terminal.

    Floats print with 4 decimals, None as "-".

    Args:
        rows: (label, value) pairs in display order.
        title: optional first line.

    Returns:
        The table, lines joined by newlines, no trailing newline.
    """
    def fmt(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.4f}"
        return str(value)

    cells = [(str(label), fmt(value)) for label, value in rows]
    left = max((len(a) for a, _ in cells), default=0)
    right = max((len(b) for _, b in cells), default=0)
    rule = "-" * (left + right + 3)
    lines = [title] if title else []
    lines.append(rule)
    lines.extend(f"{a.ljust(left)} | {b}" for a, b in cells)
    lines.append(rule)
    return "\n".join(lines)
