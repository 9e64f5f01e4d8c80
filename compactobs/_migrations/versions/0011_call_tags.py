"""`tags` on calls: a call's free tags (`compactobs.conversation(id, tags=...)`, Claude Code's agent, skill,
MCP tool and user), as one JSON object of strings.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

A column of the call's own row, not a table of (call, key, value) rows: a report grouped by a tag reads the
window's calls anyway (by `start_ms`), and taking one key out of a small JSON text of the same row
(SQLite `json_extract`, PostgreSQL `->>` on the text cast to jsonb) costs less than joining a second table
row by row; the writers' one-row-per-call shape (COPY, the spool, replay) stays as it is; and ClickHouse
reads the same tags from the spans' attributes. NULL for calls without tags, and those before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("tags", sa.Text(), nullable=True, comment=_TAGS))


def downgrade() -> None:
    op.drop_column("calls", "tags")


_TAGS = (
    "the call's free tags as a JSON object of strings, keys sorted (compactobs.tag.* attributes); NULL "
    "when none"
)
