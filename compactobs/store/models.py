"""The SQL schema: `calls` (one row per API call) and `iterations` (one row per billed usage entry).

These tables are the target of the Alembic revisions in `compactobs/_migrations/`; a test runs
autogenerate against them, so a column added here without a revision fails the suite.

Conventions the reports rely on:
- times are stored twice: `start_time` (a UTC timestamp) for humans and SQL date functions, and
  `start_ms` (integer epoch milliseconds), which Grafana's SQLite plugin can bucket and which the indexes
  use: filter on `start_ms` (calls: alone, with `conversation_id`, with `request_model`);
- token columns are NULL when the span did not carry them (a failed call), 0 when it said 0;
- money is NUMERIC(20, 10): exact on PostgreSQL, summed in SQL by the reports;
- `cost_usd` is NULL and `priced` false for a call whose model has no price (never $0);
- a value its column cannot hold (a count of 2^63 or more, a cost of $10^10 or more, a float that is not
  finite) is stored NULL, and `out_of_range` names the columns so cleared: SQLite and PostgreSQL store the
  same thing.

No foreign key from `iterations` to `calls`: iteration spans end before their call span and may reach
the store in an earlier batch (or a replayed spool segment), so a constraint would reject them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

__all__ = [
    "ALERT_STATE_COMMENT",
    "API_REQUESTS_COMMENT",
    "ROLLUP_COUNTS",
    "ROLLUP_LEVELS",
    "ROLLUP_MONEY",
    "SLOT_MS",
    "alert_state",
    "api_requests",
    "calls",
    "epoch_ms",
    "iterations",
    "metadata",
    "rollup_dirty",
    "rollup_open_calls",
    "rollups",
]

# Stable constraint names, so migrations and autogenerate agree on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

Usd = Numeric(20, 10)
"""USD amounts: 10 decimal places keep per-token prices (e.g. $0.0000003) exact."""


USD_LIMIT: Final = Decimal(10) ** 10
"""What NUMERIC(20, 10) holds: an absolute value below 10^10."""
OUT_OF_RANGE_COMMENT: Final = (
    "columns stored NULL because their value did not fit (comma-separated); NULL when all fitted"
)


TAGS_COMMENT: Final = (
    "the call's free tags as a JSON object of strings, keys sorted (compactobs.tag.* attributes); NULL "
    "when none"
)


metadata: MetaData = MetaData(naming_convention=NAMING_CONVENTION)

# Core tables, not ORM classes: nothing maps rows to objects, and the ORM's import (~70 ms) was most of what
# a report's start-up paid beyond SQLAlchemy Core.

calls: Table = Table(
    "calls",
    metadata,
    Column("call_id", String(16), primary_key=True, comment="span id, 16 hex digits"),
    Column("trace_id", String(32), nullable=False),
    Column("service_name", String),
    Column("conversation_id", String),
    Column("start_time", DateTime(timezone=True), comment="UTC", nullable=False),
    Column("start_ms", BigInteger, comment="epoch milliseconds, for Grafana", nullable=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("provider", String),
    Column("operation", String),
    Column("request_model", String),
    Column("response_model", String),
    Column("response_id", String),
    Column("request_id", String),
    Column("stop_reason", String),
    Column("status", String(5), comment="OK, ERROR or UNSET (the span status)", nullable=False),
    Column("error_type", String),
    Column("http_status", Integer),
    Column("attempts", Integer, comment="HTTP attempts: retries + 1", nullable=False),
    Column("stream", Boolean),
    Column("ttft_ms", Float),
    Column("stream_end", String),
    Column("compaction_trigger", BigInteger),
    Column("compaction_pause_after", Boolean),
    Column("compaction_on_demand", Boolean),
    Column("service_tier", String),
    Column("speed", String),
    Column("inference_geo", String),
    Column("region", String, comment="the platform's region (Bedrock, Vertex, Foundry); NULL first-party"),
    Column("batch_id", String, comment="Message Batches: the batch a result came from"),
    Column("custom_id", String, comment="Message Batches: the request's custom_id in its batch"),
    # Billed totals over every iteration.
    Column("input_tokens", BigInteger, comment="uncached input"),
    Column("output_tokens", BigInteger, comment="thinking included"),
    Column("cache_read_tokens", BigInteger),
    Column("cache_write_5m_tokens", BigInteger),
    Column("cache_write_1h_tokens", BigInteger),
    Column("web_search_requests", BigInteger),
    Column("web_fetch_requests", BigInteger),
    Column("reasoning_tokens", BigInteger, comment="inside output_tokens"),
    Column(
        "top_level_input_tokens", BigInteger, comment="what the top-level usage said (compaction left out)"
    ),
    Column("top_level_output_tokens", BigInteger),
    Column("cost_usd", Usd, comment="NULL when unpriced"),
    Column("priced", Boolean, comment="NULL when the call carried no usage"),
    Column("pricing_version", String),
    Column("cost_input_usd", Usd),
    Column("cost_output_usd", Usd),
    Column("cost_cache_read_usd", Usd),
    Column("cost_cache_write_5m_usd", Usd),
    Column("cost_cache_write_1h_usd", Usd),
    Column("cost_server_tools_usd", Usd),
    Column("iterations_count", Integer),
    Column("compactions_count", Integer),
    Column("compactions_failed", Integer),
    Column("compactions_errored", Integer, comment="compaction blocks seen in a call that ended in an error"),
    Column("context_tokens", BigInteger),
    Column("budget_usd", Usd),
    Column("budget_tokens", BigInteger),
    Column("budget_max_compactions", Integer),
    Column("out_of_range", String, comment=OUT_OF_RANGE_COMMENT),
    Column(
        "source_cost_usd",
        Usd,
        comment=("the cost the call's source reported (Claude Code's cost_usd); NULL otherwise"),
    ),
    Column("tags", Text, comment=TAGS_COMMENT),
    # Time filters use start_ms: an 8-byte integer makes smaller, cheaper indexes than a timestamp (and is
    # what Grafana's SQLite plugin buckets). start_time is for display and date functions.
    Index(None, "start_ms"),
    Index(None, "conversation_id", "start_ms"),
    Index(None, "request_model", "start_ms"),
)
"""One API call: the `chat {model}` span compactobs emits, keyed by its span id."""

iterations: Table = Table(
    "iterations",
    metadata,
    Column("call_id", String(16), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column(
        "start_ms",
        BigInteger,
        comment="epoch ms of the iteration span: the call's end (iterations have no timing)",
        nullable=False,
    ),
    Column("type", String),
    Column("model", String),
    Column("known_type", Boolean),
    Column("declined", Boolean),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("cache_read_tokens", BigInteger),
    Column("cache_write_5m_tokens", BigInteger),
    Column("cache_write_1h_tokens", BigInteger),
    Column("cost_usd", Usd),
    Column("priced", Boolean),
    Column("cost_input_usd", Usd),
    Column("cost_output_usd", Usd),
    Column("cost_cache_read_usd", Usd),
    Column("cost_cache_write_5m_usd", Usd),
    Column("cost_cache_write_1h_usd", Usd),
    Column("out_of_range", String, comment=OUT_OF_RANGE_COMMENT),
    # By call: the primary key. By time (reports by iteration model or type): start_ms.
    Index(None, "start_ms"),
)
"""One billed sampling step of a call (a `usage.iterations` entry), from an iteration span."""

# -- rollups: what the reports pre-aggregate ---------------------------------------------------------------
#
# The reports' measures, summed per 15-minute UTC slot of the calls' start. Every local hour, day, week
# and month of every IANA zone is a whole number of such slots (UTC offsets are multiples of 15 minutes),
# so a report reads whole slots here and only the partial slots at its window's edges from `calls`.
# Triggers on `calls` and `iterations` (migration 0002) mark the slots a change touches in `rollup_dirty`,
# whoever writes the rows; `compactobs.reports.sources.sql.rollup` recomputes them. See that module.

SLOT_MS: Final = 15 * 60 * 1000

ROLLUP_LEVELS: Final[tuple[str, ...]] = ("call", "iteration", "cache")
"""A rollup row holds one report's measures: `call` (report cost by time or service: `calls` alone),
`iteration` (report cost by model or iteration type: calls joined to their iterations), `cache`."""

ROLLUP_COUNTS: Final[tuple[str, ...]] = (
    "calls",
    "error_calls",
    "iterations",
    "compactions",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "web_search_requests",
    "unpriced_calls",
    "wasted_write_calls",
    "wasted_5m_write_tokens",
    "wasted_1h_write_tokens",
    "estimated_iterations",
)
ROLLUP_MONEY: Final[tuple[str, ...]] = (
    "cost_usd",
    "cost_input_usd",
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
    "cost_server_tools_usd",
    "compaction_cost_usd",
    "saved_usd",
    "write_premium_usd",
    "wasted_premium_usd",
)

rollups: Table = Table(
    "rollups",
    metadata,
    Column("level", String(9), nullable=False, comment="call, iteration or cache: whose measures"),
    Column("slot_ms", BigInteger, nullable=False, comment="start of the 15-minute UTC slot, epoch ms"),
    Column("service_name", String),
    Column("request_model", String),
    Column("response_model", String),
    Column("model", String, comment="the iteration's model (level iteration, cache)"),
    Column("iteration_type", String),
    Column("priced", Boolean, comment="the call's"),
    *(Column(name, BigInteger) for name in ROLLUP_COUNTS),
    # Unbounded NUMERIC: sums of the reports' exact figures (the cache's savings divide) stay exact.
    *(Column(name, Numeric) for name in ROLLUP_MONEY),
    Index(None, "level", "slot_ms"),
    comment="the reports' measures per 15-minute slot; rebuilt from calls and iterations",
)

rollup_dirty: Table = Table(
    "rollup_dirty",
    metadata,
    Column("slot_ms", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False, comment="PostgreSQL: the marking transaction; SQLite: 0"),
    PrimaryKeyConstraint("slot_ms", "seq"),
    comment="slots whose rows changed since their rollups were computed (marked by triggers)",
)

rollup_open_calls: Table = Table(
    "rollup_open_calls",
    metadata,
    Column("call_id", String(16), primary_key=True),
    Column("slot_ms", BigInteger, nullable=False),
    Index(None, "slot_ms"),
    comment="calls that wrote to the cache and had no next call when rolled up: the cache report judges "
    "their waste against its own clock, so they are read from `calls`, not from `rollups`",
)


GUARD_COST_UNITS_COMMENT: Final = "billed USD x 10^10 (priced calls): whole units, exact sums on SQLite"
GUARD_SPEND_COMMENT: Final = (
    "guarded conversations' spend across processes: seeded from calls, then each guard adds the calls it "
    "counts, as it counts them"
)


guard_spend: Table = Table(
    "guard_spend",
    metadata,
    Column("conversation_id", String, primary_key=True),
    Column("cost_units", BigInteger, nullable=False, comment=GUARD_COST_UNITS_COMMENT),
    Column("unpriced_calls", BigInteger, nullable=False),
    Column("billed_tokens", BigInteger, nullable=False),
    Column("compactions", BigInteger, nullable=False),
    Column("calls", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False, comment="epoch ms of the last change"),
    comment=GUARD_SPEND_COMMENT,
)
"""A guarded conversation's spend across processes (`compactobs.guard.store`)."""


ALERT_STATE_COMMENT: Final = (
    "what `compactobs alert` told each destination of each finding: first seen, last sent, resolved; a "
    "row is claimed while a process sends it"
)

alert_state: Table = Table(
    "alert_state",
    metadata,
    Column("destination", String, primary_key=True, comment="the sink and the alert's scope, no secret"),
    Column("key", String, primary_key=True, comment="the finding's stable key"),
    Column("kind", String, nullable=False),
    Column("conversation_id", String),
    Column("first_seen_ms", BigInteger, nullable=False, comment="epoch ms"),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("last_sent_ms", BigInteger, comment="NULL until a trigger reached the destination"),
    Column("resolved_ms", BigInteger, comment="when a resolve reached it (or it cleared unsent)"),
    Column("claimed_by", String, comment="the process sending it now"),
    Column("claimed_until_ms", BigInteger, comment="the claim lapses then (a process that died)"),
    Column("finding", Text, comment="the finding as last seen, JSON"),
    comment=ALERT_STATE_COMMENT,
)
"""`compactobs alert`'s de-duplication (`compactobs.alerts.state`)."""


API_REQUESTS_COMMENT: Final = (
    "requests the API itself reported (server-side telemetry, service claude-platform): what reached "
    "Anthropic, to set beside the calls a client recorded; never spend of their own"
)

api_requests: Table = Table(
    "api_requests",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("parent_span_id", String(16), comment="the client's span, when the client sent a traceparent"),
    Column("name", String, comment="the span's name, e.g. anthropic.messages.create"),
    Column("request_id", String, comment="the API's request id, when the span carries it"),
    Column("response_id", String, comment="gen_ai.response.id: the message id"),
    Column("model", String),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("cache_read_tokens", BigInteger),
    Column("cache_write_tokens", BigInteger),
    Column("start_ms", BigInteger, nullable=False, comment="epoch ms"),
    Column("end_ms", BigInteger),
    Column("status", String(5)),
    Index("ix_api_requests_start_ms", "start_ms"),
    Index("ix_api_requests_request_id", "request_id"),
    comment=API_REQUESTS_COMMENT,
)
"""Server-side telemetry's requests (`compactobs.collect.platform`): coverage, not spend."""


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly (no float), as `start_ms` stores them."""
    return int((moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1))
