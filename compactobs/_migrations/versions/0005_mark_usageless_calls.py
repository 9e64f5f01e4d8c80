"""Mark for a rebuild the rollup slots of calls stored without usage (errors: NULL token counts).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Until 2026-12-02 (commit bf8e8d8) the cache rollup judged "wrote to the cache" as `tokens > 0`, which is
NULL, not false, for a call without usage: such a call was left out of both the cache rollup and the open
writes, so a rolled-up `report cache` counted one call fewer than a raw one. The code is fixed; the rollups
already built are not, until their slots change. This marks those slots dirty, so the next report rebuilds
them. Nothing is lost or rewritten: the rollups are derived, and rebuilding a correct slot changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SLOT_MS = 15 * 60 * 1000
"""The rollups' slot (store.models.SLOT_MS), fixed here: a migration keeps the value it was written with."""


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    # The marking transaction's id on PostgreSQL (as the triggers mark), 0 on SQLite.
    seq = "0" if sqlite else "txid_current()"
    select = (
        f"SELECT DISTINCT start_ms - start_ms % {_SLOT_MS}, {seq} FROM calls "
        "WHERE cache_write_5m_tokens IS NULL OR cache_write_1h_tokens IS NULL"
    )
    if sqlite:
        op.execute(f"INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq) {select}")
    else:
        op.execute(f"INSERT INTO rollup_dirty (slot_ms, seq) {select} ON CONFLICT DO NOTHING")


def downgrade() -> None:
    """Nothing to undo: the marks only make the next report rebuild correct rollups."""
