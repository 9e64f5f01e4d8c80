"""Usage normalisation, DESIGN.md section 3, with numbers worked by hand."""

from __future__ import annotations

from anthropic.types.beta import BetaMessage

from compactobs.usage import StreamAccumulator, TokenCounts, normalise_message, request_facts


def test_compaction_iteration_left_out_of_top_level_is_billed() -> None:
    # The documented example: top level 23,000/1,000 leaves out a 180,000/3,500 compaction.
    # Billed = sum over iterations = 180,000 + 23,000 = 203,000 input; 3,500 + 1,000 = 4,500 output.
    message = BetaMessage.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-opus-4-8",
            "content": [{"type": "compaction", "content": "summary"}, {"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 23000,
                "output_tokens": 1000,
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
                        "cache_read_input_tokens": 0,
                        "cache_creation_input_tokens": 0,
                    },
                ],
            },
        }
    )
    usage = normalise_message(message)
    assert usage.has_iterations
    assert usage.totals == TokenCounts(input=203000, output=4500)
    assert usage.top_level == TokenCounts(input=23000, output=1000)
    assert usage.compactions == 1
    # Context after the call = the last message iteration's total input, not the compaction's.
    assert usage.context_tokens == 23000
    assert [i.model for i in usage.iterations] == ["claude-opus-4-8", "claude-opus-4-8"]


def test_paused_response_has_its_whole_cost_in_the_compaction_entry() -> None:
    # pause_after_compaction: top level 0/0; billed = the compaction entry alone: 151,200 in, 2,900 out.
    usage = normalise_message(
        {
            "model": "claude-sonnet-4-6",
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "iterations": [{"type": "compaction", "input_tokens": 151200, "output_tokens": 2900}],
            },
        }
    )
    assert usage.totals == TokenCounts(input=151200, output=2900)
    assert usage.context_tokens is None


def test_cache_writes_split_5m_1h_and_absent_breakdown_is_5m() -> None:
    # 3,000 written: breakdown says 1,000 at 5m and 2,000 at 1h.
    split = normalise_message(
        {
            "model": "m",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_input_tokens": 7000,
                "cache_creation_input_tokens": 3000,
                "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
            },
        }
    )
    assert split.totals == TokenCounts(
        input=10, output=5, cache_read=7000, cache_write_5m=1000, cache_write_1h=2000
    )
    # total input = 10 + 7,000 + 3,000 = 10,010
    assert split.totals.total_input == 10010
    # No breakdown: all 3,000 are 5-minute writes (the API's default TTL).
    plain = normalise_message(
        {"model": "m", "usage": {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 3000}}
    )
    assert plain.totals.cache_write_5m == 3000 and plain.totals.cache_write_1h == 0


def test_other_models_and_a_declined_fallback_attempt() -> None:
    usage = normalise_message(
        {
            "model": "claude-opus-4-8",
            "usage": {
                "input_tokens": 900,
                "output_tokens": 50,
                "iterations": [
                    # declined before any output by the primary: kept, marked, priced $0 later
                    {"type": "message", "model": "claude-opus-4-8", "input_tokens": 900, "output_tokens": 0},
                    {
                        "type": "advisor_message",
                        "model": "claude-opus-5",
                        "input_tokens": 400,
                        "output_tokens": 80,
                    },
                    {
                        "type": "fallback_message",
                        "model": "claude-sonnet-4-6",
                        "input_tokens": 900,
                        "output_tokens": 50,
                    },
                ],
            },
        }
    )
    models = [(i.type, i.model, i.declined) for i in usage.iterations]
    assert models == [
        ("message", "claude-opus-4-8", True),
        ("advisor_message", "claude-opus-5", False),
        ("fallback_message", "claude-sonnet-4-6", False),
    ]
    # 900 + 400 + 900 = 2,200 input; 0 + 80 + 50 = 130 output (declined tokens are kept).
    assert usage.totals == TokenCounts(input=2200, output=130)
    assert usage.context_tokens == 900


def test_unknown_iteration_type_is_kept_at_the_response_model_and_flagged() -> None:
    usage = normalise_message(
        {
            "model": "claude-opus-4-8",
            "usage": {
                "input_tokens": 1,
                "output_tokens": 1,
                "iterations": [{"type": "reflection", "input_tokens": 500, "output_tokens": 20}],
            },
        }
    )
    (only,) = usage.iterations
    assert (only.type, only.model, only.known_type) == ("reflection", "claude-opus-4-8", False)
    assert usage.unknown_types == ("reflection",)


def test_thinking_tokens_shown_apart_never_added_to_output() -> None:
    usage = normalise_message(
        {
            "model": "m",
            "usage": {
                "input_tokens": 5,
                "output_tokens": 900,
                "output_tokens_details": {"thinking_tokens": 700},
            },
        }
    )
    assert usage.thinking_tokens == 700
    assert usage.totals.output == 900


def test_wrong_types_count_as_zero_and_never_raise() -> None:
    usage = normalise_message(
        {
            "model": 7,
            "usage": {
                "input_tokens": "12",
                "output_tokens": -3,
                "cache_read_input_tokens": True,
                "iterations": "nope",
                "server_tool_use": {"web_search_requests": 2.5},
            },
        }
    )
    assert usage.totals == TokenCounts()
    assert usage.response_model is None and usage.web_search_requests == 0
    assert normalise_message(None).totals == TokenCounts()


def test_stream_usage_overwrites_never_adds_and_keeps_message_start_values() -> None:
    acc = StreamAccumulator()
    acc.event(
        {
            "type": "message_start",
            "message": {
                "id": "msg_s",
                "model": "claude-opus-4-8",
                "usage": {"input_tokens": 23000, "output_tokens": 1, "cache_read_input_tokens": 4000},
            },
        }
    )
    acc.event(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "compaction", "content": None}}
    )
    acc.event(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "compaction_delta", "content": "sum"}}
    )
    acc.event({"type": "content_block_stop", "index": 0})
    acc.event(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 400}}
    )
    acc.event(
        {
            "type": "message_delta",
            "delta": {},
            "usage": {
                "output_tokens": 1000,
                "iterations": [
                    {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
                    {
                        "type": "message",
                        "input_tokens": 23000,
                        "output_tokens": 1000,
                        "cache_read_input_tokens": 4000,
                    },
                ],
            },
        }
    )
    acc.event({"type": "message_stop"})
    usage = acc.usage()
    # Cumulative deltas: output is 1,000 (the last), not 1 + 400 + 1,000; the cache read 4,000 from
    # message_start survives deltas that leave it out.
    # Billed = 180,000+23,000 in, 3,500+1,000 out, 4,000 read.
    assert usage.top_level == TokenCounts(input=23000, output=1000, cache_read=4000)
    assert usage.totals == TokenCounts(input=203000, output=4500, cache_read=4000)
    assert acc.stop_reason == "end_turn" and acc.saw_stop
    assert [b.failed for b in acc.compaction_blocks()] == [False]


def test_request_facts_read_the_compaction_config() -> None:
    body = {
        "model": "claude-opus-4-8",
        "max_tokens": 1024,
        "stream": True,
        "context_management": {"edits": [{"type": "compact_20260112", "pause_after_compaction": True}]},
        "speed": "fast",
    }
    facts = request_facts(body, "compact-2026-01-12, fast-mode-2026-02-01")
    assert facts.compaction_trigger == 150000  # the API's default trigger when the edit leaves it out
    assert facts.pause_after_compaction is True and facts.stream and facts.speed == "fast"
    assert facts.betas == ("compact-2026-01-12", "fast-mode-2026-02-01")
    on_demand = request_facts({"compaction": {"type": "summarize"}}, None)
    assert on_demand.on_demand_compaction and on_demand.compaction_trigger is None
