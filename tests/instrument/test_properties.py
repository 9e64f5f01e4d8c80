"""Property tests: instrumentation never raises into the caller and never changes what the SDK returns.

Arbitrary usage shapes (missing fields, wrong types, unknown iteration types) and streams cut at any
event go through the real SDK over real HTTP, once on a plain client and once on an instrumented one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import compactobs
from compactobs import semconv as t
from compactobs.testing import Reply, Simulator, message
from compactobs.usage import StreamAccumulator, normalise_message

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
counts = st.one_of(st.integers(min_value=0, max_value=10**7), junk)
iteration_types = st.sampled_from(
    ["message", "compaction", "advisor_message", "fallback_message", "reflection", ""]
)
iteration = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(iteration_types, junk),
        "model": st.one_of(st.sampled_from(["claude-opus-4-8", "claude-sonnet-4-6", "no-such-model"]), junk),
        "input_tokens": counts,
        "output_tokens": counts,
        "cache_read_input_tokens": counts,
        "cache_creation_input_tokens": counts,
        "cache_creation": st.one_of(
            junk,
            st.fixed_dictionaries(
                {}, optional={"ephemeral_5m_input_tokens": counts, "ephemeral_1h_input_tokens": counts}
            ),
        ),
    },
)
usage_shapes = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": counts,
        "output_tokens": counts,
        "cache_read_input_tokens": counts,
        "cache_creation_input_tokens": counts,
        "iterations": st.one_of(st.lists(iteration, max_size=4), junk),
        "server_tool_use": st.one_of(
            junk, st.fixed_dictionaries({}, optional={"web_search_requests": counts})
        ),
        "service_tier": st.one_of(st.sampled_from(["standard", "batch", "priority"]), junk),
        "speed": st.one_of(st.sampled_from(["standard", "fast"]), junk),
        "inference_geo": st.one_of(st.sampled_from(["us", "global"]), junk),
        "output_tokens_details": junk,
    },
)
models = st.sampled_from(["claude-opus-4-8", "claude-haiku-4-5", "no-such-model-9"])


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Simulator, anthropic.Anthropic, anthropic.Anthropic, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.configure(tracer_provider=provider, store=False)
    with Simulator() as sim:
        plain = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0, open_telemetry=False)
        instrumented = anthropic.Anthropic(
            base_url=sim.base_url,
            api_key="k",
            max_retries=0,
            open_telemetry=False,
            middleware=[compactobs.Middleware()],
        )
        yield sim, plain, instrumented, exporter
    compactobs.shutdown()


ARGS: dict[str, Any] = {
    "model": "claude-opus-4-8",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
    "betas": ["compact-2026-01-12"],
}


def outcome(call: Any) -> tuple[str, Any]:
    """What the caller sees: the value's dump, or the exception's type."""
    try:
        value = call()
    except Exception as err:
        return ("raised", type(err).__name__)
    return ("returned", value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    usage=usage_shapes,
    model=models,
    content=st.sampled_from(
        [
            [{"type": "text", "text": "ok"}],
            [{"type": "compaction", "content": None}, {"type": "text", "text": "ok"}],
            [{"type": "compaction", "content": "summary"}],
        ]
    ),
)
def test_non_streaming_result_is_unchanged(
    setup: Any, usage: dict[str, Any], model: str, content: list[Any]
) -> None:
    sim, plain, instrumented, _exporter = setup
    body = message(model=model, content=content, usage=usage)
    results = []
    for client in (plain, instrumented):
        sim.enqueue(Reply(body))
        # warnings=False: the shapes are malformed on purpose, and pydantic would warn on each dump.
        results.append(outcome(lambda c=client: c.beta.messages.create(**ARGS).model_dump(warnings=False)))
    assert results[0] == results[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=usage_shapes, cut=st.one_of(st.none(), st.integers(min_value=0, max_value=12)))
def test_stream_events_are_unchanged_even_when_cut(
    setup: Any, usage: dict[str, Any], cut: int | None
) -> None:
    sim, plain, instrumented, _exporter = setup
    body = message(
        model="claude-opus-4-8",
        content=[
            {"type": "compaction", "content": "summary"},
            {"type": "text", "text": "one two three four"},
        ],
        usage=usage,
    )
    results = []
    for client in (plain, instrumented):
        sim.enqueue(Reply(body, cut_after_events=cut))
        seen: list[Any] = []

        def read(c: anthropic.Anthropic = client, seen: list[Any] = seen) -> list[Any]:
            for event in c.beta.messages.create(**ARGS, stream=True):
                seen.append(event.model_dump(warnings=False))
            return seen

        kind, value = outcome(read)
        results.append((kind, value, seen))
    assert results[0] == results[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=usage_shapes, model=models, use_async=st.booleans())
def test_the_body_read_after_the_call_bills_what_the_server_sent(
    setup: Any, usage: dict[str, Any], model: str, use_async: bool
) -> None:
    """A non-streamed body is read on the recording thread, after the call returned: one call span, billed
    as the JSON the server sent (sync and async alike), whatever its shape."""
    sim, _plain, instrumented, exporter = setup
    body = message(model=model, usage=usage)
    sim.enqueue(Reply(body))

    async def create_async() -> None:
        async with anthropic.AsyncAnthropic(
            base_url=sim.base_url,
            api_key="k",
            max_retries=0,
            open_telemetry=False,
            middleware=[compactobs.Middleware()],
        ) as client:
            await client.beta.messages.create(**ARGS)

    if use_async:
        asyncio.run(create_async())
    else:
        instrumented.beta.messages.create(**ARGS)
    compactobs.flush()
    (call,) = [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
        and (s.attributes or {}).get(t.RESPONSE_ID) == body["id"]
    ]
    expected = normalise_message(json.loads(json.dumps(body))).totals
    a = call.attributes or {}
    recorded = (
        a[t.TOKENS_INPUT],
        a[t.TOKENS_OUTPUT],
        a[t.TOKENS_CACHE_READ],
        a[t.TOKENS_CACHE_WRITE_5M],
        a[t.TOKENS_CACHE_WRITE_1H],
    )
    assert recorded == (
        expected.input,
        expected.output,
        expected.cache_read,
        expected.cache_write_5m,
        expected.cache_write_1h,
    )


def test_every_generated_call_was_recorded(setup: Any) -> None:
    sim, _plain, instrumented, exporter = setup
    compactobs.flush()  # the earlier tests' calls, recorded on compactobs' thread, land before the clear
    exporter.clear()
    sim.enqueue(Reply(message(model="claude-opus-4-8", usage={"input_tokens": "x", "iterations": 5})))
    instrumented.beta.messages.create(**ARGS)
    compactobs.flush()  # spans are emitted on compactobs' recording thread
    (call,) = [
        s for s in exporter.get_finished_spans() if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
    ]
    assert (call.attributes or {})[
        t.TOKENS_INPUT
    ] == 0  # an unreadable count is 0, and the call is still there


@settings(max_examples=300, deadline=None)
@given(usage=st.one_of(usage_shapes, junk), model=st.one_of(models, junk))
def test_normalisation_never_raises(usage: Any, model: Any) -> None:
    normalised = normalise_message({"model": model, "usage": usage})
    assert normalised.totals.input >= 0 and normalised.totals.output >= 0


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.one_of(
            junk,
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(
                        [
                            "message_start",
                            "message_delta",
                            "content_block_start",
                            "content_block_delta",
                            "content_block_stop",
                            "message_stop",
                        ]
                    )
                },
                optional={
                    "message": junk,
                    "usage": st.one_of(usage_shapes, junk),
                    "delta": junk,
                    "index": junk,
                    "content_block": junk,
                },
            ),
        ),
        max_size=8,
    )
)
def test_stream_accumulation_never_raises(events: list[Any]) -> None:
    accumulator = StreamAccumulator()
    for event in events:
        accumulator.event(event)
    assert accumulator.usage().totals.input >= 0
