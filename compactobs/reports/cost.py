"""`report cost`: what the calls cost, grouped by time, model, conversation, service or iteration type.

```python
report = cost_report(engine, build_filters("30d", None, "Europe/Paris"), by=("day", "model"))
```

Assembled from a report `Source` (`reports.sources`: the SQL store, ClickHouse), which sums the measures of
`reports.measures.cost` per group (SQL aggregates, never a row per call in Python).

Which rows each grouping sums, so that totals always equal the sum of the groups:
- time (hour, day, week, month), conversation, service: `calls` alone. Every call is one row; its billed
  totals already sum all its iterations. Buckets are the local hour/day/week in the report's zone,
  computed in SQL from `calls.start_ms` (see `times.local_bucket`); months are local days rolled up.
- model, iteration type: `calls LEFT JOIN iterations`. Tokens and per-class costs come from each
  iteration, so each iteration counts at its own model and type (a compaction on a cheaper model is
  that model's cost). What belongs to the call (the call itself, its error status, its web searches and
  their cost) is counted once, on the call's last iteration (the one that produced the response); a call
  with no iteration rows (an error without usage) is one row keyed by its response/request model. Time
  buckets still come from `calls.start_ms` (an iteration row's start_ms is the call's end).

Unpriced calls (a model with no price: `calls.priced` false) are rows of their own, never $0: the same
group keys, their tokens, `cost_usd` null and `unpriced_calls` = their count; every one of their
iterations goes there, so priced rows hold only fully priced calls and cost totals agree whatever the
grouping. Grouped by model, an unpriced model's calls without usage (errors: nothing billed, `priced`
NULL) join its unpriced row, so the model is one row, never a $0 row beside it. Totals' money is the
priced calls'; a warning names the unpriced models.

The headline: what the top-level `usage` alone would have said, and the gap. The top-level fields leave
the compaction iterations out (DESIGN.md section 3, rule 1), so a tool that prices them reports the bill
less what compaction cost: `top_level_cost_usd` = `cost_usd` - `compaction_cost_usd`, and
`hidden_cost_usd` = `compaction_cost_usd`, in every priced row and in the totals (null in unpriced rows).
Other iteration types the top level may leave out (advisor_message) are not counted in the gap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine

from compactobs.reports.measures.cost import (
    COUNTS,
    HEADLINE,
    MEASURES,
    MONEY,
    empty_measures,
    top_level_cost,
)
from compactobs.reports.measures.groups import (
    BY_CHOICES,
    CALLS_ONLY,
    ITERATION_LEVEL,
    KEY_OF,
    VARIANT_KEYS,
    key_of,
    parse_by,
)
from compactobs.reports.model import ColumnKind, Filters, Report, ReportInputError

if TYPE_CHECKING:
    from compactobs._types import JSON
from compactobs.reports.render.cells import format_cell
from compactobs.reports.sources import Source, as_source
from compactobs.reports.times import TIME_UNITS, local_buckets

__all__ = [
    "BY_CHOICES",
    "CALLS_ONLY",
    "COMPARE_CHOICES",
    "HEADLINE",
    "KEY_OF",
    "MEASURES",
    "VARIANT_KEYS",
    "cost_report",
    "headline",
    "parse_by",
    "top_level_cost",
]

COMPARE_CHOICES: Final[tuple[str, ...]] = ("prev",)
DEFAULT_COMPARE_PERIOD: Final = timedelta(days=7)
"""The window `--compare prev` takes without --since."""
_COMPARED: Final[tuple[str, ...]] = ("calls", "cost_usd")
_ZERO: Final = Decimal(0)

_LABELS: Final[dict[str, str]] = {
    "conversation_id": "conversation",
    "iteration_type": "iteration type",
    "calls": "calls",
    "error_calls": "errors",
    "compactions": "compactions",
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache read",
    "cache_creation_input_tokens": "cache write",
    "cost_usd": "cost",
    "top_level_cost_usd": "top-level says",
    "hidden_cost_usd": "hidden",
    "unpriced_calls": "unpriced",
    "prev_cost_usd": "prev cost",
    "delta_cost_usd": "Δ cost",
    "delta_cost_pct": "Δ %",
}


def _with_headline(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with HEADLINE (`top_level_cost`); None for an unpriced row."""
    row["top_level_cost_usd"], row["hidden_cost_usd"] = top_level_cost(
        row["cost_usd"], row["compaction_cost_usd"]
    )
    return row


def headline(top_level_usd: Decimal, billed_usd: Decimal, hidden_usd: Decimal) -> str:
    """The product's headline in words, as the cost report and the demo say it."""
    share = f" ({float(hidden_usd / billed_usd) * 100:.1f}% of the bill)" if billed_usd else ""
    return (
        f"top-level usage says ${top_level_usd:,.4f}; billed ${billed_usd:,.4f}; "
        f"${hidden_usd:,.4f} hidden in compaction iterations{share}"
    )


def _window_rows(
    source: Source, filters: Filters, by: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The rows (group keys + measures; unpriced calls in rows of their own), totals, and the models of
    the unpriced calls, of one window."""
    span = source.data_range(filters)
    if span is None:
        return [], _totals([]), []
    unit = next((name for name in by if name in TIME_UNITS), None)
    buckets = local_buckets(unit, filters.tz, span[0], span[1]) if unit else None
    everything, by_model = source.cost_groups(filters, by, buckets)
    unpriced: dict[tuple[Any, ...], dict[str, Any]] = {}
    models: set[str] = set()
    for group, measures in by_model.items():
        models.add(group[-1] if group[-1] is not None else "(no model)")
        row = unpriced.setdefault(group[:-1], empty_measures())
        for name in (*COUNTS, *MONEY, "unpriced_calls"):
            row[name] += measures[name]
    names = [key_of(name) for name in by]
    rows: list[dict[str, Any]] = []
    for group, measures in everything.items():
        keys = dict(zip(names, group, strict=True))
        left_out = unpriced.get(group)
        if left_out is None:
            rows.append(_with_headline({**keys, **measures}))
            continue
        priced = {name: measures[name] - left_out[name] for name in (*COUNTS, *MONEY, "unpriced_calls")}
        left_out["unpriced_calls"] = left_out["calls"]
        if not priced["iterations"] and priced["calls"] and "model" in by:
            # Only calls of this unpriced model without usage (errors: nothing billed, no price looked up)
            # are left: they join its unpriced row, so the model stays one row, not a false $0 beside it.
            for name in COUNTS:
                left_out[name] += priced[name]
        elif priced["calls"] or priced["iterations"]:
            rows.append(_with_headline({**keys, **priced}))
        rows.append(_with_headline({**keys, **left_out, **dict.fromkeys(MONEY)}))
    return rows, _totals(rows), sorted(models)


def _totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    totals = empty_measures()
    for row in rows:
        for name in COUNTS:
            totals[name] += row[name]
        totals["unpriced_calls"] += row["unpriced_calls"]
        for name in MONEY:
            if row[name] is not None:
                totals[name] += row[name]
    cost = totals["cost_usd"]
    totals["compaction_share"] = (totals["compaction_cost_usd"] / cost) if cost else None
    return _with_headline(totals)


def _sort_key(keys: Sequence[str], time_key: str | None) -> Callable[[Mapping[str, Any]], tuple[object, ...]]:
    def key(row: Mapping[str, Any]) -> tuple[object, ...]:
        cost = row["cost_usd"]
        return (
            row[time_key] if time_key else "",
            cost is None,
            -(cost or 0),
            -row["calls"],
            tuple("" if row[k] is None else str(row[k]) for k in keys if k != time_key),
        )

    return key


def _delta(current: Decimal | None, previous: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    if current is None or previous is None:
        return None, None
    delta = current - previous
    pct = (Decimal(delta) / Decimal(previous)) if previous else None
    return delta, pct


def cost_report(
    engine: Engine | Source,
    filters: Filters,
    by: Sequence[str] = ("day",),
    compare: str | None = None,
    now: datetime | None = None,
) -> Report:
    """The cost report: one row per group (and per unpriced group), totals, the cost split by token class
    and the share spent on compaction iterations. `by` takes BY_CHOICES names (see `parse_by`);
    `compare="prev"` adds the delta against the previous period of the same length (without a since: the
    last 7 days against the 7 before).

    Raises ReportInputError for a bad grouping or comparison. Reads `engine` (a SQL store's, or any
    report Source) only.
    """
    groups = parse_by(by)
    if compare is not None and compare not in COMPARE_CHOICES:
        raise ReportInputError(f"cannot compare with {compare!r}: use {', '.join(COMPARE_CHOICES)}")
    keys = [key_of(name) for name in groups]
    time_key = next((key_of(name) for name in groups if name in TIME_UNITS), None)

    window = filters
    previous: Filters | None = None
    if compare == "prev":
        # Pin "now", so both periods have exactly the same length.
        until = filters.until or (now or datetime.now(timezone.utc))
        # Without --since: the last 7 days against the 7 before (all time has no previous period).
        since = filters.since if filters.since is not None else until - DEFAULT_COMPARE_PERIOD
        window = filters.with_window(since, until)
        previous = filters.with_window(since - (until - since), since)

    source = as_source(engine)
    source.refresh(filters, groups)
    rows, totals, unpriced_models = _window_rows(source, window, groups)
    rows.sort(key=_sort_key(keys, time_key))

    title = f"Cost by {', '.join(groups)}" if groups else "Cost"
    header = [window.describe()]
    if any(name in ITERATION_LEVEL for name in groups):
        header.append(
            "Each iteration at its own model and type; each call counted once, on its last iteration."
        )
    extra: dict[str, JSON] = {
        "by": [key_of(name) for name in groups],
        "timezone": window.zone,
        "since": window.since,
        "until": window.until,
    }

    compare_columns: list[str] = []
    if previous is not None:
        prev_rows, prev_totals, _ = _window_rows(source, previous, groups)
        compare_columns = ["prev_cost_usd", "delta_cost_usd", "delta_cost_pct"]
        by_group = {(*(r[k] for k in keys), r["cost_usd"] is None): r for r in prev_rows}
        for row in rows:
            prev_cost = None
            if time_key is None and row["cost_usd"] is not None:
                prev = by_group.get((*(row[k] for k in keys), False))
                prev_cost = prev["cost_usd"] if prev is not None else _ZERO
            delta, pct = _delta(row["cost_usd"], prev_cost)
            row.update({"prev_cost_usd": prev_cost, "delta_cost_usd": delta, "delta_cost_pct": pct})
        delta, pct = _delta(totals["cost_usd"], prev_totals["cost_usd"])
        totals.update(
            {"prev_cost_usd": prev_totals["cost_usd"], "delta_cost_usd": delta, "delta_cost_pct": pct}
        )
        extra["compare"] = {
            "with": "prev",
            "since": previous.since,
            "until": previous.until,
            "totals": {name: prev_totals[name] for name in (*MEASURES, "compaction_share")},
            "delta": {name: _delta(totals[name], prev_totals[name])[0] for name in _COMPARED},
            "delta_pct": {name: _delta(totals[name], prev_totals[name])[1] for name in _COMPARED},
        }
        header.append(
            f"Compared with the previous period: {previous.describe().split(' · ')[0]}"
            + (" (deltas in the totals only: rows are time buckets)" if time_key else "")
        )

    warnings: list[str] = []
    if totals["unpriced_calls"]:
        warnings.append(
            f"{totals['unpriced_calls']:,} call(s) could not be priced (model(s): "
            f"{', '.join(unpriced_models)}): "
            "their tokens are counted, their cost is not in the totals. Add the price to the file named by "
            "COMPACTOBS_PRICING_FILE, then run `compactobs reprice`."
        )

    columns = [*keys, *MEASURES, *HEADLINE, *compare_columns]
    table_columns = [
        *keys,
        # A call counts once, on its last iteration: by iteration type, its count beside a compaction row's
        # compactions read as "1 call, 6 compactions"; the row's own iterations are what it holds.
        "iterations" if "iteration_type" in keys else "calls",
        "error_calls",
        "compactions",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cost_usd",
        *HEADLINE,
    ]
    if totals["unpriced_calls"]:
        table_columns.append("unpriced_calls")
    if compare_columns:
        table_columns += ["prev_cost_usd", "delta_cost_usd", "delta_cost_pct"] if not time_key else []

    kinds: dict[str, ColumnKind] = {k: "key" for k in keys}
    kinds.update({name: "int" for name in COUNTS})
    kinds["unpriced_calls"] = "int"
    kinds.update({name: "usd" for name in (*MONEY, *HEADLINE, "prev_cost_usd")})
    kinds.update(
        {"delta_cost_usd": "usd_delta", "delta_cost_pct": "ratio_delta", "compaction_share": "ratio"}
    )

    unpriced = ["unpriced_calls"] if totals["unpriced_calls"] else []
    # Smaller sets for a terminal of 120 and of 80 columns: the groups, their calls and what they cost stay,
    # and what the top level hides while there is room.
    narrow_columns = [
        [
            *keys,
            "calls",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cost_usd",
            "hidden_cost_usd",
            *unpriced,
        ],
        [*keys, "calls", "cost_usd", "hidden_cost_usd", *unpriced],
        [*keys, "calls", "cost_usd"],
        [*keys, "cost_usd"],
    ]
    if compare_columns and not time_key:
        narrow_columns = [[*columns, "delta_cost_usd"] for columns in narrow_columns[:2]] + narrow_columns
    report = Report(
        name="cost",
        title=title,
        columns=columns,
        rows=rows,
        totals=totals,
        header=header,
        warnings=warnings,
        extra=extra,
        kinds=kinds,
        labels=dict(_LABELS),
        table_columns=table_columns,
        sections=[_split_section(rows, totals)] if rows else [],
        empty_message="No calls recorded in this window.",
        narrow_columns=narrow_columns,
        # On a terminal, spend over time as bars beside the cost.
        bar_column="cost_usd" if time_key is not None and not compare_columns else None,
    )
    if rows and totals["compaction_cost_usd"]:
        words = headline(totals["top_level_cost_usd"], totals["cost_usd"], totals["hidden_cost_usd"])
        report.notes.append(words[0].upper() + words[1:] + ".")
    if compare_columns and rows:
        prev_cost = totals["prev_cost_usd"]
        pct = totals["delta_cost_pct"]
        report.notes.append(
            f"Previous period: ${prev_cost:,.4f}; change {format_cell(totals['delta_cost_usd'], 'usd_delta')}"
            + (f" ({float(pct) * 100:+.1f}%)." if pct is not None else " (no cost before).")
        )
    return report


def _split_section(rows: Sequence[Mapping[str, Any]], totals: Mapping[str, Any]) -> Report:
    """The priced cost by token class, with each class's share (tokens of the priced calls only)."""
    cost = totals["cost_usd"]
    priced = _totals([row for row in rows if row["cost_usd"] is not None])
    entries = [
        ("input (uncached)", priced["input_tokens"], totals["cost_input_usd"]),
        ("output", priced["output_tokens"], totals["cost_output_usd"]),
        ("cache read", priced["cache_read_input_tokens"], totals["cost_cache_read_usd"]),
        ("cache write 5m", priced["cache_creation_5m_input_tokens"], totals["cost_cache_write_5m_usd"]),
        ("cache write 1h", priced["cache_creation_1h_input_tokens"], totals["cost_cache_write_1h_usd"]),
        ("web search (requests)", priced["web_search_requests"], totals["cost_server_tools_usd"]),
    ]
    split: list[dict[str, Any]] = [
        {"class": name, "tokens": amount, "cost_usd": money, "share": (money / cost) if cost else None}
        for name, amount, money in entries
    ]
    return Report(
        name="cost_split",
        title="Cost by token class (priced calls)",
        columns=["class", "tokens", "cost_usd", "share"],
        rows=split,
        totals={"tokens": None, "cost_usd": cost, "share": Decimal(1) if cost else None},
        kinds={"class": "key", "tokens": "int", "cost_usd": "usd", "share": "ratio"},
        labels={"class": "token class", "tokens": "tokens", "cost_usd": "cost", "share": "share"},
    )
