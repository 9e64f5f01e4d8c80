"""`report conversation ID` on ClickHouse: the conversation's call spans, in start order, with the fields
`compactobs.reports.conversation` reads (`CONVERSATION_FIELDS`)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

from compactobs._types import SQLValue
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import CONVERSATION_FIELDS, unknown_conversation
from compactobs.reports.sources.clickhouse import spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient, quote
from compactobs.reports.sources.clickhouse.queries import JOIN_SETTINGS, group_key_sql, iteration_cost_sql

__all__ = ["conversation_calls", "conversation_type_costs"]


def conversation_calls(
    source: ClickHouseClient, filters: Filters, conversation_id: str
) -> Iterator[SQLValue]:
    """The calls (CONVERSATION_FIELDS as attributes) of the conversation that `filters` select, by
    (start_ms, call_id). Raises ReportInputError when no call span ever carried this id."""
    calls = spans.calls_of(source)
    known = source.rows(
        f"SELECT count() AS n FROM (SELECT 1 FROM {calls} AS c WHERE c.conversation_id = "
        f"{quote(conversation_id)} LIMIT 1)"
    )
    if not known[0]["n"]:
        raise unknown_conversation(conversation_id)
    where = [f"c.conversation_id = {quote(conversation_id)}", *spans.call_conditions(filters, "c.")]
    window = spans.calls_of(source, filters)
    sql = (
        f"SELECT {', '.join(f'c.{name} AS {name}' for name in CONVERSATION_FIELDS)} FROM {window} AS c "
        f"WHERE {' AND '.join(where)} ORDER BY c.start_ms, c.call_id"
    )
    for record in source.rows(sql):
        yield SimpleNamespace(**record)


def conversation_type_costs(
    source: ClickHouseClient, filters: Filters, conversation_id: str
) -> list[tuple[str, SQLValue, SQLValue]]:
    """(call_id, iteration type, cost) per call and type of the conversation's calls `filters` select
    (`measures.cost.iteration_cost`, as the SQL store groups it)."""
    where = [f"c.conversation_id = {quote(conversation_id)}", *spans.call_conditions(filters, "c.")]
    window = spans.calls_of(source, filters)
    # An iteration span starts when its call ends: never before the window.
    iterations = spans.iterations_of(source, filters.since_ms)
    sql = (
        f"SELECT c.call_id AS call_id, {group_key_sql('iteration-type')} AS iteration_type, "
        f"{iteration_cost_sql()} AS cost_usd FROM {window} AS c LEFT JOIN {iterations} AS i "
        f"ON i.call_id = c.call_id WHERE {' AND '.join(where)} GROUP BY call_id, iteration_type"
    )
    return [(r["call_id"], r["iteration_type"], r["cost_usd"]) for r in source.rows(sql, JOIN_SETTINGS)]
