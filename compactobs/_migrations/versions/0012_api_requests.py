"""`api_requests`: the requests Anthropic's server-side telemetry reported, for `reconcile`'s coverage.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

With a telemetry destination set in the Claude Console, the API exports a span per model request (service
`claude-platform`); `compactobs collect` keeps each one's ids, model, tokens and times here, beside (never
in) `calls`: they are requests a client may have recorded too, not spend of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_requests",
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16), nullable=True, comment=_PARENT),
        sa.Column("name", sa.String(), nullable=True, comment=_NAME),
        sa.Column("request_id", sa.String(), nullable=True, comment=_REQUEST_ID),
        sa.Column("response_id", sa.String(), nullable=True, comment=_RESPONSE_ID),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=True),
        sa.Column("start_ms", sa.BigInteger(), nullable=False, comment="epoch ms"),
        sa.Column("end_ms", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(5), nullable=True),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name=op.f("pk_api_requests")),
        comment=_TABLE,
    )
    op.create_index("ix_api_requests_start_ms", "api_requests", ["start_ms"])
    op.create_index("ix_api_requests_request_id", "api_requests", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_api_requests_request_id", table_name="api_requests")
    op.drop_index("ix_api_requests_start_ms", table_name="api_requests")
    op.drop_table("api_requests")


# The models' comments, repeated: a revision is frozen history and must not change when the models do.
_PARENT = "the client's span, when the client sent a traceparent"
_NAME = "the span's name, e.g. anthropic.messages.create"
_REQUEST_ID = "the API's request id, when the span carries it"
_RESPONSE_ID = "gen_ai.response.id: the message id"
_TABLE = (
    "requests the API itself reported (server-side telemetry, service claude-platform): what reached "
    "Anthropic, to set beside the calls a client recorded; never spend of their own"
)
