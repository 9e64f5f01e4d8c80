"""`report cache`'s groups from the SQL store's `calls LEFT JOIN iterations`: SQLite and PostgreSQL.

The next call of a conversation (whether a write was read back within its TTL) is looked up (index on
conversation_id, start_ms) only for calls that wrote, beyond the report's window if need be. Each row's
figures are computed once (`measures.cache.row_figures`) in a subquery, then summed
(`measures.cache.cache_measures`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    FromClause,
    and_,
    case,
    cast,
    func,
    null,
    select,
)

from compactobs._types import SQLExpr, SQLLabel, SQLQuery
from compactobs.reports.measures.cache import add_record, cache_measures, open_write, row_figures, wrote
from compactobs.reports.measures.groups import group_key, group_values, label_of, tag_of
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import Groups
from compactobs.reports.times import TIME_UNITS, bucket_label, local_bucket
from compactobs.store.models import calls, iterations

__all__ = ["cache_groups", "cache_statement", "calls_with_next"]

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


def _next_call_start() -> Any:
    """The start of the conversation's next call (index on conversation_id, start_ms), or NULL."""
    later = calls.alias("later")
    return (
        select(func.min(later.c.start_ms))
        .where(later.c.conversation_id == calls.c.conversation_id, later.c.start_ms > calls.c.start_ms)
        .scalar_subquery()
    )


def calls_with_next(
    conditions: Sequence[ColumnElement[bool]], look_up: bool = True, tags: bool = False
) -> Any:
    """The calls meeting `conditions` (over `store.calls`) with `next_start`, looked up once per call that
    wrote to the cache (`look_up` False: NULL, for a query that does not judge waste). OFFSET 0 keeps SQLite
    from flattening it into the join (which would repeat the lookup for every use)."""
    c = calls.c
    following: SQLExpr = case(
        (and_(c.conversation_id.is_not(None), wrote(calls)), _next_call_start()), else_=None
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
        *([c.tags] if tags else []),  # only for a tag grouping: the rollups never read it
        *(getattr(c, name) for name in _CALL_FIGURES),
    ]
    return select(*columns, following.label("next_start")).where(*conditions).offset(0).subquery("c")


def cache_statement(
    conditions: Sequence[ColumnElement[bool]],
    keys_of: Callable[[FromClause], list[SQLLabel]],
    now_ms: int,
    settled_only: bool = False,
    waste: bool = True,
    tags: bool = False,
) -> SQLQuery:
    """The measures of the calls meeting `conditions` (over `store.calls`), grouped by `keys_of(c)` (labelled
    expressions over `calls_with_next` and `store.iterations`). `settled_only` leaves out the calls whose
    waste depends on `now_ms` (`open_write`): what the rollups keep. `waste` False skips the next-call
    lookups: the wasted-write measures are then meaningless, every other measure is the same."""
    c = calls_with_next(conditions, look_up=waste, tags=tags)
    keys = keys_of(c)
    source = c.outerjoin(iterations, iterations.c.call_id == c.c.call_id)
    # Each row's figures once (OFFSET 0: a co-routine SQLite does not flatten), then the measures over
    # plain columns: the CASEs read each figure several times.
    per_row = select(*keys, *row_figures(c, iterations, now_ms)).select_from(source)
    if settled_only:
        per_row = per_row.where(~open_write(c))
    rows = per_row.offset(0).subquery("r")
    group = [rows.c[key.name] for key in keys]
    statement = select(*group, *cache_measures(rows))
    if group:
        statement = statement.group_by(*group)
    return statement


def group_keys(c: FromClause, by: Sequence[str], filters: Filters, span: tuple[int, int]) -> list[SQLLabel]:
    """Group keys over `c` and iterations: `k_<json key>`; a time unit is the local hour, day or week
    number (`local_bucket`; months are counted in days and named by `bucket_label`)."""
    keys: list[SQLLabel] = []
    for name in by:
        if name in TIME_UNITS:
            unit: Any = "day" if name == "month" else name
            keys.append(local_bucket(c.c.start_ms, unit, filters.tz, span[0], span[1]).label("t_local"))
        else:
            keys.append(group_key(name, c, iterations).label(label_of(name)))
    return keys


def cache_groups(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    span: tuple[int, int],
    now_ms: int,
    conditions: Sequence[ColumnElement[bool]] = (),
    result: Groups | None = None,
) -> Groups:
    """The cache sums of the window's calls meeting `conditions`, from `calls` alone, added into `result`."""
    statement = cache_statement(
        [*filters.call_conditions(), *conditions],
        lambda c: group_keys(c, by, filters, span),
        now_ms,
        tags=any(tag_of(name) is not None for name in by),
    )
    result = {} if result is None else result
    unit = next((name for name in by if name in TIME_UNITS), "")
    for record in connection.execute(statement).mappings():
        group = group_values(record, by, lambda row: bucket_label(unit, int(row["t_local"])))
        add_record(result, group, record)
    return result
