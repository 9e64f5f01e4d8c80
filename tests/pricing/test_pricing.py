"""Pricing, DESIGN.md section 3, with every expected number worked by hand in a comment.

Rates (USD per million tokens) are Anthropic's, as in notes/billing-facts.md section 5 and genai-prices
0.2.3: cost = tokens x rate / 1,000,000.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from genai_prices import Usage, calc_price

from compactobs import ConfigError
from compactobs.pricing import (
    PricedCall,
    Pricer,
    PricingError,
    default_pricer,
)
from compactobs.usage import CallUsage, IterationUsage, TokenCounts, normalise_message, normalise_usage

# After genai-prices' batch prices start (2026-10-14) and before fast mode leaves Opus 4.8 (2026-11-30).
WHEN = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
# Before 2026-03-13, when the >200K tier of the 4.6 models still applied.
LONG_CONTEXT_ERA = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
GENAI = f"genai-prices {genai_prices.__version__}"
VERSION = f"genai-prices=={genai_prices.__version__}"


def D(text: str) -> Decimal:
    return Decimal(text)


def iteration(
    index: int,
    kind: str,
    model: str | None,
    *,
    input: int = 0,
    output: int = 0,
    cache_read: int = 0,
    write_5m: int = 0,
    write_1h: int = 0,
    known_type: bool = True,
    declined: bool = False,
) -> IterationUsage:
    return IterationUsage(
        index=index,
        type=kind,
        model=model,
        tokens=TokenCounts(input, output, cache_read, write_5m, write_1h),
        known_type=known_type,
        declined=declined,
    )


def call(
    *iterations: IterationUsage,
    response_model: str | None = None,
    service_tier: str | None = None,
    speed: str | None = None,
    inference_geo: str | None = None,
    web_search_requests: int = 0,
    web_fetch_requests: int = 0,
) -> CallUsage:
    return CallUsage(
        iterations=iterations,
        has_iterations=True,
        response_model=response_model or iterations[-1].model,
        service_tier=service_tier,
        speed=speed,
        inference_geo=inference_geo,
        web_search_requests=web_search_requests,
        web_fetch_requests=web_fetch_requests,
    )


def single(model: str, **kwargs: object) -> CallUsage:
    """One `message` iteration; variant keywords go to the call, token keywords to the iteration."""
    call_keys = {"service_tier", "speed", "inference_geo", "web_search_requests", "web_fetch_requests"}
    call_kwargs = {k: v for k, v in kwargs.items() if k in call_keys}
    token_kwargs = {k: v for k, v in kwargs.items() if k not in call_keys}
    return call(iteration(0, "message", model, **token_kwargs), **call_kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


# --- 1. Iterations are the bill ------------------------------------------------------------------------


COMPACTION_RESPONSE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-8",
    "content": [{"type": "compaction", "content": "Summary..."}, {"type": "text", "text": "Based on..."}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 23000,
        "output_tokens": 1000,
        "iterations": [
            {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
            {"type": "message", "input_tokens": 23000, "output_tokens": 1000},
        ],
    },
}


def test_compaction_call_bills_every_iteration(pricer: Pricer) -> None:
    # claude-opus-4-8: $5 input, $25 output per MTok.
    # compaction: 180,000 x 5 / 1e6 = 0.900;  3,500 x 25 / 1e6 = 0.0875  -> 0.9875
    # message:     23,000 x 5 / 1e6 = 0.115;  1,000 x 25 / 1e6 = 0.025   -> 0.14
    # call: input 203,000 x 5 / 1e6 = 1.015; output 4,500 x 25 / 1e6 = 0.1125 -> 1.1275
    priced = pricer.price_call(normalise_message(COMPACTION_RESPONSE), WHEN)
    assert priced.cost_usd == D("1.1275")
    assert priced.priced is True
    assert priced.input_usd == D("1.015")
    assert priced.output_usd == D("0.1125")
    assert priced.cache_read_usd == priced.cache_write_5m_usd == priced.cache_write_1h_usd == 0
    assert [i.cost_usd for i in priced.iterations] == [D("0.9875"), D("0.14")]
    assert all(i.source == GENAI and i.model == "claude-opus-4-8" for i in priced.iterations)
    assert priced.pricing_version == VERSION
    assert priced.unpriced_models == ()


def test_top_level_only_would_miss_the_compaction(pricer: Pricer) -> None:
    # What a tool reading only top-level usage bills: 23,000 x 5 / 1e6 + 1,000 x 25 / 1e6 = 0.115 + 0.025
    # = 0.14, against the real 1.1275: the 0.9875 compaction is the gap.
    top_level_only = normalise_usage({"input_tokens": 23000, "output_tokens": 1000}, "claude-opus-4-8")
    assert pricer.price_call(top_level_only, WHEN).cost_usd == D("0.14")
    full = pricer.price_call(normalise_message(COMPACTION_RESPONSE), WHEN).cost_usd
    assert full is not None and full - D("0.14") == D("0.9875")


def test_on_demand_compaction_with_zero_top_level(pricer: Pricer) -> None:
    # Top level 0/0; the whole cost is the compaction entry: 144 x 5 / 1e6 = 0.00072; 276 x 25 / 1e6 = 0.0069
    # -> 0.00762.
    usage = normalise_usage(
        {
            "input_tokens": 0,
            "output_tokens": 0,
            "iterations": [{"type": "compaction", "input_tokens": 144, "output_tokens": 276}],
        },
        "claude-opus-4-8",
    )
    assert pricer.price_call(usage, WHEN).cost_usd == D("0.00762")


# --- 2. Token classes ----------------------------------------------------------------------------------


def test_cache_reads_and_writes_split_5m_and_1h(pricer: Pricer) -> None:
    # claude-sonnet-4-5 (dated id): $3 in, $15 out, $0.30 read, $3.75 5m write, $6 1h write.
    # Total input 1,000 + 50,000 + 30,000 = 81,000: under the 200K tier.
    # input     1,000 x 3    / 1e6 = 0.003
    # output    2,000 x 15   / 1e6 = 0.03
    # read     50,000 x 0.30 / 1e6 = 0.015
    # 5m write 10,000 x 3.75 / 1e6 = 0.0375
    # 1h write 20,000 x 6    / 1e6 = 0.12
    # total = 0.2055
    usage = normalise_message(
        {
            "model": "claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 1000,
                "output_tokens": 2000,
                "cache_read_input_tokens": 50000,
                "cache_creation_input_tokens": 30000,
                "cache_creation": {"ephemeral_5m_input_tokens": 10000, "ephemeral_1h_input_tokens": 20000},
            },
        }
    )
    priced = pricer.price_call(usage, WHEN)
    assert priced.cost_usd == D("0.2055")
    assert (priced.input_usd, priced.output_usd) == (D("0.003"), D("0.03"))
    assert priced.cache_read_usd == D("0.015")
    assert priced.cache_write_5m_usd == D("0.0375")
    assert priced.cache_write_1h_usd == D("0.12")


def test_cache_writes_without_breakdown_are_5m(pricer: Pricer) -> None:
    # No `cache_creation` breakdown: all 30,000 writes are 5-minute, 30,000 x 3.75 / 1e6 = 0.1125.
    # 0.003 + 0.03 + 0.015 + 0.1125 = 0.1605
    usage = normalise_usage(
        {
            "input_tokens": 1000,
            "output_tokens": 2000,
            "cache_read_input_tokens": 50000,
            "cache_creation_input_tokens": 30000,
        },
        "claude-sonnet-4-5",
    )
    priced = pricer.price_call(usage, WHEN)
    assert priced.cost_usd == D("0.1605")
    assert priced.cache_write_1h_usd == 0


def test_missing_1h_price_defaults_to_twice_input_with_a_note(pricer: Pricer) -> None:
    # genai-prices has only input/output for claude-2 ($8/$24): 1h write = 2 x 8 = $16/MTok.
    # 1,000 x 8 / 1e6 = 0.008; 1,000 x 16 / 1e6 = 0.016 -> 0.024
    priced = pricer.price_call(single("claude-2", input=1000, write_1h=1000), WHEN)
    assert priced.cost_usd == D("0.024")
    note = priced.iterations[0].note
    assert note is not None and "cache_write_1h" in note and "2x input" in note
    rates = pricer.rates("claude-2", WHEN)
    assert rates is not None
    assert (rates.cache_read, rates.cache_write_5m, rates.cache_write_1h) == (D("0.8"), D("10"), D("16"))


# --- Iterations at other models ------------------------------------------------------------------------


def test_advisor_iteration_priced_at_its_own_model(pricer: Pricer) -> None:
    # Executor claude-sonnet-4-6 ($3/$15), advisor claude-opus-4-8 ($5/$25).
    # sonnet: input (10,000 + 11,000) x 3 / 1e6 = 0.063; output (500 + 400) x 15 / 1e6 = 0.0135 -> 0.0765
    # opus:   20,000 x 5 / 1e6 = 0.1;  800 x 25 / 1e6 = 0.02 -> 0.12
    # total 0.1965
    usage = normalise_message(
        {
            "model": "claude-sonnet-4-6",
            "usage": {
                "input_tokens": 10000,
                "output_tokens": 900,
                "iterations": [
                    {"type": "message", "input_tokens": 10000, "output_tokens": 500},
                    {
                        "type": "advisor_message",
                        "model": "claude-opus-4-8",
                        "input_tokens": 20000,
                        "output_tokens": 800,
                    },
                    {"type": "message", "input_tokens": 11000, "output_tokens": 400},
                ],
            },
        }
    )
    priced = pricer.price_call(usage, WHEN)
    assert [i.model for i in priced.iterations] == [
        "claude-sonnet-4-6",
        "claude-opus-4-8",
        "claude-sonnet-4-6",
    ]
    # 10,000 x 3 / 1e6 + 500 x 15 / 1e6 = 0.03 + 0.0075 = 0.0375; 11,000 x 3 / 1e6 + 400 x 15 / 1e6 = 0.039
    assert [i.cost_usd for i in priced.iterations] == [D("0.0375"), D("0.12"), D("0.039")]
    assert priced.cost_usd == D("0.1965")


def test_fallback_billed_at_fallback_model_and_declined_attempt_free(pricer: Pricer) -> None:
    # The first attempt (an unknown model) was declined before any output: $0, still priced.
    # fallback claude-sonnet-4-6: 15,000 x 3 / 1e6 = 0.045; 600 x 15 / 1e6 = 0.009 -> 0.054
    usage = normalise_message(
        {
            "model": "claude-sonnet-4-6",
            "usage": {
                "input_tokens": 15000,
                "output_tokens": 600,
                "iterations": [
                    {
                        "type": "message",
                        "model": "claude-prototype-x",
                        "input_tokens": 15000,
                        "output_tokens": 0,
                    },
                    {
                        "type": "fallback_message",
                        "model": "claude-sonnet-4-6",
                        "input_tokens": 15000,
                        "output_tokens": 600,
                    },
                ],
            },
        }
    )
    assert usage.iterations[0].declined  # precondition, from compactobs.usage
    priced = pricer.price_call(usage, WHEN)
    declined, fallback = priced.iterations
    assert declined.cost_usd == 0 and declined.priced is True
    assert declined.model == "claude-prototype-x"
    assert declined.note == "declined fallback attempt: not billed"
    assert fallback.cost_usd == D("0.054")
    assert priced.cost_usd == D("0.054")
    assert priced.priced is True and priced.unpriced_models == ()


def test_declined_attempt_on_a_known_model_is_free_too(pricer: Pricer) -> None:
    # 40,000 input tokens on opus-4-8 would be 0.2 if billed; declined, they cost 0.
    # fallback claude-sonnet-4-6: 40,000 x 3 / 1e6 = 0.12; 100 x 15 / 1e6 = 0.0015 -> 0.1215
    usage = call(
        iteration(0, "message", "claude-opus-4-8", input=40000, declined=True),
        iteration(1, "fallback_message", "claude-sonnet-4-6", input=40000, output=100),
    )
    priced = pricer.price_call(usage, WHEN)
    assert priced.iterations[0].cost_usd == 0
    assert priced.cost_usd == D("0.1215")


def test_unknown_iteration_type_priced_at_response_model_with_note(pricer: Pricer) -> None:
    # A future entry type with no model of its own is priced at the response model, claude-opus-4-8:
    # 5,000 x 5 / 1e6 = 0.025; 200 x 25 / 1e6 = 0.005 -> 0.03. The message: 1,000 x 5 / 1e6 = 0.005.
    usage = normalise_message(
        {
            "model": "claude-opus-4-8",
            "usage": {
                "input_tokens": 1000,
                "output_tokens": 0,
                "iterations": [
                    {"type": "reflection", "input_tokens": 5000, "output_tokens": 200},
                    {"type": "message", "input_tokens": 1000, "output_tokens": 0},
                ],
            },
        }
    )
    priced = pricer.price_call(usage, WHEN)
    unknown = priced.iterations[0]
    assert unknown.cost_usd == D("0.03") and unknown.priced
    assert unknown.note is not None and "unknown iteration type 'reflection'" in unknown.note
    assert priced.iterations[1].note is None
    assert priced.cost_usd == D("0.035")


# --- Tiers ---------------------------------------------------------------------------------------------


def test_long_context_tier_is_judged_per_iteration(pricer: Pricer) -> None:
    # claude-sonnet-4-6 before 2026-03-13: above 200K total input every token bills at $6 in / $22.50 out /
    # $0.60 read / $7.50 5m write; at or below, $3 / $15 / $0.30 / $3.75.
    # compaction: total input 5,000 + 200,000 = 205,000 > 200K -> tier:
    #   5,000 x 6 / 1e6 = 0.03; 200,000 x 0.6 / 1e6 = 0.12; 4,000 x 22.5 / 1e6 = 0.09 -> 0.24
    # message: total input 3,000 + 150,000 + 2,000 = 155,000 -> base:
    #   3,000 x 3 / 1e6 = 0.009; 150,000 x 0.3 / 1e6 = 0.045; 2,000 x 3.75 / 1e6 = 0.0075;
    #   1,000 x 15 / 1e6 = 0.015 -> 0.0765
    # call: 0.3165. (Judged on the call's 360,000 total, the message would wrongly cost 0.018 + 0.09 +
    # 0.015 + 0.0225 = 0.1455, and the call 0.3855.)
    usage = call(
        iteration(0, "compaction", "claude-sonnet-4-6", input=5000, cache_read=200000, output=4000),
        iteration(
            1, "message", "claude-sonnet-4-6", input=3000, cache_read=150000, write_5m=2000, output=1000
        ),
    )
    priced = pricer.price_call(usage, LONG_CONTEXT_ERA)
    compaction, message = priced.iterations
    assert (compaction.cost_usd, compaction.tier_above) == (D("0.24"), 200000)
    assert (message.cost_usd, message.tier_above) == (D("0.0765"), None)
    assert priced.cost_usd == D("0.3165")


def test_long_context_tier_gone_from_2026_03_13(pricer: Pricer) -> None:
    # Same usage at flat $3/$15/$0.30/$3.75: compaction 5,000 x 3 / 1e6 = 0.015; 200,000 x 0.3 / 1e6 = 0.06;
    # 4,000 x 15 / 1e6 = 0.06 -> 0.135; message 0.0765 as before; call 0.2115.
    usage = call(
        iteration(0, "compaction", "claude-sonnet-4-6", input=5000, cache_read=200000, output=4000),
        iteration(
            1, "message", "claude-sonnet-4-6", input=3000, cache_read=150000, write_5m=2000, output=1000
        ),
    )
    priced = pricer.price_call(usage, datetime(2026, 3, 13, 0, 0, tzinfo=timezone.utc))
    assert priced.cost_usd == D("0.2115")
    assert priced.iterations[0].tier_above is None


def test_tier_starts_strictly_above_the_threshold(pricer: Pricer) -> None:
    # claude-opus-4-6 before 2026-03-13: $5 in / $0.50 read, above 200K total input $10 in / $1 read.
    # exactly 200,000 input: base, 200,000 x 5 / 1e6 = 1.0
    # 200,001 input: tier, 200,001 x 10 / 1e6 = 2.00001
    # 100,000 input + 100,001 cache read = 200,001 total: tier, 100,000 x 10 / 1e6 = 1.0;
    #   100,001 x 1 / 1e6 = 0.100001 -> 1.100001
    day = datetime(2026, 2, 20, tzinfo=timezone.utc)
    assert pricer.price_call(single("claude-opus-4-6", input=200000), day).cost_usd == D("1.0")
    assert pricer.price_call(single("claude-opus-4-6", input=200001), day).cost_usd == D("2.00001")
    mixed = single("claude-opus-4-6", input=100000, cache_read=100001)
    assert pricer.price_call(mixed, day).cost_usd == D("1.100001")


def test_haiku_5_5_prompt_tier_is_5x_on_all_tokens(pricer: Pricer) -> None:
    # claude-haiku-5-5: $0.10 in / $0.50 out; a prompt over 100K bills everything at 5x ($0.50 / $2.50).
    # 100,000 in: 100,000 x 0.1 / 1e6 = 0.01; 1,000 x 0.5 / 1e6 = 0.0005 -> 0.0105
    # 101,000 in: 101,000 x 0.5 / 1e6 = 0.0505; 1,000 x 2.5 / 1e6 = 0.0025 -> 0.053
    at_threshold = pricer.price_call(single("claude-haiku-5-5", input=100000, output=1000), WHEN)
    over = pricer.price_call(single("claude-haiku-5-5", input=101000, output=1000), WHEN)
    assert at_threshold.cost_usd == D("0.0105")
    assert (over.cost_usd, over.iterations[0].tier_above) == (D("0.053"), 100000)


# --- Variants ------------------------------------------------------------------------------------------


def test_batch_uses_genai_prices_batch_rates(pricer: Pricer) -> None:
    # claude-opus-4-8 batch: $2.50 in, $12.50 out, $0.25 read.
    # 100,000 x 2.5 / 1e6 = 0.25; 10,000 x 12.5 / 1e6 = 0.125; 40,000 x 0.25 / 1e6 = 0.01 -> 0.385
    usage = single("claude-opus-4-8", input=100000, output=10000, cache_read=40000, service_tier="batch")
    priced = pricer.price_call(usage, WHEN)
    assert priced.cost_usd == D("0.385")
    assert priced.iterations[0].note is None
    rates = pricer.rates("claude-opus-4-8", WHEN, service_tier="batch")
    assert rates is not None and rates.variant == "batch" and rates.effective_from == date(2026, 10, 14)


def test_batch_before_genai_prices_batch_data_is_half_of_standard(pricer: Pricer) -> None:
    # genai-prices' batch prices start 2026-10-14; on 2026-06-01 batch is 50% of standard:
    # $2.50 in, $12.50 out, $0.25 read -> the same 0.385 as above, with a note.
    usage = single("claude-opus-4-8", input=100000, output=10000, cache_read=40000, service_tier="batch")
    priced = pricer.price_call(usage, datetime(2026, 6, 1, tzinfo=timezone.utc))
    assert priced.cost_usd == D("0.385")
    note = priced.iterations[0].note
    assert note is not None and "50% of standard" in note


def test_batch_on_a_model_without_batch_data(pricer: Pricer) -> None:
    # claude-opus-4-1 ($15/$75) has no batch price in genai-prices: 50% -> $7.50 / $37.50.
    # 100,000 x 7.5 / 1e6 = 0.75; 10,000 x 37.5 / 1e6 = 0.375 -> 1.125
    usage = single("claude-opus-4-1", input=100000, output=10000, service_tier="batch")
    assert pricer.price_call(usage, WHEN).cost_usd == D("1.125")


def test_fast_mode(pricer: Pricer) -> None:
    # claude-opus-4-8 fast: $10 in, $50 out, 5m write 1.25 x 10 = $12.50.
    # 100,000 x 10 / 1e6 = 1.0; 10,000 x 50 / 1e6 = 0.5; 8,000 x 12.5 / 1e6 = 0.1 -> 1.6
    usage = single("claude-opus-4-8", input=100000, output=10000, write_5m=8000, speed="fast")
    priced = pricer.price_call(usage, WHEN)
    assert priced.cost_usd == D("1.6")
    assert priced.iterations[0].note is None


def test_fast_on_a_model_without_fast_mode_bills_standard(pricer: Pricer) -> None:
    # claude-opus-4-7 has no fast price: standard $5/$25. 100,000 x 5 / 1e6 = 0.5; 10,000 x 25 / 1e6 = 0.25
    # -> 0.75, with a note.
    priced = pricer.price_call(single("claude-opus-4-7", input=100000, output=10000, speed="fast"), WHEN)
    assert priced.cost_usd == D("0.75")
    note = priced.iterations[0].note
    assert note is not None and "fast" in note and "standard" in note


def test_us_only_inference_is_1_1x_on_every_token_class(pricer: Pricer) -> None:
    # claude-opus-4-8 x 1.1: $5.50 in, $27.50 out, $0.55 read, $11 1h write.
    # 100,000 x 5.5 / 1e6 = 0.55; 10,000 x 27.5 / 1e6 = 0.275; 20,000 x 0.55 / 1e6 = 0.011;
    # 5,000 x 11 / 1e6 = 0.055 -> 0.891
    usage = single(
        "claude-opus-4-8", input=100000, output=10000, cache_read=20000, write_1h=5000, inference_geo="us"
    )
    assert pricer.price_call(usage, WHEN).cost_usd == D("0.891")


def test_us_only_applies_to_compaction_iterations_too(pricer: Pricer) -> None:
    # The compaction call above (1.1275) x 1.1 on every iteration = 1.24025:
    # 203,000 x 5.5 / 1e6 = 1.1165; 4,500 x 27.5 / 1e6 = 0.12375 -> 1.24025
    response = {**COMPACTION_RESPONSE, "usage": {**COMPACTION_RESPONSE["usage"], "inference_geo": "us"}}  # type: ignore[dict-item]
    assert pricer.price_call(normalise_message(response), WHEN).cost_usd == D("1.24025")


def test_us_only_before_claude_4_6_has_no_premium(pricer: Pricer) -> None:
    # claude-sonnet-4-5 predates the US-only premium: 100,000 x 3 / 1e6 + 10,000 x 15 / 1e6 = 0.45.
    priced = pricer.price_call(
        single("claude-sonnet-4-5", input=100000, output=10000, inference_geo="us"), WHEN
    )
    assert priced.cost_usd == D("0.45")
    assert "no US-only premium" in (priced.iterations[0].note or "")


def test_variants_stack(pricer: Pricer) -> None:
    # batch + US on claude-opus-4-8: 2.5 x 1.1 = $2.75 in, 12.5 x 1.1 = $13.75 out.
    #   100,000 x 2.75 / 1e6 = 0.275; 10,000 x 13.75 / 1e6 = 0.1375 -> 0.4125
    # fast + US: 10 x 1.1 = $11 in, 50 x 1.1 = $55 out. 100,000 x 11 / 1e6 = 1.1; 10,000 x 55 / 1e6 = 0.55
    #   -> 1.65
    batch_us = single("claude-opus-4-8", input=100000, output=10000, service_tier="batch", inference_geo="us")
    fast_us = single("claude-opus-4-8", input=100000, output=10000, speed="fast", inference_geo="us")
    assert pricer.price_call(batch_us, WHEN).cost_usd == D("0.4125")
    assert pricer.price_call(fast_us, WHEN).cost_usd == D("1.65")


def test_us_only_on_the_long_context_tier(pricer: Pricer) -> None:
    # claude-opus-4-6 before 2026-03-13, 250,000 input (tier $10) x 1.1 = $11: 250,000 x 11 / 1e6 = 2.75;
    # 1,000 output at 37.5 x 1.1 = $41.25: 1,000 x 41.25 / 1e6 = 0.04125 -> 2.79125
    usage = single("claude-opus-4-6", input=250000, output=1000, inference_geo="us")
    assert pricer.price_call(usage, LONG_CONTEXT_ERA).cost_usd == D("2.79125")


def test_priority_tier_bills_standard_list_rates_with_note(pricer: Pricer) -> None:
    # 100,000 x 5 / 1e6 = 0.5; 10,000 x 25 / 1e6 = 0.25 -> 0.75
    priced = pricer.price_call(
        single("claude-opus-4-8", input=100000, output=10000, service_tier="priority"), WHEN
    )
    assert priced.cost_usd == D("0.75")
    assert "priority tier" in (priced.iterations[0].note or "")


# --- Server tools --------------------------------------------------------------------------------------


def test_web_search_is_a_cent_each_and_web_fetch_free(pricer: Pricer) -> None:
    # claude-sonnet-4-6: 10,000 x 3 / 1e6 = 0.03; 1,000 x 15 / 1e6 = 0.015 -> tokens 0.045
    # 7 searches x $10 / 1,000 = 0.07; 3 fetches x $0 = 0 -> call 0.115
    usage = single("claude-sonnet-4-6", input=10000, output=1000, web_search_requests=7, web_fetch_requests=3)
    priced = pricer.price_call(usage, WHEN)
    assert priced.server_tools_usd == D("0.07")
    assert priced.iterations[0].cost_usd == D("0.045")
    assert priced.cost_usd == D("0.115")


def test_web_search_is_not_discounted_or_multiplied(pricer: Pricer) -> None:
    # batch + US on claude-opus-4-8: 10,000 x 2.75 / 1e6 = 0.0275; 1,000 x 13.75 / 1e6 = 0.01375 -> 0.04125
    # 3 searches at the full $0.01 = 0.03 -> 0.07125
    usage = single(
        "claude-opus-4-8",
        input=10000,
        output=1000,
        service_tier="batch",
        inference_geo="us",
        web_search_requests=3,
    )
    priced = pricer.price_call(usage, WHEN)
    assert priced.server_tools_usd == D("0.03")
    assert priced.cost_usd == D("0.07125")


# --- Unknown models ------------------------------------------------------------------------------------


def test_unknown_model_is_unpriced_never_zero(pricer: Pricer) -> None:
    # message on claude-opus-4-8: 1,000 x 5 / 1e6 = 0.005; the advisor's model is unknown -> call unpriced.
    usage = call(
        iteration(0, "message", "claude-opus-4-8", input=1000),
        iteration(1, "advisor_message", "claude-nonexistent-9", input=5000, output=100),
    )
    priced = pricer.price_call(usage, WHEN)
    assert priced.cost_usd is None and priced.priced is False
    assert priced.unpriced_models == ("claude-nonexistent-9",)
    known, unknown = priced.iterations
    assert known.cost_usd == D("0.005") and known.priced
    assert unknown.cost_usd is None and unknown.priced is False
    assert "claude-nonexistent-9" in (unknown.note or "")
    # Component totals cover the priced iterations only.
    assert priced.input_usd == D("0.005")
    assert pricer.rates("claude-nonexistent-9", WHEN) is None
    assert not pricer.known_model("claude-nonexistent-9", WHEN)
    assert pricer.known_model("claude-opus-4-8", WHEN)


def test_iteration_without_a_model_is_unpriced(pricer: Pricer) -> None:
    priced = pricer.price_call(normalise_usage({"input_tokens": 10, "output_tokens": 1}, None), WHEN)
    assert priced.cost_usd is None and priced.unpriced_models == ("<none>",)


def test_price_call_never_raises(pricer: Pricer) -> None:
    # A malformed record (tokens that are not TokenCounts) must not break the caller's API call.
    bad = CallUsage(
        iterations=(IterationUsage(index=0, type="message", model="claude-opus-4-8", tokens=None),),  # type: ignore[arg-type]
        has_iterations=True,
    )
    priced = pricer.price_call(bad, WHEN)
    assert isinstance(priced, PricedCall)
    assert priced.cost_usd is None and priced.priced is False
    assert priced.notes and priced.notes[0].startswith("pricing failed")


# --- Model matching and the rate card ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "model_id"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("CLAUDE-OPUS-4-8", "claude-opus-4-8"),
    ],
)
def test_dated_and_cased_ids_match(pricer: Pricer, ref: str, model_id: str) -> None:
    rates = pricer.rates(ref, WHEN)
    assert rates is not None and rates.model_id == model_id and rates.model == ref


def test_rates_card(pricer: Pricer) -> None:
    rates = pricer.rates("claude-opus-4-8", WHEN)
    assert rates is not None
    assert (rates.input, rates.output, rates.cache_read) == (D("5"), D("25"), D("0.5"))
    assert (rates.cache_write_5m, rates.cache_write_1h) == (D("6.25"), D("10"))
    assert rates.tiers == () and rates.tier_above is None
    assert rates.source == GENAI and rates.variant == "standard" and rates.multiplier == 1
    assert rates.web_search_per_1k == D("10")

    fast_us = pricer.rates("claude-opus-4-8", WHEN, speed="fast", inference_geo="us")
    # fast $10/$50 x 1.1 = $11/$55
    assert fast_us is not None and (fast_us.input, fast_us.output) == (D("11"), D("55"))

    # Sonnet 4.6 in the long-context era: base $3 with a tier above 200K at $6; 300K input selects it.
    tiered = pricer.rates("claude-sonnet-4-6", LONG_CONTEXT_ERA, total_input_tokens=300000)
    assert tiered is not None
    assert (tiered.input, tiered.output, tiered.tier_above) == (D("6"), D("22.5"), 200000)
    assert [t.above for t in tiered.tiers] == [200000]
    later = pricer.rates("claude-sonnet-4-6", WHEN, total_input_tokens=300000)
    assert later is not None and later.input == D("3") and later.effective_from == date(2026, 3, 13)


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        (
            "claude-opus-4-8",
            {"input": 12345, "output": 678, "cache_read": 90000, "write_5m": 1000, "write_1h": 2000},
        ),
        ("claude-sonnet-4-5", {"input": 150000, "output": 5000, "cache_read": 40000, "write_1h": 30000}),
        ("claude-sonnet-4-6", {"input": 5000, "output": 4000, "cache_read": 200000}),
        ("claude-haiku-5-5", {"input": 120000, "output": 300, "write_5m": 700}),
        ("claude-fable-5-1", {"input": 1000, "output": 1000, "cache_read": 1000000}),
    ],
)
@pytest.mark.parametrize("when", [WHEN, LONG_CONTEXT_ERA])
def test_agrees_with_genai_prices_on_a_single_request(
    pricer: Pricer, model: str, tokens: dict[str, int], when: datetime
) -> None:
    # A cross-check, not a hand-worked number: one iteration, standard tier, must cost what genai-prices'
    # own calc_price says once usage is given in its convention (input_tokens = total input).
    counts = TokenCounts(
        tokens.get("input", 0),
        tokens.get("output", 0),
        tokens.get("cache_read", 0),
        tokens.get("write_5m", 0),
        tokens.get("write_1h", 0),
    )
    ours = pricer.price_call(call(IterationUsage(0, "message", model, counts)), when).cost_usd
    theirs = calc_price(
        Usage(
            input_tokens=counts.total_input,
            output_tokens=counts.output,
            cache_read_tokens=counts.cache_read,
            cache_write_tokens=counts.cache_write,
            cache_write_1h_tokens=counts.cache_write_1h,
        ),
        model,
        provider_id="anthropic",
        genai_request_timestamp=when,
    ).total_price
    assert ours == theirs


# --- Overrides -----------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    return path


def short_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


OVERRIDES = """
[models."claude-opus-4-8"]
input = 4
output = 20.0

[models."my-finetune*"]
input = 2
output = 8
[models."my-finetune*".batch]
input = 1
output = 4

[models."my-finetune-special"]
input = 3.0
output = 9.0

[models."tiny"]
input = 0.1
output = 0.3

[models."claude-mythos-5"]
input = 10
output = 50
cache_read = 1
"""


def test_overrides_win_over_genai_prices(tmp_path: Path) -> None:
    # claude-opus-4-8 overridden to $4/$20; cache read defaults to 0.1 x 4 = $0.40.
    # 100,000 x 4 / 1e6 = 0.4; 10,000 x 20 / 1e6 = 0.2; 50,000 x 0.4 / 1e6 = 0.02 -> 0.62
    # The sonnet iteration is still genai-prices: 1,000 x 3 / 1e6 = 0.003 -> call 0.623
    path = write(tmp_path, OVERRIDES)
    pricer = Pricer(overrides_path=path)
    usage = call(
        iteration(0, "compaction", "claude-opus-4-8", input=100000, output=10000, cache_read=50000),
        iteration(1, "advisor_message", "claude-sonnet-4-6", input=1000),
    )
    priced = pricer.price_call(usage, WHEN)
    assert priced.iterations[0].cost_usd == D("0.62")
    assert priced.iterations[0].source == f"overrides {short_hash(path)}"
    assert priced.iterations[1].source == GENAI
    assert priced.cost_usd == D("0.623")
    assert priced.pricing_version == f"{VERSION}+overrides:{short_hash(path)}"
    # A call the overrides do not touch says so.
    assert pricer.price_call(single("claude-sonnet-4-6", input=1), WHEN).pricing_version == VERSION


def test_override_rates_hold_for_every_date_and_take_the_geo_multiplier(tmp_path: Path) -> None:
    # $4 x 1.1 = $4.40 in, $20 x 1.1 = $22 out: 100,000 x 4.4 / 1e6 = 0.44; 10,000 x 22 / 1e6 = 0.22 -> 0.66
    pricer = Pricer(overrides_path=write(tmp_path, OVERRIDES))
    usage = single("claude-opus-4-8", input=100000, output=10000, inference_geo="us")
    for when in (datetime(2025, 1, 1, tzinfo=timezone.utc), WHEN):
        assert pricer.price_call(usage, when).cost_usd == D("0.66")


def test_override_globs_variants_and_exact_beats_glob(tmp_path: Path) -> None:
    pricer = Pricer(overrides_path=write(tmp_path, OVERRIDES))
    # my-finetune-v2 matches the glob; batch table $1/$4: 100,000 x 1 / 1e6 = 0.1; 10,000 x 4 / 1e6 = 0.04
    # -> 0.14
    batch = single("my-finetune-v2", input=100000, output=10000, service_tier="batch")
    assert pricer.price_call(batch, WHEN).cost_usd == D("0.14")
    # The exact entry wins over the glob, and has no batch table: 50% of $3/$9 = $1.50/$4.50:
    # 100,000 x 1.5 / 1e6 = 0.15; 10,000 x 4.5 / 1e6 = 0.045 -> 0.195
    special = single("my-finetune-special", input=100000, output=10000, service_tier="batch")
    priced = pricer.price_call(special, WHEN)
    assert priced.cost_usd == D("0.195")
    assert "50% of standard" in (priced.iterations[0].note or "")
    rates = pricer.rates("My-Finetune-Special", WHEN)
    assert rates is not None and rates.model_id == "my-finetune-special"


def test_override_prices_a_model_genai_prices_lacks(tmp_path: Path) -> None:
    # claude-mythos-5 is not in genai-prices 0.2.3. Override $10 in / $50 out / $1 read:
    # 10,000 x 10 / 1e6 = 0.1; 1,000 x 50 / 1e6 = 0.05; 100,000 x 1 / 1e6 = 0.1 -> 0.25
    usage = single("claude-mythos-5", input=10000, output=1000, cache_read=100000)
    assert Pricer().price_call(usage, WHEN).cost_usd is None
    assert Pricer(overrides_path=write(tmp_path, OVERRIDES)).price_call(usage, WHEN).cost_usd == D("0.25")


def test_override_numbers_are_exact_decimals(tmp_path: Path) -> None:
    # input = 0.1 read as Decimal("0.1"), not the float 0.1000000000000000055...
    # 10 x 0.1 / 1e6 = 0.000001 exactly; 3 x 0.3 / 1e6 = 0.0000009 -> 0.0000019
    pricer = Pricer(overrides_path=write(tmp_path, OVERRIDES))
    assert pricer.price_call(single("tiny", input=10, output=3), WHEN).cost_usd == D("0.0000019")
    rates = pricer.rates("tiny", WHEN)
    assert rates is not None and rates.input == D("0.1") and rates.cache_write_5m == D("0.125")


def test_default_pricer_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, OVERRIDES)
    monkeypatch.setenv("COMPACTOBS_PRICING_FILE", str(path))
    pricer = default_pricer()
    assert pricer.overrides is not None and pricer.overrides.short_hash == short_hash(path)
    monkeypatch.delenv("COMPACTOBS_PRICING_FILE")
    assert default_pricer().overrides is None


def test_missing_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("COMPACTOBS_PRICING_FILE", str(missing))
    with pytest.raises(PricingError) as err:
        default_pricer()
    assert str(err.value) == f"pricing overrides {missing} (from COMPACTOBS_PRICING_FILE): file not found"
    with pytest.raises(PricingError, match="is a directory"):
        Pricer(overrides_path=tmp_path)


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ('[models."m"]\ninput = \n', "not valid TOML: Invalid value (at line 2, column 9)", None),
        ('[models."m"]\ninput = 1\noutput = 2\n[models."m"]\n', "not valid TOML: Cannot declare", None),
        ("[prices]\n", "prices: unknown key (expected only a [models", 1),
        ("models = 5\n", "models: must be a table, got int 5", 1),
        ('[models]\n"m" = 5\n', 'models."m": must be a table, got int 5', 2),
        (
            '[models."m"]\ninput = 1\noutput = 2\ninptu = 3\n',
            'models."m".inptu: unknown key (expected one of: input, output, cache_read, cache_write_5m, '
            "cache_write_1h, batch, fast)",
            4,
        ),
        (
            '[models."m"]\ninput = "five"\noutput = 2\n',
            "models.\"m\".input: must be a number (USD per million tokens), got the string 'five'",
            2,
        ),
        ('[models."m"]\ninput = true\noutput = 2\n', 'models."m".input: must be a number', 2),
        ('[models."m"]\ninput = 1\noutput = -1\n', 'models."m".output: must not be negative, got -1', 3),
        ('[models."m"]\ninput = 1\noutput = -0.5\n', 'models."m".output: must not be negative, got -0.5', 3),
        ('[models."m"]\ninput = nan\noutput = 1\n', 'models."m".input: must be a finite number, got NaN', 2),
        ('[models."m"]\ninput = inf\noutput = 1\n', 'models."m".input: must be a finite number', 2),
        ('[models."m"]\noutput = 2\n', "models.\"m\": missing required key 'input'", 1),
        ('[models."m"]\ninput = 2\n', "models.\"m\": missing required key 'output'", 1),
        (
            '[models."m"]\ninput = 2\noutput = 3\n[models."m".batch]\ninput = 1\n',
            "models.\"m\".batch: missing required key 'output'",
            4,
        ),
        (
            '[models."m"]\ninput = 2\noutput = 3\n[models."m".batch]\ninput = 1\noutput = 1\nfast = 2\n',
            'models."m".batch.fast: unknown key (expected one of: input, output, cache_read, cache_write_5m, '
            "cache_write_1h)",
            7,
        ),
        (
            '[models."m"]\ninput = 2\noutput = 3\nbatch = 1\n',
            'models."m".batch: must be a table, got int 1',
            4,
        ),
        (
            '[models."M"]\ninput = 2\noutput = 3\n[models."m"]\ninput = 2\noutput = 3\n',
            'models."m": same model as models."M" (ids are case-insensitive)',
            4,
        ),
        ('[models." "]\ninput = 2\noutput = 3\n', 'models." ": model id must not be empty', 1),
    ],
)
def test_bad_overrides_file(tmp_path: Path, text: str, message: str, line: int | None) -> None:
    """One line naming the file, the line of the key at fault (a syntax error: the parser's line and
    column, in its message) and the problem; a ConfigError, which `instrument()` raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Pricer(overrides_path=path)
    assert isinstance(err.value, PricingError)
    text_of_error = str(err.value)
    where = f"pricing overrides {path}" + (f", line {line}" if line is not None else "")
    assert text_of_error.startswith(f"{where}: ")
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_empty_overrides_file_is_valid(tmp_path: Path) -> None:
    pricer = Pricer(overrides_path=write(tmp_path, "# nothing yet\n"))
    assert pricer.price_call(single("claude-opus-4-8", input=1000), WHEN).cost_usd == D("0.005")
