"""`out_of_range` on calls and iterations: the fields stored NULL because their value did not fit.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A token count of 2^63 or more, or a cost beyond NUMERIC(20, 10), used to make PostgreSQL refuse the whole
call (and SQLite keep it, as REAL): the stores disagreed, and PostgreSQL set the call aside. The exporter
now stores such a call on both with the impossible field cleared, and names the cleared columns here,
comma-separated; NULL when every value fitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMMENT = "columns stored NULL because their value did not fit (comma-separated); NULL when all fitted"


def upgrade() -> None:
    for table in ("calls", "iterations"):
        op.add_column(table, sa.Column("out_of_range", sa.String(), nullable=True, comment=_COMMENT))


def downgrade() -> None:
    for table in ("calls", "iterations"):
        op.drop_column(table, "out_of_range")
