"""rollups: the reports' measures per 15-minute slot, kept current by triggers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Triggers, not the exporter, mark the slots a change touches, so that every way rows reach `calls` and
`iterations` (the exporter, a replayed spool, `compactobs reprice`, a bulk load, a hand-made fix) keeps the
rollups honest. A change to a call marks its own slot and the slot of the call before it in its
conversation (whose "next call", which decides whether its cache writes were wasted, may have changed); a
change to an iteration marks its call's slot. Existing data is marked dirty here, and the first report
builds its rollups.

- SQLite: row triggers; a slot is marked once (`seq` 0, INSERT OR IGNORE).
- PostgreSQL: statement triggers over transition tables (one INSERT per statement, not per row), each mark
  tagged with the writing transaction's id, so that writers never wait on one another or on a refresh,
  and a refresh deletes only the marks it saw committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT = 900000  # SLOT_MS, 15 minutes, fixed here: a migration must not change when the code does.

COUNTS = (
    "calls",
    "error_calls",
    "iterations",
    "compactions",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "web_search_requests",
    "unpriced_calls",
    "wasted_write_calls",
    "wasted_5m_write_tokens",
    "wasted_1h_write_tokens",
    "estimated_iterations",
)
MONEY = (
    "cost_usd",
    "cost_input_usd",
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
    "cost_server_tools_usd",
    "compaction_cost_usd",
    "saved_usd",
    "write_premium_usd",
    "wasted_premium_usd",
)

_SQLITE_TRIGGERS = [
    # The call's slot, and its predecessor's in the conversation (the latest call that started before).
    *(
        f"""
        CREATE TRIGGER compactobs_rollup_calls_{event.lower()} AFTER {event} ON calls
        BEGIN
            INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq)
            VALUES ({row}.start_ms - {row}.start_ms % {SLOT}, 0);
            INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq)
            SELECT m - m % {SLOT}, 0 FROM (
                SELECT max(start_ms) AS m FROM calls
                WHERE conversation_id = {row}.conversation_id AND start_ms < {row}.start_ms
            ) WHERE m IS NOT NULL;
        END
        """
        for event, row in (("INSERT", "NEW"), ("DELETE", "OLD"))
    ),
    # Reprice rewrites costs: the slot only, no predecessor lookup (its next call did not change).
    f"""
    CREATE TRIGGER compactobs_rollup_calls_update AFTER UPDATE ON calls
    BEGIN
        INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq)
        VALUES (NEW.start_ms - NEW.start_ms % {SLOT}, 0), (OLD.start_ms - OLD.start_ms % {SLOT}, 0);
    END
    """,
    *(
        f"""
        CREATE TRIGGER compactobs_rollup_calls_move_{row.lower()} AFTER UPDATE OF start_ms, conversation_id
        ON calls
        BEGIN
            INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq)
            SELECT m - m % {SLOT}, 0 FROM (
                SELECT max(start_ms) AS m FROM calls
                WHERE conversation_id = {row}.conversation_id AND start_ms < {row}.start_ms
            ) WHERE m IS NOT NULL;
        END
        """
        for row in ("NEW", "OLD")
    ),
    *(
        f"""
        CREATE TRIGGER compactobs_rollup_iterations_{event.lower()} AFTER {event} ON iterations
        BEGIN
            INSERT OR IGNORE INTO rollup_dirty (slot_ms, seq)
            SELECT start_ms - start_ms % {SLOT}, 0 FROM calls WHERE call_id = {row}.call_id;
        END
        """
        for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))
    ),
]
_SQLITE_TRIGGER_NAMES = [
    "compactobs_rollup_calls_insert",
    "compactobs_rollup_calls_delete",
    "compactobs_rollup_calls_update",
    "compactobs_rollup_calls_move_new",
    "compactobs_rollup_calls_move_old",
    "compactobs_rollup_iterations_insert",
    "compactobs_rollup_iterations_update",
    "compactobs_rollup_iterations_delete",
]

_PG_FUNCTIONS = [
    f"""
    CREATE FUNCTION compactobs_rollup_mark_calls() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO rollup_dirty (slot_ms, seq)
        SELECT DISTINCT t.m - t.m % {SLOT}, txid_current() FROM (
            SELECT c.start_ms AS m FROM compactobs_changed c
            UNION ALL
            SELECT (
                SELECT max(p.start_ms) FROM calls p
                WHERE p.conversation_id = c.conversation_id AND p.start_ms < c.start_ms
            ) FROM compactobs_changed c
            WHERE c.conversation_id IS NOT NULL
        ) AS t
        WHERE t.m IS NOT NULL
        ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION compactobs_rollup_mark_iterations() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO rollup_dirty (slot_ms, seq)
        SELECT DISTINCT c.start_ms - c.start_ms % {SLOT}, txid_current()
        FROM calls c WHERE c.call_id IN (SELECT call_id FROM compactobs_changed)
        ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$
    """,
]
# (name, table, event, transition table, function). An UPDATE sees both the rows before and after.
_PG_TRIGGERS = [
    (f"compactobs_rollup_{table}_{event.lower()}_{kind.lower()}", table, event, kind, f"mark_{table}")
    for table in ("calls", "iterations")
    for event, kinds in (("INSERT", ("NEW",)), ("UPDATE", ("NEW", "OLD")), ("DELETE", ("OLD",)))
    for kind in kinds
]


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column(
            "level", sa.String(length=9), nullable=False, comment="call, iteration or cache: whose measures"
        ),
        sa.Column(
            "slot_ms", sa.BigInteger(), nullable=False, comment="start of the 15-minute UTC slot, epoch ms"
        ),
        sa.Column("service_name", sa.String(), nullable=True),
        sa.Column("request_model", sa.String(), nullable=True),
        sa.Column("response_model", sa.String(), nullable=True),
        sa.Column(
            "model", sa.String(), nullable=True, comment="the iteration's model (level iteration, cache)"
        ),
        sa.Column("iteration_type", sa.String(), nullable=True),
        sa.Column("priced", sa.Boolean(), nullable=True, comment="the call's"),
        *(sa.Column(name, sa.BigInteger(), nullable=True) for name in COUNTS),
        *(sa.Column(name, sa.Numeric(), nullable=True) for name in MONEY),
        comment="the reports' measures per 15-minute slot; rebuilt from calls and iterations",
    )
    op.create_index(op.f("ix_rollups_level_slot_ms"), "rollups", ["level", "slot_ms"])
    op.create_table(
        "rollup_dirty",
        sa.Column("slot_ms", sa.BigInteger(), nullable=False),
        sa.Column(
            "seq", sa.BigInteger(), nullable=False, comment="PostgreSQL: the marking transaction; SQLite: 0"
        ),
        sa.PrimaryKeyConstraint("slot_ms", "seq", name=op.f("pk_rollup_dirty")),
        comment="slots whose rows changed since their rollups were computed (marked by triggers)",
    )
    op.create_table(
        "rollup_open_calls",
        sa.Column("call_id", sa.String(length=16), nullable=False),
        sa.Column("slot_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_rollup_open_calls")),
        comment="calls that wrote to the cache and had no next call when rolled up: the cache report judges "
        "their waste against its own clock, so they are read from `calls`, not from `rollups`",
    )
    op.create_index(op.f("ix_rollup_open_calls_slot_ms"), "rollup_open_calls", ["slot_ms"])

    if op.get_context().dialect.name == "sqlite":
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
        seq = "0"
    else:
        for statement in _PG_FUNCTIONS:
            op.execute(statement)
        for name, table, event, kind, function in _PG_TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON {table} "
                f"REFERENCING {kind} TABLE AS compactobs_changed "
                f"FOR EACH STATEMENT EXECUTE FUNCTION compactobs_rollup_{function}()"
            )
        seq = "txid_current()"
    # What is already stored: every slot is dirty, and the first report builds its rollups.
    op.execute(
        "INSERT INTO rollup_dirty (slot_ms, seq) "
        f"SELECT DISTINCT start_ms - start_ms % {SLOT}, {seq} FROM calls"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        for name, table, *_ in _PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for function in ("mark_calls", "mark_iterations"):
            op.execute(f"DROP FUNCTION IF EXISTS compactobs_rollup_{function}()")
    op.drop_table("rollup_open_calls")
    op.drop_table("rollup_dirty")
    op.drop_table("rollups")
