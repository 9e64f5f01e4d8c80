"""Rollups: the cost and cache reports' measures pre-aggregated per 15-minute slot, so that a report over
a million calls sums a few hundred thousand rows instead of joining three million.

```python
refresh(engine)                      # recompute the slots that changed (reports call it themselves)
split = plan(connection, filters)    # which part of a window the rollups answer, which part `calls` does
```

How it stays exact:
- `store.rollups` holds, per slot and per (service, request model, response model, iteration model,
  iteration type, priced), the sums of the very SQL expressions the reports use on raw rows (the same
  functions build both), one row kind per report (`level` call, iteration, cache).
- Triggers mark the slots any write touches (`store.rollup_dirty`, migration 0002); `refresh` recomputes
  the marked slots, up to a day's worth of them per transaction (slots a day apart or less in one pass),
  and deletes only the marks it read.
- A report reads whole, clean slots from the rollups, and from `calls` the partial slots at its window's
  edges, any slot still marked, and the calls whose cache waste depends on the report's clock (writes
  with no next call yet: `store.rollup_open_calls`). The two parts never overlap, so nothing is counted
  twice, and a slot marked after the refresh is read raw, so nothing is missed.
- Reports filtered or grouped by conversation, or grouped by provider, read `calls` only (the rollups
  have neither: `measures.groups.CALLS_ONLY`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    String,
    and_,
    bindparam,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from compactobs._types import SQLLabel
from compactobs.reports.measures.cache import open_write
from compactobs.reports.measures.cost import call_measures, iteration_measures
from compactobs.reports.measures.groups import group_key
from compactobs.reports.model import Filters
from compactobs.reports.sources.sql.cache import cache_statement, calls_with_next
from compactobs.reports.sources.sql_reading import reading
from compactobs.reports.times import TIME_UNITS, bucket_label, local_bucket, utc_offsets
from compactobs.store.engine import is_sqlite, make_engine
from compactobs.store.models import SLOT_MS, calls, iterations, rollup_dirty, rollup_open_calls, rollups

__all__ = [
    "READ_ONLY",
    "RefreshResult",
    "Split",
    "pending",
    "plan",
    "read",
    "refresh",
    "slot_of",
    "try_refresh",
]

log = logging.getLogger(__name__)

READ_ONLY: Final = "compactobs_read_only"
"""An engine's execution option: set, `try_refresh` does not refresh through it (a store opened to read)."""
_SLOT: Final = literal_column(str(SLOT_MS), BigInteger)
_CHUNK_SLOTS: Final = 96
"""Marked slots recomputed per transaction (a day's worth), and the span of one pass of the statements:
short transactions, so writers never wait long."""
_MAX_RAW_RANGES: Final = 64
"""More marked slot ranges than this in a window (rollups never refreshed, e.g. a read-only user): read the
whole window from `calls`, one range scan, rather than an OR of many."""
_PG_LOCK_KEY: Final = 0x726F6C6C  # "roll": with the schema's hash, one refresher at a time per store
"""Advisory locks are database-wide: keyed by the schema too, two stores in one database (schemas of their
own) do not wait on each other's refresh."""


def slot_of(column: ColumnElement[int]) -> ColumnElement[int]:
    """SQL: the start of the 15-minute UTC slot of an epoch-ms column (as the triggers compute it)."""
    return column - column % _SLOT


# -- refresh -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    slots: int
    """Slots recomputed."""
    seconds: float


def _runs(slots: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Sorted slot starts as [lo, hi) ranges of consecutive slots, at most `limit` slots each."""
    result: list[tuple[int, int]] = []
    for slot in slots:
        if result and result[-1][1] == slot and (slot - result[-1][0]) // SLOT_MS < limit:
            result[-1] = (result[-1][0], slot + SLOT_MS)
        else:
            result.append((slot, slot + SLOT_MS))
    return result


def _passes(slots: Sequence[int], limit: int) -> list[list[int]]:
    """Sorted slot starts in groups spanning at most `limit` slots each: the slots one pass recomputes."""
    result: list[list[int]] = []
    for slot in slots:
        if result and (slot - result[-1][0]) // SLOT_MS < limit:
            result[-1].append(slot)
        else:
            result.append([slot])
    return result


@functools.cache
def _level_statements() -> list[Any]:
    """INSERT ... SELECT statements recomputing every level of the `slots` in [`lo`, `hi`) (bound when
    executed; the range lets an index find the calls, the list keeps the clean slots between out). Built
    once: each pass of a refresh runs the same statements, compiled once by SQLAlchemy."""
    c, i = calls.c, iterations.c
    in_range = [
        c.start_ms >= bindparam("lo", type_=BigInteger),
        c.start_ms < bindparam("hi", type_=BigInteger),
        slot_of(c.start_ms).in_(bindparam("slots", expanding=True, type_=BigInteger)),
    ]
    slot = slot_of(c.start_ms).label("slot_ms")
    call_keys = [
        c.service_name.label("service_name"),
        c.request_model.label("request_model"),
        c.response_model.label("response_model"),
    ]

    def level(name: str) -> SQLLabel:
        return literal(name, String).label("level")

    by_call = (
        select(level("call"), slot, *call_keys, null().label("model"), null().label("iteration_type"))
        .add_columns(c.priced.label("priced"), *call_measures())
        .where(*in_range)
        .group_by(slot, *call_keys, c.priced)
    )
    model = group_key("model", calls, iterations).label("model")
    kind = i.type.label("iteration_type")
    by_iteration = (
        select(level("iteration"), slot, *call_keys, model, kind, c.priced.label("priced"))
        .add_columns(*iteration_measures())
        .select_from(calls.outerjoin(iterations, i.call_id == c.call_id))
        .where(*in_range)
        .group_by(slot, *call_keys, model, kind, c.priced)
    )

    def cache_keys(following: FromClause) -> list[SQLLabel]:
        w = following.c
        return [
            slot_of(w.start_ms).label("slot_ms"),
            w.service_name.label("service_name"),
            w.request_model.label("request_model"),
            w.response_model.label("response_model"),
            group_key("model", following, iterations).label("model"),
            i.type.label("iteration_type"),
            w.priced.label("priced"),
        ]

    by_cache = cache_statement(in_range, cache_keys, now_ms=0, settled_only=True).subquery("k")
    by_cache_select = select(level("cache"), *by_cache.c)
    following = calls_with_next(in_range)
    open_calls = select(following.c.call_id, slot_of(following.c.start_ms)).where(open_write(following))
    return [
        *(
            rollups.insert().from_select([column.name for column in statement.selected_columns], statement)
            for statement in (by_call, by_iteration, by_cache_select)
        ),
        rollup_open_calls.insert().from_select(["call_id", "slot_ms"], open_calls),
    ]


def _refresh_range(connection: Connection, lo: int, hi: int) -> int:
    """Recompute the marked slots in [lo, hi) inside the connection's transaction; returns how many."""
    marks = connection.execute(
        select(rollup_dirty.c.slot_ms, rollup_dirty.c.seq).where(
            rollup_dirty.c.slot_ms >= lo, rollup_dirty.c.slot_ms < hi
        )
    ).all()
    if not marks:
        return 0
    slots = sorted({slot for slot, _ in marks})
    # One pass per group of marked slots a day apart at most (slots a few hours apart, as sparse traffic
    # marks them, share one), recomputing those slots only.
    for group in _passes(slots, _CHUNK_SLOTS):
        for table in (rollups, rollup_open_calls):
            connection.execute(table.delete().where(table.c.slot_ms.in_(group)))
        for statement in _level_statements():
            connection.execute(statement, {"lo": group[0], "hi": group[-1] + SLOT_MS, "slots": group})
    # Only the marks read above: one a concurrent writer commits meanwhile stays, for the next refresh.
    connection.execute(
        rollup_dirty.delete().where(
            rollup_dirty.c.slot_ms == bindparam("m_slot"), rollup_dirty.c.seq == bindparam("m_seq")
        ),
        [{"m_slot": slot, "m_seq": seq} for slot, seq in marks],
    )
    return len(slots)


def _marked_slots(connection: Connection) -> list[int]:
    return sorted(connection.scalars(select(rollup_dirty.c.slot_ms).distinct()))


def refresh(engine: Engine, progress: Callable[[int, int], None] | None = None) -> RefreshResult:
    """Recompute the rollups of every marked slot, up to `_CHUNK_SLOTS` of them per transaction (consecutive
    or not: isolated slots, a call every few hours, share transactions). `progress(done, total)` is called
    after each. Raises SQLAlchemyError (the caller decides: reports go on without, reading the
    marked slots from `calls`)."""
    started = time.perf_counter()
    with engine.connect() as connection:
        pending = _marked_slots(connection)
    total = len(pending)
    if not total:
        return RefreshResult(0, time.perf_counter() - started)
    sqlite = is_sqlite(engine.url)
    # SQLite: a writer engine, whose transactions take the write lock at BEGIN, so that no write can land
    # between reading a slot's rows and deleting its marks.
    writer = make_engine(engine.url, writer=True, create=False) if sqlite else engine
    done = 0
    try:
        for first in range(0, total, _CHUNK_SLOTS):
            run_lo, run_hi = pending[first], pending[min(first + _CHUNK_SLOTS, total) - 1] + SLOT_MS
            with reading(writer) as connection:
                if not sqlite:
                    connection.exec_driver_sql(
                        f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY}, hashtext(current_schema()))"
                    )
                    # A day of calls joins to its iterations by primary key; the planner, misjudging how
                    # many iterations a call has, would hash-join the whole table instead (0.43 s a day
                    # instead of 0.02 s at 3M iterations).
                    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
                done += _refresh_range(connection, run_lo, run_hi)
                connection.commit()
            if progress is not None:
                progress(min(done, total), total)
    finally:
        if writer is not engine:
            writer.dispose()
    return RefreshResult(done, time.perf_counter() - started)


def pending(engine: Engine) -> int:
    """How many slots are marked (what `refresh` would recompute)."""
    with engine.connect() as connection:
        return len(_marked_slots(connection))


def try_refresh(engine: Engine, progress: Callable[[int, int], None] | None = None) -> None:
    """`refresh`, for a report: when it fails (a read-only user, a locked database) the report still
    answers, reading the marked slots from `calls`. An engine with the execution option READ_ONLY (`serve`'s)
    is left as it is."""
    if engine.get_execution_options().get(READ_ONLY):
        return
    try:
        refresh(engine, progress)
    except SQLAlchemyError as err:
        log.warning("compactobs: rollups not refreshed (%s); reading the changed slots from calls", err)


# -- reading -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """How a report's window divides between the rollups and `calls`."""

    rollup_conditions: list[ColumnElement[bool]]
    """Over `store.rollups`: the whole clean slots of the window."""
    raw_condition: ColumnElement[bool] | None
    """Over `store.calls`, on top of the window's conditions: the rest (None: nothing)."""
    open_calls: ColumnElement[bool]
    """Over `store.calls`: the clean slots' calls whose cache waste depends on the clock (cache report)."""

    def raw_with_open(self) -> ColumnElement[bool]:
        return self.open_calls if self.raw_condition is None else or_(self.raw_condition, self.open_calls)


def plan(connection: Connection, filters: Filters, time_span: tuple[int, int] | None = None) -> Split | None:
    """Which slots of the window the rollups answer; None when they answer none (a conversation filter,
    a window shorter than a slot, rollups far behind, or local time buckets over `time_span` (epoch ms)
    that do not start on slot boundaries: a zone whose UTC offset was not a whole number of quarter
    hours, as some were before the 1980s)."""
    if filters.conversations:
        return None
    if time_span is not None and any(
        offset % SLOT_MS or (index and start % SLOT_MS)  # the first entry starts at time_span[0]
        for index, (start, offset) in enumerate(utc_offsets(filters.tz, *time_span))
    ):
        return None
    since, until = filters.since_ms, filters.until_ms
    first = None if since is None else -(-since // SLOT_MS) * SLOT_MS  # the first whole slot
    end = None if until is None else until // SLOT_MS * SLOT_MS  # the end of the last whole slot
    if first is not None and end is not None and first >= end:
        return None
    r, d = rollups.c, rollup_dirty.c
    bounds: list[ColumnElement[bool]] = []
    marked_where: list[ColumnElement[bool]] = []
    if first is not None:
        bounds.append(r.slot_ms >= first)
        marked_where.append(d.slot_ms >= first)
    if end is not None:
        bounds.append(r.slot_ms < end)
        marked_where.append(d.slot_ms < end)
    marked = sorted(connection.scalars(select(d.slot_ms).where(*marked_where).distinct()))
    runs = _runs(marked, len(marked) + 1)
    if len(runs) > _MAX_RAW_RANGES:
        return None
    start = calls.c.start_ms
    raw: list[ColumnElement[bool]] = [and_(start >= lo, start < hi) for lo, hi in runs]
    if since is not None and first is not None and first != since:
        raw.append(start < first)
    if until is not None and end is not None and end != until:
        raw.append(start >= end)
    o = rollup_open_calls.c
    open_ids = select(o.call_id)
    if first is not None:
        open_ids = open_ids.where(o.slot_ms >= first)
    if end is not None:
        open_ids = open_ids.where(o.slot_ms < end)
    if marked:
        # A marked slot is read whole from `calls`; its rollups and open calls may be stale.
        bounds.append(r.slot_ms.not_in(marked))
        open_ids = open_ids.where(o.slot_ms.not_in(marked))
    return Split(bounds, or_(*raw) if raw else None, calls.c.call_id.in_(open_ids))


def read(
    connection: Connection,
    level: str,
    filters: Filters,
    split: Split,
    by: Sequence[str],
    span: tuple[int, int] | None,
    measures: Sequence[str],
    unpriced_only: bool = False,
    with_model: bool = False,
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(group key values in `by` order [+ the call's model], record of summed `measures`) per group of the
    level's rollups in the split. Time groups are labelled like `bucket_label` (months from days), with the
    zone's offsets over `span`, the data's range."""
    r = rollups.c
    keys: list[SQLLabel] = []
    for name in by:
        if name in TIME_UNITS:
            assert span is not None, "time groups need the data's span"
            unit: Any = "day" if name == "month" else name
            keys.append(local_bucket(r.slot_ms, unit, filters.tz, span[0], span[1]).label("t_local"))
        elif name == "model":
            keys.append(r.model.label("k_model"))
        elif name == "iteration-type":
            keys.append(r.iteration_type.label("k_iteration_type"))
        elif name == "service":
            keys.append(r.service_name.label("k_service"))
        else:
            raise ValueError(f"rollups cannot group by {name}")
    if with_model:
        keys.append(func.coalesce(r.response_model, r.request_model).label("k_call_model"))
    where = [
        r.level == level,
        *split.rollup_conditions,
        *filters.model_service_conditions(r.request_model, r.response_model, r.service_name),
    ]
    if unpriced_only:
        where.append(r.priced == false())
    statement = select(*keys, *(func.sum(r[name]).label(name) for name in measures)).where(*where)
    if keys:
        statement = statement.group_by(*keys)
    for record in connection.execute(statement).mappings():
        values: list[Any] = []
        for name, key in zip(by, keys, strict=False):
            if name in TIME_UNITS:
                values.append(bucket_label(name, int(record["t_local"])))
            else:
                values.append(record[key.name])
        if with_model:
            values.append(record["k_call_model"])
        yield tuple(values), record
