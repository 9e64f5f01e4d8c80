"""`source_cost_usd` on calls: what the source of a collected call said it cost (Claude Code's `cost_usd`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

`compactobs collect` prices Claude Code's calls itself, from their tokens; Claude Code's own estimate is
kept beside that figure, for comparison. NULL for calls compactobs recorded itself, and those before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("source_cost_usd", sa.Numeric(20, 10), nullable=True, comment=_SOURCE))


def downgrade() -> None:
    op.drop_column("calls", "source_cost_usd")


_SOURCE = "the cost the call's source reported (Claude Code's cost_usd); NULL otherwise"
