"""What each destination was told, in the store's `alert_state`: a finding is sent once per destination,
again only on the re-notify interval, and resolved once when it clears; a process claims a row before it
sends, so two `alert` runs at once send each finding once.

One row per (destination, finding key). A pass, for one destination:
1. `claim`: in one transaction, note the findings seen (a new key gets a row; a resolved one seen again
   opens anew), then claim what is due: each row that needs a trigger (never sent, or sent before the
   re-notify interval) and each cleared row that was sent and needs a resolve. A claim is a conditional
   UPDATE (`claimed_by`, `claimed_until_ms`) that holds only if the row is free and still due when the
   database applies it, so of two processes only one wins a row (PostgreSQL re-checks the condition after
   the other's commit; SQLite runs one writer at a time). A cleared row never sent is closed, unsent.
2. The caller delivers, then `sent` / `resolved` for what arrived and `release` for what did not: the row
   stays due, so the next run sends it. A claim lapses after `LEASE_MS` (a process that died mid-send).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import ColumnElement, Connection, Engine, Insert, and_, or_, select, update

from compactobs._types import JSONObject
from compactobs.alerts.evaluate import Alert
from compactobs.store.models import alert_state

__all__ = ["LEASE_MS", "AlertState", "Claimed"]

LEASE_MS: Final = 5 * 60 * 1000
"""A claim's life: longer than any delivery (each HTTP request times out in seconds)."""


@dataclass
class Claimed:
    """What one destination is due this pass, claimed for the caller."""

    triggers: list[Alert] = field(default_factory=list)
    repeats: set[str] = field(default_factory=set)
    """Keys among `triggers` sent before (the re-notify interval passed)."""
    resolves: list[tuple[str, JSONObject]] = field(default_factory=list)
    """(key, the finding as last seen) of the cleared findings to resolve."""

    def __bool__(self) -> bool:
        return bool(self.triggers or self.resolves)


class AlertState:
    """`alert_state` over a writer engine (SQLite: transactions take the write lock when they begin)."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self._engine = engine
        self._owner = owner

    def _insert(self, rows: Sequence[Mapping[str, object]]) -> Insert:
        """INSERT that leaves an existing row alone (ON CONFLICT DO NOTHING, on both engines)."""
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(alert_state).values(rows).on_conflict_do_nothing()
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(alert_state).values(rows).on_conflict_do_nothing()

    def claim(
        self, destination: str, alerts: Sequence[Alert], now_ms: int, renotify_ms: int | None
    ) -> Claimed:
        """Note `alerts` as seen at `destination` and claim what is due there (see the module)."""
        s = alert_state.c
        current = {alert.key: alert for alert in alerts}
        here = s.destination == destination
        free = or_(s.claimed_until_ms.is_(None), s.claimed_until_ms < now_ms)
        renotify_before = now_ms - renotify_ms if renotify_ms is not None else -1
        claimed = Claimed()
        with self._engine.begin() as connection:
            rows = [
                {
                    "destination": destination,
                    "key": key,
                    "kind": alert.kind,
                    "conversation_id": alert.conversation_id,
                    "first_seen_ms": now_ms,
                    "last_seen_ms": now_ms,
                    "finding": json.dumps(alert.finding(), ensure_ascii=True),
                }
                for key, alert in sorted(current.items())
            ]
            for start in range(0, len(rows), 200):
                connection.execute(self._insert(rows[start : start + 200]))
            known = {
                key: (last_sent, resolved, finding)
                for key, last_sent, resolved, finding in connection.execute(
                    select(s.key, s.last_sent_ms, s.resolved_ms, s.finding).where(here).order_by(s.key)
                )
            }
            for key in sorted(current):
                alert = current[key]
                last_sent, resolved, _ = known[key]
                row = and_(here, s.key == key)
                if resolved is not None:  # cleared before, back now: a new episode
                    connection.execute(
                        update(alert_state)
                        .where(row, s.resolved_ms.is_not(None))
                        .values(first_seen_ms=now_ms, last_sent_ms=None, resolved_ms=None)
                    )
                    last_sent = None
                connection.execute(
                    update(alert_state)
                    .where(row)
                    .values(last_seen_ms=now_ms, finding=json.dumps(alert.finding(), ensure_ascii=True))
                )
                due = and_(
                    row,
                    free,
                    s.resolved_ms.is_(None),
                    or_(s.last_sent_ms.is_(None), s.last_sent_ms <= renotify_before),
                )
                if self._claimed(connection, due, now_ms):
                    claimed.triggers.append(alert)
                    if last_sent is not None:
                        claimed.repeats.add(key)
            for key, (last_sent, resolved, finding) in known.items():
                if key in current or resolved is not None:
                    continue
                row = and_(here, s.key == key, s.resolved_ms.is_(None), free)
                if last_sent is None:  # never told: nothing to take back
                    connection.execute(
                        update(alert_state).where(row, s.last_sent_ms.is_(None)).values(resolved_ms=now_ms)
                    )
                elif self._claimed(connection, and_(row, s.last_sent_ms.is_not(None)), now_ms):
                    claimed.resolves.append((key, json.loads(finding) if finding else {}))
        # Rows are claimed in key order (the same order in every process: no deadlock), sent in the pass's.
        position = {alert.key: index for index, alert in enumerate(alerts)}
        claimed.triggers.sort(key=lambda alert: position[alert.key])
        return claimed

    def _claimed(self, connection: Connection, condition: ColumnElement[bool], now_ms: int) -> bool:
        result = connection.execute(
            update(alert_state)
            .where(condition)
            .values(claimed_by=self._owner, claimed_until_ms=now_ms + LEASE_MS)
        )
        return bool(result.rowcount == 1)

    def _finish(self, destination: str, keys: Iterable[str], **values: object) -> None:
        s = alert_state.c
        keys = sorted(keys)
        if not keys:
            return
        with self._engine.begin() as connection:
            for start in range(0, len(keys), 500):
                connection.execute(
                    update(alert_state)
                    .where(
                        s.destination == destination,
                        s.key.in_(keys[start : start + 500]),
                        s.claimed_by == self._owner,
                    )
                    .values(claimed_by=None, claimed_until_ms=None, **values)
                )

    def sent(self, destination: str, keys: Iterable[str], now_ms: int) -> None:
        """The triggers of `keys` reached `destination`."""
        self._finish(destination, keys, last_sent_ms=now_ms)

    def resolved(self, destination: str, keys: Iterable[str], now_ms: int) -> None:
        """The resolves of `keys` reached `destination`."""
        self._finish(destination, keys, resolved_ms=now_ms)

    def release(self, destination: str, keys: Iterable[str]) -> None:
        """`keys` did not reach `destination`: free the claims, the rows stay due."""
        self._finish(destination, keys)
