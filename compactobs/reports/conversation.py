"""`report conversation ID`: one conversation call by call, and a chart of its context against the trigger.

Each row is a call, in start order: its time (in the report's zone), model, stop reason or error, billed
iterations, the context size after the call (total input of its last `message` iteration, the size the
compaction trigger is compared with), the trigger, compaction marks, its cost and the running total.

Compaction marks: `C` a compaction ran in the call (`C2`: two, with server tools), `!` one returned no
summary (billed, content null), `P` the call paused after compacting (`pause_after_compaction`: no message
iteration, so no context size of its own).

The running total adds the priced calls; an unpriced call (no price for its model) adds nothing and is
counted in a warning, never as $0.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine, select

from compactobs.reports._common import ExternalSource, Filters, Report, ReportInputError, reading, render
from compactobs.store.models import calls

__all__ = ["COLUMNS", "context_chart", "conversation_report", "marks", "render_conversation"]

COLUMNS: Final = [
    "n",
    "time",
    "started_at",
    "call_id",
    "model",
    "stop_reason",
    "iterations",
    "compactions",
    "marks",
    "context_tokens",
    "trigger_tokens",
    "context_share",
    "cost_usd",
    "cumulative_cost_usd",
]
TABLE_COLUMNS: Final = [
    "n",
    "time",
    "call_id",
    "model",
    "stop_reason",
    "iterations",
    "marks",
    "context_tokens",
    "trigger_tokens",
    "context_share",
    "cost_usd",
    "cumulative_cost_usd",
]
NARROW_COLUMNS: Final = [
    # Over 120 columns: iterations and the trigger go (the chart shows the trigger).
    [
        *("n", "time", "call_id", "model", "stop_reason", "marks", "context_tokens", "context_share"),
        *("cost_usd", "cumulative_cost_usd"),
    ],
    # 120 columns: the time goes too (the header gives the range).
    [
        *("n", "call_id", "model", "stop_reason", "marks", "context_tokens", "context_share", "cost_usd"),
        "cumulative_cost_usd",
    ],
    # 80 columns: what each call did to the context, and what it cost.
    ["n", "call_id", "marks", "context_tokens", "context_share", "cost_usd"],
    ["n", "call_id", "context_tokens", "cost_usd"],
]
"""Smaller sets of TABLE_COLUMNS, for a terminal of 120 and of 80 columns."""
CHART_MAX_LINES: Final = 120
"""Longer conversations are charted with consecutive calls merged into a line (their largest context)."""
HIGH_SHARE: Final = 0.8
"""Context at or above this share of the trigger is drawn as a warning (the ineffective-compaction line)."""


def marks(compactions: int | None, failed: int | None, paused: bool) -> str:
    """`C`, `C2`... for compactions, `!` when one failed, `P` when the call paused after compacting."""
    if not compactions:
        return ""
    text = "C" if compactions == 1 else f"C{compactions}"
    if failed:
        text += "!"
    if paused:
        text += "P"
    return text


def _when(ms: int, tz: Any) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(tz)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _iso(ms: int, tz: Any) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(tz).isoformat(timespec="milliseconds")
    )


FIELDS: Final = (
    "call_id",
    "start_ms",
    "request_model",
    "response_model",
    "stop_reason",
    "error_type",
    "iterations_count",
    "compactions_count",
    "compactions_failed",
    "compaction_pause_after",
    "context_tokens",
    "compaction_trigger",
    "cost_usd",
    "priced",
    "budget_usd",
    "budget_tokens",
)
"""The `calls` columns the report reads, per call."""


def unknown_conversation(conversation_id: str) -> ReportInputError:
    return ReportInputError(
        f"unknown conversation {conversation_id!r}: no call was recorded with this id "
        "(`compactobs report cost --by conversation` lists them)"
    )


def _calls_of(engine: Engine, filters: Filters, conversation_id: str) -> Iterator[Any]:
    """The conversation's calls (FIELDS, as attributes), in (start_ms, call_id) order. Raises
    ReportInputError when no call was ever recorded with this id."""
    if isinstance(engine, ExternalSource):
        yield from engine.conversation_calls(filters, conversation_id)  # type: ignore[attr-defined]
        return
    c = calls.c
    with reading(engine) as connection:
        known = connection.execute(
            select(c.call_id).where(c.conversation_id == conversation_id).limit(1)
        ).first()
        if known is None:
            raise unknown_conversation(conversation_id)
        query = (
            select(*(c[name] for name in FIELDS))
            .where(c.conversation_id == conversation_id, *filters.call_conditions())
            .order_by(c.start_ms, c.call_id)
        )
        yield from connection.execute(query)


def conversation_report(engine: Engine, filters: Filters, conversation_id: str) -> Report:
    """The calls of one conversation (those `filters` select), in start order. Raises ReportInputError
    when no call was ever recorded with this id."""
    result = _calls_of(engine, filters, conversation_id)
    rows: list[dict[str, Any]] = []
    running = Decimal(0)
    unpriced = 0
    iterations = 0
    compactions = 0
    failed = 0
    budget_usd: Decimal | None = None
    budget_tokens: int | None = None
    for n, record in enumerate(result, start=1):
        cost = None if record.cost_usd is None else Decimal(str(record.cost_usd))
        if cost is not None:
            running += cost
        elif record.priced is False:
            unpriced += 1
        count = int(record.compactions_count or 0)
        paused = bool(count and record.compaction_pause_after and record.context_tokens is None)
        context = record.context_tokens
        trigger = record.compaction_trigger
        iterations += int(record.iterations_count or 0)
        compactions += count
        failed += int(record.compactions_failed or 0)
        if record.budget_usd is not None:
            budget_usd = Decimal(str(record.budget_usd))
        if record.budget_tokens is not None:
            budget_tokens = int(record.budget_tokens)
        rows.append(
            {
                "n": n,
                "time": _when(int(record.start_ms), filters.tz),
                "started_at": _iso(int(record.start_ms), filters.tz),
                "call_id": record.call_id,
                "model": record.response_model or record.request_model,
                "stop_reason": record.stop_reason
                or (f"error {record.error_type}" if record.error_type else None),
                "iterations": record.iterations_count,
                "compactions": count,
                "marks": marks(count, record.compactions_failed, paused),
                "context_tokens": context,
                "trigger_tokens": trigger,
                "context_share": (context / trigger) if context is not None and trigger else None,
                "cost_usd": cost,
                "cumulative_cost_usd": running,
                # not a column: lets the table say "unpriced" rather than "-"
                "unpriced_calls": 1 if cost is None and record.priced is False else 0,
            }
        )
    header = [filters.describe()]
    if rows:
        header.append(f"{rows[0]['time']} to {rows[-1]['time']} ({filters.zone})")
    if budget_usd is not None or budget_tokens is not None:
        parts = [
            f"${budget_usd:,.4f}" if budget_usd is not None else "",
            f"{budget_tokens:,} tokens" if budget_tokens else "",
        ]
        header.append("budget: " + ", ".join(p for p in parts if p))
    header.append("marks: C compaction (C2: two), ! failed (no summary), P paused after compacting")
    warnings = []
    if unpriced:
        warnings.append(
            f"{unpriced} unpriced call(s): their cost is unknown and left out of the running total"
        )
    totals = (
        {
            "calls": len(rows),
            "iterations": iterations,
            "compactions": compactions,
            "cost_usd": running,
            "cumulative_cost_usd": running,
        }
        if rows
        else None
    )
    taxes = compaction_tax_rows(engine, filters, conversation_id, {r["call_id"]: r["n"] for r in rows})
    report = Report(
        name="conversation",
        columns=list(COLUMNS),
        rows=rows,
        totals=totals,
        header=header,
        warnings=warnings,
        extra={
            "conversation_id": conversation_id,
            "calls": len(rows),
            "compactions": compactions,
            "failed_compactions": failed,
            "cost_usd": running,
            "unpriced_calls": unpriced,
        },
        kinds={
            "n": "int",
            "time": "text",
            "started_at": "text",
            "call_id": "text",
            "model": "text",
            "stop_reason": "text",
            "iterations": "int",
            "compactions": "int",
            "marks": "text",
            "context_tokens": "int",
            "trigger_tokens": "int",
            "context_share": "ratio",
            "cost_usd": "usd",
            "cumulative_cost_usd": "usd",
        },
        labels={
            "n": "#",
            "stop_reason": "stop",
            "iterations": "iter",
            "marks": "compact",
            "call_id": "call (span id)",
            "context_tokens": "context",
            "trigger_tokens": "trigger",
            "context_share": "of trigger",
            "cost_usd": "cost",
            "cumulative_cost_usd": "cumulative",
        },
        table_columns=list(TABLE_COLUMNS),
        narrow_columns=[list(columns) for columns in NARROW_COLUMNS],
        notes=["One call in detail, its iterations priced: compactobs report call SPAN_ID"] if rows else [],
        title=f"Conversation {conversation_id}",
        empty_message="No calls of this conversation in this window.",
    )
    if taxes:
        report.extra["compaction_tax"] = taxes
        report.sections.append(
            Report(
                name="compaction_tax",
                title="Each compaction, all in: summary, cache it made rebuild, writes left unread",
                columns=list(taxes[0]),
                rows=taxes,
                kinds={
                    "n": "int",
                    "summary_usd": "usd",
                    "rebuild_usd": "usd",
                    "unread_usd": "usd",
                    "total_usd": "usd",
                    "post_pre_ratio": "ratio",
                },
                labels={"n": "#", "post_pre_ratio": "post/pre"},
            )
        )
    return report


def compaction_tax_rows(
    engine: Engine, filters: Filters, conversation_id: str, numbers: dict[str, int]
) -> list[dict[str, Any]]:
    """Each compaction of the conversation, all in (`compactobs.reports.tune.model.compaction_taxes`):
    `n` is the call's number in the timeline. Empty without threshold compaction."""
    from dataclasses import replace

    from compactobs.reports.tune.data import read_recorded, write_cost
    from compactobs.reports.tune.model import compaction_taxes, conversation_of

    recorded = read_recorded(engine, replace(filters, conversations=(conversation_id,)), None)
    records = recorded.by_conversation.get(conversation_id)
    conversation = conversation_of(conversation_id, None, records) if records else None
    if conversation is None:
        return []
    return [
        {
            "n": numbers.get(tax.call_id),
            "summary_usd": tax.summary_usd,
            "rebuild_usd": tax.rebuild_usd,
            "unread_usd": tax.unread_usd,
            "total_usd": tax.total_usd,
            "post_pre_ratio": tax.post_pre_ratio,
        }
        for tax in compaction_taxes(conversation, write_cost(recorded.write_usd, conversation))
    ]


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
    lines: list[Any] = []
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
) -> Any:
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


def _rich_render(lines: Sequence[Any], width: int) -> str:
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
