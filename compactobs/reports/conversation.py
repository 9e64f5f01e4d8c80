"""`report conversation ID`: one conversation call by call, and a chart of its context against the trigger.

Each row is a call, in start order: its time (in the report's zone), model, stop reason or error, billed
iterations, the context size after the call (total input of its last `message` iteration, the size the
compaction trigger is compared with), the trigger, compaction marks, its cost and the running total.

Compaction marks: `C` a compaction ran in the call (`C2`: two, with server tools), `!` one returned no
summary (billed, content null), `P` the call paused after compacting (`pause_after_compaction`: no message
iteration, so no context size of its own).

Each row also splits its cost by iteration type (`message_cost_usd`, `compaction_cost_usd`,
`advisor_cost_usd`, `fallback_cost_usd`, `other_cost_usd`: in JSON and CSV, not in the table), the rule of
`report cost --by iteration-type`: the call's server tools are billed on its last iteration.

The running total adds the priced calls; an unpriced call (no price for its model) adds nothing and is
counted in a warning, never as $0.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.model import Filters, Report
from compactobs.reports.sources import Source, as_source

__all__ = ["COLUMNS", "TYPE_COLUMNS", "TYPE_COSTS", "conversation_report", "marks"]

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
    "message_cost_usd",
    "compaction_cost_usd",
    "advisor_cost_usd",
    "fallback_cost_usd",
    "other_cost_usd",
]
TYPE_COLUMNS: Final = {
    "message": "message_cost_usd",
    "compaction": "compaction_cost_usd",
    "advisor_message": "advisor_cost_usd",
    "fallback_message": "fallback_cost_usd",
}
"""Each call's cost by the iteration type it was billed as; any other type (or none) is `other_cost_usd`."""
OTHER_TYPE: Final = "other_cost_usd"
TYPE_COSTS: Final = (*TYPE_COLUMNS.values(), OTHER_TYPE)
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


def conversation_report(source: Engine | Source, filters: Filters, conversation_id: str) -> Report:
    """The calls of one conversation (those `filters` select), in start order. Raises ReportInputError
    when no call was ever recorded with this id."""
    result = as_source(source).conversation_calls(filters, conversation_id)
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
    type_totals = _split_by_type(source, filters, conversation_id, rows)
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
            **type_totals,
        }
        if rows
        else None
    )
    taxes = compaction_tax_rows(source, filters, conversation_id, {r["call_id"]: r["n"] for r in rows})
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
            **{name: "usd" for name in TYPE_COSTS},
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
            **{name: name.removesuffix("_cost_usd") for name in TYPE_COSTS},
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


def _split_by_type(
    source: Engine | Source, filters: Filters, conversation_id: str, rows: list[dict[str, Any]]
) -> dict[str, Decimal]:
    """Adds each priced call's cost by iteration type to its row (TYPE_COSTS; None for an unpriced call) and
    returns their totals over the priced calls. The call's server tools are on its last iteration's type,
    as in `report cost --by iteration-type`, so a call's parts add up to its cost."""
    parts: dict[str, dict[str, Decimal]] = {}
    for call_id, kind, cost in as_source(source).conversation_type_costs(filters, conversation_id):
        if cost is not None:
            split = parts.setdefault(call_id, {})
            name = TYPE_COLUMNS.get(kind, OTHER_TYPE)
            split[name] = split.get(name, Decimal(0)) + Decimal(str(cost))
    totals = {name: Decimal(0) for name in TYPE_COSTS}
    for row in rows:
        split = parts.get(row["call_id"], {})
        for name in TYPE_COSTS:
            value = None if row["cost_usd"] is None else split.get(name, Decimal(0))
            row[name] = value
            if value is not None:
                totals[name] += value
    return totals


def compaction_tax_rows(
    source: Engine | Source, filters: Filters, conversation_id: str, numbers: dict[str, int]
) -> list[dict[str, Any]]:
    """Each compaction of the conversation, all in (`compactobs.reports.replay.model.compaction_taxes`):
    `n` is the call's number in the timeline. Empty without threshold compaction."""
    from dataclasses import replace

    from compactobs.reports.replay.data import read_recorded, write_cost
    from compactobs.reports.replay.model import compaction_taxes, conversation_of

    recorded = read_recorded(source, replace(filters, conversations=(conversation_id,)), None)
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
