"""Writing `api_requests`: the requests server-side telemetry reported (see `compactobs.collect.platform`).

Idempotent like the calls: a span's (trace id, span id) is its row's key, so a batch sent twice is kept once.
No spool: when the database cannot take a batch, the receiver answers retryable and the sender resends.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from compactobs._types import SQLRecord
from compactobs.store.models import api_requests

__all__ = ["write_api_requests"]


def write_api_requests(engine: Engine, rows: Sequence[SQLRecord]) -> None:
    """Insert the rows, skipping those already stored. Raises SQLAlchemy's errors."""
    if not rows:
        return
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(api_requests).on_conflict_do_nothing(index_elements=["trace_id", "span_id"])
    with engine.begin() as connection:
        connection.execute(statement, [dict(row) for row in rows])
