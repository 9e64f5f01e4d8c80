"""Canned replies: `message()`, `Reply`, `ErrorReply`, and the SSE event sequence of a message."""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from compactobs._types import JSON, JSONObject

__all__ = ["ErrorReply", "Reply", "message", "stream_events", "text_tokens"]


def text_tokens(text: str) -> int:
    """The simulator's token count of one string: `max(1, len(text) // 4)`.

    Deterministic on purpose, so tests can work usage out by hand.
    """
    return max(1, len(text) // 4)


def message(
    model: str = "claude-opus-4-8",
    content: list[JSON] | None = None,
    usage: JSON = None,
    stop_reason: str | None = "end_turn",
    id: str | None = None,
    *,
    stop_sequence: str | None = None,
    **extra: JSON,
) -> JSONObject:
    """A Messages API response body, as the real API returns it (`type: "message"`, `role: "assistant"`).

    `content` defaults to one short text block. `usage` is used verbatim, even when malformed, so tests can
    feed odd shapes to the code under test; when omitted it is `{"input_tokens": 1, "output_tokens": <the
    content's text tokens>, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
    "service_tier": "standard"}`. `id` defaults to a fresh `msg_sim_...`. Any `extra` key (for instance
    `context_management` or `container`) is added to the body as given.
    """
    blocks = (
        copy.deepcopy(content)
        if content is not None
        else [{"type": "text", "text": "Hello from the simulator."}]
    )
    if usage is None:
        texts = [b.get("text") for b in blocks if isinstance(b, dict)]
        usage = {
            "input_tokens": 1,
            "output_tokens": sum(text_tokens(t) for t in texts if isinstance(t, str)) or 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        }
    else:
        usage = copy.deepcopy(dict(usage) if isinstance(usage, Mapping) else usage)
    body: JSONObject = {
        "id": id if id is not None else f"msg_sim_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }
    body.update(copy.deepcopy(extra))
    return body


@dataclass(frozen=True)
class Reply:
    """A queued successful reply: `body` (usually from `message()`) answers the next request.

    If that request has `"stream": true`, the body is sent as the event stream the real API would send
    (see `stream_events`). `cut_after_events=n` sends only the first `n` events and then drops the
    connection without ending the chunked body, as a network failure would; on a non-streaming request
    it sends the headers and half of the JSON body, then drops the connection. `error_after_events=n`
    sends the first `n` events, then an `error` event (`{"type": "error", "error": {"type": error_type,
    ...}}`, `overloaded_error` by default) and ends the body properly, as the real API does when a stream
    fails mid-way; such a reply is not booked as served. `headers` are added to the
    response (a `request-id` is always sent). `delay_s` seconds pass before the first byte of the answer,
    as the real API takes its time (the request is recorded on arrival; other connections are served
    meanwhile).
    """

    body: Mapping[str, JSON]
    cut_after_events: int | None = None
    headers: Mapping[str, str] | None = None
    delay_s: float = 0.0
    error_after_events: int | None = None
    error_type: str = "overloaded_error"

    def __post_init__(self) -> None:
        delay = self.delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise ValueError(f"Reply: delay_s must be a finite number of seconds >= 0, not {delay!r}")
        if self.cut_after_events is not None and self.error_after_events is not None:
            raise ValueError("Reply: cut_after_events and error_after_events cannot both be set")

    def error_event(self) -> JSONObject:
        """The `error` event a stream ends with under `error_after_events`."""
        message = _ERROR_MESSAGES.get(self.error_type, f"{self.error_type} (simulated).")
        return {"type": "error", "error": {"type": self.error_type, "message": message}}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request (simulated).",
    "authentication_error": "invalid x-api-key (simulated)",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit (simulated).",
    "api_error": "Internal server error (simulated).",
    "overloaded_error": "Overloaded (simulated).",
}


@dataclass(frozen=True)
class ErrorReply:
    """A queued error: HTTP `status` with Anthropic's error body `{"type": "error", "error": {...}}`.

    `error_type` defaults by status (400 `invalid_request_error`, 429 `rate_limit_error`, 500
    `api_error`, 529 `overloaded_error`, ...). `retry_after` (seconds, 0 allowed, fractions allowed) sets
    the `retry-after` header; the SDK honours a positive value and uses its own back-off for 0.
    `should_retry` sets `x-should-retry: true|false`, which the SDK obeys over its status-code rules; the
    header is absent when it is None. `headers` are added as given.
    """

    status: int
    retry_after: float | None = None
    should_retry: bool | None = None
    error_type: str | None = None
    message: str | None = None
    headers: Mapping[str, str] | None = None

    @property
    def resolved_error_type(self) -> str:
        """The `error.type` sent: `error_type`, else the one the real API uses for `status`."""
        if self.error_type is not None:
            return self.error_type
        if self.status in _ERROR_TYPES:
            return _ERROR_TYPES[self.status]
        return "api_error" if self.status >= 500 else "invalid_request_error"

    @property
    def body(self) -> JSONObject:
        """The JSON error body (the server adds `request_id`, as the real API does)."""
        kind = self.resolved_error_type
        text = self.message if self.message is not None else _ERROR_MESSAGES.get(kind, f"{kind} (simulated).")
        return {"type": "error", "error": {"type": kind, "message": text}}

    def response_headers(self) -> dict[str, str]:
        """Headers this error adds to the response."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            # whole seconds as an integer, as the real API sends; fractions kept for fast tests
            value = self.retry_after
            headers["retry-after"] = str(int(value)) if float(value).is_integer() else repr(float(value))
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        headers.update(self.headers or {})
        return headers


def _chunks(text: str, words: int) -> Iterator[str]:
    """`text` in pieces of about `words` words; the pieces concatenate back to `text` exactly."""
    start, seen = 0, 0
    for i, ch in enumerate(text):
        if ch == " " and i > start:
            seen += 1
            if seen == words:
                yield text[start:i]
                start, seen = i, 0
    if start < len(text):
        yield text[start:]


def _block_events(index: int, block: JSON) -> Iterator[JSONObject]:
    """content_block_start, its deltas and content_block_stop for one block, as the real API streams it."""
    if not isinstance(block, dict):
        # not a block the API would send; pass it through whole so odd test data still reaches the SDK
        yield {"type": "content_block_start", "index": index, "content_block": block}
        yield {"type": "content_block_stop", "index": index}
        return
    kind = block.get("type")
    deltas: list[JSONObject] = []
    start = dict(block)
    if kind == "text" and isinstance(block.get("text"), str):
        start = {k: v for k, v in block.items() if k != "citations"}
        start["text"] = ""
        deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"], 3)]
        deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or []]
    elif kind == "compaction" and block.get("signature") is None:
        # threshold compaction: an empty block, then the whole summary in a single delta
        start = {k: v for k, v in block.items() if k not in ("content", "encrypted_content")}
        start["content"] = None
        delta: JSONObject = {"type": "compaction_delta", "content": block.get("content")}
        if "encrypted_content" in block:
            delta["encrypted_content"] = block["encrypted_content"]
        deltas = [delta]
    elif kind in ("tool_use", "server_tool_use", "mcp_tool_use") and "input" in block:
        start["input"] = {}
        partial = json.dumps(block["input"], separators=(",", ":"))
        deltas = [
            {"type": "input_json_delta", "partial_json": partial[i : i + 24]}
            for i in range(0, len(partial), 24)
        ]
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        start = {**block, "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _chunks(block["thinking"], 3)]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
    # anything else (an on-demand compaction block with its signature, redacted thinking, tool results)
    # arrives whole in content_block_start
    yield {"type": "content_block_start", "index": index, "content_block": start}
    for delta in deltas:
        yield {"type": "content_block_delta", "index": index, "delta": delta}
    yield {"type": "content_block_stop", "index": index}


_DELTA_FIELDS = ("stop_reason", "stop_sequence", "stop_details", "container")


def stream_events(body: Mapping[str, JSON]) -> list[JSONObject]:
    """The server-sent events the real API sends for the message `body`, in order.

    `message_start` carries the message with empty content, null `stop_reason`, and usage without
    `iterations` whose `output_tokens` is a placeholder (at most 1); a `ping`; each content block's
    start, deltas and stop; `message_delta` with the stop reason and the full, cumulative usage
    (iterations included); `message_stop`. Each event is sent as `event: <type>\\ndata: <json>\\n\\n`.
    """
    usage = body.get("usage")
    if isinstance(usage, Mapping):
        start_usage: JSON = {k: v for k, v in usage.items() if k != "iterations"}
        out = usage.get("output_tokens")
        if isinstance(out, int) and not isinstance(out, bool):
            start_usage["output_tokens"] = min(out, 1)
    else:
        start_usage = usage
    started = {k: v for k, v in body.items() if k not in ("context_management", *_DELTA_FIELDS)}
    started.update(content=[], stop_reason=None, stop_sequence=None, usage=start_usage)
    events: list[JSONObject] = [{"type": "message_start", "message": started}, {"type": "ping"}]
    content = body.get("content")
    for index, block in enumerate(content if isinstance(content, list) else []):
        events.extend(_block_events(index, block))
    delta = {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")}
    delta.update({k: body[k] for k in ("stop_details", "container") if k in body})
    message_delta: JSONObject = {"type": "message_delta", "delta": delta, "usage": usage}
    if body.get("context_management") is not None:
        message_delta["context_management"] = body["context_management"]
    events.append(message_delta)
    events.append({"type": "message_stop"})
    return events


def encode_event(event: Mapping[str, JSON]) -> bytes:
    """One event in the SSE wire format."""
    return f"event: {event.get('type')}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
