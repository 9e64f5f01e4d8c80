"""calls and iterations: the first schema of the SQL store.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USD = sa.Numeric(precision=20, scale=10)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.String(length=16), nullable=False, comment="span id, 16 hex digits"),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("service_name", sa.String(), nullable=True),
        sa.Column("conversation_id", sa.String(), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False, comment="UTC"),
        sa.Column("start_ms", sa.BigInteger(), nullable=False, comment="epoch milliseconds, for Grafana"),
        sa.Column("end_ms", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("operation", sa.String(), nullable=True),
        sa.Column("request_model", sa.String(), nullable=True),
        sa.Column("response_model", sa.String(), nullable=True),
        sa.Column("response_id", sa.String(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("stop_reason", sa.String(), nullable=True),
        sa.Column(
            "status", sa.String(length=5), nullable=False, comment="OK, ERROR or UNSET (the span status)"
        ),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, comment="HTTP attempts: retries + 1"),
        sa.Column("stream", sa.Boolean(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("stream_end", sa.String(), nullable=True),
        sa.Column("compaction_trigger", sa.BigInteger(), nullable=True),
        sa.Column("compaction_pause_after", sa.Boolean(), nullable=True),
        sa.Column("compaction_on_demand", sa.Boolean(), nullable=True),
        sa.Column("service_tier", sa.String(), nullable=True),
        sa.Column("speed", sa.String(), nullable=True),
        sa.Column("inference_geo", sa.String(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True, comment="uncached input"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True, comment="thinking included"),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_5m_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=True),
        sa.Column("web_search_requests", sa.BigInteger(), nullable=True),
        sa.Column("web_fetch_requests", sa.BigInteger(), nullable=True),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=True, comment="inside output_tokens"),
        sa.Column(
            "top_level_input_tokens",
            sa.BigInteger(),
            nullable=True,
            comment="what the top-level usage said (compaction left out)",
        ),
        sa.Column("top_level_output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost_usd", USD, nullable=True, comment="NULL when unpriced"),
        sa.Column("priced", sa.Boolean(), nullable=True, comment="NULL when the call carried no usage"),
        sa.Column("pricing_version", sa.String(), nullable=True),
        sa.Column("cost_input_usd", USD, nullable=True),
        sa.Column("cost_output_usd", USD, nullable=True),
        sa.Column("cost_cache_read_usd", USD, nullable=True),
        sa.Column("cost_cache_write_5m_usd", USD, nullable=True),
        sa.Column("cost_cache_write_1h_usd", USD, nullable=True),
        sa.Column("cost_server_tools_usd", USD, nullable=True),
        sa.Column("iterations_count", sa.Integer(), nullable=True),
        sa.Column("compactions_count", sa.Integer(), nullable=True),
        sa.Column("compactions_failed", sa.Integer(), nullable=True),
        sa.Column("context_tokens", sa.BigInteger(), nullable=True),
        sa.Column("budget_usd", USD, nullable=True),
        sa.Column("budget_tokens", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_calls")),
    )
    op.create_index(op.f("ix_calls_start_ms"), "calls", ["start_ms"])
    op.create_index(op.f("ix_calls_conversation_id_start_ms"), "calls", ["conversation_id", "start_ms"])
    op.create_index(op.f("ix_calls_request_model_start_ms"), "calls", ["request_model", "start_ms"])

    op.create_table(
        "iterations",
        sa.Column("call_id", sa.String(length=16), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "start_ms",
            sa.BigInteger(),
            nullable=False,
            comment="epoch ms of the iteration span: the call's end (iterations have no timing)",
        ),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("known_type", sa.Boolean(), nullable=True),
        sa.Column("declined", sa.Boolean(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_5m_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost_usd", USD, nullable=True),
        sa.Column("priced", sa.Boolean(), nullable=True),
        sa.Column("cost_input_usd", USD, nullable=True),
        sa.Column("cost_output_usd", USD, nullable=True),
        sa.Column("cost_cache_read_usd", USD, nullable=True),
        sa.Column("cost_cache_write_5m_usd", USD, nullable=True),
        sa.Column("cost_cache_write_1h_usd", USD, nullable=True),
        sa.PrimaryKeyConstraint("call_id", "idx", name=op.f("pk_iterations")),
    )
    op.create_index(op.f("ix_iterations_start_ms"), "iterations", ["start_ms"])


def downgrade() -> None:
    # Dropping a table drops its indexes on both backends.
    op.drop_table("iterations")
    op.drop_table("calls")
