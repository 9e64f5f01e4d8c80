"""The guard's store: conversations' spend shared by every process through the SQL store's `guard_spend`
table. The only module of the guard that touches the database.

Why a row per conversation, not a read of `calls` nor PostgreSQL's LISTEN/NOTIFY:
- `calls` holds a call once its span is exported, a second or more after it returned, so processes reading
  it overspend by what each makes in that second; the guard's own count of a call is there at once.
- a row is one indexed read whatever the conversation's length, where a sum over `calls` grows with it;
- LISTEN/NOTIFY needs a connection held open per process and exists on PostgreSQL only; the row works the
  same on SQLite (several processes on one file) and PostgreSQL.

Each exchange is one short transaction: make missing rows from what `calls` already holds of their
conversations (history from before any guard counted them), add each conversation's increments (an UPSERT:
`cost = cost + :added`, atomic under concurrent writers on both engines), read the rows back. Money is kept
in whole units of 10^-10 USD (the `calls` columns' scale) so sums stay exact on SQLite, which has no exact
decimal type.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import BigInteger, Engine, String, bindparam, cast, func, select

from compactobs.guard.figures import PriorSpend
from compactobs.rules import billed_tokens_sql
from compactobs.store import calls, ensure_schema, guard_spend, make_engine

__all__ = ["StoreSpend"]

UNITS_PER_USD: Final = 10**10
BUSY_TIMEOUT_S: Final = 5.0
"""SQLite: how long an exchange waits for another writer's lock before it fails (and is tried again)."""
STATEMENT_TIMEOUT_S: Final = 5.0
"""PostgreSQL: the server gives up on an exchange's statement after this (a `calls` table locked elsewhere
while a row is made from it)."""


class StoreSpend:
    """`SpendSource` over the SQL store at `database_url`. Runs on the guard's background thread only."""

    def __init__(self, database_url: str | None) -> None:
        self._url = database_url
        self._engine: Engine | None = None
        self._statements: _Statements | None = None
        self._lock = threading.Lock()

    def _connect(self) -> tuple[Engine, _Statements]:
        with self._lock:
            if self._engine is None or self._statements is None:
                engine = make_engine(
                    self._url,
                    writer=True,
                    busy_timeout_s=BUSY_TIMEOUT_S,
                    statement_timeout_s=STATEMENT_TIMEOUT_S,
                )
                try:
                    # An empty SQLite file is made a store here as by the exporter (whichever is first); any
                    # other schema not at this code's revision raises what to run (`compactobs db upgrade`).
                    ensure_schema(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine, self._statements = engine, _Statements(engine)
            return self._engine, self._statements

    def exchange(
        self, added: Mapping[str, PriorSpend], read: Collection[str], seed: Mapping[str, int]
    ) -> dict[str, PriorSpend]:
        engine, statements = self._connect()
        now_ms = int(time.time() * 1000)
        with engine.begin() as connection:
            for conversation_id, before_ms in seed.items():
                connection.execute(
                    statements.seed, {"id": conversation_id, "before_ms": before_ms, "now_ms": now_ms}
                )
            if added:
                connection.execute(
                    statements.add,
                    [
                        {
                            "conversation_id": conversation_id,
                            "cost_units": int(spend.spent_usd.scaleb(10).to_integral_value()),
                            "unpriced_calls": spend.unpriced_calls,
                            "billed_tokens": spend.billed_tokens,
                            "compactions": spend.compactions,
                            "calls": spend.calls,
                            "updated_ms": now_ms,
                        }
                        for conversation_id, spend in added.items()
                    ],
                )
            if not read:
                return {}
            rows = connection.execute(statements.read, {"ids": list(read)}).all()
        return {
            conversation_id: PriorSpend(
                Decimal(int(units)).scaleb(-10), int(tokens), int(compactions), int(count), int(unpriced)
            )
            for conversation_id, units, tokens, compactions, count, unpriced in rows
        }

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def forked(self) -> None:
        self._lock = threading.Lock()
        engine, self._engine, self._statements = self._engine, None, None
        if engine is not None:
            engine.dispose(close=False)  # the parent's connections stay open for the parent


_TOTALS: Final = ("cost_units", "unpriced_calls", "billed_tokens", "compactions", "calls")


class _Statements:
    """An exchange's three statements, built once per engine: building and keying SQLAlchemy constructs
    anew took most of an exchange's 1.3 ms of CPU."""

    def __init__(self, engine: Engine) -> None:
        insert: Any  # the dialect's INSERT, with ON CONFLICT
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # SQLite 3.24+ has ON CONFLICT too
            from sqlalchemy.dialects.sqlite import insert
        g = guard_spend.c
        conversation_id = bindparam("id", type_=String)
        self.seed = (
            insert(guard_spend)
            .from_select(
                [
                    g.conversation_id,
                    g.cost_units,
                    g.unpriced_calls,
                    g.billed_tokens,
                    g.compactions,
                    g.calls,
                    g.updated_ms,
                ],
                _history(conversation_id, bindparam("before_ms", type_=BigInteger), bindparam("now_ms")),
            )
            .on_conflict_do_nothing(index_elements=[g.conversation_id])
        )
        add = insert(guard_spend).values({column.name: bindparam(column.name) for column in guard_spend.c})
        changes: dict[str, Any] = {name: g[name] + add.excluded[name] for name in _TOTALS}
        changes["updated_ms"] = add.excluded.updated_ms
        # An UPSERT of increments: atomic under concurrent writers on both engines.
        self.add = add.on_conflict_do_update(index_elements=[g.conversation_id], set_=changes)
        self.read = select(
            g.conversation_id, g.cost_units, g.billed_tokens, g.compactions, g.calls, g.unpriced_calls
        ).where(g.conversation_id.in_(bindparam("ids", expanding=True)))


def _history(conversation_id: Any, before_ms: Any, now_ms: Any) -> Any:
    """A conversation's spend in `calls` (its calls with usage that began before `before_ms`), as a
    `guard_spend` row."""
    c = calls.c
    billed = billed_tokens_sql()
    return select(
        conversation_id,
        cast(func.round(func.coalesce(func.sum(c.cost_usd), 0) * UNITS_PER_USD), BigInteger),
        func.count() - func.count(c.cost_usd),
        func.coalesce(func.sum(billed), 0),
        func.coalesce(func.sum(func.coalesce(c.compactions_count, 0)), 0),
        func.count(),
        cast(now_ms, BigInteger),
    ).where(c.conversation_id == conversation_id, c.start_ms < before_ms, c.input_tokens.is_not(None))
