"""`compactobs tune` on the SQL store: the calls and iterations it models (`sources.tune_fields`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from compactobs.reports.model import Filters
from compactobs.reports.sources.sql_reading import reading
from compactobs.reports.sources.tune_fields import CALL_FIELDS, ITERATION_FIELDS
from compactobs.store.models import calls, iterations

__all__ = ["tune_rows"]


def tune_rows(engine: Engine, filters: Filters) -> tuple[list[Any], list[Any]]:
    """(iterations by call and index, calls by conversation and start) of the priced calls with a
    conversation that `filters` select."""
    c, i = calls.c, iterations.c
    selected = [c.conversation_id.is_not(None), c.priced.is_not(None), *filters.call_conditions()]
    call_query = (
        select(*(c[name] for name in CALL_FIELDS))
        .where(*selected)
        .order_by(c.conversation_id, c.start_ms, c.call_id)
    )
    step_query = (
        select(*(i[name] for name in ITERATION_FIELDS))
        .select_from(iterations.join(calls, c.call_id == i.call_id))
        .where(*selected)
        .order_by(i.call_id, i.idx)
    )
    with reading(engine, snapshot=True) as connection:
        return list(connection.execute(step_query)), list(connection.execute(call_query))
