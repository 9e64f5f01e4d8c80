"""`guard_spend`: each guarded conversation's spend across processes, for the runtime guard.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

The guard read a conversation's earlier spend once, at its first call in a process, so processes on one
conversation at once each counted only their own calls. Every guard now adds the calls it counts to the
conversation's row (an UPSERT of increments, atomic on PostgreSQL and SQLite) and reads the row back, in
one short transaction, off the caller's thread. The row is seeded from `calls` when it is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "guard_spend",
        sa.Column("conversation_id", sa.String(), nullable=False),
        sa.Column("cost_units", sa.BigInteger(), nullable=False, comment=_COST_UNITS),
        sa.Column("unpriced_calls", sa.BigInteger(), nullable=False),
        sa.Column("billed_tokens", sa.BigInteger(), nullable=False),
        sa.Column("compactions", sa.BigInteger(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False, comment="epoch ms of the last change"),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_guard_spend")),
        comment=_TABLE,
    )


def downgrade() -> None:
    op.drop_table("guard_spend")


# The models' comments, repeated: a revision is frozen history and must not change when the models do.
_COST_UNITS = "billed USD x 10^10 (priced calls): whole units, exact sums on SQLite"
_TABLE = (
    "guarded conversations' spend across processes: seeded from calls, then each guard adds the calls it "
    "counts, as it counts them"
)
