"""SQLite rollup triggers: find a call's predecessor with an index seek, not a scan of its conversation.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

0002's SQLite triggers found the previous call in a conversation with
`SELECT max(start_ms) ... WHERE conversation_id = ? AND start_ms < ?` inside a derived table. Inside a
trigger SQLite does not apply its min/max shortcut to that form: it walks every earlier call of the
conversation on the (conversation_id, start_ms) index, so each insert cost time in proportion to the
conversation's length (measured: 0.12 ms a call at 1,000 earlier calls, 7.5 ms at 100,000; an agent's
long conversation made ingest quadratic). `ORDER BY start_ms DESC LIMIT 1` seeks the same row directly
(8 us at any length). Same rows marked; PostgreSQL's statement triggers plan `max()` as a backward index
seek already and are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT = 900000  # SLOT_MS, 15 minutes, fixed here: a migration must not change when the code does.


def _predecessor_slot(row: str, *, seek: bool) -> str:
    """INSERT marking the slot of the latest call of `row`'s conversation that started before it."""
    if seek:
        select = f"""
            SELECT start_ms - start_ms % {SLOT}, 0 FROM calls
            WHERE conversation_id = {row}.conversation_id AND start_ms < {row}.start_ms
            ORDER BY start_ms DESC LIMIT 1"""
    else:  # 0002's form, for downgrade
        select = f"""
            SELECT m - m % {SLOT}, 0 FROM (
                SELECT max(start_ms) AS m FROM calls
                WHERE conversation_id = {row}.conversation_id AND start_ms < {row}.start_ms
            ) WHERE m IS NOT NULL"""
    return f"INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq) {select};"


def _triggers(*, seek: bool) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER) for the four triggers that look up a predecessor."""
    triggers = [
        (
            f"compactobs_rollup_calls_{event.lower()}",
            f"""
            CREATE TRIGGER compactobs_rollup_calls_{event.lower()} AFTER {event} ON calls
            BEGIN
                INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq)
                VALUES ({row}.start_ms - {row}.start_ms % {SLOT}, 0);
                {_predecessor_slot(row, seek=seek)}
            END
            """,
        )
        for event, row in (("INSERT", "NEW"), ("DELETE", "OLD"))
    ]
    triggers += [
        (
            f"compactobs_rollup_calls_move_{row.lower()}",
            f"""
            CREATE TRIGGER compactobs_rollup_calls_move_{row.lower()}
            AFTER UPDATE OF start_ms, conversation_id ON calls
            BEGIN
                {_predecessor_slot(row, seek=seek)}
            END
            """,
        )
        for row in ("NEW", "OLD")
    ]
    return triggers


def _replace(*, seek: bool) -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for name, create in _triggers(seek=seek):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(create)


def upgrade() -> None:
    _replace(seek=True)


def downgrade() -> None:
    _replace(seek=False)
