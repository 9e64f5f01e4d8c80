"""`region`, `batch_id` and `custom_id` on calls: platform calls and Message Batches results.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Calls through Bedrock, Vertex and Foundry run in a region that decides their price (regional endpoints
bill 4.5-and-later models at list x 1.1), and Message Batches results are identified by their batch and
`custom_id`. NULL on the calls stored before, and on first-party calls made one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("region", sa.String(), nullable=True, comment=_REGION))
    op.add_column("calls", sa.Column("batch_id", sa.String(), nullable=True, comment=_BATCH))
    op.add_column("calls", sa.Column("custom_id", sa.String(), nullable=True, comment=_CUSTOM))


def downgrade() -> None:
    for column in ("custom_id", "batch_id", "region"):
        op.drop_column("calls", column)


_REGION = "the platform's region (Bedrock, Vertex, Foundry); NULL first-party"
_BATCH = "Message Batches: the batch a result came from"
_CUSTOM = "Message Batches: the request's custom_id in its batch"
