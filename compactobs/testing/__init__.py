"""compactobs.testing: a loopback simulator of Anthropic's Messages API, for testing apps offline.

`Simulator` is a real HTTP server on 127.0.0.1 (ephemeral port, HTTP/1.1 keep-alive) that the real
`anthropic` SDK talks to through `base_url`. It answers `POST /v1/messages` (and `?beta=true`, as the beta
namespace sends it), as JSON or, when the request has `"stream": true`, as the server-sent events the real
API sends. Every response carries a `request-id` header `req_sim_<n>`. No network, no API key.

```python
import anthropic
from compactobs.testing import ConversationScenario, ErrorReply, Reply, Simulator, message

with Simulator() as sim:
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=2)

    # canned replies, served in order
    sim.enqueue(ErrorReply(429, retry_after=0))                       # the SDK retries it
    sim.enqueue(Reply(message(content=[{"type": "text", "text": "hi"}],
                              usage={"input_tokens": 10, "output_tokens": 1})))
    client.messages.create(
        model="claude-opus-4-8", max_tokens=64, messages=[{"role": "user", "content": "x"}]
    )
    assert len(sim.requests) == 2                                     # RecordedRequest(path, headers, body)

    sim.enqueue(Reply(message(), cut_after_events=4))                 # a stream that breaks after 4 events
    sim.enqueue(Reply(message(), delay_s=0.3))                        # answered 300 ms after it arrives

    # nothing queued: simulated conversations, derived from each request
    sim.scenario = ConversationScenario(summary_tokens=140_000)       # compaction that loops every turn
```

## Queued replies
`Reply(body)` answers with `body` (see `message()`); as an event stream if the request streams:
`message_start` (empty content, usage without `iterations`, `output_tokens` placeholder at most 1),
`ping`, per block `content_block_start` / deltas / `content_block_stop` (text in `text_delta` pieces of a
few words; a threshold compaction block as an empty block then one `compaction_delta` with the whole
summary; an on-demand block, which has a `signature`, whole in `content_block_start`; tool input as
`input_json_delta`), `message_delta` with the stop reason and the full cumulative usage (iterations
included), `message_stop`. `ErrorReply(status, ...)` answers with Anthropic's error body.

## Simulated conversation mode
With an empty queue the server behaves like the real one, deterministically, so a client that re-sends
its history each turn sees conversations grow, get cached and get compacted.

**Token counting.** One string counts `max(1, len(text) // 4)` tokens (`text_tokens`). The context is the
sum over `tools` (each definition's compact JSON), `system` (string or text blocks) and every message
block: text, thinking, a `compaction` block's summary (a null summary counts 0), a `tool_result`'s
content, and any other block's compact JSON without `cache_control`. A string `content` is one text
block. No per-message overhead. Everything before the last compaction block that has a summary is
dropped (the API ignores it); a compaction block with `content: null` is a no-op. `context_tokens(body)`
returns this count; `/v1/messages/count_tokens` answers with it.

**Replies.** The assistant text is a deterministic string of `scenario.reply_tokens` tokens (fewer, with
`stop_reason: "max_tokens"`, when `max_tokens` is lower); `output_tokens` is that count; `model` is the
request's.

**Threshold compaction** (`context_management.edits` holding `{"type": "compact_20260112"}` and the beta
`compact-2026-01-12`; a missing beta, a trigger type other than `input_tokens` or a value below 50,000
is a 400). When the counted context reaches the trigger (default 150,000), the content starts with
`{"type": "compaction", "content": <summary of scenario.summary_tokens tokens>}` and `usage.iterations`
is `[compaction, message]`: the compaction entry is billed on the whole context (reading whatever of it
was cached), the message entry on the compacted context (tools, system, summary, the request's last
message). Top-level usage is the sum of the non-compaction entries. With `pause_after_compaction: true`
the content is the compaction block alone, `stop_reason: "compaction"`, top-level usage 0/0, iterations
`[compaction]`. A request that carries a signed (on-demand) compaction block is never threshold-compacted.
With the beta on, every response has `usage.iterations` (one `message` entry when nothing compacted).

**On-demand compaction** (top-level `"compaction": {"type": "summarize"}`, beta `compact-2026-09-04`,
else 400; not with `context_management`, else 400): content is `[{"type": "compaction", "content": ...,
"signature": "sig_..."}]`, `stop_reason: "compaction"`, top-level 0/0, iterations `[compaction]` over the
whole context, with no cache use.

**Prompt caching.** A block with `cache_control` (`{"type": "ephemeral", "ttl": "5m" | "1h"}`, default
5m; top-level `cache_control` marks the last block) is a breakpoint. A request reads the longest prefix,
ending at or before its last breakpoint, that an earlier request wrote within its TTL (wall clock plus
`Simulator.advance_clock`; a read refreshes the TTL), and writes the rest of the prefix up to the last
breakpoint: each span is written at the TTL of the breakpoint that ends it (`cache_creation`
`ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`). `input_tokens` is the rest of the context.
Prefixes are content-addressed (model, tools, system, then blocks), so after a compaction the dropped
history no longer matches: the next request reads at most the tools and system, and writes again. No
minimum cacheable length is enforced. Without any breakpoint nothing is read or written.

**Request modifiers.** `usage.service_tier` is `scenario.service_tier` (default `"standard"`); the
request's `speed` and `inference_geo` are echoed in `usage`.

**Idle gaps.** `Simulator.advance_clock` moves only the simulator's cache clock. `IdleClock(sim)` moves
it and the wall clock compactobs' middleware stamps calls with, together, so a gap shows in the store as it
would in real traffic (`with IdleClock(sim) as clock: ...; clock.idle(400)`), without waiting.

**Misbehaviour knobs** (`ConversationScenario`): `summary_tokens` near the trigger makes compaction free
too little room, so it runs on every turn; `fail_compaction` returns `content: null` (still billed);
`cache_miss_after_compaction` drops a conversation's cache entries whenever it compacts.

## Message Batches
`/v1/messages/batches` (create, retrieve, list, cancel, delete, and `/results` as chunked JSON Lines), GA
and beta. `sim.batches.plan(custom_id, Reply(...) | ErrorReply(...) | "expired" | "canceled")` decides a
request's result; unplanned requests are answered in simulated conversation mode at `service_tier`
`"batch"`. Batches end at once unless `sim.batches.hold` is set. See `compactobs.testing._batches`.
## Platform routes
Bedrock's `/model/{id}/invoke` and `/invoke-with-response-stream` (the AWS event stream), Vertex's
`...:rawPredict` and `...:streamRawPredict`, and the `/anthropic` base path of Foundry and Bedrock Mantle
answer like `/v1/messages`, so `AnthropicBedrock`, `AnthropicVertex`, `AnthropicFoundry` (and the rest)
run unchanged against `sim.base_url`: see `compactobs.testing._platforms` for each client's offline setup.

## Organisation usage and cost reports
`GET /v1/organizations/analytics/usage` and `/cost` (the SDK's `client.beta.organization.analytics.usage`
and `.cost`) answer from the Messages responses the simulator served (queued or simulated; a cut reply is
not counted): per UTC bucket of `time_bucket_width` (1m, 1h, 1d), grouped by `group_by[]` (model,
service_tier, speed, inference_geo, workspace_id, api_key_id, context_window; cost also by cost_type and
token_type), filtered by `workspace_ids[]` / `api_key_ids[]`, `limit` rows a page with `next_page`
cursors; a range the API refuses (over 31 days, over 24 hours at 1m, before 2026-01-01) is a 400. A queued
ErrorReply answers a report request too. List prices are compactobs' own (genai-prices, under
COMPACTOBS_PRICING_FILE); `sim.report_scenario = ReportScenario(...)` injects the usual mismatches: price
drift per token class, a discount, other workspaces by API key, a bucket-edge shift. See `ReportScenario`.
"""

from __future__ import annotations

from compactobs.testing._clock import IdleClock
from compactobs.testing._conversation import ConversationScenario, context_tokens
from compactobs.testing._replies import ErrorReply, Reply, message, stream_events, text_tokens
from compactobs.testing._reports import ReportScenario
from compactobs.testing._server import RecordedRequest, Simulator

__all__ = [
    "ConversationScenario",
    "ErrorReply",
    "IdleClock",
    "RecordedRequest",
    "Reply",
    "ReportScenario",
    "Simulator",
    "context_tokens",
    "message",
    "stream_events",
    "text_tokens",
]
