"""`report conversation` on a terminal: the report's table, then a chart of the context after each call
against its compaction trigger."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from compactobs.reports.model import Report
from compactobs.reports.render import render

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["context_chart", "render_conversation"]

CHART_MAX_LINES: Final = 120
"""Longer conversations are charted with consecutive calls merged into a line (their largest context)."""
HIGH_SHARE: Final = 0.8
"""Context at or above this share of the trigger is drawn as a warning (the ineffective-compaction line)."""


def context_chart(
    rows: Sequence[dict[str, Any]], width: int = 100, *, color: bool = False, fit: bool = False
) -> str:
    """A terminal chart of the context after each call (a bar) against its trigger (a `|`), one line per
    call (or per group of consecutive calls beyond CHART_MAX_LINES), with compaction marks. Plain ASCII
    unless `color` (then rich: block bars, green / yellow from 80% of the trigger / red over it). `fit`:
    the title wraps within `width` too (a terminal's)."""
    if not rows:
        return ""
    groups = _groups(rows)
    scale = max(
        [int(r["context_tokens"] or 0) for r in rows] + [int(r["trigger_tokens"] or 0) for r in rows] + [1]
    )
    label_width = max(len(g[0]) for g in groups)
    value_width = max(len(f"{g[1]:,}") if g[1] is not None else 1 for g in groups)
    bar_width = max(10, width - label_width - value_width - 10)
    triggers = sorted({int(r["trigger_tokens"]) for r in rows if r["trigger_tokens"]})
    legend = (
        f"trigger {', '.join(f'{t:,}' for t in triggers)} tokens"
        if triggers
        else "no compaction trigger configured"
    )
    title = f"Context after each call (tokens; | = {legend}; marks as in the table)"
    lines: list[Any] = []  # str without colour, else rich Text
    for label, context, trigger, mark in groups:
        filled = 0 if context is None else round(context / scale * bar_width)
        at = None if not trigger else min(bar_width - 1, round(trigger / scale * bar_width) - 1)
        shown = f"{context:,}" if context is not None else "-"
        suffix = f" {shown:>{value_width}} {mark}".rstrip()
        if not color:
            cells = ["#" if i < filled else " " for i in range(bar_width)]
            if at is not None:
                cells[max(at, 0)] = "|"
            lines.append(f"{label:>{label_width}} {''.join(cells)}{suffix}")
            continue
        lines.append(_rich_line(label, label_width, filled, at, bar_width, suffix, context, trigger))
    titles = textwrap.wrap(title, max(width, 40)) if fit else [title]
    if not color:
        return "\n".join([*titles, *lines]) + "\n"
    return _rich_render([*titles, *lines], width)


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int | None, int | None, str]]:
    """(label, largest context, trigger, marks) per chart line."""
    size = max(1, math.ceil(len(rows) / CHART_MAX_LINES))
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        contexts = [int(r["context_tokens"]) for r in chunk if r["context_tokens"] is not None]
        triggers = [int(r["trigger_tokens"]) for r in chunk if r["trigger_tokens"]]
        label = f"#{chunk[0]['n']}" if size == 1 else f"#{chunk[0]['n']}-{chunk[-1]['n']}"
        mark = "".join(r["marks"] for r in chunk) if size == 1 else _merged_marks(chunk)
        if size == 1 and chunk[0]["stop_reason"] and str(chunk[0]["stop_reason"]).startswith("error"):
            mark = (mark + " error").strip()
        out.append((label, max(contexts) if contexts else None, max(triggers) if triggers else None, mark))
    return out


def _merged_marks(chunk: Sequence[dict[str, Any]]) -> str:
    count = sum(int(r["compactions"] or 0) for r in chunk)
    failed = any("!" in r["marks"] for r in chunk)
    return (f"C{count}" if count > 1 else "C" if count else "") + ("!" if failed else "")


def _rich_line(
    label: str,
    label_width: int,
    filled: int,
    at: int | None,
    bar_width: int,
    suffix: str,
    context: int | None,
    trigger: int | None,
) -> Text:
    from rich.text import Text

    style = "green"
    if context is not None and trigger:
        style = "red" if context >= trigger else "yellow" if context >= HIGH_SHARE * trigger else "green"
    line = Text(f"{label:>{label_width}} ")
    cells = ["█" if i < filled else " " for i in range(bar_width)]
    if at is not None:
        cells[max(at, 0)] = "│"
    # Runs of one character share one style span.
    run_start = 0
    for i in range(1, bar_width + 1):
        if i == bar_width or cells[i] != cells[run_start]:
            char = cells[run_start]
            line.append(
                char * (i - run_start), style="bold red" if char == "│" else style if char == "█" else ""
            )
            run_start = i
    line.append(suffix, style="bold" if "C" in suffix else "")
    return line


def _rich_render(lines: Sequence[Text | str], width: int) -> str:
    import io

    from rich.console import Console
    from rich.text import Text

    out = io.StringIO()
    console = Console(
        file=out, width=max(width, 40), color_system="standard", force_terminal=True, highlight=False
    )
    for line in lines:
        console.print(
            line if isinstance(line, Text) else Text(str(line), style="bold"), no_wrap=True, crop=False
        )
    return out.getvalue()


def render_conversation(
    report: Report,
    fmt: str,
    console_width: int | None = None,
    *,
    color: bool = False,
    fit_width: int | None = None,
) -> str:
    """The report in `fmt`. `fit_width`: the width of the terminal it is printed on, to which the table fits
    (see `render`), and below which the context chart is drawn: a chart is for a terminal, never for JSON,
    CSV, Markdown or a table piped elsewhere."""
    text = render(report, fmt, console_width, color=color, fit_width=fit_width)
    if fmt == "table" and report.rows and fit_width is not None:
        return text + "\n" + context_chart(report.rows, fit_width, color=color, fit=True)
    return text
