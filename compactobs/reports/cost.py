"""`report cost`: what the calls cost, grouped by time, model, conversation, service or iteration type.

```python
report = cost_report(engine, build_filters("30d", None, "Europe/Paris"), by=("day", "model"))
```

A pure function over the store: SQL aggregates (one GROUP BY, never a row per call in Python), the same
SQL on SQLite and PostgreSQL.

Which table each grouping reads, so that totals always equal the sum of the groups:
- time (hour, day, week, month), conversation, service: `calls` alone. Every call is one row; its billed
  totals already sum all its iterations. Buckets are the local hour/day/week in the report's zone,
  computed in SQL from `calls.start_ms` (see `_common.local_bucket`); months are local days rolled up.
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

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Engine, and_, case, false, func, or_, select
from sqlalchemy.sql.elements import Label

from compactobs.reports import rollup
from compactobs.reports.model import ExternalSource, Filters, Report, ReportInputError
from compactobs.reports.render.cells import format_cell
from compactobs.reports.sources.sql_reading import bucket_source, reading
from compactobs.reports.times import TIME_UNITS, Buckets, bucket_label, local_bucket, local_buckets
from compactobs.store.models import calls, iterations

__all__ = [
    "BY_CHOICES",
    "CALLS_ONLY",
    "COMPARE_CHOICES",
    "HEADLINE",
    "KEY_OF",
    "MEASURES",
    "VARIANT_KEYS",
    "aggregate_calls",
    "cost_report",
    "data_range",
    "group_keys",
    "headline",
    "parse_by",
    "top_level_cost",
]

BY_CHOICES: Final[tuple[str, ...]] = (
    "hour",
    "day",
    "week",
    "month",
    "model",
    "conversation",
    "service",
    "provider",
    "iteration-type",
)
CALLS_ONLY: Final = frozenset({"conversation", "provider"})
"""Groupings the rollups (and ClickHouse's slots) do not keep: a report grouped by one reads the calls."""
COMPARE_CHOICES: Final[tuple[str, ...]] = ("prev",)
DEFAULT_COMPARE_PERIOD: Final = timedelta(days=7)
"""The window `--compare prev` takes without --since."""
KEY_OF: Final[dict[str, str]] = {
    "hour": "hour",
    "day": "day",
    "week": "week",
    "month": "month",
    "model": "model",
    "conversation": "conversation_id",
    "service": "service",
    "provider": "provider",
    "iteration-type": "iteration_type",
    # Call-level variants: not `--by` choices of this report (its rollups do not keep them), but groupings
    # that `_aggregate_raw` serves from `calls` for reconcile, beside Anthropic's own reports.
    "service_tier": "service_tier",
    "speed": "speed",
    "inference_geo": "inference_geo",
}
VARIANT_KEYS: Final[tuple[str, ...]] = ("service_tier", "speed", "inference_geo")
ITERATION_LEVEL: Final = frozenset({"model", "iteration-type"})
"""Groupings that read `calls LEFT JOIN iterations` (each iteration at its own model and type)."""

COUNTS: Final[tuple[str, ...]] = (
    "calls",
    "error_calls",
    "iterations",
    "compactions",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "web_search_requests",
)
MONEY: Final[tuple[str, ...]] = (
    "cost_usd",
    "cost_input_usd",
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
    "cost_server_tools_usd",
    "compaction_cost_usd",
)
MEASURES: Final[tuple[str, ...]] = (*COUNTS[:11], "cost_usd", "unpriced_calls", *MONEY[1:])
"""Every row's measures, in JSON order: DESIGN.md's fields, then the cost split by token class."""

HEADLINE: Final[tuple[str, ...]] = ("top_level_cost_usd", "hidden_cost_usd")
"""Derived from each row's measures (see the module's docstring), after them in JSON and CSV."""

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


def parse_by(values: Iterable[str]) -> tuple[str, ...]:
    """The groupings in the order given, without repeats. Raises ReportInputError for an unknown one, or
    for two time units at once (a day is inside one month: group by the finer one)."""
    result: list[str] = []
    for value in values:
        name = value.strip().lower().replace("_", "-")
        if name in ("iteration", "type", "iteration_type"):
            name = "iteration-type"
        if name in ("conversation-id", "session"):
            name = "conversation"
        if name not in BY_CHOICES:
            raise ReportInputError(f"cannot group by {value!r}: use one of {', '.join(BY_CHOICES)}")
        if name not in result:
            result.append(name)
    units = [name for name in result if name in TIME_UNITS]
    if len(units) > 1:
        raise ReportInputError(f"group by one time unit at a time, not {' and '.join(units)}")
    return tuple(result)


def data_range(engine: Engine, filters: Filters) -> tuple[int, int] | None:
    """(first, last) start_ms of the calls in the window (two index lookups), None when there is none."""
    if isinstance(engine, ExternalSource):
        return engine.data_range(filters)  # type: ignore[attr-defined]
    conditions = []
    if filters.since_ms is not None:
        conditions.append(calls.c.start_ms >= filters.since_ms)
    if filters.until_ms is not None:
        conditions.append(calls.c.start_ms < filters.until_ms)
    lo = select(func.min(calls.c.start_ms)).where(*conditions).scalar_subquery()
    hi = select(func.max(calls.c.start_ms)).where(*conditions).scalar_subquery()
    with engine.connect() as connection:
        first, last = connection.execute(select(lo, hi)).one()
    if first is None or last is None:
        return None
    return int(first), int(last)


def _num(value: Any) -> int:
    return int(value) if value is not None else 0


def _money(value: Any) -> Decimal:
    if value is None:
        return _ZERO
    return value if isinstance(value, Decimal) else Decimal(str(value))


def group_keys(by: Sequence[str], iteration_level: bool) -> list[Label[Any]]:
    """The non-time group keys, labelled `k_<json key>`."""
    c, i = calls.c, iterations.c
    keys: list[Label[Any]] = []
    for name in by:
        if name == "conversation":
            keys.append(c.conversation_id.label("k_conversation_id"))
        elif name == "service":
            keys.append(c.service_name.label("k_service"))
        elif name == "provider":
            keys.append(c.provider.label("k_provider"))
        elif name == "model":
            assert iteration_level
            keys.append(func.coalesce(i.model, c.response_model, c.request_model).label("k_model"))
        elif name == "iteration-type":
            assert iteration_level
            keys.append(i.type.label("k_iteration_type"))
        elif name in VARIANT_KEYS:
            keys.append(c[name].label(f"k_{name}"))
    return keys


def call_measures() -> list[Label[Any]]:
    """Measures over `calls` alone: one row per call, whose totals already sum its iterations."""
    c = calls.c
    compaction_cost = (
        select(func.sum(iterations.c.cost_usd))
        .where(iterations.c.call_id == c.call_id, iterations.c.type == "compaction")
        .scalar_subquery()
    )
    return [
        func.count().label("calls"),
        func.sum(case((c.status == "ERROR", 1), else_=0)).label("error_calls"),
        func.sum(c.iterations_count).label("iterations"),
        func.sum(c.compactions_count).label("compactions"),
        func.sum(c.input_tokens).label("input_tokens"),
        func.sum(c.output_tokens).label("output_tokens"),
        func.sum(c.cache_read_tokens).label("cache_read_input_tokens"),
        func.sum(c.cache_write_5m_tokens).label("cache_creation_5m_input_tokens"),
        func.sum(c.cache_write_1h_tokens).label("cache_creation_1h_input_tokens"),
        func.sum(c.web_search_requests).label("web_search_requests"),
        func.sum(case((c.priced == false(), 1), else_=0)).label("unpriced_calls"),
        func.sum(c.cost_usd).label("cost_usd"),
        func.sum(c.cost_input_usd).label("cost_input_usd"),
        func.sum(c.cost_output_usd).label("cost_output_usd"),
        func.sum(c.cost_cache_read_usd).label("cost_cache_read_usd"),
        func.sum(c.cost_cache_write_5m_usd).label("cost_cache_write_5m_usd"),
        func.sum(c.cost_cache_write_1h_usd).label("cost_cache_write_1h_usd"),
        func.sum(c.cost_server_tools_usd).label("cost_server_tools_usd"),
        # The compaction iterations' cost, looked up by primary key only for the calls that compacted.
        func.sum(case((c.compactions_count > 0, compaction_cost), else_=None)).label("compaction_cost_usd"),
    ]


def iteration_measures() -> list[Label[Any]]:
    """Measures over `calls LEFT JOIN iterations`: tokens and class costs per iteration; what belongs to
    the call once, on its last iteration (or on the call itself when it has no iteration rows)."""
    c, i = calls.c, iterations.c
    no_rows = i.call_id.is_(None)
    carrier = or_(no_rows, i.idx == func.coalesce(c.iterations_count, 1) - 1)

    def per_iteration(iteration_column: ColumnElement[Any], call_column: ColumnElement[Any]) -> Any:
        # An iteration row always carries its tokens and class costs (0, never NULL): coalesce picks the
        # call's own figures only for a call without iteration rows, and costs less than a CASE.
        return func.sum(func.coalesce(iteration_column, call_column))

    def per_call(call_column: ColumnElement[Any]) -> Any:
        return func.sum(case((carrier, call_column), else_=None))

    server_tools = func.coalesce(c.cost_server_tools_usd, 0)
    return [
        func.sum(case((carrier, 1), else_=0)).label("calls"),
        func.sum(case((and_(carrier, c.status == "ERROR"), 1), else_=0)).label("error_calls"),
        func.count(i.call_id).label("iterations"),
        func.sum(case((i.type == "compaction", 1), else_=0)).label("compactions"),
        per_iteration(i.input_tokens, c.input_tokens).label("input_tokens"),
        per_iteration(i.output_tokens, c.output_tokens).label("output_tokens"),
        per_iteration(i.cache_read_tokens, c.cache_read_tokens).label("cache_read_input_tokens"),
        per_iteration(i.cache_write_5m_tokens, c.cache_write_5m_tokens).label(
            "cache_creation_5m_input_tokens"
        ),
        per_iteration(i.cache_write_1h_tokens, c.cache_write_1h_tokens).label(
            "cache_creation_1h_input_tokens"
        ),
        per_call(c.web_search_requests).label("web_search_requests"),
        func.sum(case((and_(carrier, c.priced == false()), 1), else_=0)).label("unpriced_calls"),
        func.sum(case((no_rows, c.cost_usd), (carrier, i.cost_usd + server_tools), else_=i.cost_usd)).label(
            "cost_usd"
        ),
        per_iteration(i.cost_input_usd, c.cost_input_usd).label("cost_input_usd"),
        per_iteration(i.cost_output_usd, c.cost_output_usd).label("cost_output_usd"),
        per_iteration(i.cost_cache_read_usd, c.cost_cache_read_usd).label("cost_cache_read_usd"),
        per_iteration(i.cost_cache_write_5m_usd, c.cost_cache_write_5m_usd).label("cost_cache_write_5m_usd"),
        per_iteration(i.cost_cache_write_1h_usd, c.cost_cache_write_1h_usd).label("cost_cache_write_1h_usd"),
        per_call(c.cost_server_tools_usd).label("cost_server_tools_usd"),
        func.sum(case((i.type == "compaction", i.cost_usd), else_=None)).label("compaction_cost_usd"),
    ]


def top_level_cost(cost: Decimal | None, compaction_cost: Decimal | None) -> tuple[Any, Any]:
    """(what the top-level usage says, the gap): the bill without its compaction iterations, and their
    cost; (None, None) when the bill is unknown (unpriced)."""
    hidden = compaction_cost if cost is not None else None
    return (cost - hidden if cost is not None and hidden is not None else None), hidden


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


def _empty_measures() -> dict[str, Any]:
    """Zero of every measure, in JSON order (MEASURES)."""
    return {name: _ZERO if name in MONEY else 0 for name in MEASURES}


_Group = tuple[Any, ...]


def aggregate_calls(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    conditions: Sequence[ColumnElement[bool]] = (),
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The report's measures by group, read from `calls` (and `iterations`) alone, never the rollups: `by`
    takes BY_CHOICES names and VARIANT_KEYS; `conditions` narrow the calls. {group values: measures}."""
    return _aggregate_raw(connection, filters, by, buckets, conditions)


def _aggregate_raw(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    conditions: Sequence[ColumnElement[bool]] = (),
    with_model: bool = False,
    result: dict[_Group, dict[str, Any]] | None = None,
) -> dict[_Group, dict[str, Any]]:
    """One GROUP BY over the window's rows in `calls` (and `iterations`), added into `result`: {group key
    values (in `by` order): measures}. Rows of buckets that share a label (the hour repeated when clocks go
    back) are merged. `with_model`: the call's model (response, else request) is one more key, last."""
    iteration_level = any(name in ITERATION_LEVEL for name in by)
    keys = group_keys(by, iteration_level)
    if with_model:
        keys.append(func.coalesce(calls.c.response_model, calls.c.request_model).label("k_call_model"))
    measures = iteration_measures() if iteration_level else call_measures()
    where = [*filters.call_conditions(), *conditions]
    result = {} if result is None else result
    unit = buckets.unit if buckets is not None else None
    with contextlib.ExitStack() as stack:
        source: Any = calls
        group: list[ColumnElement[Any]] = list(keys)
        # The few unpriced calls are found by a scan (no index on `priced`); on SQLite, so is every call
        # joined to its iterations: reading calls in start_ms order (`bucket_source`) fetches each row at
        # random, and the model key needs a sort anyway. Their local bucket is computed per row
        # (`local_bucket`: the same local hours, days, weeks; months from days).
        per_row = with_model or (iteration_level and connection.dialect.name == "sqlite")
        if buckets is not None and per_row:
            sql_unit: Any = "day" if buckets.unit == "month" else buckets.unit
            lo, hi = buckets.starts[0], buckets.end
            group.insert(0, local_bucket(calls.c.start_ms, sql_unit, filters.tz, lo, hi).label("t_local"))
        elif buckets is not None:
            source, bucket = stack.enter_context(bucket_source(connection, buckets, calls.c.start_ms, calls))
            group.insert(0, bucket.label("t_bucket"))
        if iteration_level:
            source = source.outerjoin(iterations, iterations.c.call_id == calls.c.call_id)
        statement = select(*group, *measures).select_from(source).where(*where)
        if group:
            statement = statement.group_by(*group)
        for record in connection.execute(statement).mappings():
            values: list[Any] = []
            for name in by:
                if name in TIME_UNITS:
                    assert buckets is not None and unit is not None
                    if per_row:
                        values.append(bucket_label(unit, int(record["t_local"])))
                    else:
                        values.append(buckets.labels[int(record["t_bucket"]) - 1])
                else:
                    values.append(record[f"k_{KEY_OF[name]}"])
            if with_model:
                values.append(record["k_call_model"])
            _add(result, tuple(values), record)
    return result


_SUMMED: Final = tuple(
    name for name in (*COUNTS, "unpriced_calls", *MONEY) if name != "cache_creation_input_tokens"
)
"""The measures a query sums (the write total is derived)."""


def _add(result: dict[_Group, dict[str, Any]], group: _Group, record: Mapping[Any, Any]) -> None:
    row = result.get(group)
    if row is None:
        row = result[group] = _empty_measures()
    for name in _SUMMED:
        row[name] += _money(record[name]) if name in MONEY else _num(record[name])
    row["cache_creation_input_tokens"] = (
        row["cache_creation_5m_input_tokens"] + row["cache_creation_1h_input_tokens"]
    )


def _aggregate(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    split: rollup.Split | None,
    unpriced_only: bool = False,
    with_model: bool = False,
) -> dict[_Group, dict[str, Any]]:
    """The window's measures by group (see `_aggregate_raw`): whole clean slots from the rollups, the rest
    from `calls`, as `split` says (see `compactobs.reports.rollup`; None: all from `calls`)."""
    raw_conditions = [calls.c.priced == false()] if unpriced_only else []
    span = (buckets.starts[0], buckets.end) if buckets is not None else None
    if split is None:
        return _aggregate_raw(connection, filters, by, buckets, raw_conditions, with_model)
    result: dict[_Group, dict[str, Any]] = {}
    if split.raw_condition is not None:
        _aggregate_raw(
            connection, filters, by, buckets, [*raw_conditions, split.raw_condition], with_model, result
        )
    level = "iteration" if any(name in ITERATION_LEVEL for name in by) else "call"
    for group, record in rollup.read(
        connection, level, filters, split, by, span, _SUMMED, unpriced_only, with_model
    ):
        _add(result, group, record)
    return result


def _groups(
    engine: Engine, filters: Filters, by: Sequence[str], buckets: Buckets | None
) -> tuple[dict[_Group, dict[str, Any]], dict[_Group, dict[str, Any]]]:
    """(every group's measures, the unpriced calls' measures by group and call model)."""
    if isinstance(engine, ExternalSource):
        source: Any = engine
        everything = source.cost_groups(filters, by, buckets)
        if not any(row["unpriced_calls"] for row in everything.values()):
            return everything, {}
        return everything, source.cost_groups(filters, by, buckets, unpriced_only=True, with_model=True)
    with reading(engine, snapshot=True) as connection:
        time_span = (buckets.starts[0], buckets.end) if buckets is not None else None
        split = None if CALLS_ONLY.intersection(by) else rollup.plan(connection, filters, time_span)
        everything = _aggregate(connection, filters, by, buckets, split)
        if not any(row["unpriced_calls"] for row in everything.values()):
            return everything, {}
        # Rare, so a second pass over just those calls, rather than a priced flag in every group (which
        # costs SQLite a sort of every row).
        unpriced = _aggregate(connection, filters, by, buckets, split, unpriced_only=True, with_model=True)
        return everything, unpriced


def _window_rows(
    engine: Engine, filters: Filters, by: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The rows (group keys + measures; unpriced calls in rows of their own), totals, and the models of
    the unpriced calls, of one window."""
    span = data_range(engine, filters)
    if span is None:
        return [], _totals([]), []
    unit = next((name for name in by if name in TIME_UNITS), None)
    buckets = local_buckets(unit, filters.tz, span[0], span[1]) if unit else None
    everything, by_model = _groups(engine, filters, by, buckets)
    unpriced: dict[_Group, dict[str, Any]] = {}
    models: set[str] = set()
    for group, measures in by_model.items():
        models.add(group[-1] if group[-1] is not None else "(no model)")
        row = unpriced.setdefault(group[:-1], _empty_measures())
        for name in (*COUNTS, *MONEY, "unpriced_calls"):
            row[name] += measures[name]
    names = [KEY_OF[name] for name in by]
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
    totals = _empty_measures()
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


def _sort_key(keys: Sequence[str], time_key: str | None) -> Any:
    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        cost = row["cost_usd"]
        return (
            row[time_key] if time_key else "",
            cost is None,
            -(cost or 0),
            -row["calls"],
            tuple("" if row[k] is None else str(row[k]) for k in keys if k != time_key),
        )

    return key


def _delta(current: Any, previous: Any) -> tuple[Any, Any]:
    if current is None or previous is None:
        return None, None
    delta = current - previous
    pct = (Decimal(delta) / Decimal(previous)) if previous else None
    return delta, pct


def cost_report(
    engine: Engine,
    filters: Filters,
    by: Sequence[str] = ("day",),
    compare: str | None = None,
    now: datetime | None = None,
) -> Report:
    """The cost report: one row per group (and per unpriced group), totals, the cost split by token class
    and the share spent on compaction iterations. `by` takes BY_CHOICES names (see `parse_by`);
    `compare="prev"` adds the delta against the previous period of the same length (without a since: the
    last 7 days against the 7 before).

    Raises ReportInputError for a bad grouping or comparison. Reads the store only.
    """
    groups = parse_by(by)
    if compare is not None and compare not in COMPARE_CHOICES:
        raise ReportInputError(f"cannot compare with {compare!r}: use {', '.join(COMPARE_CHOICES)}")
    keys = [KEY_OF[name] for name in groups]
    time_key = next((KEY_OF[name] for name in groups if name in TIME_UNITS), None)

    window = filters
    previous: Filters | None = None
    if compare == "prev":
        # Pin "now", so both periods have exactly the same length.
        until = filters.until or (now or datetime.now(timezone.utc))
        # Without --since: the last 7 days against the 7 before (all time has no previous period).
        since = filters.since if filters.since is not None else until - DEFAULT_COMPARE_PERIOD
        window = filters.with_window(since, until)
        previous = filters.with_window(since - (until - since), since)

    external = isinstance(engine, ExternalSource)
    if not CALLS_ONLY.intersection(groups) and not filters.conversations and not external:
        rollup.try_refresh(engine)
    rows, totals, unpriced_models = _window_rows(engine, window, groups)
    rows.sort(key=_sort_key(keys, time_key))

    title = f"Cost by {', '.join(groups)}" if groups else "Cost"
    header = [window.describe()]
    if any(name in ITERATION_LEVEL for name in groups):
        header.append(
            "Each iteration at its own model and type; each call counted once, on its last iteration."
        )
    extra: dict[str, Any] = {
        "by": [KEY_OF[name] for name in groups],
        "timezone": window.zone,
        "since": window.since,
        "until": window.until,
    }

    compare_columns: list[str] = []
    if previous is not None:
        prev_rows, prev_totals, _ = _window_rows(engine, previous, groups)
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

    kinds: dict[str, Any] = {k: "key" for k in keys}
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
