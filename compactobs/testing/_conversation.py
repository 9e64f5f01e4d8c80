"""Simulated conversation mode: answers derived from the request, with token counting, threshold and
on-demand compaction, and prompt caching, like the real server but deterministic."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from compactobs._types import JSON, JSONObject
from compactobs.errors import CompactobsError
from compactobs.testing._replies import message, text_tokens

__all__ = ["ConversationScenario", "SimulationError", "context_tokens"]

THRESHOLD_BETA = "compact-2026-01-12"
ON_DEMAND_BETA = "compact-2026-09-04"
COMPACT_EDIT = "compact_20260112"
DEFAULT_TRIGGER = 150_000
MIN_TRIGGER = 50_000
_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class ConversationScenario:
    """How the simulator behaves when no reply is queued.

    `reply_tokens`: length of every assistant reply, in tokens (cut to the request's `max_tokens`, with
    `stop_reason: "max_tokens"`). `summary_tokens`: length of every compaction summary; None means 2% of
    the trigger in effect (3,000 for the default 150,000; on-demand compaction uses 150,000 too). A value
    near the trigger leaves compaction too little room, so it runs again on every turn.
    `fail_compaction`: compaction blocks come back with `content: null` (billed all the same; the server
    treats such a block as a no-op, so history is not dropped and the next turn compacts again); an
    on-demand request gets empty content and `stop_reason: "end_turn"`, still billed in `iterations`.
    `cache_miss_after_compaction`: whenever a conversation compacts, every cache entry it wrote or read is
    dropped at the end of that request, so the next turn re-writes its whole cacheable prefix even when
    the client put `cache_control` on the compaction block.
    `service_tier`: the `usage.service_tier` reported (`"standard"`, `"priority"` or `"batch"`).
    """

    reply_tokens: int = 250
    summary_tokens: int | None = None
    fail_compaction: bool = False
    cache_miss_after_compaction: bool = False
    service_tier: str = "standard"

    def summary_size(self, trigger: int) -> int:
        """Tokens in a summary made under `trigger`."""
        if self.summary_tokens is not None:
            return max(1, self.summary_tokens)
        return max(1, round(trigger * 0.02))


class SimulationError(CompactobsError):
    """A request the real API would reject: `status` and Anthropic's `error_type` and `message`."""

    def __init__(self, message: str, status: int = 400, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class _Segment:
    """One block of the prompt, in the order the model reads it (tools, system, messages)."""

    tokens: int
    digest: bytes
    ttl: str | None  # cache_control TTL when the block is a cache breakpoint


@dataclass
class _CacheEntry:
    ttl: str
    expires_at: float
    conversations: set[bytes] = field(default_factory=set)


@dataclass
class _CacheUse:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


def _digest(value: JSON) -> bytes:
    return hashlib.blake2b(json.dumps(value, sort_keys=True, default=str).encode(), digest_size=16).digest()


def _without_cache_control(block: JSON) -> JSON:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _block_tokens(block: JSON) -> int:
    """Tokens of one content block (see the counting rule in the package docstring)."""
    if isinstance(block, str):
        return text_tokens(block)
    if not isinstance(block, dict):
        return text_tokens(json.dumps(block, default=str))
    kind = block.get("type")
    if kind == "text":
        return text_tokens(str(block.get("text", "")))
    if kind == "thinking":
        return text_tokens(str(block.get("thinking", "")))
    if kind == "compaction":
        content = block.get("content")
        return text_tokens(content) if isinstance(content, str) else 0
    if kind == "tool_result":
        inner = block.get("content")
        if isinstance(inner, list):
            return sum(_block_tokens(b) for b in inner)
        return text_tokens(inner) if isinstance(inner, str) else 1
    return text_tokens(
        json.dumps(_without_cache_control(block), sort_keys=True, separators=(",", ":"), default=str)
    )


def _ttl(block: JSON) -> str | None:
    control = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(control, dict):
        return None
    return "1h" if control.get("ttl") == "1h" else "5m"


def _blocks(content: JSON) -> list[JSON]:
    if isinstance(content, list):
        return content
    return [] if content is None else [{"type": "text", "text": str(content)}]


def _summarised(block: JSON) -> bool:
    """A compaction block that replaces the history before it (a null summary is a no-op)."""
    return (
        isinstance(block, dict)
        and block.get("type") == "compaction"
        and isinstance(block.get("content"), str)
    )


def _last_compaction(messages: list[JSON]) -> tuple[int, int] | None:
    for m in range(len(messages) - 1, -1, -1):
        blocks = _blocks(messages[m].get("content") if isinstance(messages[m], dict) else None)
        for b in range(len(blocks) - 1, -1, -1):
            if _summarised(blocks[b]):
                return m, b
    return None


def _message_segments(messages: list[JSON], start: tuple[int, int] | None) -> list[_Segment]:
    first_message, first_block = start or (0, 0)
    segments = []
    for m in range(first_message, len(messages)):
        msg = messages[m] if isinstance(messages[m], dict) else {}
        role = msg.get("role")
        blocks = _blocks(msg.get("content"))
        for b in range(first_block if m == first_message else 0, len(blocks)):
            block = blocks[b]
            segments.append(
                _Segment(_block_tokens(block), _digest([role, _without_cache_control(block)]), _ttl(block))
            )
    return segments


def _prefix_segments(body: Mapping[str, JSON]) -> list[_Segment]:
    """Tools then system: what every turn of a conversation starts with."""
    segments = []
    for tool in body.get("tools") or []:
        segments.append(
            _Segment(
                _block_tokens(_without_cache_control(tool)),
                _digest(["tool", _without_cache_control(tool)]),
                _ttl(tool),
            )
        )
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system or []:
        segments.append(
            _Segment(_block_tokens(block), _digest(["system", _without_cache_control(block)]), _ttl(block))
        )
    return segments


def _with_top_level_cache_control(body: Mapping[str, JSON], segments: list[_Segment]) -> list[_Segment]:
    """Top-level `cache_control` marks the last block of the prompt as a breakpoint."""
    control = body.get("cache_control")
    if not isinstance(control, dict) or not segments or segments[-1].ttl is not None:
        return segments
    last = segments[-1]
    return [*segments[:-1], _Segment(last.tokens, last.digest, "1h" if control.get("ttl") == "1h" else "5m")]


def context_tokens(request: Mapping[str, JSON]) -> int:
    """The simulator's input-token count of a Messages request body (see the package docstring).

    Tools, system and message blocks are counted; a compaction block with a summary replaces everything
    before it.
    """
    messages = request.get("messages")
    messages = messages if isinstance(messages, list) else []
    segments = _prefix_segments(request) + _message_segments(messages, _last_compaction(messages))
    return sum(s.tokens for s in segments)


def _filler(tokens: int, lead: str) -> str:
    """A deterministic text of exactly `tokens` tokens under the counting rule (4 characters each)."""
    length = 4 * max(1, tokens)
    text = lead
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    i = 0
    while len(text) < length:
        text += " " + words[i % len(words)]
        i += 1
    return text[: length - 1] + "."


class ConversationEngine:
    """State of simulated conversation mode: the prompt cache. Not thread-safe; the server serialises."""

    def __init__(self) -> None:
        self.cache: dict[bytes, _CacheEntry] = {}
        self.clock_offset = 0.0

    def now(self) -> float:
        return time.time() + self.clock_offset

    # -- prompt cache ---------------------------------------------------------------------------------

    def _prefix_digests(self, model: str, segments: list[_Segment]) -> list[bytes]:
        running = hashlib.blake2b(model.encode(), digest_size=16)
        digests = []
        for s in segments:
            running.update(s.digest)
            digests.append(running.copy().digest())
        return digests

    def _cache(self, model: str, segments: list[_Segment], conversation: bytes, write: bool) -> _CacheUse:
        """Read the longest live cached prefix ending at or before the last breakpoint; write the rest of
        the prefix up to that breakpoint, each span at the TTL of the breakpoint that closes it."""
        breakpoints = [i for i, s in enumerate(segments) if s.ttl is not None]
        if not breakpoints:
            return _CacheUse()
        last = breakpoints[-1]
        digests = self._prefix_digests(model, segments[: last + 1])
        now = self.now()
        hit = -1
        for i in range(last, -1, -1):
            entry = self.cache.get(digests[i])
            if entry is not None and entry.expires_at > now:
                hit = i
                break
        use = _CacheUse(read=sum(s.tokens for s in segments[: hit + 1]))
        if hit >= 0:
            entry = self.cache[digests[hit]]
            entry.expires_at = max(entry.expires_at, now + _TTL_SECONDS[entry.ttl])  # a read refreshes
            entry.conversations.add(conversation)
        if not write:
            return use
        for i in range(hit + 1, last + 1):
            ttl = segments[next(b for b in breakpoints if b >= i)].ttl or "5m"
            if ttl == "1h":
                use.write_1h += segments[i].tokens
            else:
                use.write_5m += segments[i].tokens
            if segments[i].ttl is not None:
                self.cache[digests[i]] = _CacheEntry(ttl, now + _TTL_SECONDS[ttl], {conversation})
        return use

    def _forget(self, conversation: bytes) -> None:
        for key in [k for k, e in self.cache.items() if conversation in e.conversations]:
            del self.cache[key]

    # -- requests -------------------------------------------------------------------------------------

    def respond(
        self, body: Mapping[str, JSON], betas: set[str], scenario: ConversationScenario
    ) -> JSONObject:
        """The message the simulated server answers `body` with; raises SimulationError for a 400."""
        model, messages = _validated(body)
        on_demand = body.get("compaction")
        if on_demand is not None:
            if not isinstance(on_demand, dict) or on_demand.get("type") != "summarize":
                raise SimulationError('compaction: type must be "summarize"')
            if ON_DEMAND_BETA not in betas:
                raise SimulationError(f"compaction: requires the anthropic-beta header {ON_DEMAND_BETA}")
            if body.get("context_management") is not None:
                raise SimulationError("compaction: cannot be combined with context_management")
        edit = _compact_edit(body, betas)

        start = _last_compaction(messages)
        prefix = _prefix_segments(body)
        segments = _with_top_level_cache_control(body, prefix + _message_segments(messages, start))
        context = sum(s.tokens for s in segments)
        # generated texts name the context they answer, so the same request gets the same text
        tag = self._prefix_digests(model, segments)[-1].hex()[:8] if segments else "empty"
        # a conversation is its model, tools, system and first message, whatever cache_control they carry
        opening = _message_segments(messages[:1], None)
        conversation = _digest([model, *(s.digest.hex() for s in prefix + opening)])
        usage_extra = {"service_tier": scenario.service_tier, **_usage_extra(body)}
        compaction_beta = THRESHOLD_BETA in betas or ON_DEMAND_BETA in betas

        if on_demand is not None:
            summary_tokens = scenario.summary_size(DEFAULT_TRIGGER)
            iteration = _iteration("compaction", _CacheUse(), context, summary_tokens)
            content: list[JSON] = []
            if not scenario.fail_compaction:
                on_demand = _filler(summary_tokens, f"Summary of conversation {tag} (on demand):")
                signature = "sig_" + hashlib.blake2b(on_demand.encode(), digest_size=12).hexdigest()
                content = [{"type": "compaction", "content": on_demand, "signature": signature}]
            usage = {**_top_level([]), **usage_extra}
            usage["iterations"] = [iteration]
            return message(model, content, usage, "compaction" if content else "end_turn")

        signed = any(
            isinstance(b, dict) and b.get("type") == "compaction" and b.get("signature")
            for m in messages
            if isinstance(m, dict)
            for b in _blocks(m.get("content"))
        )
        iterations: list[JSONObject] = []
        content = []
        compacted = False
        if edit is not None and not signed and context >= edit[0]:
            compacted = True
            trigger, pause = edit
            summary_tokens = scenario.summary_size(trigger)
            read = self._cache(model, segments, conversation, write=False)
            iterations.append(_iteration("compaction", read, context, summary_tokens))
            summary: str | None = None
            if not scenario.fail_compaction:
                summary = _filler(summary_tokens, f"Summary of conversation {tag}:")
            content.append({"type": "compaction", "content": summary})
            if pause:
                if scenario.cache_miss_after_compaction:
                    self._forget(conversation)
                usage = {**_top_level([]), **usage_extra, "iterations": iterations}
                return message(model, content, usage, "compaction")
            if summary is not None:
                # the reply is sampled on the compacted context: summary, then the new turn
                last = _message_segments(messages[-1:], None)
                summary_segment = _Segment(text_tokens(summary), _digest(["assistant", content[0]]), None)
                segments = _with_top_level_cache_control(body, [*prefix, summary_segment, *last])
                context = sum(s.tokens for s in segments)

        use = self._cache(model, segments, conversation, write=True)
        out = min(scenario.reply_tokens, int(body.get("max_tokens", 0)))
        reply_iteration = _iteration("message", use, context, max(1, out))
        iterations.append(reply_iteration)
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user")
        text = _filler(max(1, out), f"Reply {tag} to turn {turn}:")
        content.append({"type": "text", "text": text})
        stop_reason = "max_tokens" if out < scenario.reply_tokens else "end_turn"
        if compacted and scenario.cache_miss_after_compaction:
            self._forget(conversation)
        usage = {**_top_level(iterations), **usage_extra}
        if compaction_beta:
            usage["iterations"] = iterations
        return message(model, content, usage, stop_reason)

    def count(self, body: Mapping[str, JSON]) -> JSONObject:
        """The answer to `/v1/messages/count_tokens`: existing compaction blocks apply, none is made."""
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        result: JSONObject = {"input_tokens": context_tokens(body)}
        if body.get("context_management") is not None:
            original = sum(s.tokens for s in _prefix_segments(body) + _message_segments(messages, None))
            result["context_management"] = {"original_input_tokens": original}
        return result


def _validated(body: Mapping[str, JSON]) -> tuple[str, list[JSON]]:
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            raise SimulationError(f"{name}: Field required")
    model, messages, max_tokens = body["model"], body["messages"], body["max_tokens"]
    if not isinstance(model, str):
        raise SimulationError("model: Input should be a valid string")
    if not isinstance(messages, list) or not messages:
        raise SimulationError("messages: at least one message is required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise SimulationError("max_tokens: Input should be a positive integer")
    return model, messages


def _compact_edit(body: Mapping[str, JSON], betas: set[str]) -> tuple[int, bool] | None:
    """The threshold-compaction edit of the request, as (trigger, pause_after_compaction), validated."""
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    for index, edit in enumerate(edits if isinstance(edits, list) else []):
        if not isinstance(edit, dict) or edit.get("type") != COMPACT_EDIT:
            continue  # other edits (clearing tool uses, thinking) are accepted and not simulated
        if THRESHOLD_BETA not in betas:
            raise SimulationError(
                f"context_management.edits.{index}: {COMPACT_EDIT} requires the beta header {THRESHOLD_BETA}"
            )
        trigger = edit.get("trigger") or {"type": "input_tokens", "value": DEFAULT_TRIGGER}
        if not isinstance(trigger, dict) or trigger.get("type") != "input_tokens":
            raise SimulationError(f'context_management.edits.{index}.trigger.type: must be "input_tokens"')
        value = trigger.get("value", DEFAULT_TRIGGER)
        if not isinstance(value, int) or isinstance(value, bool) or value < MIN_TRIGGER:
            raise SimulationError(
                f"context_management.edits.{index}.trigger.value: must be at least {MIN_TRIGGER}"
            )
        return value, bool(edit.get("pause_after_compaction", False))
    return None


def _iteration(kind: str, cache: _CacheUse, context: int, output: int) -> JSONObject:
    """One `usage.iterations` entry; `input_tokens` is the uncached part of `context`, as at top level."""
    return {
        "type": kind,
        "input_tokens": context - cache.read - cache.write,
        "output_tokens": output,
        "cache_read_input_tokens": cache.read,
        "cache_creation_input_tokens": cache.write,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.write_5m,
            "ephemeral_1h_input_tokens": cache.write_1h,
        },
    }


def _top_level(iterations: list[JSONObject]) -> JSONObject:
    """Top-level usage: the sum of the non-compaction iterations (compaction is billed only there)."""
    counted = [i for i in iterations if i["type"] != "compaction"]

    def total(key: str) -> int:
        return sum(i[key] for i in counted)

    return {
        "input_tokens": total("input_tokens"),
        "cache_creation_input_tokens": total("cache_creation_input_tokens"),
        "cache_read_input_tokens": total("cache_read_input_tokens"),
        "cache_creation": {
            "ephemeral_5m_input_tokens": sum(
                i["cache_creation"]["ephemeral_5m_input_tokens"] for i in counted
            ),
            "ephemeral_1h_input_tokens": sum(
                i["cache_creation"]["ephemeral_1h_input_tokens"] for i in counted
            ),
        },
        "output_tokens": total("output_tokens"),
    }


def _usage_extra(body: Mapping[str, JSON]) -> JSONObject:
    """Request-level modifiers echoed in usage."""
    extra: JSONObject = {}
    if body.get("speed") in ("fast", "standard"):
        extra["speed"] = body["speed"]
    if isinstance(body.get("inference_geo"), str):
        extra["inference_geo"] = body["inference_geo"]
    return extra
