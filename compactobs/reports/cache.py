"""`report cache`: where the prompt cache pays, and where it is written for nothing.

```python
report = cache_report(engine, build_filters("7d", None, None), by=("model",))
```

A pure function over the store: SQL aggregates over `calls LEFT JOIN iterations` (each iteration at its own
model and rates), the same SQL on SQLite and PostgreSQL. Per group:

- hit ratio = cache read / (uncached input + cache write 5m + cache write 1h + cache read), weighted by
  tokens (a ratio of the group's sums, never an average of per-call ratios);
- saved by reads = read tokens x the uncached input rate - what the reads cost. The rate is each
  iteration's own (its uncached input cost / its uncached input tokens: model, tier, batch and residency
  included). An iteration with no uncached input takes it from its writes (5m writes bill 1.25x input,
  1h writes 2x); with neither, reads are assumed to bill 0.1x input, and the figure is counted in
  `estimated_iterations`;
- write premium = what the writes cost - the same tokens at the uncached input rate;
- net = saved - premium (negative: the cache costs more than it saves);
- waste: a call's cache writes are never read back when the conversation's next call starts more than
  the write's TTL (5 minutes, 1 hour) after the call ended, or never comes (and the TTL is over by
  `now`). Wasted tokens and the premium paid on them are counted; calls without a conversation id are
  never judged. The next call is looked up (index on conversation_id, start_ms) only for calls that
  wrote, beyond the report's window if need be.

Dollar figures cover priced iterations only; unpriced calls keep their tokens and are counted in
`unpriced_calls`, with a warning. Groups, and which row a call counts on, are those of `report cost`
(see `compactobs.reports.cost`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    cast,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import Label

from compactobs.reports import rollup
from compactobs.reports.cost import CALLS_ONLY, KEY_OF, data_range, parse_by
from compactobs.reports.model import ExternalSource, Filters, Report
from compactobs.reports.sources.sql_reading import reading
from compactobs.reports.times import TIME_UNITS, bucket_label, local_bucket
from compactobs.store.models import calls, epoch_ms, iterations

__all__ = ["CACHE_MEASURES", "DEFINITIONS", "TTL_1H_MS", "TTL_5M_MS", "cache_report"]

TTL_5M_MS: Final = 5 * 60 * 1000
TTL_1H_MS: Final = 60 * 60 * 1000
_ZERO: Final = Decimal(0)

_TOKENS: Final[tuple[str, ...]] = (
    "calls",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "wasted_write_calls",
    "wasted_5m_write_tokens",
    "wasted_1h_write_tokens",
    "estimated_iterations",
    "unpriced_calls",
)
_MONEY: Final[tuple[str, ...]] = ("saved_usd", "write_premium_usd", "wasted_premium_usd")

CACHE_MEASURES: Final[tuple[str, ...]] = (
    "calls",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "hit_ratio",
    "saved_usd",
    "write_premium_usd",
    "net_usd",
    "wasted_write_calls",
    "wasted_write_tokens",
    "wasted_5m_write_tokens",
    "wasted_1h_write_tokens",
    "wasted_premium_usd",
    "estimated_iterations",
    "unpriced_calls",
)
"""Every row's fields after its group keys, in JSON order."""

DEFINITIONS: Final[dict[str, str]] = {
    "hit_ratio": "cache_read / (input + cache_write_5m + cache_write_1h + cache_read), summed tokens",
    "saved_usd": "cache_read tokens x the iteration's uncached input rate - the cost of those reads",
    "write_premium_usd": "cost of cache writes - the same tokens at the iteration's uncached input rate",
    "net_usd": "saved_usd - write_premium_usd",
    "wasted": "writes whose conversation's next call started more than the TTL (5m, 1h) after the call "
    "ended, or never came; wasted_premium_usd is the premium paid on them",
}

_LABELS: Final[dict[str, str]] = {
    "conversation_id": "conversation",
    "iteration_type": "iteration type",
    "input_tokens": "input",
    "cache_read_input_tokens": "cache read",
    "cache_creation_5m_input_tokens": "write 5m",
    "cache_creation_1h_input_tokens": "write 1h",
    "hit_ratio": "hit ratio",
    "saved_usd": "saved by reads",
    "write_premium_usd": "write premium",
    "net_usd": "net",
    "wasted_write_tokens": "wasted tokens",
    "cache_creation_input_tokens": "cache write",
    "wasted_premium_usd": "wasted premium",
    "unpriced_calls": "unpriced",
}


def _next_call_start() -> Any:
    """The start of the conversation's next call (index on conversation_id, start_ms), or NULL."""
    later = calls.alias("later")
    return (
        select(func.min(later.c.start_ms))
        .where(later.c.conversation_id == calls.c.conversation_id, later.c.start_ms > calls.c.start_ms)
        .scalar_subquery()
    )


def calls_with_next(conditions: Sequence[ColumnElement[bool]], look_up: bool = True) -> Any:
    """The calls meeting `conditions` (over `store.calls`) with `next_start`, looked up once per call that
    wrote to the cache (`look_up` False: NULL, for a query that does not judge waste). OFFSET 0 keeps SQLite
    from flattening it into the join (which would repeat the lookup for every use)."""
    c = calls.c
    wrote = or_(c.cache_write_5m_tokens > 0, c.cache_write_1h_tokens > 0)
    following: ColumnElement[Any] = case(
        (and_(c.conversation_id.is_not(None), wrote), _next_call_start()), else_=None
    )
    if not look_up:
        following = cast(null(), BigInteger)
    columns = [
        c.call_id,
        c.conversation_id,
        c.service_name,
        c.provider,
        c.request_model,
        c.response_model,
        c.start_ms,
        c.end_ms,
        c.priced,
        c.iterations_count,
        *(getattr(c, name) for name in _CALL_FIGURES),
    ]
    return select(*columns, following.label("next_start")).where(*conditions).offset(0).subquery("c")


def open_write(c: Any) -> ColumnElement[bool]:
    """A row of `calls_with_next` whose cache writes have no next call yet to judge them by: whether they
    are wasted depends on the report's clock (see `_wasted`)."""
    # Coalesced: a call without usage (an error) has NULL tokens, and NOT (NULL) would leave it out of both
    # the rollups and the open writes, so a rolled-up report would count one call fewer than a raw one.
    wrote = or_(func.coalesce(c.cache_write_5m_tokens, 0) > 0, func.coalesce(c.cache_write_1h_tokens, 0) > 0)
    return and_(c.conversation_id.is_not(None), wrote, c.next_start.is_(None))


_CALL_FIGURES: Final = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_input_usd",
    "cost_cache_read_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
)


def _wasted(c: Any, ttl_ms: int, now_ms: int) -> ColumnElement[bool]:
    """The call's writes of this TTL were never read back: its conversation's next call came too late,
    or has not come and the TTL is over (calls without a conversation are never judged)."""
    return and_(
        c.conversation_id.is_not(None),
        or_(
            and_(c.next_start.is_(None), literal_column(str(now_ms)) - c.end_ms > ttl_ms),
            c.next_start - c.end_ms > ttl_ms,
        ),
    )


def _per_row(c: Any, now_ms: int) -> list[Label[Any]]:
    """What each row of `c` (`calls_with_next`) LEFT JOIN iterations contributes, each computed once per
    row: the iteration's figures (the call's own without iteration rows), whether the row carries the call
    (its last iteration, or the call itself), and whether the call's writes were wasted."""
    i = iterations.c
    no_rows = i.call_id.is_(None)

    def pick(iteration_column: ColumnElement[Any], call_column: ColumnElement[Any]) -> Any:
        # An iteration row always carries its tokens and class costs: the call's only without rows.
        return func.coalesce(iteration_column, call_column, 0)

    return [
        case((or_(no_rows, i.idx == func.coalesce(c.iterations_count, 1) - 1), 1), else_=0).label("carrier"),
        pick(i.input_tokens, c.input_tokens).label("uncached"),
        pick(i.cache_read_tokens, c.cache_read_tokens).label("read"),
        pick(i.cache_write_5m_tokens, c.cache_write_5m_tokens).label("w5m"),
        pick(i.cache_write_1h_tokens, c.cache_write_1h_tokens).label("w1h"),
        pick(i.cost_input_usd, c.cost_input_usd).label("cost_input"),
        pick(i.cost_cache_read_usd, c.cost_cache_read_usd).label("cost_read"),
        pick(i.cost_cache_write_5m_usd, c.cost_cache_write_5m_usd).label("cost_w5m"),
        pick(i.cost_cache_write_1h_usd, c.cost_cache_write_1h_usd).label("cost_w1h"),
        case((no_rows, c.priced), else_=i.priced).label("row_priced"),
        c.priced.label("call_priced"),
        case((_wasted(c, TTL_5M_MS, now_ms), 1), else_=0).label("wasted_5m"),
        case((_wasted(c, TTL_1H_MS, now_ms), 1), else_=0).label("wasted_1h"),
        case(
            (
                or_(
                    and_(c.cache_write_5m_tokens > 0, _wasted(c, TTL_5M_MS, now_ms)),
                    and_(c.cache_write_1h_tokens > 0, _wasted(c, TTL_1H_MS, now_ms)),
                ),
                1,
            ),
            else_=0,
        ).label("call_wasted"),
    ]


def _measures(r: Any) -> list[Label[Any]]:
    """Measures over `r`, the rows of `_per_row`."""
    carrier = r.carrier == 1
    uncached, read, w5m, w1h = r.uncached, r.read, r.w5m, r.w1h
    cost_input, cost_read, cost_w5m, cost_w1h = r.cost_input, r.cost_read, r.cost_w5m, r.cost_w1h
    is_priced = r.row_priced == true()

    def lit(text: str) -> Any:
        return literal_column(text)

    # tokens x the uncached input rate, the rate taken from the iteration's own costs (multiply first).
    def at_input_rate(tokens: Any) -> Any:
        return case(
            (uncached > 0, tokens * cost_input / uncached),
            (w5m > 0, tokens * cost_w5m / (lit("1.25") * w5m)),
            (w1h > 0, tokens * cost_w1h / (lit("2") * w1h)),
            else_=None,
        )

    saved = case(
        (read == 0, lit("0")),
        (and_(uncached == 0, w5m == 0, w1h == 0), cost_read * lit("9")),  # reads at 0.1x input: assumed
        else_=at_input_rate(read) - cost_read,
    )
    premium_5m = case((w5m == 0, lit("0")), else_=cost_w5m - at_input_rate(w5m))
    premium_1h = case((w1h == 0, lit("0")), else_=cost_w1h - at_input_rate(w1h))
    wasted_5m = and_(w5m > 0, r.wasted_5m == 1)
    wasted_1h = and_(w1h > 0, r.wasted_1h == 1)
    return [
        func.sum(r.carrier).label("calls"),
        func.sum(uncached).label("input_tokens"),
        func.sum(read).label("cache_read_input_tokens"),
        func.sum(w5m).label("cache_creation_5m_input_tokens"),
        func.sum(w1h).label("cache_creation_1h_input_tokens"),
        func.sum(case((and_(is_priced, read > 0), saved), else_=None)).label("saved_usd"),
        func.sum(case((is_priced, premium_5m + premium_1h), else_=None)).label("write_premium_usd"),
        func.sum(case((and_(carrier, r.call_wasted == 1), 1), else_=0)).label("wasted_write_calls"),
        func.sum(case((wasted_5m, w5m), else_=0)).label("wasted_5m_write_tokens"),
        func.sum(case((wasted_1h, w1h), else_=0)).label("wasted_1h_write_tokens"),
        func.sum(
            case(
                (
                    is_priced,
                    case((wasted_5m, premium_5m), else_=lit("0"))
                    + case((wasted_1h, premium_1h), else_=lit("0")),
                ),
                else_=None,
            )
        ).label("wasted_premium_usd"),
        func.sum(case((and_(is_priced, read > 0, uncached == 0, w5m == 0, w1h == 0), 1), else_=0)).label(
            "estimated_iterations"
        ),
        func.sum(case((and_(carrier, r.call_priced == false()), 1), else_=0)).label("unpriced_calls"),
    ]


def _empty() -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_TOKENS, 0)
    row.update(dict.fromkeys(_MONEY, _ZERO))
    return row


def _as_decimal(value: Any) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _finish(row: dict[str, Any], unpriced: bool = False) -> dict[str, Any]:
    """Derived fields (write total, hit ratio, net, wasted total); money to 10 decimal places, or None when
    the row is `unpriced` or every call of it is (never $0); group keys first, then CACHE_MEASURES in
    order."""
    for name in _MONEY:
        row[name] = row[name].quantize(Decimal("1E-10"))
    row["cache_creation_input_tokens"] = (
        row["cache_creation_5m_input_tokens"] + row["cache_creation_1h_input_tokens"]
    )
    seen = row["input_tokens"] + row["cache_creation_input_tokens"] + row["cache_read_input_tokens"]
    row["hit_ratio"] = Decimal(row["cache_read_input_tokens"]) / Decimal(seen) if seen else None
    row["net_usd"] = row["saved_usd"] - row["write_premium_usd"]
    row["wasted_write_tokens"] = row["wasted_5m_write_tokens"] + row["wasted_1h_write_tokens"]
    if unpriced or (row["calls"] and row["unpriced_calls"] == row["calls"]):
        row.update(dict.fromkeys((*_MONEY, "net_usd")))
    keys = {k: v for k, v in row.items() if k not in CACHE_MEASURES}
    return {**keys, **{name: row[name] for name in CACHE_MEASURES}}


def _keys(c: Any, by: Sequence[str], filters: Filters, span: tuple[int, int]) -> list[Label[Any]]:
    """Group keys over `c` and iterations: `k_<json key>`; a time unit is the local hour, day or week
    number (`local_bucket`; months are counted in days and named by `bucket_label`)."""
    i = iterations.c
    keys: list[Label[Any]] = []
    for name in by:
        if name in TIME_UNITS:
            unit: Any = "day" if name == "month" else name
            keys.append(local_bucket(c.start_ms, unit, filters.tz, span[0], span[1]).label("t_local"))
        elif name == "conversation":
            keys.append(c.conversation_id.label("k_conversation_id"))
        elif name == "service":
            keys.append(c.service_name.label("k_service"))
        elif name == "provider":
            keys.append(c.provider.label("k_provider"))
        elif name == "model":
            keys.append(func.coalesce(i.model, c.response_model, c.request_model).label("k_model"))
        elif name == "iteration-type":
            keys.append(i.type.label("k_iteration_type"))
    return keys


def cache_statement(
    conditions: Sequence[ColumnElement[bool]],
    keys_of: Callable[[Any], list[Label[Any]]],
    now_ms: int,
    settled_only: bool = False,
    waste: bool = True,
) -> Select[Any]:
    """The measures of the calls meeting `conditions` (over `store.calls`), grouped by `keys_of(c)` (labelled
    expressions over `calls_with_next` and `store.iterations`). `settled_only` leaves out the calls whose
    waste depends on `now_ms` (`open_write`): what the rollups keep. `waste` False skips the next-call
    lookups: the wasted-write measures are then meaningless, every other measure is the same."""
    c = calls_with_next(conditions, look_up=waste)
    keys = keys_of(c.c)
    source = c.outerjoin(iterations, iterations.c.call_id == c.c.call_id)
    # Each row's figures once (OFFSET 0: a co-routine SQLite does not flatten), then the measures over
    # plain columns: the CASEs below read each figure several times.
    per_row = select(*keys, *_per_row(c.c, now_ms)).select_from(source)
    if settled_only:
        per_row = per_row.where(~open_write(c.c))
    rows = per_row.offset(0).subquery("r")
    group = [rows.c[key.name] for key in keys]
    statement = select(*group, *_measures(rows.c))
    if group:
        statement = statement.group_by(*group)
    return statement


def _aggregate(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    span: tuple[int, int],
    now_ms: int,
    conditions: Sequence[ColumnElement[bool]] = (),
) -> dict[tuple[Any, ...], dict[str, Any]]:
    statement = cache_statement(
        [*filters.call_conditions(), *conditions], lambda c: _keys(c, by, filters, span), now_ms
    )
    result: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in connection.execute(statement).mappings():
        values: list[Any] = []
        for name in by:
            if name in TIME_UNITS:
                values.append(bucket_label(name, int(record["t_local"])))
            else:
                values.append(record[f"k_{KEY_OF[name]}"])
        _add(result, tuple(values), record)
    return result


_SUMMED: Final = (*_TOKENS, *_MONEY)


def _add(
    result: dict[tuple[Any, ...], dict[str, Any]], group: tuple[Any, ...], record: Mapping[Any, Any]
) -> None:
    row = result.get(group)
    if row is None:
        row = result[group] = _empty()
    for name in _TOKENS:
        row[name] += int(record[name] or 0)
    for name in _MONEY:
        row[name] += _as_decimal(record[name])


_USAGE: Final = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
)


def _all_unpriced(
    merged: Mapping[tuple[Any, ...], Mapping[str, Any]], unpriced: Mapping[tuple[Any, ...], Mapping[str, Any]]
) -> set[tuple[Any, ...]]:
    """The groups whose every token belongs to their unpriced calls (`unpriced`: those calls' figures by
    group): their other calls have no usage (errors), so their dollars are unknown, not $0."""
    return {
        group
        for group, row in unpriced.items()
        if group in merged and all(row[name] == merged[group][name] for name in _USAGE)
    }


def cache_report(
    engine: Engine, filters: Filters, by: Iterable[str] = ("model",), now: datetime | None = None
) -> Report:
    """The cache report: per group, hit ratio, read and write tokens (5m, 1h), dollars saved by reads,
    spent on the write premium, the net, and wasted writes; totals over every group. `by` takes the
    groupings of `report cost` (default: model). `now` decides whether a write with no next call yet is
    still within its TTL. Raises ReportInputError for a bad grouping. Reads the store only."""
    groups = parse_by(by)
    now_ms = epoch_ms(now or datetime.now(timezone.utc))
    keys = [KEY_OF[name] for name in groups]
    time_key = next((KEY_OF[name] for name in groups if name in TIME_UNITS), None)

    external = isinstance(engine, ExternalSource)
    use_rollups = not CALLS_ONLY.intersection(groups) and not filters.conversations and not external
    if use_rollups:
        rollup.try_refresh(engine)
    span = data_range(engine, filters)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    # The unpriced calls' own figures, by a second pass over them alone (few, as in `report cost`), only
    # when there are some: they find the groups that are unpriced through and through.
    unpriced: dict[tuple[Any, ...], dict[str, Any]] = {}
    if span is not None and external:
        merged = engine.cache_groups(filters, groups, span, now_ms)  # type: ignore[attr-defined]
        if any(row["unpriced_calls"] for row in merged.values()):
            unpriced = engine.cache_groups(filters, groups, span, now_ms, unpriced_only=True)  # type: ignore[attr-defined]
    elif span is not None:
        with reading(engine, snapshot=True) as connection:
            timed = any(name in TIME_UNITS for name in groups)
            split = rollup.plan(connection, filters, span if timed else None) if use_rollups else None
            if split is None:
                merged = _aggregate(connection, filters, groups, span, now_ms)
            else:
                # Whole clean slots from the rollups; the rest, and the writes whose waste depends on `now`,
                # from `calls`.
                merged = _aggregate(connection, filters, groups, span, now_ms, [split.raw_with_open()])
                for group, record in rollup.read(connection, "cache", filters, split, groups, span, _SUMMED):
                    _add(merged, group, record)
            if any(row["unpriced_calls"] for row in merged.values()):
                unpriced = _aggregate(connection, filters, groups, span, now_ms, [calls.c.priced == false()])
    all_unpriced = _all_unpriced(merged, unpriced)
    rows = [
        _finish({**dict(zip(keys, group, strict=True)), **row}, group in all_unpriced)
        for group, row in merged.items()
    ]
    total = _empty()
    for row in rows:
        for name in (*_TOKENS, *_MONEY):
            if row[name] is not None:
                total[name] += row[name]
    totals = _finish(total)

    def order(row: Mapping[str, Any]) -> tuple[Any, ...]:
        others = tuple("" if row[k] is None else str(row[k]) for k in keys if k != time_key)
        return (row[time_key] if time_key else "", -row["cache_read_input_tokens"], -row["calls"], others)

    rows.sort(key=order)

    warnings: list[str] = []
    if totals["unpriced_calls"]:
        warnings.append(
            f"{totals['unpriced_calls']:,} call(s) have no price: their tokens count in the hit ratio, "
            "their dollars are not in saved, premium or net."
        )
    if totals["estimated_iterations"]:
        warnings.append(
            f"{totals['estimated_iterations']:,} iteration(s) read the cache with no uncached input and no "
            "writes to take a rate from: their savings assume reads bill 0.1x input."
        )
    notes = [
        "hit ratio = cache read / (input + cache write 5m + 1h + cache read), weighted by tokens.",
        "saved = reads at the uncached input rate - their cost; premium = writes - the same tokens at the "
        "input rate; net = saved - premium.",
        "wasted tokens = cache-write tokens whose conversation's next call came after the TTL (5 min, 1 h) "
        "or never came; wasted premium = the write premium paid on them.",
    ]
    kinds: dict[str, Any] = {k: "key" for k in keys}
    kinds.update({name: "int" for name in _TOKENS})
    kinds.update({"cache_creation_input_tokens": "int", "wasted_write_tokens": "int"})
    kinds.update({name: "usd" for name in (*_MONEY, "net_usd")})
    kinds["hit_ratio"] = "ratio"
    table_columns = [
        *keys,
        "calls",
        "hit_ratio",
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_5m_input_tokens",
        "cache_creation_1h_input_tokens",
        "saved_usd",
        "write_premium_usd",
        "net_usd",
        "wasted_write_tokens",
        "wasted_premium_usd",
    ]
    # Smaller sets for a terminal of 120 and of 80 columns: the hit ratio, what the cache saves net, and
    # what was written for nothing stay.
    medium = [
        *keys,
        "hit_ratio",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "saved_usd",
        "net_usd",
        "wasted_write_tokens",
    ]
    narrow = [*keys, "calls", "hit_ratio", "net_usd", "wasted_write_tokens"]
    if totals["unpriced_calls"]:
        table_columns.append("unpriced_calls")
    return Report(
        name="cache",
        title=f"Cache by {', '.join(groups)}" if groups else "Cache",
        columns=[*keys, *CACHE_MEASURES],
        rows=rows,
        totals=totals,
        header=[filters.describe()],
        warnings=warnings,
        extra={
            "by": keys,
            "timezone": filters.zone,
            "since": filters.since,
            "until": filters.until,
            "definitions": dict(DEFINITIONS),
        },
        kinds=kinds,
        labels=dict(_LABELS),
        table_columns=table_columns,
        notes=notes,
        narrow_columns=[medium, narrow, [*keys, "hit_ratio", "net_usd"], [*keys, "net_usd"]],
    )
