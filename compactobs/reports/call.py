"""`report call ID`: one call, down to its iterations, each priced, beside what its top-level usage said.

```python
report = call_report(engine, "req_011CWx...")   # a request id, a message id (msg_...) or a span id
```

Rows are the call's iterations in order (`usage.iterations`; one row for a call without them): type,
model, tokens by class, the rates that priced them and the cost. The rates are the ones used, read back
from the stored costs (class cost / class tokens, per million tokens: tier, batch, speed and residency
included), so each row's cost is its tokens at its rates. Server tools (web search) are one more row.
The rows sum to the call's cost (DESIGN.md section 3: iterations are the bill).

A second table sets the top-level `usage` (what the response's top level said: compaction left out)
beside the billed totals, and the difference.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.measures.cost import top_level_cost
from compactobs.reports.model import ColumnKind, Report
from compactobs.reports.render.cells import format_cell
from compactobs.reports.sources import Source, as_source
from compactobs.reports.times import from_epoch_ms

__all__ = ["COLUMNS", "call_report"]

_MILLION: Final = Decimal(1_000_000)
_CLASSES: Final = (
    # (row key, iterations column, cost column, rate key)
    ("input_tokens", "input_tokens", "cost_input_usd", "input_rate"),
    ("output_tokens", "output_tokens", "cost_output_usd", "output_rate"),
    ("cache_read_input_tokens", "cache_read_tokens", "cost_cache_read_usd", "cache_read_rate"),
    (
        "cache_creation_5m_input_tokens",
        "cache_write_5m_tokens",
        "cost_cache_write_5m_usd",
        "cache_write_5m_rate",
    ),
    (
        "cache_creation_1h_input_tokens",
        "cache_write_1h_tokens",
        "cost_cache_write_1h_usd",
        "cache_write_1h_rate",
    ),
)
COLUMNS: Final = [
    "idx",
    "type",
    "model",
    *(token for token, _, _, _ in _CLASSES),
    *(rate for _, _, _, rate in _CLASSES),
    "cost_usd",
    "note",
]
_LABELS: Final = {
    "idx": "#",
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache read",
    "cache_creation_5m_input_tokens": "write 5m",
    "cache_creation_1h_input_tokens": "write 1h",
    "input_rate": "in $/M",
    "output_rate": "out $/M",
    "cache_read_rate": "read $/M",
    "cache_write_5m_rate": "5m $/M",
    "cache_write_1h_rate": "1h $/M",
    "cost_usd": "cost",
}
_TOP_LEVEL: Final = [
    ("input_tokens", "input tokens"),
    ("output_tokens", "output tokens"),
    ("cost_usd", "cost"),
]


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _rate(cost: Decimal | None, tokens: int) -> Decimal | None:
    """The rate a class was priced at, per million tokens; None without tokens or without a price."""
    if cost is None or not tokens:
        return None
    return (cost / tokens * _MILLION).quantize(Decimal("0.000001"))


def _iteration_row(record: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"idx": record.idx, "type": record.type, "model": record.model}
    priced = record.priced is not False
    for token, column, cost_column, rate in _CLASSES:
        tokens = int(getattr(record, column) or 0)
        row[token] = tokens
        row[rate] = _rate(_money(getattr(record, cost_column)), tokens) if priced else None
    row["cost_usd"] = _money(record.cost_usd) if priced else None
    row["note"] = "declined: not billed" if record.declined else None if priced else "unpriced model"
    row["unpriced_calls"] = 0 if priced else 1  # not a column: the table says "unpriced", never $0
    return row


def call_report(source: Engine | Source, reference: str) -> Report:
    """One call by request id, message id or span id. Raises ReportInputError when none was recorded."""
    call, records = as_source(source).call_with_iterations(reference)
    rows = [_iteration_row(record) for record in records]
    if call.web_search_requests:
        rows.append(
            {
                "idx": None,
                "type": "web search",
                "model": None,
                **{token: 0 for token, _, _, _ in _CLASSES},
                **{rate: None for _, _, _, rate in _CLASSES},
                "cost_usd": _money(call.cost_server_tools_usd),
                "note": f"{int(call.web_search_requests):,} request(s)",
                "unpriced_calls": 0 if call.priced is not False else 1,
            }
        )
    cost = _money(call.cost_usd)
    totals: dict[str, Any] = {token: sum(row[token] for row in rows) for token, _, _, _ in _CLASSES}
    totals["cost_usd"] = cost

    compaction = sum(
        (row["cost_usd"] or Decimal(0) for row in rows if row["type"] == "compaction"), Decimal(0)
    )
    top_level = {
        "input_tokens": call.top_level_input_tokens,
        "output_tokens": call.top_level_output_tokens,
        # What a tool pricing the top level would say, as `report cost` says it.
        "cost_usd": top_level_cost(cost, compaction)[0],
    }
    billed = {
        "input_tokens": None if call.input_tokens is None else int(call.input_tokens),
        "output_tokens": None if call.output_tokens is None else int(call.output_tokens),
        "cost_usd": cost,
    }
    side = Report(
        name="call_top_level",
        title="Top-level usage beside the bill",
        columns=["figure", "top_level", "billed", "difference"],
        rows=[
            {
                "figure": label,
                "top_level": top_level[key],
                "billed": billed[key],
                "difference": None
                if top_level[key] is None or billed[key] is None
                else billed[key] - top_level[key],
                "unpriced_calls": 1 if key == "cost_usd" and cost is None and call.priced is False else 0,
            }
            for key, label in _TOP_LEVEL
        ],
        # Counts and dollars in one column each, formatted below; right-aligned as numbers.
        kinds={"figure": "key", "top_level": "int", "billed": "int", "difference": "int"},
        labels={"top_level": "top-level usage", "difference": "hidden (billed - top level)"},
    )
    for row in side.rows:
        kind: ColumnKind = "usd" if row["figure"] == "cost" else "int"
        for column in ("top_level", "billed", "difference"):
            row[column] = _figure(row[column], kind, row["unpriced_calls"])

    model = call.response_model or call.request_model
    started = from_epoch_ms(int(call.start_ms))
    identity = {
        "call_id": call.call_id,
        "request_id": call.request_id,
        "message_id": call.response_id,
        "conversation_id": call.conversation_id,
        "service": call.service_name,
        "started_at": started,
        "request_model": call.request_model,
        "response_model": call.response_model,
        "status": call.status,
        "error_type": call.error_type,
        "stop_reason": call.stop_reason,
        "attempts": call.attempts,
        "pricing_version": call.pricing_version,
        "priced": call.priced,
    }
    header = [
        f"span {call.call_id} · request {call.request_id or '-'} · message {call.response_id or '-'}",
        f"{started:%Y-%m-%d %H:%M:%S} UTC · {model or '(no model)'} · conversation "
        f"{call.conversation_id or '(none)'} · service {call.service_name or '(none)'}",
        f"status {call.status}"
        + (f" ({call.error_type})" if call.error_type else "")
        + f" · stop {call.stop_reason or '-'} · attempts {call.attempts}"
        + f" · priced by {call.pricing_version or '-'}",
        "Rates are per million tokens, read back from what each class cost.",
    ]
    warnings = []
    if call.priced is False:
        warnings.append(f"no price for {model}: tokens are counted, the cost is unknown (never $0)")
    table_columns = [name for name in COLUMNS if name != "note" or any(row["note"] for row in rows)]
    return Report(
        name="call",
        title=f"Call {call.call_id}",
        columns=list(COLUMNS),
        rows=rows,
        totals=totals if rows else None,
        header=header,
        warnings=warnings,
        extra={"call": identity, "top_level": top_level, "billed": billed},
        kinds={
            "idx": "int",
            "type": "key",
            "model": "text",
            **{token: "int" for token, _, _, _ in _CLASSES},
            **{rate: "usd" for _, _, _, rate in _CLASSES},
            "cost_usd": "usd",
            "note": "text",
        },
        labels=dict(_LABELS),
        table_columns=table_columns,
        sections=[side],
        empty_message="No usage: the call ended before any (nothing billed).",
        narrow_columns=[
            [
                "idx",
                "type",
                "model",
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "input_rate",
                "output_rate",
                "cost_usd",
            ],
            ["type", "input_tokens", "output_tokens", "input_rate", "output_rate", "cost_usd"],
            ["type", "input_tokens", "output_tokens", "cost_usd"],
        ],
    )


def _figure(value: Any, kind: ColumnKind, unpriced: int) -> str | None:
    """A figure of the top-level table as text: tokens as a count, money in dollars, unknown money
    "unpriced"."""
    if value is None:
        return "unpriced" if unpriced else None
    return format_cell(value, kind)
