"""Charts as SVG drawn on the server: no script runs in the browser, so nothing is fetched and the page's
policy can forbid every script. Every text from the data is escaped here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from html import escape
from typing import Final

__all__ = ["bar_chart", "context_chart", "stacked_chart"]

WIDTH: Final = 900
HEIGHT: Final = 240
_LEFT: Final = 70
_BOTTOM: Final = 40
_TOP: Final = 20


def _axis_label(value: float, money: bool) -> str:
    if money:
        return f"${value:,.2f}" if value < 100 else f"${value:,.0f}"
    if value >= 1_000_000:
        return f"{value / 1_000_000:,.1f}M"
    if value >= 1_000:
        return f"{value / 1_000:,.0f}K"
    return f"{value:,.0f}"


def _frame(name: str, title: str, top: float, money: bool) -> list[str]:
    plot_h = HEIGHT - _TOP - _BOTTOM
    parts = [
        f'<svg class="chart" data-chart="{escape(name)}" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{HEIGHT - _BOTTOM}" stroke="#999"/>',
        f'<line x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH - 10}" y2="{HEIGHT - _BOTTOM}" '
        'stroke="#999"/>',
    ]
    for step in (0.0, 0.5, 1.0):
        y = HEIGHT - _BOTTOM - plot_h * step
        label = escape(_axis_label(top * step, money))
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    return parts


def bar_chart(
    name: str, title: str, labels: Sequence[str], values: Sequence[float], *, money: bool = True
) -> str:
    """Bars of `values` (None counts as 0), one per label, each with its label and value as a tooltip."""
    top = max([v for v in values if v] or [1.0])
    plot_w, plot_h = WIDTH - _LEFT - 10, HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(values), 1)
    parts = _frame(name, title, top, money)
    every = max(1, len(labels) // 12)  # at most a dozen labels under the axis
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * (value or 0) / top
        x = _LEFT + i * step + step * 0.1
        shown = _axis_label(value or 0, money)
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{HEIGHT - _BOTTOM - h:.1f}" width="{step * 0.8:.1f}" '
            f'height="{h:.1f}"><title>{escape(label)}: {escape(shown)}</title></rect>'
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + step * 0.4:.1f}" y="{HEIGHT - _BOTTOM + 14}" text-anchor="middle">'
                f"{escape(label[:16])}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(
    name: str,
    title: str,
    labels: Sequence[str],
    parts: Sequence[tuple[str, Sequence[Decimal | float | None]]],
    marks: Mapping[int, str] | None = None,
    mark_label: str = "marked",
) -> str:
    """A stacked bar per label: `parts` are (part name, one value per label; None counts as 0), drawn
    bottom up in that order, each segment a `rect.bar.<part>` with its part and value as a tooltip and in
    `data-part`/`data-usd`; `marks` ({0-based bar: why}) draws a marked line over a bar (`line.breach`).
    A legend names the parts, and the marks as `mark_label` when there are any."""
    count = max(len(labels), 1)
    totals = [sum(float(values[i] or 0) for _, values in parts) for i in range(len(labels))]
    top = max([t for t in totals if t] or [1.0])
    plot_w, plot_h = WIDTH - _LEFT - 10, HEIGHT - _TOP - _BOTTOM
    step = plot_w / count
    out = _frame(name, title, top, True)
    every = max(1, len(labels) // 12)
    for i, label in enumerate(labels):
        x = _LEFT + i * step + step * 0.1
        base = float(HEIGHT - _BOTTOM)
        out.append(f'<g class="stack" data-bar="{escape(label)}">')
        for part, values in parts:
            value = values[i]
            if not value:
                continue
            h = plot_h * float(value) / top
            base -= h
            out.append(
                f'<rect class="bar {escape(part)}" data-part="{escape(part)}" data-usd="{value}" '
                f'x="{x:.1f}" y="{base:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)} {escape(part)}: {escape(f'${value:,.4f}')}</title></rect>"
            )
        out.append("</g>")
        if i % every == 0:
            out.append(
                f'<text x="{x + step * 0.4:.1f}" y="{HEIGHT - _BOTTOM + 14}" text-anchor="middle">'
                f"{escape(label[:16])}</text>"
            )
    for i, why in sorted((marks or {}).items()):
        mid = _LEFT + i * step + step * 0.5
        out.append(
            f'<line class="breach" data-bar="{escape(labels[i])}" x1="{mid:.1f}" y1="{_TOP}" x2="{mid:.1f}" '
            f'y2="{HEIGHT - _BOTTOM}"><title>{escape(labels[i])}: {escape(why)}</title></line>'
        )
    x = float(_LEFT)
    for part, _ in parts:
        out.append(
            f'<rect class="swatch {escape(part)}" x="{x:.1f}" y="{HEIGHT - 14}" width="10" height="10"/>'
            f'<text class="legend" x="{x + 14:.1f}" y="{HEIGHT - 5}">{escape(part)}</text>'
        )
        x += 24 + 7 * len(part)
    if marks:
        out.append(
            f'<line class="breach-key" x1="{x + 5:.1f}" y1="{HEIGHT - 14}" x2="{x + 5:.1f}" '
            f'y2="{HEIGHT - 4}"/>'
            f'<text class="legend" x="{x + 14:.1f}" y="{HEIGHT - 5}">{escape(mark_label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def context_chart(
    contexts: Sequence[int | None], triggers: Sequence[int | None], compactions: Sequence[int]
) -> str:
    """A conversation's context size after each call (a line), its compaction trigger (dashed) and a mark at
    each call that compacted: the climb, the drops, and how close each call came to the trigger."""
    known = [c for c in contexts if c is not None] + [t for t in triggers if t is not None]
    top = max(known or [1]) * 1.05
    plot_w, plot_h = WIDTH - _LEFT - 10, HEIGHT - _TOP - _BOTTOM
    count = max(len(contexts), 1)

    def x(i: int) -> float:
        return _LEFT + plot_w * (i + 0.5) / count

    def y(v: float) -> float:
        return HEIGHT - _BOTTOM - plot_h * v / top

    parts = _frame("context", "Context after each call against the compaction trigger", top, money=False)
    points = [f"{x(i):.1f},{y(c):.1f}" for i, c in enumerate(contexts) if c is not None]
    if points:
        parts.append(f'<polyline class="line" points="{" ".join(points)}"/>')
    trigger = [f"{x(i):.1f},{y(t):.1f}" for i, t in enumerate(triggers) if t is not None]
    if trigger:
        parts.append(f'<polyline class="line trigger" points="{" ".join(trigger)}"/>')
    for i, count_here in enumerate(compactions):
        if count_here:
            parts.append(
                f'<line class="mark" data-call="{i + 1}" x1="{x(i):.1f}" y1="{_TOP}" x2="{x(i):.1f}" '
                f'y2="{HEIGHT - _BOTTOM}"><title>call {i + 1}: {count_here} compaction(s)</title></line>'
            )
    every = max(1, count // 12)
    for i in range(0, len(contexts), every):
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - _BOTTOM + 14}" text-anchor="middle">{i + 1}</text>')
    parts.append("</svg>")
    return "".join(parts)
