"""Draw one trace as a timeline of its spans (SVG; PNG through Chromium), from exported span data.

    python scripts/draw_trace.py SPANS.json OUT.svg [--png OUT.png] [--title TEXT]

``SPANS.json`` is a list of spans as an OTLP receiver decoded them (the tracing
tests' receiver writes it, see ``tests/test_tracing_picture.py``): each with
``name``, ``span_id``, ``parent_span_id``, ``start_ns``, ``end_ns``,
``status_code`` (2 = error), ``attributes`` and ``events`` (``[name, time_ns]``).
Spans are drawn one per row, each under its parent, on one time axis; a span's
events are ticks on its bar. ``--png`` screenshots the SVG in Chromium (the
``playwright`` package and a Chromium, as the browser tests use).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["draw_svg", "main"]

ROW = 26
LABEL_WIDTH = 330
WIDTH = 1000
TOP = 58
# Bar colours by the kind of span (its name's first word), and for errors.
COLOURS = {
    "POST": "#4f6d8f", "GET": "#4f6d8f", "admission": "#9aa5b1", "invoke_agent": "#6b5b95",
    "step": "#88b04b", "chat": "#e0a030", "execute_tool": "#45a5a0",
}  # fmt: skip
ERROR = "#c0392b"


def _ordered(spans: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first, children by start time: (depth, span) in drawing order."""
    ids = {s["span_id"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for s in spans:
        parent = s.get("parent_span_id") or ""
        if parent in ids:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    out: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, s) for s in sorted(roots, key=lambda s: s["start_ns"], reverse=True)]
    # Bounded: every span is pushed once (its parent is popped once).
    while stack:
        depth, span = stack.pop()
        out.append((depth, span))
        kids = sorted(children.get(span["span_id"], []), key=lambda s: s["start_ns"], reverse=True)
        stack.extend((depth + 1, k) for k in kids)
    return out


def _notes(kind: str, attrs: dict[str, Any]) -> list[str]:
    """What a row says beside its bar: tokens of a model call, a tool call's id and queue time."""
    notes = []
    if kind == "chat" and attrs.get("gen_ai.usage.output_tokens") is not None:
        notes.append(f"{attrs.get('gen_ai.usage.input_tokens', 0)} in / {attrs['gen_ai.usage.output_tokens']} out tokens")
    if kind == "execute_tool":
        notes.append(str(attrs.get("gen_ai.tool.call.id", "")))
        if attrs.get("trio_agent.tool.queued_ms") is not None:
            notes.append(f"queued {attrs['trio_agent.tool.queued_ms']:.2f} ms")
    if kind == "admission":
        notes.append(f"{attrs.get('trio_agent.admission.outcome')}, {attrs.get('trio_agent.admission.queued_ms', 0):g} ms")
    if attrs.get("error.type"):
        notes.append(str(attrs["error.type"]))
    return [n for n in notes if n]


def _tick_step(total_ms: float) -> float:
    raw = total_ms / 8
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def draw_svg(spans: Sequence[dict[str, Any]], *, title: str = "") -> str:
    """The SVG text of ``spans`` (one trace) as a timeline."""
    rows = _ordered(spans)
    t0 = min(s["start_ns"] for s in spans)
    t1 = max(s["end_ns"] for s in spans)
    total_ms = max((t1 - t0) / 1e6, 1e-3)
    plot = WIDTH - LABEL_WIDTH - 20
    height = TOP + ROW * len(rows) + 26

    def x(ns: int) -> float:
        return LABEL_WIDTH + (ns - t0) / 1e6 / total_ms * plot

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="12" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    step = _tick_step(total_ms)
    n_ticks = int(total_ms / step) + 1
    for i in range(n_ticks):
        ms = i * step
        tx = LABEL_WIDTH + ms / total_ms * plot
        out.append(f'<line x1="{tx:.1f}" y1="{TOP - 8}" x2="{tx:.1f}" y2="{height - 16}" stroke="#e3e6ea"/>')
        out.append(f'<text x="{tx:.1f}" y="{TOP - 12}" text-anchor="middle" fill="#555">{ms:g} ms</text>')
    for i, (depth, s) in enumerate(rows):
        y = TOP + i * ROW
        kind = s["name"].split(" ", 1)[0]
        colour = ERROR if s.get("status_code") == 2 else COLOURS.get(kind, "#7f8c8d")
        dur_ms = (s["end_ns"] - s["start_ns"]) / 1e6
        label = escape(s["name"])
        out.append(
            f'<text x="{12 + depth * 16}" y="{y + 16}">{label} '
            f'<tspan fill="#666">{dur_ms:.1f} ms</tspan></text>'
        )
        bx, bw = x(s["start_ns"]), max(x(s["end_ns"]) - x(s["start_ns"]), 1.5)
        out.append(f'<rect x="{bx:.1f}" y="{y + 4}" width="{bw:.1f}" height="{ROW - 9}" rx="3" fill="{colour}"/>')
        for name, t in s.get("events", ()):
            ex = x(t)
            out.append(
                f'<line x1="{ex:.1f}" y1="{y + 1}" x2="{ex:.1f}" y2="{y + ROW - 2}" stroke="#222" stroke-width="2">'
                f"<title>{escape(name)}</title></line>"
            )
        note = ", ".join(_notes(kind, s.get("attributes", {})))
        if note:
            # Right of the bar when it fits, else left of it.
            right = bx + bw + 6 + 6.5 * len(note) <= WIDTH
            tx, anchor = (bx + bw + 6, "start") if right else (bx - 6, "end")
            out.append(
                f'<text x="{tx:.1f}" y="{y + 16}" fill="#444" font-size="11" text-anchor="{anchor}">'
                f"{escape(note)}</text>"
            )
    out.append(
        f'<text x="{WIDTH - 12}" y="{height - 4}" text-anchor="end" fill="#666" font-size="11">'
        "tick: first token · red: error status</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _png(svg_path: Path, png_path: Path) -> None:
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(device_scale_factor=1)
            page.goto(svg_path.resolve().as_uri())
            page.locator("svg").screenshot(path=str(png_path))
        finally:
            browser.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spans", type=Path)
    parser.add_argument("svg", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    spans = json.loads(args.spans.read_text())
    args.svg.write_text(draw_svg(spans, title=args.title))
    if args.png is not None:
        _png(args.svg, args.png)


if __name__ == "__main__":
    main()
