"""The one vocabulary of span, attribute, metric and event names (DESIGN.md §4).

A leaf: it imports nothing of compactobs. A closed set: GenAI semantic-convention names first, `compactobs.*`
for what the conventions do not cover. Every other module imports names from here, so a misspelling is an
import or type error, not a silent new attribute.
"""

from __future__ import annotations

import os
from typing import Final, Literal

INSTRUMENTATION_SCOPE: Final = "compactobs"

# Span kinds of record, stored in `compactobs.span.kind` so any sink can tell them apart.
SPAN_KIND_CALL: Final = "call"
SPAN_KIND_ITERATION: Final = "iteration"
SERVICE_CLAUDE_CODE: Final = "claude-code"
"""The service of Claude Code's calls (`collect`, `import claude-code`): the only calls stored again
with more (see compactobs.store.writer.supersede)."""

# --- attributes (GenAI semconv) ---
PROVIDER_NAME: Final = "gen_ai.provider.name"
OPERATION_NAME: Final = "gen_ai.operation.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
REQUEST_STREAM: Final = "gen_ai.request.stream"
REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
CONVERSATION_ID: Final = "gen_ai.conversation.id"
CONVERSATION_COMPACTED: Final = "gen_ai.conversation.compacted"
"""True on a call that compacted its context (a compaction with a summary); never set to false."""
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ: Final = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_WRITE: Final = "gen_ai.usage.cache_write.input_tokens"
USAGE_REASONING: Final = "gen_ai.usage.reasoning.output_tokens"
TOKEN_TYPE: Final = "gen_ai.token.type"
TOKEN_MODALITY: Final = "gen_ai.token.modality"
TOKEN_MODALITY_UNKNOWN: Final = "unknown"
"""Anthropic's usage is not broken down by modality: the conventions ask for `unknown` then."""

# --- attributes (other conventions) ---
RESOURCE_SERVICE_NAME: Final = "service.name"
ERROR_TYPE: Final = "error.type"
HTTP_RESEND_COUNT: Final = "http.request.resend_count"
HTTP_STATUS_CODE: Final = "http.response.status_code"
SERVER_ADDRESS: Final = "server.address"
ANTHROPIC_REQUEST_ID: Final = "anthropic.request.id"
ANTHROPIC_BETA: Final = "anthropic.beta"
ANTHROPIC_SERVICE_TIER: Final = "anthropic.response.service_tier"
CLOUD_REGION: Final = "cloud.region"
"""The region the call's client targets (Bedrock, Vertex, Claude on AWS or Google Cloud); absent for
first-party calls and Foundry's (see compactobs.instrument.platforms)."""

# --- attributes (compactobs) ---
SPAN_KIND: Final = "compactobs.span.kind"
SERVICE_NAME: Final = "compactobs.service.name"
COST_USD: Final = "compactobs.cost.usd"
COST_PRICED: Final = "compactobs.cost.priced"
PRICING_VERSION: Final = "compactobs.pricing.version"
COST_INPUT: Final = "compactobs.cost.input_usd"
COST_OUTPUT: Final = "compactobs.cost.output_usd"
COST_CACHE_READ: Final = "compactobs.cost.cache_read_usd"
COST_CACHE_WRITE_5M: Final = "compactobs.cost.cache_write_5m_usd"
COST_CACHE_WRITE_1H: Final = "compactobs.cost.cache_write_1h_usd"
COST_SERVER_TOOLS: Final = "compactobs.cost.server_tools_usd"
ITERATIONS_COUNT: Final = "compactobs.iterations.count"
COMPACTIONS_COUNT: Final = "compactobs.compactions.count"
COMPACTIONS_FAILED: Final = "compactobs.compactions.failed"
COMPACTIONS_ERRORED: Final = "compactobs.compactions.errored"
"""Compaction blocks a call showed before it ended in an error (a stream's `error` event, a cut): counted
among its compactions, never priced (the call carries no usage)."""
COMPACTION_TRIGGER: Final = "compactobs.compaction.trigger_tokens"
COMPACTION_PAUSE_AFTER: Final = "compactobs.compaction.pause_after"
COMPACTION_ON_DEMAND: Final = "compactobs.compaction.on_demand"
CONTEXT_TOKENS: Final = "compactobs.context.tokens"
ITERATION_INDEX: Final = "compactobs.iteration.index"
ITERATION_TYPE: Final = "compactobs.iteration.type"
ITERATION_KNOWN_TYPE: Final = "compactobs.iteration.known_type"
ITERATION_DECLINED: Final = "compactobs.iteration.declined"
ITERATION_TIMING: Final = "compactobs.iteration.timing"
"""Iterations run on the server: their spans carry the call's end time, and say so here."""
ITERATION_TIMING_VALUE: Final = "server-side: no timing of its own, shares the call's end time"
# Billed token classes under compactobs.* (always set; gen_ai.usage.* is left to a parent SDK span).
TOKENS_INPUT: Final = "compactobs.usage.input_tokens"
"""Uncached input only (Anthropic's convention), unlike gen_ai.usage.input_tokens."""
TOKENS_OUTPUT: Final = "compactobs.usage.output_tokens"
TOKENS_CACHE_READ: Final = "compactobs.usage.cache_read_tokens"
TOKENS_CACHE_WRITE_5M: Final = "compactobs.usage.cache_write_5m_tokens"
TOKENS_CACHE_WRITE_1H: Final = "compactobs.usage.cache_write_1h_tokens"
TOKENS_TOP_LEVEL_INPUT: Final = "compactobs.usage.top_level_input_tokens"
TOKENS_TOP_LEVEL_OUTPUT: Final = "compactobs.usage.top_level_output_tokens"
WEB_SEARCH_REQUESTS: Final = "compactobs.usage.web_search_requests"
WEB_FETCH_REQUESTS: Final = "compactobs.usage.web_fetch_requests"
# The variants the response's usage reports, which are what is billed and priced (a request for fast mode
# on a model without it runs, and is billed, at standard speed); absent when the usage does not say.
SERVICE_TIER: Final = "compactobs.billed.service_tier"
SPEED: Final = "compactobs.billed.speed"
INFERENCE_GEO: Final = "compactobs.billed.inference_geo"
STOP_REASON: Final = "compactobs.response.stop_reason"
STREAM_END: Final = "compactobs.stream.end"
"""How a streamed body ended: read, closed (abandoned by the caller) or failed."""
BUDGET_USD: Final = "compactobs.budget.usd"
BUDGET_TOKENS: Final = "compactobs.budget.tokens"
BUDGET_MAX_COMPACTIONS: Final = "compactobs.budget.max_compactions"
SOURCE_COST_USD: Final = "compactobs.source.cost_usd"
"""What a collected call's source said it cost (Claude Code's `cost_usd`), beside compactobs' own price."""
BATCH_ID: Final = "compactobs.batch.id"
"""Message Batches: the batch (`msgbatch_...`) a result was read from."""
BATCH_CUSTOM_ID: Final = "compactobs.batch.custom_id"
"""Message Batches: the result's `custom_id`, unique within its batch."""

# --- free tags: `compactobs.conversation(id, tags={...})`, Claude Code's agent, skill, MCP tool, user ---
TAG_PREFIX: Final = "compactobs.tag."
"""A call's tag KEY=VALUE travels as the string attribute `compactobs.tag.KEY` (`--by tag:KEY`). Keys:
letters, digits, `_`, `.`, `-`, 1 to 64 characters; at most 16 tags a call; values cut as a long id is
(`compactobs.untrusted.bounded_tags` holds the limits)."""

# --- the runtime guard's span event (compactobs.guard), on the call that crossed a limit ---
EVENT_GUARD_BREACH: Final = "compactobs.guard.breach"
GUARD_KIND: Final = "compactobs.guard.kind"
"""budget_usd, budget_tokens, max_compactions or compaction_loop."""
GUARD_ACTION: Final = "compactobs.guard.action"
"""What the guard does from now on: warn, pause or raise."""
GUARD_SPENT_USD: Final = "compactobs.guard.spent_usd"
"""The conversation's billed USD, this call included."""
GUARD_BILLED_TOKENS: Final = "compactobs.guard.billed_tokens"
GUARD_COMPACTIONS: Final = "compactobs.guard.compactions"
GUARD_LIMIT: Final = "compactobs.guard.limit"
"""The limit crossed (USD, tokens or compactions); absent for a compaction loop."""
GUARD_RESPONSE_IDS: Final = "compactobs.guard.response_ids"
"""The calls that crossed the line (response ids): this call, or the loop's calls."""
GUARD_COMPLETE: Final = "compactobs.guard.complete"
"""Whether the guard's figures included every process's spend (False: the store had not answered in time,
so they were this process's own and what it read before). On the breach event and on every guarded call."""
GUARD_SEEN_USD: Final = "compactobs.guard.seen_usd"
"""On a guarded call's span: the conversation's billed USD the guard knew when it let the request go."""

# --- metrics ---
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_COST: Final = "compactobs.cost"
METRIC_TOKENS: Final = "compactobs.tokens"
METRIC_COMPACTIONS: Final = "compactobs.compactions"
# Metric dimension names.
DIM_TOKEN_CLASS: Final = "compactobs.token.class"

# The GenAI metrics' current names, emitted instead of gen_ai.client.token.usage and
# gen_ai.client.operation.duration when OTEL_SEMCONV_STABILITY_OPT_IN lists gen_ai_latest_experimental
# (OpenTelemetry's migration switch; semantic-conventions-genai docs/gen-ai/gen-ai-token-metrics.md and
# non-normative/migration.md). The compactobs.* metrics are the same either way.
SEMCONV_OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
SEMCONV_GEN_AI_LATEST: Final = "gen_ai_latest_experimental"
METRIC_INFERENCE_DURATION: Final = "gen_ai.client.inference.duration"
METRIC_INFERENCE_INPUT_TOKENS: Final = "gen_ai.client.inference.usage.input_tokens"
"""Counter: billed input tokens, cache included."""
METRIC_INFERENCE_OUTPUT_TOKENS: Final = "gen_ai.client.inference.usage.output_tokens"
METRIC_INFERENCE_CACHE_READ_TOKENS: Final = "gen_ai.client.inference.usage.cache_read.input_tokens"
METRIC_INFERENCE_CACHE_WRITE_TOKENS: Final = "gen_ai.client.inference.usage.cache_write.input_tokens"
METRIC_INFERENCE_REASONING_TOKENS: Final = "gen_ai.client.inference.usage.reasoning.output_tokens"
METRIC_INFERENCE_OPERATION_INPUT_TOKENS: Final = "gen_ai.client.inference.operation.input_tokens"
"""Histogram: billed input tokens per call."""
METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS: Final = "gen_ai.client.inference.operation.output_tokens"


def latest_gen_ai_semconv() -> bool:
    """Whether OTEL_SEMCONV_STABILITY_OPT_IN (a comma-separated list) opts in to the latest GenAI names."""
    value = os.environ.get(SEMCONV_OPT_IN_ENV, "")
    return SEMCONV_GEN_AI_LATEST in {part.strip() for part in value.split(",")}


def compacted(compactions: int | None, failed_compactions: int | None) -> bool:
    """Whether a call is known to have compacted its context: a compaction that left a summary. The one
    rule for live spans and replayed ones."""
    return (compactions or 0) > (failed_compactions or 0)


TokenClass = Literal["input", "output", "cache_read", "cache_write_5m", "cache_write_1h"]
TOKEN_CLASSES: Final[tuple[TokenClass, ...]] = (
    "input",
    "output",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
)
