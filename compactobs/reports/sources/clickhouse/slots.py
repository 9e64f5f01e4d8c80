"""Per-15-minute slots on ClickHouse: `report cost`'s measures summed per slot, as the SQL store's rollups.

`compactobs clickhouse setup` creates them beside the typed tables; `report cost` reads them for a window
aligned to slots (every local hour, day, week and month of any zone is whole slots, as the rollups rely
on), not filtered or grouped by conversation; anything else reads the typed tables, as before.

Why not an insert-time aggregate (a SummingMergeTree fed by a materialised view), as ClickHouse practice
has it: the figures would not be exact here. A call span and its iteration spans reach ClickHouse in
different inserts, and a view sees one insert, so the joined measures (each iteration at its own model,
compaction cost) cannot be summed there; and a span can be inserted twice (the Collector retries at least
once; setup's backfill overlaps the views), which the typed ReplacingMergeTree tables merge away, but a sum
made at insert would keep. So the slots are recomputed from the typed tables (FINAL, so duplicates count
once) for the slots that changed, as the SQL store's rollups are:

- materialised views on the typed tables mark what each insert touches in `compactobs_slot_marks`: a call's
  slot, or, for an iteration span, its call's id (its call's slot is found when the marks are read; a call
  that has not arrived yet marks its own slot when it does);
- `refresh` (run by the reports, and by setup) recomputes the marked slots from the typed tables and writes
  each slot's groups under a new version; a slot is read at its newest version only, so a group the
  recomputation no longer has is gone too;
- marks are read again for `MARK_MARGIN_MS` past the last refresh, so an insert whose part became visible
  after a refresh (its mark carries the time its view ran) is never missed; recomputing a slot twice gives
  the same rows.

An iteration span's call is looked up at most `MAX_CALL_MS` before the iteration's start (the call's end):
a call longer than a day would not be found from its iteration's mark (its own mark still counts it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Final

from compactobs._types import SQLValue
from compactobs.reports.model import Filters
from compactobs.reports.sources.clickhouse import spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient, join, settings_clause
from compactobs.reports.sources.clickhouse.queries import (
    JOIN_SETTINGS,
    cache_sums_sql,
    call_measures_sql,
    compaction_costs,
    group_key_sql,
    iteration_measures_sql,
    next_of,
    open_write_sql,
)
from compactobs.store.errors import StoreError
from compactobs.store.models import SLOT_MS

__all__ = [
    "MARK_MARGIN_MS",
    "MAX_CALL_MS",
    "aligned",
    "cache_names",
    "latest",
    "ready",
    "refresh",
    "setup_statements",
    "slot_names",
    "sums",
]

log = logging.getLogger(__name__)

MARK_MARGIN_MS: Final = 10 * 60 * 1000
"""How far before the last refresh marks are read again: longer than any insert takes to commit."""
MAX_CALL_MS: Final = 24 * 3600 * 1000
"""The longest call an iteration's mark finds (the SDK's own timeout is 10 minutes)."""

KEYS: Final[tuple[tuple[str, str, str], ...]] = (
    # (column, SQL over `c` calls and `i` iterations at the iteration level, its ClickHouse type)
    ("service_name", "c.service_name", "Nullable(String)"),
    ("request_model", "c.request_model", "Nullable(String)"),
    ("response_model", "c.response_model", "Nullable(String)"),
    ("priced", "c.priced", "Nullable(Bool)"),
    ("model", "", "Nullable(String)"),
    ("iteration_type", "i.type", "Nullable(String)"),
)
"""What a slot's groups keep: every key `report cost` groups or filters by, but the conversation."""


def slot_names(table: str) -> tuple[str, str, str]:
    """(slots, marks, refresh state) tables beside the typed tables of `table`."""
    calls_table, _ = spans.typed_names(table)
    prefix = calls_table.removesuffix("compactobs_calls")
    return f"{prefix}compactobs_slots", f"{prefix}compactobs_slot_marks", f"{prefix}compactobs_slot_state"


def cache_names(table: str) -> tuple[str, str]:
    """(cache slots, open writes) tables beside the typed tables of `table` (`report cache`'s level)."""
    slots_table = slot_names(table)[0]
    return f"{slots_table}_cache", f"{slots_table}_open_writes"


def _slot(column: str) -> str:
    return f"({column} - {column} % {SLOT_MS})"


def _level_select(source_table: str, level: str, version: str, calls_where: str) -> str:
    """One level's slot rows, over the typed calls that satisfy `calls_where` (on their own columns)."""
    calls_table, iterations_table = spans.typed_names(source_table)
    keys = []
    for name, sql, kind in KEYS:
        if level == "iteration":
            expression = group_key_sql_of(name) or sql
        else:
            expression = sql if sql.startswith("c.") else ""
        keys.append(f"CAST({expression or 'NULL'}, '{kind}') AS {name}")
    head = [f"'{level}' AS level", f"{_slot('c.start_ms')} AS slot_ms", f"{version} AS version", *keys]
    calls = f"(SELECT * FROM {calls_table} FINAL WHERE {calls_where})"
    if level == "iteration":
        measures = iteration_measures_sql()
        iterations = f"(SELECT * FROM {iterations_table} FINAL)"
        source_sql = f"{calls} AS c LEFT JOIN {iterations} AS i ON i.call_id = c.call_id"
    else:
        # The compaction iterations' cost of the calls that compacted, as `cost_groups` sums it.
        measures = call_measures_sql()
        compaction = compaction_costs(f"(SELECT * FROM {iterations_table} FINAL)")
        source_sql = f"{calls} AS c LEFT JOIN {compaction} AS x ON x.call_id = c.call_id"
    select = join([*head, *(f"{sql} AS {name}" for name, sql in measures)])
    group = join(["level", "slot_ms", "version", *(name for name, _, _ in KEYS)])
    return f"SELECT {select} FROM {source_sql} GROUP BY {group}"


def _cache_selects(source_table: str, version: str, calls_where: str) -> tuple[str, str]:
    """(the settled calls' cache measures per slot and group, the open writes' (slot, call)) over the typed
    calls that satisfy `calls_where` (on their own columns), with their next calls among all the calls."""
    calls_table, iterations_table = spans.typed_names(source_table)
    everything = f"(SELECT * FROM {calls_table} FINAL)"
    window = f"(SELECT * FROM {calls_table} FINAL WHERE {calls_where})"
    calls = next_of(window, everything, [])
    keys = [("slot_ms", _slot("c.start_ms"))]
    for name, sql, kind in KEYS:
        keys.append((name, f"CAST({group_key_sql_of(name) or sql}, '{kind}')"))
    iterations = f"(SELECT * FROM {iterations_table} FINAL)"
    # now_ms 0: a settled call's waste does not depend on the clock.
    open_write = f"({open_write_sql()})"
    measures = cache_sums_sql(calls, iterations, keys, 0, f"NOT {open_write}")
    settled = f"SELECT {version} AS version, * FROM ({measures})"
    open_writes = (
        f"SELECT {_slot('c.start_ms')} AS slot_ms, {version} AS version, c.call_id AS call_id "
        f"FROM {calls} AS c WHERE {open_write}"
    )
    return settled, open_writes


def group_key_sql_of(name: str) -> str:
    """The iteration-level SQL of slot key `name` where it is not a call column (the model)."""
    return group_key_sql("model") if name == "model" else ""


def _join_settings() -> dict[str, int]:
    return dict(JOIN_SETTINGS)


def setup_statements(table: str) -> list[str]:
    """The slot tables and the views that mark changes (after the typed tables exist); `refresh` fills."""
    slots_table, marks_table, state_table = slot_names(table)
    calls_table, iterations_table = spans.typed_names(table)
    empty = _level_select(table, "iteration", "toUInt64(0)", "false") + settings_clause(_join_settings())
    cache_table, open_table = cache_names(table)
    settled, open_writes = (
        select + settings_clause(_join_settings()) for select in _cache_selects(table, "toUInt64(0)", "false")
    )
    return [
        f"CREATE TABLE IF NOT EXISTS {slots_table} ENGINE = ReplacingMergeTree(version) "
        f"ORDER BY (level, slot_ms, {join([name for name, _, _ in KEYS])}) "
        "SETTINGS allow_nullable_key = 1 "
        f"EMPTY AS {empty}",
        f"CREATE TABLE IF NOT EXISTS {marks_table} (slot_ms Nullable(Int64), call_id String, "
        "iteration_start_ms Nullable(Int64), marked_ms Int64) "
        "ENGINE = MergeTree ORDER BY marked_ms TTL toDateTime(intDiv(marked_ms, 1000)) + INTERVAL 7 DAY",
        f"ALTER TABLE {marks_table} ADD COLUMN IF NOT EXISTS conversation_id Nullable(String)",
        f"ALTER TABLE {marks_table} ADD COLUMN IF NOT EXISTS first_start_ms Nullable(Int64)",
        f"ALTER TABLE {marks_table} ADD COLUMN IF NOT EXISTS last_start_ms Nullable(Int64)",
        f"CREATE TABLE IF NOT EXISTS {cache_table} ENGINE = ReplacingMergeTree(version) "
        f"ORDER BY (slot_ms, {join([name for name, _, _ in KEYS])}) "
        f"SETTINGS allow_nullable_key = 1 EMPTY AS {settled}",
        f"CREATE TABLE IF NOT EXISTS {open_table} ENGINE = ReplacingMergeTree(version) "
        f"ORDER BY (slot_ms, call_id) EMPTY AS {open_writes}",
        f"CREATE TABLE IF NOT EXISTS {state_table} (k UInt8, refreshed_ms Int64) "
        "ENGINE = ReplacingMergeTree(refreshed_ms) ORDER BY k",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {marks_table}_calls_mv TO {marks_table} AS "
        f"SELECT DISTINCT {_slot('start_ms')} AS slot_ms, '' AS call_id, "
        "CAST(NULL, 'Nullable(Int64)') AS iteration_start_ms, toUnixTimestamp64Milli(now64(3)) AS marked_ms "
        f"FROM {calls_table}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {marks_table}_iterations_mv TO {marks_table} AS "
        "SELECT CAST(NULL, 'Nullable(Int64)') AS slot_ms, call_id, min(start_ms) AS iteration_start_ms, "
        f"toUnixTimestamp64Milli(now64(3)) AS marked_ms FROM {iterations_table} GROUP BY call_id",
        # A call changes its conversation's previous call's next call, so that call's cache waste.
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {marks_table}_conversations_mv TO {marks_table} AS "
        "SELECT CAST(NULL, 'Nullable(Int64)') AS slot_ms, '' AS call_id, "
        "CAST(NULL, 'Nullable(Int64)') AS iteration_start_ms, toUnixTimestamp64Milli(now64(3)) AS marked_ms, "
        "conversation_id, min(start_ms) AS first_start_ms, max(start_ms) AS last_start_ms "
        f"FROM {calls_table} WHERE conversation_id IS NOT NULL GROUP BY conversation_id",
    ]


def exists(source: ClickHouseClient) -> bool:
    return all(source.exists(name) for name in (*slot_names(source.table), *cache_names(source.table)))


def refresh(source: ClickHouseClient, everything: bool = False) -> int:
    """Recompute the slots marked since the last refresh (less the margin), or every slot; returns how many
    slots were recomputed. Raises StoreError (e.g. a read-only user)."""
    slots_table, marks_table, state_table = slot_names(source.table)
    calls_table, _ = spans.typed_names(source.table)
    now = int(source.rows("SELECT toUnixTimestamp64Milli(now64(3)) AS t")[0]["t"])
    if everything:
        where = "true"
        count = f"SELECT uniqExact({_slot('start_ms')}) AS n FROM {calls_table}"
    else:
        last = source.rows(f"SELECT max(refreshed_ms) AS t, count() AS n FROM {state_table}")[0]
        since = int(last["t"]) - MARK_MARGIN_MS if last["n"] else 0
        marks = f"(SELECT * FROM {marks_table} WHERE marked_ms >= {since})"
        of_iterations = (
            f"SELECT {_slot('c.start_ms')} FROM {calls_table} AS c INNER JOIN "
            f"(SELECT call_id, iteration_start_ms FROM {marks} WHERE call_id != '') AS m "
            "ON m.call_id = c.call_id "
            "WHERE c.start_ms <= m.iteration_start_ms AND c.start_ms >= m.iteration_start_ms - "
            f"{MAX_CALL_MS} AND c.start_ms >= (SELECT min(iteration_start_ms) - {MAX_CALL_MS} FROM {marks}) "
            f"AND c.start_ms <= (SELECT max(iteration_start_ms) FROM {marks})"
        )
        # A conversation's new calls change the next call of its calls just before and among them.
        conversation_marks = (
            f"(SELECT conversation_id, first_start_ms, last_start_ms FROM {marks} "
            "WHERE conversation_id IS NOT NULL)"
        )
        before_conversations = (
            f"SELECT {_slot('max(c.start_ms)')} AS slot_ms FROM {calls_table} AS c INNER JOIN "
            f"{conversation_marks} AS m ON m.conversation_id = c.conversation_id "
            "WHERE c.start_ms < m.first_start_ms GROUP BY m.conversation_id, m.first_start_ms"
        )
        among_conversations = (
            f"SELECT {_slot('c.start_ms')} AS slot_ms FROM {calls_table} AS c INNER JOIN "
            f"{conversation_marks} AS m ON m.conversation_id = c.conversation_id "
            "WHERE c.start_ms >= m.first_start_ms AND c.start_ms < m.last_start_ms"
        )
        dirty = (
            f"SELECT slot_ms FROM {marks} WHERE slot_ms IS NOT NULL UNION DISTINCT {of_iterations} "
            f"UNION DISTINCT {before_conversations} UNION DISTINCT {among_conversations}"
        )
        slots = [int(r["slot_ms"]) for r in source.rows(f"SELECT DISTINCT slot_ms FROM ({dirty})")]
        if not slots:
            source.execute(f"INSERT INTO {state_table} VALUES (0, {now})")
            return 0
        listed = join([str(s) for s in sorted(slots)])
        where = (
            f"start_ms >= {min(slots)} AND start_ms < {max(slots) + SLOT_MS} "
            f"AND {_slot('start_ms')} IN ({listed})"
        )
        count = f"SELECT {len(slots)} AS n"
    # The refresh's time, in microseconds, orders versions (a later refresh read later data); the random
    # microseconds keep two refreshes of one millisecond apart. One constant for every row of the refresh.
    version = f"toUInt64({now * 1000 + random.randrange(1000)})"
    cache_table, open_table = cache_names(source.table)
    settled, open_writes = _cache_selects(source.table, version, where)
    # The call level last: its rows say which version of a slot is the newest (`latest`), so a slot is
    # never read at a version whose other levels are not all written.
    for table, select in (
        (slots_table, _level_select(source.table, "iteration", version, where)),
        (cache_table, settled),
        (open_table, open_writes),
        (slots_table, _level_select(source.table, "call", version, where)),
    ):
        source.execute(f"INSERT INTO {table} {select}{settings_clause(_join_settings())}")
    source.execute(f"INSERT INTO {state_table} VALUES (0, {now})")
    return int(source.rows(count)[0]["n"])


def ready(source: ClickHouseClient) -> bool:
    """Whether the reports can read setup's per-slot sums: they exist, and the slots marked since the last
    refresh were recomputed now (once per source). A refresh that fails (a read-only user) leaves the
    reports on the typed tables, which are always exact."""
    if source._slots is None:
        source._slots = False
        if source.typed and exists(source):
            try:
                refresh(source)
                source._slots = True
            except StoreError as err:
                log.info("compactobs: the slot sums were not refreshed (%s); reading the calls", err)
    return source.typed and source._slots


def aligned(filters: Filters) -> bool:
    """Whether the slots can answer `filters`: its window whole slots, and no conversation filter."""
    return (
        not filters.conversations
        and (filters.since_ms is None or filters.since_ms % SLOT_MS == 0)
        and (filters.until_ms is None or filters.until_ms % SLOT_MS == 0)
    )


def latest(source: ClickHouseClient, level: str, filters: Filters) -> str:
    """The slot rows of `level` (call, iteration; cache: `report cache`'s settled calls; open: its open
    writes) in `filters`' window, each slot at its newest version (its call level's), as a subquery."""
    slots_table, _, _ = slot_names(source.table)
    cache_table, open_table = cache_names(source.table)
    table = {"cache": cache_table, "open": open_table}.get(level, slots_table)
    window = ["true"]
    if filters.since_ms is not None:
        window.append(f"slot_ms >= {filters.since_ms}")
    if filters.until_ms is not None:
        window.append(f"slot_ms < {filters.until_ms}")
    where = " AND ".join(window)
    of_level = f" AND level = '{level}'" if table == slots_table else ""
    return (
        f"(SELECT * FROM {table} FINAL WHERE {where}{of_level} AND (slot_ms, version) IN "
        f"(SELECT slot_ms, max(version) FROM {slots_table} WHERE {where} AND level = 'call' "
        "GROUP BY slot_ms))"
    )


def sums(
    source: ClickHouseClient,
    filters: Filters,
    level: str,
    keys: Sequence[tuple[str, str]],
    measures: Sequence[str],
    unpriced_only: bool = False,
) -> list[dict[str, SQLValue]]:
    """The groups of `keys` ((label, SQL over the slot rows `s`)) summed over the window's slots of
    `level`: each measure is a sum or a count per slot, so the sum of the slots' is the one over the calls."""
    where = spans.model_service_conditions(filters, "s.request_model", "s.response_model", "s.service_name")
    if unpriced_only:
        where.append("s.priced = false")
    select = join(
        [*(f"{sql} AS {label}" for label, sql in keys), *(f"sum(s.{name}) AS {name}" for name in measures)]
    )
    sql = f"SELECT {select} FROM {latest(source, level, filters)} AS s"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + join([label for label, _ in keys])
    return source.rows(sql)
