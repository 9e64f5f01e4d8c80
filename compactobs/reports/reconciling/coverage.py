"""`reconcile`'s coverage: which requests reached the API and which of them a client recorded, measured from
server-side telemetry (`api_requests`, kept by `compactobs collect`) where it is on.

Only Messages requests count (spans named `anthropic.messages.create`). A request the API reported is
recorded when a call in the store carries its request id or its message id, whatever recorded that call:
compactobs in process, a process whose spans `collect` received, Claude Code's events (`collect`) or
transcripts (`import claude-code`). Both sides are read within the window, calls an
hour either side of it (a client dates a call by its start, the API by its own).

A helper of the `reconcile` report, not a report of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Final

from sqlalchemy import Engine, and_, case, func, inspect, or_, select

from compactobs._types import JSONObject
from compactobs.reports.reconciling.figures import Window
from compactobs.reports.sources.sql_reading import reading
from compactobs.store.models import api_requests, calls, epoch_ms

__all__ = ["CLAUDE_CODE", "LISTED", "Coverage", "coverage", "sources"]

LISTED: Final = 20
"""Requests no client recorded are named up to this many; the rest are counted."""
CLAUDE_CODE: Final = "claude-code"
"""The service name of Claude Code's calls, collected or imported (compactobs.collect.claude_code)."""
MESSAGES: Final = "anthropic.messages.create"
"""The span name of a Messages request (the reference: `anthropic.` and the method's path): the only
requests coverage counts (token counting, batches and sessions requests are no model call of their own)."""
_MARGIN: Final = timedelta(hours=1)


@dataclass
class Coverage:
    """Server-side telemetry's requests in the window, and how many of them a client recorded."""

    reached: int
    recorded: int
    unrecorded: list[JSONObject] = field(default_factory=list)
    """The first LISTED not recorded, by time: request_id, response_id, model, at (UTC)."""

    @property
    def not_recorded(self) -> int:
        return self.reached - self.recorded


def coverage(engine: Engine, window: Window) -> Coverage | None:
    """None when the store holds no server-side telemetry in the window (it is off, or not collected)."""
    if not inspect(engine).has_table(api_requests.name):
        return None
    start_ms, stop_ms = epoch_ms(window.start), epoch_ms(window.stop)
    margin_ms = int(_MARGIN.total_seconds() * 1000)
    near = calls.c.start_ms.between(start_ms - margin_ms, stop_ms + margin_ms)
    by_request = select(calls.c.request_id).where(near, calls.c.request_id.is_not(None))
    by_message = select(calls.c.response_id).where(near, calls.c.response_id.is_not(None))
    recorded = or_(
        and_(api_requests.c.request_id.is_not(None), api_requests.c.request_id.in_(by_request)),
        and_(api_requests.c.response_id.is_not(None), api_requests.c.response_id.in_(by_message)),
    )
    within = and_(
        api_requests.c.start_ms >= start_ms,
        api_requests.c.start_ms < stop_ms,
        api_requests.c.name == MESSAGES,
    )
    with reading(engine, snapshot=True) as connection:
        reached, matched = connection.execute(
            select(func.count(), func.coalesce(func.sum(case((recorded, 1), else_=0)), 0)).where(within)
        ).one()
        if not reached:
            return None
        missing = connection.execute(
            select(
                api_requests.c.request_id,
                api_requests.c.response_id,
                api_requests.c.model,
                api_requests.c.start_ms,
            )
            .where(within, ~recorded)
            .order_by(api_requests.c.start_ms, api_requests.c.trace_id, api_requests.c.span_id)
            .limit(LISTED)
        ).all()
    listed = [
        {
            "request_id": row.request_id,
            "response_id": row.response_id,
            "model": row.model,
            "at": datetime.fromtimestamp(row.start_ms / 1000, timezone.utc),
        }
        for row in missing
    ]
    return Coverage(int(reached), int(matched), listed)


def sources(engine: Engine, window: Window) -> tuple[int, int]:
    """(calls in the window, of them Claude Code's): compactobs' side by where its calls came from."""
    start_ms, stop_ms = epoch_ms(window.start), epoch_ms(window.stop)
    with reading(engine, snapshot=True) as connection:
        total, claude_code = connection.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((calls.c.service_name == CLAUDE_CODE, 1), else_=0)), 0),
            ).where(calls.c.start_ms >= start_ms, calls.c.start_ms < stop_ms, calls.c.priced.is_not(None))
        ).one()
    return int(total), int(claude_code)
