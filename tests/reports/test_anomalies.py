"""`report anomalies`: each rule on hand-built stored calls, with the expected findings worked by hand, on
SQLite and PostgreSQL; near misses that must not fire; the budgets file; --fail-on exit codes; bad input.

The helpers at the top (`call`, `iteration`, `store_rows`, `run`) are shared by the other report tests.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, create_engine, insert, select, text

from compactobs import store
from compactobs.reports.anomalies import (
    COMPACTION_RECORD,
    EXIT_FINDINGS,
    Budget,
    Finding,
    Thresholds,
    compaction_candidates,
    exit_code_for,
    find_anomalies,
    load_budgets,
)
from compactobs.reports.anomalies import (
    compaction_findings as _compaction_findings,
)
from compactobs.reports.model import ReportInputError
from compactobs.reports.times import build_filters
from tests.cli import one_line_error, run

BASE_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z."""
MINUTE = 60_000
TRIGGER = 100_000


def call(call_id: str, at: float, conversation: str | None = None, **columns: Any) -> dict[str, Any]:
    """A `calls` row starting `at` minutes after BASE_MS: a successful call with usage unless told."""
    start = BASE_MS + int(at * MINUTE)
    duration = float(columns.pop("duration_ms", 1000.0))
    row: dict[str, Any] = {column.name: None for column in store.calls.columns}
    row.update(
        call_id=call_id,
        trace_id=call_id.rjust(32, "0"),
        conversation_id=conversation,
        start_time=datetime.fromtimestamp(start / 1000, tz=timezone.utc),
        start_ms=start,
        end_ms=start + int(duration),
        duration_ms=duration,
        status="OK",
        attempts=1,
        request_model="claude-sonnet-4-5",
        response_model="claude-sonnet-4-5",
        stop_reason="end_turn",
        input_tokens=100,
        output_tokens=10,
        cache_read_tokens=0,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        iterations_count=1,
        compactions_count=0,
        compactions_failed=0,
    )
    for key, value in columns.items():
        if key not in row:
            raise KeyError(key)
        row[key] = value
    return row


def failed_call(
    call_id: str, at: float, status: int, conversation: str | None = None, **columns: Any
) -> dict:
    """A call that ended in an HTTP error: no usage (token columns NULL)."""
    row = call(
        call_id, at, conversation, status="ERROR", error_type=str(status), http_status=status, **columns
    )
    for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens"):
        row[key] = None
    row.update(
        cache_write_1h_tokens=None, iterations_count=None, compactions_count=None, compactions_failed=None
    )
    row["stop_reason"] = None
    row["response_model"] = None
    return row


def iteration(call_id: str, idx: int, kind: str, cost: str | None, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {column.name: None for column in store.iterations.columns}
    row.update(
        call_id=call_id,
        idx=idx,
        start_ms=BASE_MS,
        type=kind,
        model=columns.pop("model", "claude-sonnet-4-5"),
        known_type=True,
        declined=False,
        input_tokens=100,
        output_tokens=10,
        cache_read_tokens=0,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        cost_usd=Decimal(cost) if cost is not None else None,
        priced=cost is not None,
    )
    row.update(columns)
    return row


def store_rows(url: str, calls: list[dict[str, Any]], iterations: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
    """Create the schema and insert the rows."""
    store.upgrade_database(url)
    engine = store.make_engine(url, writer=True)
    try:
        with engine.begin() as connection:
            if calls:
                connection.execute(insert(store.calls), calls)
            if iterations:
                connection.execute(insert(store.iterations), list(iterations))
    finally:
        engine.dispose()


def anomalies(url: str, thresholds: Thresholds | None = None, **kwargs: Any) -> list[Finding]:
    engine = store.open_database(url)
    try:
        return find_anomalies(engine, build_filters(None, None, "UTC"), thresholds, **kwargs)
    finally:
        engine.dispose()


def summary(findings: list[Finding]) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    return [(f.kind, f.severity, f.conversation_id, f.call_ids) for f in findings]


def compacting(call_id: str, at: float, conversation: str, context: int, **columns: Any) -> dict[str, Any]:
    """A call whose request compacted once (trigger 100,000) and left `context` tokens."""
    columns.setdefault("compactions_count", 1)
    columns.setdefault("iterations_count", 2)
    return call(call_id, at, conversation, compaction_trigger=TRIGGER, context_tokens=context, **columns)


def plain(
    call_id: str, at: float, conversation: str, context: int = 50_000, **columns: Any
) -> dict[str, Any]:
    return call(call_id, at, conversation, compaction_trigger=TRIGGER, context_tokens=context, **columns)


# --- compaction loops ------------------------------------------------------------------------------------


def test_loop_fires_and_near_misses_do_not(database_url: str) -> None:
    rows = [
        # "loop": compactions at positions 2, 4 and 6, each leaving 90% of the trigger: 3 in 5 calls.
        plain("a1", 0, "loop"),
        compacting("a2", 1, "loop", 90_000),
        plain("a3", 2, "loop", 95_000),
        compacting("a4", 3, "loop", 90_000),
        plain("a5", 4, "loop", 96_000),
        compacting("a6", 5, "loop", 90_000),
        plain("a7", 6, "loop", 97_000),
        # "two": only 2 compactions at 90%: no loop, two ineffective compactions.
        compacting("b1", 0, "two", 90_000),
        compacting("b2", 1, "two", 90_000),
        plain("b3", 2, "two", 92_000),
        # "seventy": 3 compactions in 3 calls, each leaving 70%: effective enough, nothing fires.
        compacting("c1", 0, "seventy", 70_000),
        compacting("c2", 1, "seventy", 70_000),
        compacting("c3", 2, "seventy", 70_000),
        # "spread": 3 compactions at 90% at positions 1, 3 and 6: 6 calls, one too many for a loop.
        compacting("d1", 0, "spread", 90_000),
        plain("d2", 1, "spread"),
        compacting("d3", 2, "spread", 90_000),
        plain("d4", 3, "spread"),
        plain("d5", 4, "spread"),
        compacting("d6", 5, "spread", 90_000),
    ]
    store_rows(database_url, rows)
    findings = anomalies(database_url)
    assert summary(findings) == [
        ("compaction_loop", "critical", "loop", ("a2", "a4", "a6")),
        ("ineffective_compaction", "warning", "spread", ("d1",)),  # same minute as b1: by conversation id
        ("ineffective_compaction", "warning", "two", ("b1",)),
        ("ineffective_compaction", "warning", "two", ("b2",)),
        ("ineffective_compaction", "warning", "spread", ("d3",)),
        ("ineffective_compaction", "warning", "spread", ("d6",)),
    ]
    loop = findings[0]
    assert loop.evidence["compactions"] == 3
    assert loop.evidence["calls_spanned"] == 5  # positions 2..6
    assert loop.evidence["min_context_share"] == 0.9 and loop.evidence["max_context_share"] == 0.9
    assert [step["position"] for step in loop.evidence["steps"]] == [2, 4, 6]
    assert "3 compactions within 5 consecutive calls" in loop.message
    assert "pause_after_compaction" in loop.remedy
    two = findings[2]
    assert two.evidence["context_tokens"] == 90_000 and two.evidence["trigger_tokens"] == TRIGGER
    assert two.evidence["context_share"] == 0.9


def test_thresholds_move_the_lines(database_url: str) -> None:
    rows = [
        compacting("c1", 0, "seventy", 70_000),
        compacting("c2", 1, "seventy", 70_000),
        compacting("c3", 2, "seventy", 70_000),
        # exactly 80% is ineffective (>=); 79,999 tokens is not
        compacting("e1", 0, "edge", 80_000),
        plain("e2", 1, "edge"),
        compacting("e3", 2, "edge", 79_999),
    ]
    store_rows(database_url, rows)
    assert summary(anomalies(database_url)) == [("ineffective_compaction", "warning", "edge", ("e1",))]
    # At 70% the "seventy" conversation loops; with --loop-min 4 it would not.
    looser = Thresholds(ineffective_ratio=0.7)
    assert summary(anomalies(database_url, looser))[0] == (
        "compaction_loop",
        "critical",
        "seventy",
        ("c1", "c2", "c3"),
    )
    fewer = Thresholds(ineffective_ratio=0.7, loop_min=4)
    assert [f.kind for f in anomalies(database_url, fewer)].count("compaction_loop") == 0
    narrow = Thresholds(ineffective_ratio=0.7, loop_window=2)
    assert [f.kind for f in anomalies(database_url, narrow)].count("compaction_loop") == 0


def test_paused_compaction_uses_the_next_calls_context_and_counts_multiple_compactions(
    database_url: str,
) -> None:
    rows = [
        # A paused call has no message iteration (context NULL): the next call shows what it left.
        call(
            "p1",
            0,
            "paused",
            compaction_trigger=TRIGGER,
            compaction_pause_after=True,
            compactions_count=1,
            context_tokens=None,
            stop_reason="compaction",
        ),
        plain("p2", 1, "paused", 85_000),
        # One request that compacted twice (server tools) leaving 88%: 3 compactions in 2 calls.
        compacting("p3", 2, "paused", 88_000, compactions_count=2),
        plain("p4", 3, "paused", 60_000),
    ]
    store_rows(database_url, rows)
    findings = anomalies(database_url)
    assert summary(findings) == [("compaction_loop", "critical", "paused", ("p1", "p3"))]
    assert findings[0].evidence["compactions"] == 3
    assert [s["context_tokens"] for s in findings[0].evidence["steps"]] == [85_000, 88_000]


def test_failed_calls_are_not_turns_of_the_conversation(database_url: str) -> None:
    # Two 529s between the compactions do not stretch the window: 3 compactions in 5 turns.
    rows = [
        compacting("f1", 0, "retry", 90_000),
        failed_call("x1", 1, 529, "retry"),
        failed_call("x2", 2, 529, "retry"),
        compacting("f2", 3, "retry", 90_000),
        plain("f3", 4, "retry", 95_000),
        plain("f4", 5, "retry", 95_000),
        compacting("f5", 6, "retry", 90_000),
    ]
    store_rows(database_url, rows)
    assert summary(anomalies(database_url)) == [("compaction_loop", "critical", "retry", ("f1", "f2", "f5"))]


# --- failed compactions and cost share --------------------------------------------------------------------


def test_failed_compaction_is_billed_without_a_summary(database_url: str) -> None:
    rows = [
        plain("g1", 0, "nulls", 40_000, cost_usd=Decimal("0.5")),
        compacting("g2", 1, "nulls", 40_000, compactions_failed=1, cost_usd=Decimal("0.15")),
    ]
    its = [
        iteration("g1", 0, "message", "0.5"),
        iteration("g2", 0, "compaction", "0.12"),
        iteration("g2", 1, "message", "0.03"),
    ]
    store_rows(database_url, rows, its)
    findings = anomalies(database_url)
    assert summary(findings) == [("failed_compaction", "warning", "nulls", ("g2",))]
    assert findings[0].evidence == {
        "failed_compactions": 1,
        "calls": 1,
        "compaction_cost_usd": Decimal("0.120000"),
    }


def test_compaction_cost_share_worked_by_hand(database_url: str) -> None:
    # costs: 0.10 + (0.40 compaction + 0.10 message) + 0.05 = 0.65; compaction share 0.40 / 0.65 = 0.6154
    rows = [
        plain("h1", 0, "costly", 20_000, cost_usd=Decimal("0.10")),
        compacting("h2", 1, "costly", 20_000, cost_usd=Decimal("0.50")),
        plain("h3", 2, "costly", 25_000, cost_usd=Decimal("0.05")),
        # 0.10 compaction of 0.30 = 33%: under the 50% line
        plain("k1", 0, "cheap", 20_000, cost_usd=Decimal("0.20")),
        compacting("k2", 1, "cheap", 20_000, cost_usd=Decimal("0.10")),
    ]
    its = [
        iteration("h1", 0, "message", "0.10"),
        iteration("h2", 0, "compaction", "0.40"),
        iteration("h2", 1, "message", "0.10"),
        iteration("h3", 0, "message", "0.05"),
        iteration("k1", 0, "message", "0.20"),
        iteration("k2", 0, "compaction", "0.10"),
        iteration("k2", 1, "message", "0.00"),
    ]
    store_rows(database_url, rows, its)
    findings = anomalies(database_url)
    assert summary(findings) == [("compaction_cost_share", "warning", "costly", ("h2",))]
    evidence = findings[0].evidence
    assert evidence["compaction_cost_usd"] == Decimal("0.4")
    assert evidence["conversation_cost_usd"] == Decimal("0.65")
    assert evidence["share"] == 0.6154
    assert "$0.4000 of $0.6500, 61.5% of the conversation (threshold 50%)" in findings[0].message
    # --cost-share 0.3 catches "cheap" too (0.10 / 0.30 = 0.3333)
    found = anomalies(database_url, Thresholds(cost_share=0.3))
    assert [(f.conversation_id, f.evidence["share"]) for f in found] == [
        ("cheap", 0.3333),  # both compacted at minute 1: by conversation id
        ("costly", 0.6154),
    ]


# --- budgets ---------------------------------------------------------------------------------------------


def _budget_rows() -> list[dict[str, Any]]:
    return [
        # stored budget $1.00: 0.40 + 0.40 + 0.40 = 1.20, over at the third call
        plain("m1", 0, "ticket-1", cost_usd=Decimal("0.40"), budget_usd=Decimal("1.00")),
        plain("m2", 1, "ticket-1", cost_usd=Decimal("0.40"), budget_usd=Decimal("1.00")),
        plain("m3", 2, "ticket-1", cost_usd=Decimal("0.40"), budget_usd=Decimal("1.00")),
        # stored token budget 5,000: 2 x (3,000 + 500 + 1,000 read + 200 written) = 9,400, over at the second
        plain(
            "n1",
            0,
            "ticket-2",
            input_tokens=3000,
            output_tokens=500,
            cache_read_tokens=1000,
            cache_write_5m_tokens=200,
            budget_tokens=5000,
        ),
        plain(
            "n2",
            1,
            "ticket-2",
            input_tokens=3000,
            output_tokens=500,
            cache_read_tokens=1000,
            cache_write_1h_tokens=200,
            budget_tokens=5000,
        ),
        # no stored budget: 3 x 4,000 tokens = 12,000 tokens, over the file's 10,000 at the third call
        plain("q1", 0, "batch-7", input_tokens=4000, output_tokens=0),
        plain("q2", 1, "batch-7", input_tokens=4000, output_tokens=0),
        plain("q3", 2, "batch-7", input_tokens=4000, output_tokens=0),
        # under its stored budget
        plain("r1", 0, "ticket-3", cost_usd=Decimal("0.40"), budget_usd=Decimal("1.00")),
    ]


def test_budget_exceeded_from_stored_budgets(database_url: str) -> None:
    store_rows(database_url, _budget_rows())
    findings = anomalies(database_url)
    # listed by the time each went over: ticket-2 at its second call (minute 1), ticket-1 at its third
    assert summary(findings) == [
        ("budget_exceeded", "critical", "ticket-2", ("n2",)),
        ("budget_exceeded", "critical", "ticket-1", ("m3",)),
    ]
    second, first = findings
    assert first.evidence["spent_usd"] == Decimal("1.2") and first.evidence["budget_usd"] == Decimal("1")
    assert first.evidence["budget_source"] == "stored" and first.evidence["calls"] == 3
    assert "$1.2000 of a $1.0000 budget (120%)" in first.message
    assert second.evidence["billed_tokens"] == 9400 and second.evidence["budget_tokens"] == 5000
    assert "9,400 of 5,000 budgeted tokens (188%)" in second.message


def test_budget_exceeded_from_a_budgets_file(database_url: str, tmp_path: Path) -> None:
    store_rows(database_url, _budget_rows())
    path = tmp_path / "budgets.toml"
    path.write_text(
        '[budgets."batch-*"]\ntokens = 10_000\n\n'
        '[budgets."*"]\nusd = 100\n\n'
        '[budgets."ticket-1"]\nusd = 2.00\n'  # the file wins over the stored $1.00
    )
    budgets = load_budgets(path)
    assert budgets.for_conversation("ticket-1") == Budget(
        usd=Decimal("2.00"), source=f'{path} [budgets."ticket-1"]'
    )
    assert (
        budgets.for_conversation("batch-7") is not None
        and budgets.for_conversation("batch-7").tokens == 10_000
    )
    findings = anomalies(database_url, budgets=budgets)
    # ticket-2 matches "*" ($100, no token budget): the file entry replaces its stored token budget
    assert summary(findings) == [("budget_exceeded", "critical", "batch-7", ("q3",))]
    assert findings[0].evidence["billed_tokens"] == 12_000
    assert findings[0].evidence["budget_source"] == f'{path} [budgets."batch-*"]'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[budgets.x\n", "is not valid TOML"),
        ('[limits."x"]\nusd = 1\n', "unknown top-level key 'limits'"),
        (
            '[budgets."x"]\ndollars = 1\n',
            "unknown key 'dollars' (allowed: usd, tokens, max_compactions, loop, on_breach, unknown)",
        ),
        ('[budgets."x"]\nusd = -1\n', '[budgets."x"].usd must be a finite number >= 0'),
        ('[budgets."x"]\nusd = "5"\n', '[budgets."x"].usd must be a number'),
        ('[budgets."x"]\ntokens = 1.5\n', '[budgets."x"].tokens must be a whole number >= 0'),
        ('[budgets."x"]\n', "sets no budget"),
        ("budgets = 3\n", "'budgets' must be a table"),
    ],
)
def test_budgets_file_errors_are_clear(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(ReportInputError) as info:
        load_budgets(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_budgets_file(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="does not exist"):
        load_budgets(tmp_path / "nope.toml")


# --- cache misses, unpriced models, error bursts -----------------------------------------------------------


def test_cache_miss_after_compaction(database_url: str) -> None:
    rows = [
        plain("s1", 0, "miss", cache_read_tokens=50_000, cache_write_5m_tokens=2_000),
        plain("s2", 1, "miss", cache_read_tokens=60_000, cache_write_5m_tokens=1_000),
        compacting("s3", 2, "miss", 20_000, cache_read_tokens=70_000, cache_write_5m_tokens=5_000),
        # 1,000 read <= 5% of 60,000 = 3,000; writes 30,000 > 1,000 and >= 1,024
        plain("s4", 3, "miss", 22_000, cache_read_tokens=1_000, cache_write_5m_tokens=30_000),
        # near miss: 4,000 read after is 6.7% of 60,000
        plain("t1", 0, "warm", cache_read_tokens=60_000, cache_write_5m_tokens=1_000),
        compacting("t2", 1, "warm", 20_000, cache_read_tokens=70_000),
        plain("t3", 2, "warm", 22_000, cache_read_tokens=4_000, cache_write_5m_tokens=30_000),
        # near miss: reads fall but writes do not jump (nothing written)
        plain("u1", 0, "cold", cache_read_tokens=60_000),
        compacting("u2", 1, "cold", 20_000),
        plain("u3", 2, "cold", 22_000),
    ]
    store_rows(database_url, rows)
    findings = anomalies(database_url)
    assert summary(findings) == [("cache_miss_after_compaction", "warning", "miss", ("s2", "s3", "s4"))]
    assert findings[0].evidence == {
        "cache_read_before": 60_000,
        "cache_read_after": 1_000,
        "cache_write_before": 1_000,
        "cache_write_after": 30_000,
        "read_ratio": 0.0167,
        "compaction_call_id": "s3",
    }
    assert "cache_control" in findings[0].remedy


def test_unpriced_model(database_url: str) -> None:
    rows = [
        call("v1", 0, "x", request_model="claude-mystery-9", response_model="claude-mystery-9", priced=False),
        call("v2", 5, "y", request_model="claude-mystery-9", response_model="claude-mystery-9", priced=False),
        call("v3", 6, "y", cost_usd=Decimal("0.01"), priced=True),
    ]
    its = [
        iteration("v1", 0, "message", None, model="claude-mystery-9", input_tokens=1000, output_tokens=100),
        iteration("v2", 0, "message", None, model="claude-mystery-9", input_tokens=2000, output_tokens=200),
        iteration("v3", 0, "message", "0.01"),
    ]
    store_rows(database_url, rows, its)
    findings = anomalies(database_url)
    assert summary(findings) == [("unpriced_model", "warning", None, ("v1", "v2"))]
    evidence = findings[0].evidence
    assert (evidence["model"], evidence["calls"], evidence["conversations"], evidence["tokens"]) == (
        "claude-mystery-9",
        2,
        2,
        3300,
    )
    assert (evidence["first_call"], evidence["last_call"]) == (
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T00:05:00+00:00",
    )
    assert "pricing overrides file" in findings[0].remedy


def test_error_burst(database_url: str) -> None:
    rows: list[dict[str, Any]] = []
    # 10:00-11:00: 20 calls, 3 x 429 + 1 x 529 = 20% > 10%
    for i in range(16):
        rows.append(call(f"h10ok{i:02d}", 600 + i, attempts=2 if i < 2 else 1))
    rows += [failed_call(f"h10e{i}", 620 + i, 429) for i in range(3)] + [failed_call("h10e3", 630, 529)]
    # 12:00-13:00: 20 calls, 2 x 500 = exactly 10%: not above
    rows += [call(f"h12ok{i:02d}", 720 + i) for i in range(18)]
    rows += [failed_call(f"h12e{i}", 750 + i, 500) for i in range(2)]
    # 14:00-15:00: 5 calls, all 503: too few calls to judge
    rows += [failed_call(f"h14e{i}", 840 + i, 503) for i in range(5)]
    # 400s are the caller's errors, not a burst: 20 calls, 10 x 400
    rows += [call(f"h16ok{i:02d}", 960 + i) for i in range(10)]
    rows += [failed_call(f"h16e{i:02d}", 980 + i, 400) for i in range(10)]
    store_rows(database_url, rows)
    findings = anomalies(database_url)
    assert summary(findings) == [("error_burst", "warning", None, ("h10e0", "h10e1", "h10e2", "h10e3"))]
    evidence = findings[0].evidence
    assert "4 of 20 calls (20.0%) failed with 429/529/5xx in the hour from 2026-01-01T10:00:00+00:00" in (
        findings[0].message
    )
    assert evidence["hour_start"] == "2026-01-01T10:00:00+00:00"
    assert (evidence["calls"], evidence["error_calls"], evidence["share"]) == (20, 4, 0.2)
    assert (evidence["http_429"], evidence["http_529"], evidence["http_5xx_other"], evidence["retries"]) == (
        3,
        1,
        0,
        2,
    )
    assert len(anomalies(database_url, Thresholds(error_share=0.09))) == 2  # 12:00 now counts
    assert len(anomalies(database_url, Thresholds(error_min_calls=5))) == 2  # 14:00 now counts


def test_filters_narrow_every_rule(database_url: str) -> None:
    rows = [
        compacting("a2", 1, "loop", 90_000),
        compacting("a4", 2, "loop", 90_000),
        compacting("a6", 3, "loop", 90_000),
    ]
    store_rows(database_url, rows)
    engine = store.open_database(database_url)
    try:
        late = build_filters("2026-01-01T00:02", None, "UTC")
        assert summary(find_anomalies(engine, late)) == [
            ("ineffective_compaction", "warning", "loop", ("a4",)),
            ("ineffective_compaction", "warning", "loop", ("a6",)),
        ]
        other = build_filters(None, None, "UTC", conversations=("other",))
        assert find_anomalies(engine, other) == []
    finally:
        engine.dispose()


def test_thresholds_are_validated() -> None:
    with pytest.raises(ReportInputError, match="--loop-min must be at least 2"):
        Thresholds(loop_min=1)
    with pytest.raises(ReportInputError, match="--cost-share must be between 0 and 1"):
        Thresholds(cost_share=1.5)


def test_exit_code_for() -> None:
    warning = Finding("ineffective_compaction", "warning", "c", ("x",), "m", {}, "r")
    critical = Finding("compaction_loop", "critical", "c", ("x",), "m", {}, "r")
    assert exit_code_for([warning], None) == 0
    assert exit_code_for([warning], "critical") == 0
    assert exit_code_for([warning], "warning") == EXIT_FINDINGS
    assert exit_code_for([critical], "critical") == EXIT_FINDINGS
    assert exit_code_for([], "warning") == 0


# --- the command -----------------------------------------------------------------------------------------


def _cli_rows() -> list[dict[str, Any]]:
    return [
        plain("a1", 0, "loop"),
        compacting("a2", 1, "loop", 90_000),
        compacting("a3", 2, "loop", 90_000),
        compacting("a4", 3, "loop", 90_000),
        compacting("b1", 0, "two", 90_000),
    ]


def test_cli_json_and_fail_on(database_url: str) -> None:
    store_rows(database_url, _cli_rows())
    code, out, _ = run("--db", database_url, "report", "anomalies", "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert document["report"] == "anomalies"
    assert [
        (f["kind"], f["severity"], f["conversation_id"], f["call_ids"]) for f in document["findings"]
    ] == [
        ("compaction_loop", "critical", "loop", ["a2", "a3", "a4"]),
        ("ineffective_compaction", "warning", "two", ["b1"]),
    ]
    first = document["findings"][0]
    assert set(first) == {"kind", "severity", "conversation_id", "call_ids", "message", "evidence", "remedy"}
    assert first["evidence"]["compactions"] == 3 and first["evidence"]["min_context_share"] == 0.9
    assert document["counts"] == {"critical": 1, "warning": 1}
    code, _, _ = run("--db", database_url, "report", "anomalies", "--fail-on", "critical")
    assert code == EXIT_FINDINGS
    code, _, _ = run("--db", database_url, "report", "anomalies", "--fail-on", "warning", "--loop-min", "4")
    assert code == EXIT_FINDINGS  # four ineffective compactions remain, as warnings
    code, _, _ = run("--db", database_url, "report", "anomalies", "--fail-on", "critical", "--loop-min", "4")
    assert code == 0
    code, _, _ = run(
        "--db", database_url, "report", "anomalies", "--fail-on", "warning", "--ineffective-ratio", "0.95"
    )
    assert code == 0


def test_cli_formats(sqlite_url: str) -> None:
    store_rows(sqlite_url, _cli_rows())
    code, out, _ = run("--db", sqlite_url, "report", "anomalies")
    assert code == 0
    assert "CRITICAL  compaction_loop  conversation loop" in out
    assert "remedy: raise the trigger" in out and "calls: a2 a3 a4" in out
    assert "\x1b[" not in out  # not a terminal: no colours
    code, out, _ = run("--db", sqlite_url, "report", "anomalies", "--format", "csv")
    lines = out.splitlines()
    assert lines[0] == "severity,kind,conversation_id,call_ids,message,evidence,remedy"
    assert lines[1].startswith("critical,compaction_loop,loop,a2 a3 a4,")
    code, out, _ = run("--db", sqlite_url, "report", "anomalies", "--format", "md")
    assert "| severity | kind | conversation_id | message | remedy |" in out
    assert "| critical | compaction_loop | loop |" in out


def test_cli_budgets_file_option_and_env(sqlite_url: str, tmp_path: Path) -> None:
    store_rows(sqlite_url, _budget_rows())
    path = tmp_path / "budgets.toml"
    path.write_text('[budgets."batch-*"]\ntokens = 10000\n')
    for args, env in (((f"--budgets={path}",), None), ((), {"COMPACTOBS_BUDGETS_FILE": str(path)})):
        code, out, _ = run("--db", sqlite_url, "report", "anomalies", "--format", "json", *args, env=env)
        assert code == 0
        kinds = [(f["kind"], f["conversation_id"]) for f in json.loads(out)["findings"]]
        assert kinds == [
            ("budget_exceeded", "ticket-2"),
            ("budget_exceeded", "batch-7"),
            ("budget_exceeded", "ticket-1"),
        ]
    bad = tmp_path / "bad.toml"
    bad.write_text('[budgets."x"]\nusd = -3\n')
    code, _, err = run("--db", sqlite_url, "report", "anomalies", "--budgets", str(bad))
    assert "usd must be a finite number >= 0" in one_line_error(code, err)
    code, _, err = run(
        "--db", sqlite_url, "report", "anomalies", env={"COMPACTOBS_BUDGETS_FILE": str(tmp_path / "no")}
    )
    assert "does not exist" in one_line_error(code, err)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--fail-on", "info"), "'info' is not one of 'warning', 'critical'"),
        (("--loop-min", "1"), "--loop-min must be at least 2"),
        (("--loop-min", "x"), "'x' is not a valid integer"),
        (("--ineffective-ratio", "1.2"), "--ineffective-ratio must be between 0 and 1"),
        (("--cost-share", "-0.1"), "--cost-share must be between 0 and 1"),
        (("--error-share", "abc"), "'abc' is not a valid float"),
        (("--since", "yesterdayish"), "invalid date or time 'yesterdayish'"),
        (("--since", "2026-02-30"), "no such day"),
        (("--tz", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (("--format", "xml"), "'xml' is not one of"),
        (("--bogus",), "No such option '--bogus'"),
    ],
)
def test_cli_bad_input_is_one_line(sqlite_url: str, args: tuple[str, ...], expected: str) -> None:
    store.upgrade_database(sqlite_url)
    code, _, err = run("--db", sqlite_url, "report", "anomalies", *args)
    assert expected in one_line_error(code, err)


def test_cli_help_says_the_exit_code() -> None:
    code, out, _ = run("report", "anomalies", "--help")
    assert code == 0
    assert "exits 3" in out and "--fail-on" in out


# --- long conversations ----------------------------------------------------------------------------------


def test_compaction_rules_do_work_linear_in_a_long_conversation(tmp_path: Path) -> None:
    """An agent's conversation compacts for thousands of turns: the neighbour lookups must seek, not scan.
    Counted in SQLite VM instructions (deterministic, unlike time) over a report window, which is what
    once made SQLite scan the conversation's whole window for every lookup: 10 times the calls must cost
    about 10 times the work, not 100."""
    from sqlalchemy import event

    def work(turns: int) -> int:
        url = f"sqlite:///{tmp_path / f'agent-{turns}.db'}"
        # Every turn compacts and leaves 95,000 of a 100,000 trigger: one long compaction loop.
        store_rows(url, [compacting(f"t{i:05d}", i, "agent", 95_000) for i in range(turns)])
        engine = store.open_database(url)
        ticks = 0

        def tick() -> int:
            nonlocal ticks
            ticks += 1
            return 0

        # On every checkout: the engine may already hold a connection from checking the schema.
        event.listen(engine, "checkout", lambda connection, *_: connection.set_progress_handler(tick, 100))
        try:
            window = build_filters(
                "2025-12-01", "2026-02-01", "UTC", now=datetime(2026, 3, 1, tzinfo=timezone.utc)
            )
            findings = find_anomalies(engine, window)
        finally:
            engine.dispose()
        assert [f.kind for f in findings if f.kind == "compaction_loop"] == ["compaction_loop"]
        return ticks

    short, long = work(60), work(600)
    assert short > 0
    assert long < 20 * short, (short, long)


_MONEY_COLUMNS = ("conversation_cost", "cost_usd", "compaction_cost", "priced_compaction_cost")
_NUMBER = st.one_of(st.none(), st.integers(0, 6000))
_MONEY = st.one_of(st.none(), st.decimals(0, 5, places=10))


@st.composite
def _compacting_calls(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """One conversation's compacting calls as `COMPACTION_RECORD`s, values near every rule's lines."""
    rows: list[tuple[Any, ...]] = []
    position = 0

    def neighbour(call_id: str) -> tuple[Any, ...]:  # (id, cache reads, cache writes): none, or all three
        if draw(st.booleans()):
            return (None, None, None)
        return (call_id, draw(st.integers(0, 6000)), draw(st.integers(0, 6000)))

    for n in range(draw(st.integers(1, 8))):
        position += draw(st.integers(1, 3))
        rows.append(
            (
                "conv",
                0,  # the conversation's figures are filled in below
                None,
                position,
                f"call-{n}",
                BASE_MS + position * MINUTE,
                draw(st.integers(1, 3)),
                draw(st.sampled_from((0, 0, 0, 1, 2))),
                draw(st.sampled_from((None, 0, 1000, 5000))),
                draw(_NUMBER),
                draw(_MONEY),
                draw(_MONEY),
                *neighbour(f"before-{n}"),
                *neighbour(f"after-{n}"),
            )
        )
    total = sum((row[10] for row in rows if row[10] is not None), Decimal(0)) + draw(_MONEY.filter(bool))
    conversation = (len(rows) + draw(st.integers(0, 5)), None if draw(st.booleans()) else total)
    return [(row[0], *conversation, *row[3:]) for row in rows]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=_compacting_calls(),
    thresholds=st.builds(
        Thresholds,
        loop_min=st.integers(2, 4),
        loop_window=st.integers(1, 6),
        ineffective_ratio=st.sampled_from((0.0, 0.5, 0.8, 1.0)),
        cost_share=st.sampled_from((0.0, 0.3, 0.5, 1.0)),
        cache_drop_ratio=st.sampled_from((0.0, 0.05, 0.5)),
        cache_min_tokens=st.sampled_from((0, 1024, 3000)),
    ),
)
def test_the_databases_preselection_loses_no_finding(
    records: list[tuple[Any, ...]], thresholds: Thresholds
) -> None:
    """The compacting calls `compaction_candidates` selects in the database give the same findings as all of
    them: it is a superset of what the rules need (evaluated here on SQLite, both as a bound expression and as
    the literal SQL the ClickHouse source sends)."""
    priced = [row[11] for row in records if row[10] is not None and row[11] is not None]
    priced_compaction_cost = sum(priced, Decimal(0)) if priced else None
    engine = create_engine("sqlite://")
    table = Table(
        "k",
        MetaData(),
        *(
            Column(
                name,
                Numeric(20, 10) if name in _MONEY_COLUMNS else String if name.endswith("id") else Integer,
            )
            for name in (*COMPACTION_RECORD, "priced_compaction_cost")
        ),
    )
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(table),
            [
                dict(
                    zip(
                        (*COMPACTION_RECORD, "priced_compaction_cost"),
                        (*row, priced_compaction_cost),
                        strict=True,
                    )
                )
                for row in records
            ],
        )
        candidates = compaction_candidates(lambda name: table.c[name], thresholds)
        bound = {row.call_id for row in connection.execute(select(table.c.call_id).where(candidates))}
        literal_sql = candidates.compile(compile_kwargs={"literal_binds": True})
        textual = {row[0] for row in connection.execute(text(f"SELECT call_id FROM k WHERE {literal_sql}"))}
    engine.dispose()
    assert bound == textual

    def findings(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        return [f.as_dict() for f in _compaction_findings(rows, thresholds)]

    assert findings([row for row in records if row[4] in bound]) == findings(records)
