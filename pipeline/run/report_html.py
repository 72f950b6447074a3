"""``RUN/report.html``: one self-contained page about a finished run (``headstart report RUN_DIR``, and
the last file every ``headstart run`` writes).

Everything is inlined — PNGs as data: URLs, the reliability diagram as SVG, a few lines of CSS — so
the file can be mailed or opened offline; there is no script at all. Its content comes from
``report_data.read_report_data`` (the one reader of the run directory). Every number the page shows
from summary.json carries ``data-summary="dotted.path"`` so a test can hold the page to the file.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np

from headstart.pipeline.run.report_data import REPORT_HTML, ReportData, read_report_data

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.diag{background:#e8f3e8}td.off{background:#fbeaea}img.thumb{width:48px;height:48px;margin:1px}
figure{display:inline-block;margin:.3em;text-align:center;font-size:.85em}figure img{width:128px;height:128px}
figure.curves{width:48%;margin:.3em 0}figure.curves img{width:100%;height:auto}
.muted{color:#777}.chosen{font-weight:bold}
"""


def write_report(run_dir: str | Path) -> Path:
    """Writes ``RUN_DIR/report.html`` from the run's files and returns its path.

    Raises:
        RunDirError: not a finished ``headstart run`` directory.
    """
    from headstart.pipeline.store.files import write_text_atomic

    data = read_report_data(run_dir)
    path = data.run_dir / REPORT_HTML
    write_text_atomic(path, render_report(data))
    return path


def render_report(data: ReportData) -> str:
    """The page's HTML (UTF-8 text)."""
    s = data.summary
    sections = [_header(s), _decisions(s), _stages(s), _curves(data), _confusion(s, data.mistakes),
                _worst(s, data.mistakes), _calibration(s), _leaderboard(data.leaderboard), _diagnose(data.diagnose)]
    title = f"headstart run: {escape(str(s.get('source', '')))}"
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{title}</h1>\n" + "\n".join(x for x in sections if x)
            + "\n</body></html>\n")


def _num(value: object, key: str | None = None, digits: int = 4) -> str:
    shown = "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))
    # Only a value summary.json holds is tagged: the browser test compares each tag with the file.
    return f'<span data-summary="{escape(key)}">{shown}</span>' if key and value is not None else shown


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # Cells are HTML already (escaped by their makers).
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return _data_url(buffer.getvalue())


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _header(s: dict) -> str:
    test = s.get("test") or {}
    measures = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1"),
                ("mAP", "map")]
    shown = ", ".join(f"{name} {_num(test[k], f'test.{k}')}" for name, k in measures if test.get(k) is not None)
    return (f"<p>Test split <b>{escape(str(test.get('split') or '-'))}</b> ({_num(test.get('rows'), 'test.rows')} "
            f"images): {shown or 'not evaluated'}. Classes: {escape(', '.join(map(str, s.get('class_names') or [])))}."
            f" Run directory <code>{escape(str(s.get('run_dir', '')))}</code>, "
            f"{_num(s.get('seconds'), digits=1)} s.</p>")


def _decisions(s: dict) -> str:
    recipe = s.get("recipe") or {}
    decisions = recipe.get("decisions") or []
    if not decisions:
        return f"<h2>Recipe</h2><p>{escape(str(recipe.get('recipe', 'guide')))}: fixed settings, nothing tried.</p>"
    rows = []
    for d in decisions:
        tried = "; ".join(
            f"<span class=\"{'chosen' if c.get('value') == d.get('chosen') else ''}\">{escape(str(c.get('value')))}"
            f"{'' if c.get('score') is None else ' ' + _num(c['score'])}</span>" for c in d.get("candidates") or [])
        rows.append((escape(str(d.get("name"))), f"<b>{escape(str(d.get('chosen')))}</b>"
                     + (" <span class=muted>(yours)</span>" if d.get("explicit") else ""),
                     escape(str(d.get("measure") or "")), tried or "-", escape(str(d.get("why") or ""))))
    return "<h2>Decisions</h2>" + _table(("decision", "chosen", "measure", "candidates", "why"), rows)


def _stages(s: dict) -> str:
    rows = []
    for name, rec in (s.get("stages") or {}).items():
        rows.append((escape(name), escape(str(rec.get("status", "-"))),
                     *(f"<span class=num>{_num(rec.get(k), f'stages.{name}.{k}')}</span>"
                       for k in ("accuracy", "balanced_accuracy", "macro_f1")),
                     _num(rec.get("seconds"), digits=1) + " s"))
    return "<h2>Stages</h2>" + _table(("stage", "status", "test accuracy", "balanced acc.", "macro-F1", "time"), rows)


def _curves(data: ReportData) -> str:
    if not data.curves:
        return ""
    return "<h2>Training curves</h2>" + "".join(
        f'<figure class="curves"><img src="{_data_url(png)}" alt="{escape(stage)} curves">'
        f'<figcaption>{escape(stage)}</figcaption></figure>'
        for stage, png in data.curves)


def _confusion(s: dict, mistakes: dict | None) -> str:
    matrix, names = (s.get("test") or {}).get("confusion_matrix"), s.get("class_names") or []
    if not matrix or len(matrix) != len(names):
        return ""
    cells: dict[tuple[int, int], list[str]] = {}
    if mistakes is not None:
        for t, p, key, image in zip(mistakes["cell_true"], mistakes["cell_predicted"], mistakes["cell_keys"],
                                    mistakes["cell_images"]):
            cells.setdefault((int(t), int(p)), []).append(
                f'<img class="thumb" src="{_png(image)}" alt="{escape(str(key))}" title="{escape(str(key))}">')
    rows = []
    for i, row in enumerate(matrix):
        rows.append((f"<b>{escape(str(names[i]))}</b>", *(
            f'<td class="num {"diag" if i == j else "off" if n else ""}"><span data-summary="test.confusion_matrix.'
            f'{i}.{j}">{n}</span><br>{"".join(cells.get((i, j), []))}</td>' for j, n in enumerate(row))))
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{escape(str(n))}</th>" for n in names) + "</tr>"
    body = "".join(f"<tr><td>{r[0]}</td>{''.join(r[1:])}</tr>" for r in rows)
    return ("<h2>Confusion matrix</h2><p class=muted>Rows: true class; columns: predicted. Off-diagonal cells show "
            "up to four of their images.</p><table>" + head + body + "</table>")


def _worst(s: dict, mistakes: dict | None) -> str:
    if mistakes is None or not len(mistakes["wrong_keys"]):
        return "" if mistakes is None else "<h2>Most confident mistakes</h2><p>No mistakes on the test split.</p>"
    names = s.get("class_names") or []
    figures = "".join(
        f'<figure><img src="{_png(image)}" alt="{escape(str(key))}"><figcaption>{escape(str(key))}<br>'
        f"{escape(str(names[t]))} → {escape(str(names[p]))} ({prob:.2f})</figcaption></figure>"
        for prob, key, t, p, image in zip(mistakes["wrong_probability"], mistakes["wrong_keys"],
                                          mistakes["wrong_true"], mistakes["wrong_predicted"],
                                          mistakes["wrong_images"]))
    return "<h2>Most confident mistakes</h2><p class=muted>true → predicted (probability).</p>" + figures


def _calibration(s: dict) -> str:
    record = s.get("calibration")
    if not record:
        return ""
    t = record.get("temperature")
    what = ("not calibrated (--calibrate none)" if not t else f"temperature {t[0]:.3f}" if len(t) == 1
            else f"one temperature per class, {min(t):.3f}–{max(t):.3f}")
    rows = [(side, _num(record[side].get("ece"), f"calibration.{side}.ece"),
             _num(record[side].get("nll"), f"calibration.{side}.nll")) for side in ("before", "after")]
    return (f"<h2>Calibration</h2><p>{escape(what)}; ECE over 15 bins and NLL on the test split, before and after."
            f"</p>{_table(('', 'ECE', 'NLL'), rows)}{_reliability_svg(record)}")


def _reliability_svg(record: dict) -> str:
    """The reliability diagram: observed frequency against claimed probability per bin, both sides."""
    size, pad = 320, 36
    scale = size - 2 * pad

    def xy(conf: float, acc: float) -> tuple[float, float]:
        return pad + conf * scale, size - pad - acc * scale

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
             f'aria-label="reliability diagram">',
             f'<rect x="{pad}" y="{pad}" width="{scale}" height="{scale}" fill="none" stroke="#999"/>',
             f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>',
             f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">claimed probability</text>',
             f'<text x="12" y="{size / 2}" font-size="12" transform="rotate(-90 12 {size / 2})" '
             f'text-anchor="middle">observed frequency</text>']
    for v in (0.0, 0.5, 1.0):  # ticks on both axes
        x, y = xy(v, v)
        parts += [f'<text x="{x:.1f}" y="{size - pad + 14}" font-size="10" text-anchor="middle">{v:g}</text>',
                  f'<text x="{pad - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{v:g}</text>']
    for side, colour in (("before", "#d62728"), ("after", "#1f77b4")):
        points = " ".join("%.1f,%.1f" % xy(b["confidence"], b["accuracy"]) for b in record[side].get("bins") or [])
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'
                  for x, y in (xy(b["confidence"], b["accuracy"]) for b in record[side].get("bins") or [])]
        parts.append(f'<text x="{pad + 6}" y="{pad + (16 if side == "before" else 32)}" font-size="12" '
                     f'fill="{colour}">{side}</text>')
    return "".join(parts) + "</svg>"


def _leaderboard(board: tuple[list[str], list[list[str]]] | None) -> str:
    if board is None:
        return ""
    columns, rows = board
    return "<h2>Sweep leaderboard</h2>" + _table(columns, [[escape(c) for c in row] for row in rows])


def _diagnose(report: dict | None) -> str:
    if not report:
        return ""
    counts = report.get("counts") or {}
    summary = report.get("summary")
    text = "\n".join(summary) if isinstance(summary, list) else str(summary or "")
    rows = [(escape(str(k)), _num(v)) for k, v in counts.items() if not isinstance(v, (dict, list))]
    return "<h2>Diagnose</h2>" + (_table(("finding", "count"), rows) if rows else "") + (
        f"<pre>{escape(text)}</pre>" if text else "")
