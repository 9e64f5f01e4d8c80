"""`report cache`: hit ratio, savings, write premium and wasted writes worked by hand, on SQLite and
PostgreSQL, exact output, and the command with bad input.

Over the store of tests/reports/test_cost.py (its docstring has the calls), at `now` = 2025-03-13:
- A (sonnet, $3/MTok input: its own 0.003 / 1,000): reads 10,000 -> saved 10,000 x 3e-6 - 0.003 = 0.027;
  5m write 2,000 -> premium 0.0075 - 2,000 x 3e-6 = 0.0015. B, the next call of c1, started 09:02:00,
  118 s after A ended (09:00:02): within 5 minutes, so A's write was read back.
- B's message (sonnet, 0.0006 / 200 = 3e-6): reads 12,000 -> saved 0.036 - 0.0036 = 0.0324; 1h write 1,000
  -> premium 0.006 - 0.003 = 0.003. c1 has no call after B: wasted (1,000 tokens, premium 0.003).
- B's compaction and C (haiku): no cache; D unpriced, no cache; E no usage.
By model: sonnet (A, B's message, E): in 1,200, read 22,000, write 2,000 + 1,000; hit ratio
22,000 / 26,200 = 0.839695; saved 0.0594, premium 0.0045, net 0.0549. Haiku: in 24,000, hit 0.
All: in 25,300 -> hit ratio 22,000 / 50,300 = 0.437376.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compactobs import store
from compactobs.reports.cache import CACHE_MEASURES, cache_report
from compactobs.reports.model import ReportInputError
from compactobs.reports.render import render
from compactobs.reports.times import build_filters
from tests.cli import one_line_error, run
from tests.reports.test_cost import (
    HAIKU,
    SONNET,
    call_row,
    iteration_row,
    scenario,
    store_rows,
)

D = Decimal
NOW = datetime(2025, 3, 13, tzinfo=timezone.utc)
GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.fixture
def scenario_url(database_url: str) -> str:
    store_rows(database_url, *scenario())
    return database_url


def report(
    url: str, by: tuple[str, ...] = ("model",), now: datetime = NOW, tz: str = "UTC", **kw: Any
) -> Any:
    engine = store.open_database(url)
    try:
        return cache_report(engine, build_filters(kw.pop("since", None), None, tz, **kw), by, now=now)
    finally:
        engine.dispose()


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, Decimal) else v for k, v in row.items()}


def test_cache_by_model_worked_by_hand(scenario_url: str) -> None:
    result = report(scenario_url)
    sonnet, haiku, mystery = (rounded(r) for r in result.rows)
    assert sonnet == {
        "model": SONNET,
        "calls": 3,
        "input_tokens": 1200,
        "cache_read_input_tokens": 22000,
        "cache_creation_input_tokens": 3000,
        "cache_creation_5m_input_tokens": 2000,
        "cache_creation_1h_input_tokens": 1000,
        "hit_ratio": D("0.839695"),
        "saved_usd": D("0.0594"),
        "write_premium_usd": D("0.0045"),
        "net_usd": D("0.0549"),
        "wasted_write_calls": 1,
        "wasted_write_tokens": 1000,
        "wasted_5m_write_tokens": 0,
        "wasted_1h_write_tokens": 1000,
        "wasted_premium_usd": D("0.003"),
        "estimated_iterations": 0,
        "unpriced_calls": 0,
    }
    assert haiku["model"] == HAIKU and haiku["input_tokens"] == 24000 and haiku["hit_ratio"] == 0
    assert haiku["saved_usd"] == 0 and haiku["net_usd"] == 0
    # Only unpriced calls: tokens counted, dollars unknown (None), never $0.
    assert mystery["model"] == "mystery-1" and mystery["unpriced_calls"] == 1 and mystery["calls"] == 1
    assert mystery["saved_usd"] is None and mystery["net_usd"] is None
    totals = rounded(result.totals)
    assert list(totals) == list(CACHE_MEASURES)
    assert totals["hit_ratio"] == D("0.437376")
    assert (totals["saved_usd"], totals["write_premium_usd"], totals["net_usd"]) == (
        D("0.0594"),
        D("0.0045"),
        D("0.0549"),
    )
    assert totals["calls"] == 5 and totals["input_tokens"] == 25300
    assert result.warnings == [
        "1 call(s) have no price: their tokens count in the hit ratio, their dollars are not in saved, "
        "premium or net."
    ]


@pytest.mark.parametrize("by", [(), ("day",), ("hour",), ("month",), ("conversation",), ("iteration-type",)])
def test_groups_add_up_to_the_totals(scenario_url: str, by: tuple[str, ...]) -> None:
    result = report(scenario_url, by=by)
    for name in CACHE_MEASURES:
        if name == "hit_ratio":
            continue
        summed = sum(row[name] for row in result.rows if row[name] is not None)
        assert round(summed, 6) == round(result.totals[name], 6), name
    assert rounded(result.totals) == rounded(report(scenario_url).totals)


def test_cache_by_conversation(scenario_url: str) -> None:
    rows = {r["conversation_id"]: rounded(r) for r in report(scenario_url, by=("conversation",)).rows}
    assert rows["c1"]["cache_read_input_tokens"] == 22000 and rows["c1"]["wasted_write_calls"] == 1
    assert rows["c2"]["cache_read_input_tokens"] == 0 and rows[None]["calls"] == 1


def _waste_store(url: str) -> None:
    """Sonnet calls (input rate 3e-6, 5m write 3.75e-6, 1h write 6e-6), each 2 s long:
    w1 c-late 10:00:00, writes 1,000 (5m): next call of c-late at 10:06:02, 6 min after w1 ended: wasted.
    w2 c-late 10:06:02, writes 2,000 (1h): next at 10:40:00, 34 min later: within the hour, read back.
    w3 c-late 10:40:00, writes 4,000 (5m): no next call and `now` is past its 5 minutes: wasted.
    w4 c-now  11:58:00, writes 8,000 (5m): no next call, but `now` (12:00) is within 5 minutes: pending.
    w5 (no conversation) 09:00, writes 16,000 (5m): cannot be judged.
    w6 c-read 08:00, reads 5,000 with no uncached input and no writes: saved assumed at 0.1x: 9 x 0.0015.
    """
    calls, iterations = [], []
    specs = [
        ("w1", "2025-03-20T10:00:00", "c-late", {"cache_write_5m_tokens": 1000}),
        ("w2", "2025-03-20T10:06:02", "c-late", {"cache_write_1h_tokens": 2000}),
        ("w3", "2025-03-20T10:40:00", "c-late", {"cache_write_5m_tokens": 4000}),
        ("w4", "2025-03-20T11:58:00", "c-now", {"cache_write_5m_tokens": 8000}),
        ("w5", "2025-03-20T09:00:00", None, {"cache_write_5m_tokens": 16000}),
    ]
    for call_id, at, conversation, tokens in specs:
        w5m, w1h = tokens.get("cache_write_5m_tokens", 0), tokens.get("cache_write_1h_tokens", 0)
        costs = {
            "input_tokens": 100,
            "cost_input_usd": D("0.0003"),
            "cost_cache_write_5m_usd": D("0.00000375") * w5m,
            "cost_cache_write_1h_usd": D("0.000006") * w1h,
            "cache_write_5m_tokens": w5m,
            "cache_write_1h_tokens": w1h,
        }
        cost = costs["cost_input_usd"] + costs["cost_cache_write_5m_usd"] + costs["cost_cache_write_1h_usd"]
        calls.append(call_row(call_id, at, conversation_id=conversation, cost_usd=cost, **costs))
        iterations.append(iteration_row(call_id, 0, at, cost_usd=cost, **costs))
    reads = {"input_tokens": 0, "cache_read_tokens": 5000, "cost_cache_read_usd": D("0.0015")}
    calls.append(
        call_row("w6", "2025-03-20T08:00:00", conversation_id="c-read", cost_usd=D("0.0015"), **reads)
    )
    iterations.append(iteration_row("w6", 0, "2025-03-20T08:00:00", cost_usd=D("0.0015"), **reads))
    store_rows(url, calls, iterations)


def test_wasted_writes(database_url: str) -> None:
    _waste_store(database_url)
    now = datetime(2025, 3, 20, 12, 0, tzinfo=timezone.utc)
    rows = {
        r["conversation_id"]: rounded(r) for r in report(database_url, by=("conversation",), now=now).rows
    }
    late = rows["c-late"]
    # w1 (1,000) and w3 (4,000) wasted; w2's hour write was read back 34 minutes later.
    assert (late["wasted_5m_write_tokens"], late["wasted_1h_write_tokens"], late["wasted_write_calls"]) == (
        5000,
        0,
        2,
    )
    # Premium paid on them: 5,000 x (3.75e-6 - 3e-6) = 0.00375.
    assert late["wasted_premium_usd"] == D("0.00375")
    # All premiums of c-late: 5m 0.00375, 1h 2,000 x 3e-6 = 0.006.
    assert late["write_premium_usd"] == D("0.00975")
    assert rows["c-now"]["wasted_write_tokens"] == 0  # still within its TTL at `now`
    assert rows[None]["wasted_write_tokens"] == 0  # no conversation: never judged
    read_only = rows["c-read"]
    assert read_only["saved_usd"] == D("0.0135") and read_only["estimated_iterations"] == 1
    assert read_only["hit_ratio"] == 1
    # An hour later, w4's 5 minutes are over and no call came: wasted too.
    later = report(database_url, by=("conversation",), now=datetime(2025, 3, 20, 13, tzinfo=timezone.utc))
    assert {r["conversation_id"]: r["wasted_write_tokens"] for r in later.rows}["c-now"] == 8000
    result = report(database_url, now=now)
    assert any("assume reads bill 0.1x input" in w for w in result.warnings)


def test_window_does_not_hide_the_next_call(database_url: str) -> None:
    # The next call after w2 (w3, 10:40) is outside a window that ends at 10:30: w2 was still read back.
    _waste_store(database_url)
    engine = store.open_database(database_url)
    try:
        filters = build_filters("2025-03-20T10:05", "2025-03-20T10:30", "UTC")
        result = cache_report(engine, filters, (), now=datetime(2025, 3, 21, tzinfo=timezone.utc))
    finally:
        engine.dispose()
    (row,) = result.rows
    assert (
        row["calls"] == 1
        and row["cache_creation_1h_input_tokens"] == 2000
        and row["wasted_write_tokens"] == 0
    )


@pytest.mark.parametrize("fmt", ["json", "csv", "md"])
def test_golden_output(scenario_url: str, fmt: str) -> None:
    assert render(report(scenario_url), fmt) == (GOLDEN / f"cache_by_model.{fmt}").read_text()


def test_empty_store(database_url: str) -> None:
    store.upgrade_database(database_url)
    result = report(database_url)
    assert result.rows == [] and result.totals["calls"] == 0 and result.totals["hit_ratio"] is None
    assert "No calls recorded in this window." in render(result, "md")


def test_bad_grouping(scenario_url: str) -> None:
    with pytest.raises(ReportInputError, match="cannot group by 'ttl'"):
        report(scenario_url, by=("ttl",))


def test_cli_cache(scenario_url: str) -> None:
    code, out, err = run("--db", scenario_url, "report", "cache", "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["report"] == "cache" and document["by"] == ["model"]
    assert document["totals"]["hit_ratio"] == 0.437376
    assert "hit_ratio" in document["definitions"]
    code, out, _ = run("--db", scenario_url, "report", "cache", "--by", "day", "--tz", "Europe/Paris")
    assert code == 0 and out.startswith("Cache by day\n") and "tz Europe/Paris" in out
    assert "hit ratio = cache read / (input + cache write 5m + 1h + cache read), weighted by tokens." in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "Error: invalid date or time 'yesterday-ish'"),
        (["--tz", "Nowhere"], "Error: unknown time zone 'Nowhere'"),
        (["--by", "ttl"], "Error: cannot group by 'ttl'"),
        (["--format", "yaml"], "Error: Invalid value for '--format'"),
    ],
)
def test_cli_bad_input(sqlite_url: str, args: list[str], message: str) -> None:
    store.upgrade_database(sqlite_url)
    code, _, err = run("--db", sqlite_url, "report", "cache", *args)
    assert message in one_line_error(code, err)


def test_cli_bad_database(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    code, _, err = run("--db", f"sqlite:///{tmp_path / 'a-file' / 'x.db'}", "report", "cache")
    assert one_line_error(code, err)
    code, _, err = run("--db", "mysql://nobody@localhost/none", "report", "cache")
    assert one_line_error(code, err)
