"""Reports that read without a second look: the headline (what the top-level usage says, and the gap),
one count of calls in the cost and cache reports. Through the real SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider

import compactobs
from compactobs import store
from compactobs.testing import ErrorReply, Reply, Simulator, message
from tests.cli import run

# claude-opus-4-8: $5 input, $25 output per MTok. One call whose compaction summarised 180,000 tokens:
#   compaction iteration: 180,000 x $5/M + 3,500 x $25/M = $0.9    + $0.0875 = $0.9875
#   message iteration:     23,000 x $5/M + 1,000 x $25/M = $0.115  + $0.025  = $0.14
# Billed $1.1275; the top-level usage (23,000 / 1,000) says $0.14; $0.9875 is hidden.
USAGE = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "iterations": [
        {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
        {"type": "message", "input_tokens": 23000, "output_tokens": 1000},
    ],
}
ARGS = {
    "model": "claude-opus-4-8",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "hello"}],
    "betas": ["compact-2026-01-12"],
    "context_management": {"edits": [{"type": "compact_20260112"}]},
}


@pytest.fixture
def recorded(sqlite_url: str) -> Iterator[str]:
    """A store with two calls: the compaction call above, and a 529 with retries off (an error call)."""
    store.open_database(sqlite_url).dispose()
    provider = TracerProvider()
    compactobs.configure(sqlite_url, tracer_provider=provider, meter_provider=NoOpMeterProvider())
    try:
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
            )
            sim.enqueue(Reply(message(model="claude-opus-4-8", usage=USAGE)))
            client.beta.messages.create(**ARGS)
            sim.enqueue(ErrorReply(529))
            with pytest.raises(anthropic.APIStatusError):
                client.beta.messages.create(**ARGS)
    finally:
        compactobs.shutdown()
        provider.shutdown()
    yield sqlite_url


def test_cost_report_says_what_the_top_level_would_have(recorded: str) -> None:
    code, out, err = run("--db", recorded, "report", "cost", "--by", "model", "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    totals = document["totals"]
    assert (totals["cost_usd"], totals["top_level_cost_usd"], totals["hidden_cost_usd"]) == (
        1.1275,
        0.14,
        0.9875,
    )
    (row,) = document["rows"]
    assert (row["model"], row["top_level_cost_usd"], row["hidden_cost_usd"]) == (
        "claude-opus-4-8",
        0.14,
        0.9875,
    )

    code, out, err = run("--db", recorded, "report", "cost", "--by", "day")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if "top-level says" in line)
    assert header.split()[-4:] == ["cost", "top-level", "says", "hidden"]
    total = next(line for line in lines if line.strip().startswith("Total"))
    assert total.split()[-3:] == ["$1.1275", "$0.1400", "$0.9875"]
    assert (
        "Top-level usage says $0.1400; billed $1.1275; $0.9875 hidden in compaction iterations "
        "(87.6% of the bill)." in lines  # 0.9875 / 1.1275
    )


def test_cost_and_cache_count_the_same_calls(recorded: str) -> None:
    """The error call (no usage) counts in both, whether they read the rollups or raw rows."""
    for extra in ((), ("--conversation", "*")):
        counts = []
        for name in ("cost", "cache"):
            code, out, err = run("--db", recorded, "report", name, "--format", "json", *extra)
            assert code == 0, err
            counts.append(json.loads(out)["totals"]["calls"])
        assert counts == [2, 2], extra


def test_the_cache_table_fits_80_and_120_columns(recorded: str) -> None:
    from compactobs.reports.cache import cache_report
    from compactobs.reports.render import render
    from compactobs.reports.times import build_filters

    engine = store.open_database(recorded)
    try:
        result = cache_report(engine, build_filters(None, None, "UTC"), ("day", "model"))
    finally:
        engine.dispose()
    full = render(result, "table")
    assert max(len(line) for line in full.splitlines()) > 120  # every column, when not fitted
    for width in (80, 120):
        text = render(result, "table", console_width=width, fit_width=width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        assert "hit ratio" in text and "wasted tokens" in text
        words = " ".join(text.split())  # the hint wraps at the width too
        assert "more column(s) (" in words and "--format json|csv|md" in words
