"""`region`, `batch_id`, `custom_id` and `compactions_errored` on calls.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Calls through Bedrock, Vertex and Foundry run in a region that decides their price (regional endpoints
bill 4.5-and-later models at list x 1.1), and Message Batches results are identified by their batch and
`custom_id`. A stream that ends in an error is an error call with no cost, but a compaction it showed
before the error still counts: `compactions_errored` says how many of its compactions were cut off so.
NULL on the calls stored before, and where they do not apply.
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
    op.add_column("calls", sa.Column("compactions_errored", sa.Integer(), nullable=True, comment=_ERRORED))


def downgrade() -> None:
    for column in ("compactions_errored", "custom_id", "batch_id", "region"):
        op.drop_column("calls", column)


_REGION = "the platform's region (Bedrock, Vertex, Foundry); NULL first-party"
_BATCH = "Message Batches: the batch a result came from"
_CUSTOM = "Message Batches: the request's custom_id in its batch"
_ERRORED = "compaction blocks seen in a call that ended in an error"
