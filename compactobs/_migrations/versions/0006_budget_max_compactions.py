"""`budget_max_compactions` on calls: the compaction limit given in code, stored like the USD and token ones.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

`compactobs.conversation(id, max_compactions=...)` was watched by the runtime guard but not recorded, so
`report anomalies` held a conversation to its stored USD and token budgets only. Calls now carry it
(`compactobs.budget.max_compactions`); NULL on the calls stored before, and on calls that set none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("budget_max_compactions", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("calls", "budget_max_compactions")
