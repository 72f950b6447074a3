"""Image grids a person can scan: label_issues.png (top suspects) and duplicates.png (pairs).

Drawn with Pillow directly (a matplotlib figure of 24 subplots took ~9 s here, this ~0.1 s).
Images are read from the source folder by key (keys are paths relative to it); a TFDS source has
no files to show, so its cells carry the key and the numbers only.
"""

from __future__ import annotations

import math
import os

_COLUMNS = 6
_THUMB = 150
_TEXT_LINES = 3
_LINE = 12
_PAD = 6


def write_grids(d, top: int) -> None:
    """Writes ``d.out``/label_issues.png and duplicates.png with at most ``top`` entries each."""
    from headstart.pipeline.diagnose.report import duplicate_rows, label_issue_rows

    root = d.rows.source_root
    suspects = [(r["key"], [f"{r['given_label']} -> {r['suggested_label']}",
                            f"score {r['score']:.3f} ({r['split']})"], False)
                for r in label_issue_rows(d)[:top]]
    _grid(os.path.join(d.out, "label_issues.png"), root, suspects,
          "label issues: given -> suggested label, cleanlab self-confidence (low = suspicious)")
    cells = []
    for r in duplicate_rows(d)[:top]:
        how = "exact copy" if r["exact"] else f"similarity {r['similarity']:.3f}"
        for side in ("a", "b"):
            cells.append((r[f"key_{side}"], [("LEAK " if r["leak"] else "") + r[f"split_{side}"], how],
                          r["leak"]))
    _grid(os.path.join(d.out, "duplicates.png"), root, cells,
          "near-duplicate pairs side by side (LEAK in red: the pair spans two splits)")


def _grid(path: str, root: str | None, cells: list[tuple[str, list[str], bool]], title: str) -> None:
    from PIL import Image, ImageDraw

    from headstart.pipeline.report.files import atomic_write

    cell_w, cell_h = _THUMB + 2 * _PAD, _THUMB + 2 * _PAD + _TEXT_LINES * _LINE
    rows = max(1, math.ceil(len(cells) / _COLUMNS))
    canvas = Image.new("RGB", (_COLUMNS * cell_w, rows * cell_h + 2 * _LINE), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, 4), title if cells else f"{title}: nothing found", fill="black")
    for n, (key, lines, alarm) in enumerate(cells):
        x0, y0 = (n % _COLUMNS) * cell_w, 2 * _LINE + (n // _COLUMNS) * cell_h
        colour = (200, 0, 0) if alarm else (0, 0, 0)
        thumb = _thumbnail(root, key)
        if thumb is None:
            draw.text((x0 + _PAD, y0 + _THUMB // 2), "(no file)", fill=colour)
        else:
            canvas.paste(thumb, (x0 + _PAD + (_THUMB - thumb.width) // 2, y0 + _PAD))
        if alarm:
            draw.rectangle((x0 + 2, y0 + 2, x0 + cell_w - 3, y0 + _THUMB + 2 * _PAD - 3), outline=colour, width=3)
        for i, text in enumerate([*lines, _short(key)][:_TEXT_LINES]):
            draw.text((x0 + _PAD, y0 + _THUMB + 2 * _PAD + i * _LINE), text, fill=colour)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"), suffix=".png")


def _thumbnail(root: str | None, key: str):
    if root is None:
        return None
    from PIL import Image

    try:
        with Image.open(os.path.join(root, key)) as img:
            img = img.convert("RGB")
            img.thumbnail((_THUMB, _THUMB))
            return img.copy()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _short(key: str, width: int = 26) -> str:
    return key if len(key) <= width else "..." + key[-(width - 3):]
