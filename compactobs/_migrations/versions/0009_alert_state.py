"""`alert_state`: what `compactobs alert` told each destination of each finding.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

A finding is sent once per destination, again only on the re-notify interval, and resolved when it clears;
one row per (destination, finding key) keeps when it was first seen, last sent and resolved. A process
claims a row (`claimed_by`, `claimed_until_ms`) before it sends, so two `alert` runs at once send it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("destination", sa.String(), nullable=False, comment=_DESTINATION),
        sa.Column("key", sa.String(), nullable=False, comment="the finding's stable key"),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("conversation_id", sa.String(), nullable=True),
        sa.Column("first_seen_ms", sa.BigInteger(), nullable=False, comment="epoch ms"),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_sent_ms", sa.BigInteger(), nullable=True, comment=_LAST_SENT),
        sa.Column("resolved_ms", sa.BigInteger(), nullable=True, comment=_RESOLVED),
        sa.Column("claimed_by", sa.String(), nullable=True, comment="the process sending it now"),
        sa.Column("claimed_until_ms", sa.BigInteger(), nullable=True, comment=_CLAIM),
        sa.Column("finding", sa.Text(), nullable=True, comment="the finding as last seen, JSON"),
        sa.PrimaryKeyConstraint("destination", "key", name=op.f("pk_alert_state")),
        comment=_TABLE,
    )


def downgrade() -> None:
    op.drop_table("alert_state")


# The models' comments, repeated: a revision is frozen history and must not change when the models do.
_DESTINATION = "the sink and the alert's scope, no secret"
_LAST_SENT = "NULL until a trigger reached the destination"
_RESOLVED = "when a resolve reached it (or it cleared unsent)"
_CLAIM = "the claim lapses then (a process that died)"
_TABLE = (
    "what `compactobs alert` told each destination of each finding: first seen, last sent, resolved; a "
    "row is claimed while a process sends it"
)
