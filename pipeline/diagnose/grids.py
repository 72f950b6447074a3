"""Image grids a person can scan: label_issues.png (top suspects) and duplicates.png (pairs).

Drawn with Pillow directly (a matplotlib figure of 24 subplots took ~9 s here, this ~0.1 s).
Images are read from the source folder by key (keys are paths relative to it) and scaled to fill
the cell whatever their size (an 8×8 scan is blown up with nearest, so its pixels stay visible); a
TFDS source has no files to show, so its cells carry the key and the numbers only.
"""

from __future__ import annotations

import math
import os

_COLUMNS = 6
_THUMB = 160
_TEXT_LINES = 3
_FONT_SIZE = 14
_LINE = 17
_PAD = 6


def write_grids(d, top: int) -> None:
    """Writes ``d.out``/label_issues.png and duplicates.png with at most ``top`` entries each."""
    from headstart.pipeline.diagnose.report import duplicate_rows, label_issue_rows

    root, rows = d.rows.source_root, d.rows
    suspects = [(r["key"], [f"{r['given_label']} -> {r['suggested_label']}"
                            + (f"  {r['flagged_by']}" if "flagged_by" in r else ""),
                            f"{r['split']} score {r['score']:.3f}"], False) for r in label_issue_rows(d)[:top]]
    _grid(os.path.join(d.out, "label_issues.png"), root, suspects,
          "label issues: given -> suggested class, cleanlab self-confidence (low = suspicious)"
          + ("; n/m = caches that flag it" if d.agreement is not None else ""))
    cells = []
    for r, pair in list(zip(duplicate_rows(d), d.duplicates.pairs))[:top]:
        how = ("exact copy" if r["exact"] else f"sim {r['similarity']:.3f}"
               + ("" if r["pixel_difference"] is None else f" px {r['pixel_difference']:.1f}"))
        for side, row in (("a", pair.a), ("b", pair.b)):
            where = ("LEAK " if r["leak"] else "") + f"{r[f'split_{side}']} {rows.class_names[rows.labels[row]]}"
            cells.append((r[f"key_{side}"], [where, how], r["leak"]))
    _grid(os.path.join(d.out, "duplicates.png"), root, cells,
          "near-duplicate pairs side by side (LEAK in red: the pair spans two splits; px: pixel difference)")


def _grid(path: str, root: str | None, cells: list[tuple[str, list[str], bool]], title: str) -> None:
    from PIL import Image, ImageDraw

    from headstart.pipeline.store.files import atomic_write

    cell_w, cell_h = _THUMB + 2 * _PAD, _THUMB + 2 * _PAD + _TEXT_LINES * _LINE
    rows = max(1, math.ceil(len(cells) / _COLUMNS))
    canvas = Image.new("RGB", (_COLUMNS * cell_w, rows * cell_h + 2 * _LINE), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((_PAD, 4), title if cells else f"{title}: nothing found", fill="black", font=font)
    for n, (key, lines, alarm) in enumerate(cells):
        x0, y0 = (n % _COLUMNS) * cell_w, 2 * _LINE + (n // _COLUMNS) * cell_h
        colour = (200, 0, 0) if alarm else (0, 0, 0)
        thumb = _thumbnail(root, key)
        if thumb is None:
            draw.text((x0 + _PAD, y0 + _THUMB // 2), "(no file)", fill=colour, font=font)
        else:
            canvas.paste(thumb, (x0 + _PAD + (_THUMB - thumb.width) // 2, y0 + _PAD + (_THUMB - thumb.height) // 2))
        if alarm:
            draw.rectangle((x0 + 2, y0 + 2, x0 + cell_w - 3, y0 + _THUMB + 2 * _PAD - 3), outline=colour, width=3)
        for i, text in enumerate([*lines, key][:_TEXT_LINES]):
            draw.text((x0 + _PAD, y0 + _THUMB + 2 * _PAD + i * _LINE), _fit(text, font, _THUMB), fill=colour,
                      font=font)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"), suffix=".png")


def _font():
    """A scalable font at _FONT_SIZE (Pillow 10.1+ with FreeType), else Pillow's small bitmap one."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _thumbnail(root: str | None, key: str):
    """The image scaled to fit _THUMB × _THUMB: small ones blown up with nearest (pixels stay
    sharp and countable), large ones reduced with Lanczos."""
    if root is None:
        return None
    from PIL import Image

    try:
        with Image.open(os.path.join(root, key)) as img:
            img = img.convert("RGB")
            scale = _THUMB / max(img.width, img.height)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            method = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            return img.resize(size, method)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _fit(text: str, font, width: int) -> str:
    """``text``, or its end after "..." when it is wider than ``width`` pixels (keys end in the file name)."""
    if font.getlength(text) <= width:
        return text
    for start in range(1, len(text)):
        if font.getlength("..." + text[start:]) <= width:
            return "..." + text[start:]
    return text[-1:]
