"""`compactobs tune` on ClickHouse: the calls and iterations it models, from the Collector's spans, with the
columns of `sources.tune_fields`, as the SQL store gives them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from compactobs.reports.model import Filters
from compactobs.reports.sources.clickhouse import spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient
from compactobs.reports.sources.tune_fields import CALL_FIELDS, ITERATION_FIELDS

__all__ = ["tune_rows"]


def tune_rows(source: ClickHouseClient, filters: Filters) -> tuple[list[Any], list[Any]]:
    """(iterations by call and index, calls by conversation and start) of the priced calls with a
    conversation that `filters` select."""
    window = spans.calls_of(source, filters)
    where = " AND ".join(
        ["c.conversation_id IS NOT NULL", "c.priced IS NOT NULL", *spans.call_conditions(filters, "c.")]
    )
    call_sql = (
        f"SELECT {', '.join(f'c.{name} AS {name}' for name in CALL_FIELDS)} FROM {window} AS c "
        f"WHERE {where} ORDER BY c.conversation_id, c.start_ms, c.call_id"
    )
    step_sql = (
        f"SELECT {', '.join(f'i.{name} AS {name}' for name in ITERATION_FIELDS)} "
        f"FROM {spans.iterations_of(source, filters.since_ms)} AS i "
        f"WHERE i.call_id IN (SELECT c.call_id FROM {window} AS c WHERE {where}) ORDER BY i.call_id, i.idx"
    )
    steps = [SimpleNamespace(**row) for row in source.rows(step_sql)]
    calls = [SimpleNamespace(**row) for row in source.rows(call_sql)]
    return steps, calls
