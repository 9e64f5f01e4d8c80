"""compactobs.testing.Simulator through the real SDK over real HTTP and SSE.

Token counts in simulated conversation mode are worked by hand from the documented rule:
one string counts len(text) // 4 tokens (at least 1), so `tok(n)` below is a string of n tokens.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest

from compactobs.testing import (
    ConversationScenario,
    ErrorReply,
    Reply,
    Simulator,
    context_tokens,
    message,
    stream_events,
)

MODEL = "claude-opus-4-8"
THRESHOLD = ["compact-2026-01-12"]
ON_DEMAND = ["compact-2026-09-04"]
SYSTEM = "s" * 400  # 100 tokens


def tok(n: int, letter: str = "u") -> str:
    """A text of exactly n tokens under the simulator's rule."""
    return letter * (4 * n)


def compact(trigger: int = 50_000, pause: bool = False) -> dict[str, Any]:
    edit = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": trigger}}
    return {"edits": [{**edit, "pause_after_compaction": pause}]}


def usage_of(result: Any) -> dict[str, Any]:
    return result.usage.to_dict(exclude_none=True)


COMPACTION_BODY = message(
    model=MODEL,
    content=[
        {"type": "compaction", "content": "Summary so far.", "encrypted_content": "opaque"},
        {"type": "text", "text": "one two three four five six seven"},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "a long query string"}},
    ],
    usage={
        "input_tokens": 23000,
        "output_tokens": 1000,
        "cache_read_input_tokens": 4000,
        "cache_creation_input_tokens": 0,
        "iterations": [
            {
                "type": "compaction",
                "input_tokens": 180000,
                "output_tokens": 3500,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
            {
                "type": "message",
                "input_tokens": 23000,
                "output_tokens": 1000,
                "cache_read_input_tokens": 4000,
                "cache_creation_input_tokens": 0,
            },
        ],
    },
    stop_reason="tool_use",
)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


def client_for(sim: Simulator, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=retries)


# -- queued replies ------------------------------------------------------------------------------------


def test_message_helper_fills_a_realistic_body() -> None:
    body = message(model=MODEL, content=[{"type": "text", "text": "hi"}], usage={"input_tokens": 3})
    assert body["id"].startswith("msg_sim_") and body["type"] == "message" and body["role"] == "assistant"
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert message(id="msg_x")["id"] == "msg_x"
    assert message(usage={"input_tokens": "junk"})["usage"] == {"input_tokens": "junk"}  # verbatim


def test_queued_reply_is_returned_and_requests_are_recorded(sim: Simulator) -> None:
    client = client_for(sim)
    body = message(model=MODEL, usage={"input_tokens": 10, "output_tokens": 2})
    sim.enqueue(Reply(body, headers={"x-extra": "1"}))
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["request-id"] == "req_sim_1" and raw.headers["x-extra"] == "1"
    assert raw.parse().usage.input_tokens == 10

    sim.enqueue(Reply(COMPACTION_BODY))
    result = client.beta.messages.create(
        model=MODEL,
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        betas=THRESHOLD,
        context_management=compact(150_000),
    )
    assert result.content[0].type == "compaction" and result.content[0].content == "Summary so far."
    assert [i.type for i in result.usage.iterations or []] == ["compaction", "message"]

    first, second = sim.requests
    assert first.path == "/v1/messages" and second.path in ("/v1/messages", "/v1/messages?beta=true")
    assert first.headers["anthropic-version"] and "compact-2026-01-12" in second.headers["anthropic-beta"]
    assert second.body["context_management"] == compact(150_000)
    sim.reset()
    assert sim.requests == [] and sim.pending == 0


def test_streamed_reply_has_the_real_event_sequence(sim: Simulator) -> None:
    sim.enqueue(Reply(COMPACTION_BODY))
    events = list(
        client_for(sim).beta.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            betas=THRESHOLD,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    start = events[0].message
    assert start.content == [] and start.stop_reason is None
    assert start.usage.iterations is None  # iterations come on message_delta only
    assert start.usage.output_tokens == 1 and start.usage.input_tokens == 23000

    # compaction: empty block, one compaction_delta with the whole summary, stop
    assert events[1].type == "content_block_start" and events[1].content_block.type == "compaction"
    assert events[1].content_block.content is None
    assert events[2].delta.type == "compaction_delta"
    assert (events[2].delta.content, events[2].delta.encrypted_content) == ("Summary so far.", "opaque")
    assert events[3].type == "content_block_stop"
    text = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(text) > 1 and "".join(text) == "one two three four five six seven"
    partial = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.index == 2]
    assert json.loads("".join(partial)) == {"query": "a long query string"}

    delta = events[-2]
    assert delta.delta.stop_reason == "tool_use"
    assert delta.usage.output_tokens == 1000 and delta.usage.cache_read_input_tokens == 4000
    assert delta.usage.iterations is not None and len(delta.usage.iterations) == 2


def test_sse_wire_format_is_chunked_and_has_ping(sim: Simulator) -> None:
    url = urlsplit(sim.base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
    body = message(content=[{"type": "text", "text": "hi"}])
    sim.enqueue(Reply(body))
    json_type = {"content-type": "application/json"}
    conn.request("POST", "/v1/messages", body=json.dumps({"stream": True}), headers=json_type)
    response = conn.getresponse()
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-type", "").startswith("text/event-stream")
    raw = response.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    assert frames[1] == 'event: ping\ndata: {"type":"ping"}'
    assert [f.split("\n")[0] for f in frames[:-1]] == [f"event: {e['type']}" for e in stream_events(body)]
    # keep-alive: the same connection serves the next request
    conn.request("POST", "/v1/messages?beta=true", body=b"{}", headers=json_type)
    assert conn.getresponse().status == 400  # conversation mode: model, messages, max_tokens required
    conn.close()


def test_stream_helper_and_async_client_accumulate_the_same_message(sim: Simulator) -> None:
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    sim.enqueue(Reply(COMPACTION_BODY))
    with client_for(sim).beta.messages.stream(**args, betas=THRESHOLD) as stream:
        final = stream.get_final_message()

    async def run() -> tuple[Any, Any]:
        aclient = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="k", max_retries=0)
        sim.enqueue(Reply(COMPACTION_BODY), Reply(COMPACTION_BODY))
        created = await aclient.beta.messages.create(**args, betas=THRESHOLD)
        async with aclient.beta.messages.stream(**args, betas=THRESHOLD) as astream:
            streamed = await astream.get_final_message()
        await aclient.close()
        return created, streamed

    created, streamed = asyncio.run(run())
    for result in (final, created, streamed):
        assert result.content[0].type == "compaction" and result.content[0].content == "Summary so far."
        assert result.content[1].text == "one two three four five six seven"
        assert result.content[2].input == {"query": "a long query string"}
        assert result.stop_reason == "tool_use"
        assert usage_of(result) == COMPACTION_BODY["usage"]


def test_errors_retries_and_headers(sim: Simulator) -> None:
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    sim.enqueue(ErrorReply(429, retry_after=0), Reply(message(usage={"input_tokens": 5, "output_tokens": 1})))
    assert client_for(sim, retries=2).messages.create(**args).usage.input_tokens == 5
    assert len(sim.requests) == 2

    sim.reset()
    sim.enqueue(ErrorReply(400, should_retry=False))
    with pytest.raises(anthropic.BadRequestError) as bad:
        client_for(sim, retries=2).messages.create(**args)
    assert len(sim.requests) == 1  # x-should-retry: false is obeyed
    assert bad.value.response.headers["x-should-retry"] == "false"
    assert bad.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Invalid request (simulated)."},
        "request_id": bad.value.response.headers["request-id"],
    }

    sim.enqueue(ErrorReply(529, retry_after=0), ErrorReply(500, message="boom"))
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client_for(sim).messages.create(**args)
    assert overloaded.value.response.headers["retry-after"] == "0"
    assert "x-should-retry" not in overloaded.value.response.headers
    with pytest.raises(anthropic.InternalServerError) as internal:
        client_for(sim).messages.create(**args)
    assert internal.value.body["error"] == {"type": "api_error", "message": "boom"}
    assert [r.body["max_tokens"] for r in sim.requests] == [10, 10, 10]


def test_a_cut_stream_fails_in_the_sdk(sim: Simulator) -> None:
    # message_start, ping, the compaction block's start and its delta; then the connection drops
    sim.enqueue(Reply(COMPACTION_BODY, cut_after_events=4))
    seen: list[str] = []
    with pytest.raises(Exception) as cut:  # the SDK surfaces the transport's own error
        for event in client_for(sim).beta.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            seen.append(event.type)
    transport_errors = ("RemoteProtocolError", "ReadError")
    assert isinstance(cut.value, anthropic.APIError) or type(cut.value).__name__ in transport_errors
    assert seen == ["message_start", "content_block_start", "content_block_delta"]  # ping is not surfaced

    sim.enqueue(Reply(COMPACTION_BODY, cut_after_events=0))  # a non-streaming body cut in half
    with pytest.raises(anthropic.APIConnectionError):
        client_for(sim).messages.create(model=MODEL, max_tokens=9, messages=[{"role": "user", "content": ""}])


def test_a_delayed_reply_answers_no_sooner_than_its_delay(sim: Simulator) -> None:
    # Only a lower bound, which a sleep guarantees: the reply waits at least delay_s on the server.
    client = client_for(sim)
    sim.enqueue(Reply(message(model=MODEL, id="msg_late"), delay_s=0.25))
    sim.enqueue(Reply(message(model=MODEL, id="msg_late_stream"), delay_s=0.25))
    start = time.monotonic()
    result = client.messages.create(model=MODEL, max_tokens=9, messages=[{"role": "user", "content": "a"}])
    assert result.id == "msg_late" and time.monotonic() - start >= 0.25
    start = time.monotonic()
    with client.messages.stream(model=MODEL, max_tokens=9, messages=[{"role": "user", "content": "b"}]) as s:
        assert s.get_final_message().id == "msg_late_stream" and time.monotonic() - start >= 0.25
    for bad in (-1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="delay_s must be a finite number of seconds >= 0"):
            Reply(message(), delay_s=bad)  # type: ignore[arg-type]


# -- simulated conversation mode ---------------------------------------------------------------------------


class Chat:
    """A client that keeps its history and re-sends it every turn, sending content back with to_dict()."""

    def __init__(self, sim: Simulator, **extra: Any) -> None:
        self.client = client_for(sim)
        self.history: list[dict[str, Any]] = []
        self.extra = extra

    def turn(self, user: Any, stream: bool = False, **extra: Any) -> Any:
        self.history.append({"role": "user", "content": user})
        args = {"model": MODEL, "max_tokens": 1000, "messages": self.history, **self.extra, **extra}
        if stream:
            with self.client.beta.messages.stream(**args) as s:
                result = s.get_final_message()
        else:
            result = self.client.beta.messages.create(**args)
        self.history.append({"role": "assistant", "content": [b.to_dict() for b in result.content]})
        return result

    def drop_cache_control(self) -> None:
        """Clients move their breakpoint to the newest message; the old ones lose cache_control."""
        for m in self.history:
            if isinstance(m["content"], list):
                m["content"] = [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]


def iteration(kind: str, inp: int, out: int, read: int = 0, w5: int = 0, w1: int = 0) -> dict[str, Any]:
    return {
        "type": kind,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": w5 + w1,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
    }


def top(inp: int, out: int, read: int = 0, w5: int = 0, w1: int = 0, **more: Any) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": w5 + w1,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "service_tier": "standard",
        **more,
    }


def test_threshold_compaction_over_turns(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(summary_tokens=2000, reply_tokens=100)
    chat = Chat(sim, system=SYSTEM, betas=THRESHOLD, context_management=compact(50_000))

    first = chat.turn(tok(40_000))
    # 100 system + 40,000 user = 40,100 < 50,000: no compaction, one message iteration
    assert [b.type for b in first.content] == ["text"] and first.stop_reason == "end_turn"
    assert usage_of(first) == {**top(40_100, 100), "iterations": [iteration("message", 40_100, 100)]}

    second = chat.turn(tok(10_000), stream=True)
    # context 100 + 40,000 + 100 (reply) + 10,000 = 50,200 >= 50,000: compaction of the whole context,
    # then the reply on system + summary + new turn = 100 + 2,000 + 10,000 = 12,100
    assert [b.type for b in second.content] == ["compaction", "text"]
    assert context_tokens({"messages": [{"role": "user", "content": second.content[0].content}]}) == 2000
    assert usage_of(second) == {
        **top(12_100, 100),  # top level = the message iteration only; compaction is left out
        "iterations": [iteration("compaction", 50_200, 2000), iteration("message", 12_100, 100)],
    }

    third = chat.turn(tok(1000))
    # everything before the compaction block is dropped: 100 + 2,000 + 100 + 1,000 = 3,200
    assert usage_of(third) == {**top(3200, 100), "iterations": [iteration("message", 3200, 100)]}
    count = chat.client.beta.messages.count_tokens(model=MODEL, system=SYSTEM, messages=chat.history)
    assert count.input_tokens == 3200 + 100  # the third reply is history now


def test_pause_after_compaction(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(summary_tokens=2000)
    chat = Chat(sim, system=SYSTEM, betas=THRESHOLD, context_management=compact(50_000, pause=True))
    paused = chat.turn(tok(60_000), stream=True)
    assert [b.type for b in paused.content] == ["compaction"] and paused.stop_reason == "compaction"
    # 100 + 60,000 = 60,100 compacted; nothing sampled, so the top level is 0/0
    assert usage_of(paused) == {**top(0, 0), "iterations": [iteration("compaction", 60_100, 2000)]}


def test_compaction_loops_when_the_summary_leaves_no_room(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(summary_tokens=45_000, reply_tokens=100)
    chat = Chat(sim, system=SYSTEM, betas=THRESHOLD, context_management=compact(50_000))
    assert usage_of(chat.turn(tok(48_000)))["iterations"] == [iteration("message", 48_100, 100)]
    compactions = []
    for _ in range(3):
        result = chat.turn(tok(5000))
        compactions.append([(i.type, i.input_tokens) for i in result.usage.iterations or []])
        assert result.usage.input_tokens == 100 + 45_000 + 5000
    # turn 2: 100 + 48,000 + 100 + 5,000 = 53,200; then every turn 100 + 45,000 + 100 + 5,000 = 50,200
    assert compactions == [
        [("compaction", 53_200), ("message", 50_100)],
        [("compaction", 50_200), ("message", 50_100)],
        [("compaction", 50_200), ("message", 50_100)],
    ]


def test_failed_compaction_is_billed_and_keeps_the_history(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(summary_tokens=500, reply_tokens=10, fail_compaction=True)
    chat = Chat(sim, betas=THRESHOLD, context_management=compact(50_000))
    result = chat.turn(tok(50_000))
    assert result.content[0].type == "compaction" and result.content[0].content is None
    # the null block is a no-op: the reply runs on the whole 50,000 tokens
    assert usage_of(result)["iterations"] == [
        iteration("compaction", 50_000, 500),
        iteration("message", 50_000, 10),
    ]
    # ... and the next turn compacts again: 50,000 + 10 + 1 ("x")
    assert [i.input_tokens for i in chat.turn("x").usage.iterations or []] == [50_011, 50_011]


def test_on_demand_compaction(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(summary_tokens=300)
    client = client_for(sim)
    args: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 100,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": tok(44)}],
        "compaction": {"type": "summarize"},
    }
    with pytest.raises(anthropic.BadRequestError, match="compact-2026-09-04"):
        client.beta.messages.create(**args)
    with pytest.raises(anthropic.BadRequestError, match="context_management"):
        client.beta.messages.create(**args, betas=ON_DEMAND + THRESHOLD, context_management=compact())

    result = client.beta.messages.create(**args, betas=ON_DEMAND)
    (block,) = result.content
    assert block.type == "compaction" and (block.signature or "").startswith("sig_")
    assert result.stop_reason == "compaction"
    # 100 system + 44 = 144 in, 300 summary out; nothing sampled: top level 0/0
    assert usage_of(result) == {**top(0, 0), "iterations": [iteration("compaction", 144, 300)]}

    # streamed, the signed block arrives whole in content_block_start, with no delta
    events = list(client.beta.messages.create(**args, betas=ON_DEMAND, stream=True))
    starts = [e for e in events if e.type == "content_block_start"]
    assert starts[0].content_block.to_dict() == block.to_dict()
    assert not [e for e in events if e.type == "content_block_delta"]


def test_bad_requests_are_rejected_like_the_api(sim: Simulator) -> None:
    client = client_for(sim)
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.BadRequestError, match="at least 50000"):
        client.beta.messages.create(**args, betas=THRESHOLD, context_management=compact(49_999))
    with pytest.raises(anthropic.BadRequestError, match="compact-2026-01-12"):
        client.beta.messages.create(**args, context_management=compact())
    assert len(sim.requests) == 2


def test_modifiers_are_echoed_and_ga_has_no_iterations(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(reply_tokens=5)
    client = client_for(sim)
    result = client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    # "hi" is 1 token; the 5-token reply is cut to max_tokens
    assert usage_of(result) == top(1, 3) and result.stop_reason == "max_tokens" and result.model == MODEL
    fast = client.beta.messages.create(
        model=MODEL,
        max_tokens=9,
        messages=[{"role": "user", "content": "hi"}],
        speed="fast",
        inference_geo="us",
    )
    assert (fast.usage.speed, fast.usage.inference_geo, fast.usage.service_tier) == ("fast", "us", "standard")


def cached(text: str, ttl: str = "5m") -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}]


def test_prompt_cache_reads_writes_and_expiry(sim: Simulator) -> None:
    sim.scenario = ConversationScenario(reply_tokens=100)
    chat = Chat(sim, system=cached(SYSTEM, "1h"))

    first = chat.turn(cached(tok(1000)))
    # nothing cached: write the system (100) at 1h and the user block (1,000) at 5m
    assert usage_of(first) == top(0, 100, w5=1000, w1=100)

    chat.drop_cache_control()
    second = chat.turn(cached(tok(200)))
    # read system + first turn (1,100); write reply 100 + new turn 200 at 5m
    assert usage_of(second) == top(0, 100, read=1100, w5=300)

    sim.advance_clock(400)  # past 5 minutes: only the 1-hour system entry is alive
    chat.drop_cache_control()
    third = chat.turn(cached(tok(300)))
    # read 100; write 1,000 + 100 + 200 + 100 + 300 = 1,700
    assert usage_of(third) == top(0, 100, read=100, w5=1700)

    sim.advance_clock(4000)  # past an hour: everything expired
    chat.drop_cache_control()
    fourth = chat.turn([{"type": "text", "text": tok(10)}], cache_control={"type": "ephemeral"})
    # top-level cache_control marks the last block; 100 at 1h, then 1,700 + 100 + 10 at 5m
    assert usage_of(fourth) == top(0, 100, w5=1810, w1=100)


@pytest.mark.parametrize("miss_knob", [False, True])
def test_cache_after_compaction(sim: Simulator, miss_knob: bool) -> None:
    knobs = {"summary_tokens": 1000, "reply_tokens": 100, "cache_miss_after_compaction": miss_knob}
    sim.scenario = ConversationScenario(**knobs)
    chat = Chat(sim, system=cached(SYSTEM, "1h"), betas=THRESHOLD, context_management=compact(50_000))
    first = chat.turn(cached(tok(48_000)))
    assert usage_of(first)["iterations"] == [iteration("message", 0, 100, w5=48_000, w1=100)]

    chat.drop_cache_control()
    second = chat.turn(cached(tok(5000)))
    # context 100 + 48,000 + 100 + 5,000 = 53,200: the compaction reads the cached 48,100, 5,100 uncached;
    # the reply (100 + 1,000 summary + 5,000) reads the system and writes summary + new turn = 6,000
    assert usage_of(second) == {
        **top(0, 100, read=100, w5=6000),
        "iterations": [
            iteration("compaction", 5100, 1000, read=48_100),
            iteration("message", 0, 100, read=100, w5=6000),
        ],
    }

    chat.drop_cache_control()
    third = chat.turn(cached(tok(500)))
    # history before the compaction block is gone, so the prefix no longer matches past the system:
    # write summary 1,000 + reply 100 + new turn 500 = 1,600
    cache = {"read": 100, "w5": 1600}
    if miss_knob:  # the compaction dropped the whole cache: the system (100, 1h) is written again too
        cache = {"w5": 1600, "w1": 100}
    assert usage_of(third) == {**top(0, 100, **cache), "iterations": [iteration("message", 0, 100, **cache)]}
