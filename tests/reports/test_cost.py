"""`report cost`: figures worked by hand on a small store, the invariants (groups add up to the totals,
days to months, the zone moves calls between days but never changes a total), exact output (JSON, CSV,
Markdown), and the command with every bad input. Each test runs on SQLite and on PostgreSQL.

The store (prices as Sonnet 4.5: $3 in, $15 out, $0.30 read, $3.75 5m write, $6 1h write per MTok;
Haiku 4.5: $1 in, $5 out; web search $10 per 1,000):

A 2025-03-10 09:00 UTC, conversation c1, service api, sonnet, one message iteration:
  in 1,000 -> 0.003; out 500 -> 0.0075; read 10,000 -> 0.003; 5m write 2,000 -> 0.0075.  cost 0.021
B 2025-03-10 09:02 UTC, c1, api, response sonnet, two iterations and 2 web searches:
  it0 compaction at haiku: in 20,000 -> 0.02; out 1,000 -> 0.005                        cost 0.025
  it1 message at sonnet: in 200 -> 0.0006; out 300 -> 0.0045; read 12,000 -> 0.0036;
      1h write 1,000 -> 0.006                                                            cost 0.0147
  web search 2 -> 0.02.                                               call cost 0.025 + 0.0147 + 0.02 = 0.0597
C 2025-03-11 23:30 UTC (00:30 on the 12th in Paris, UTC+1), c2, worker, haiku:
  in 4,000 -> 0.004; out 1,000 -> 0.005                                                  cost 0.009
D 2025-03-12 10:00 UTC, c2, worker, model "mystery-1": unpriced (in 100, out 50; cost NULL)
E 2025-03-12 11:00 UTC, no conversation, api, sonnet requested, failed before any usage (no iterations)

Totals: 5 calls, 1 error, 5 iterations, 1 compaction, in 25,300, out 2,850, read 22,000, 5m 2,000, 1h 1,000,
2 web searches, priced cost 0.021 + 0.0597 + 0.009 = 0.0897, 1 unpriced call.
By class: input 0.003 + 0.0206 + 0.004 = 0.0276; output 0.0075 + 0.0095 + 0.005 = 0.022; read 0.0066;
5m 0.0075; 1h 0.006; server tools 0.02 (sum 0.0897). Compaction 0.025: share 0.025 / 0.0897.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from compactobs import store
from compactobs.reports.cost import BY_CHOICES, MEASURES, cost_report, parse_by
from compactobs.reports.model import ReportInputError
from compactobs.reports.render import render
from compactobs.reports.times import build_filters
from tests.cli import one_line_error, run

SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
D = Decimal


def ms(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def call_row(call_id: str, at: str, **columns: Any) -> dict[str, Any]:
    """A `calls` row starting at `at` (UTC, ISO), lasting 2 s, OK, priced; columns override."""
    start = ms(at)
    row: dict[str, Any] = {
        "call_id": call_id,
        "trace_id": call_id.rjust(32, "0"),
        "service_name": "api",
        "conversation_id": None,
        "start_time": datetime.fromisoformat(at).replace(tzinfo=timezone.utc),
        "start_ms": start,
        "end_ms": start + 2000,
        "duration_ms": 2000.0,
        "request_model": SONNET,
        "response_model": SONNET,
        "status": "OK",
        "attempts": 1,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "web_search_requests": 0,
        "priced": True,
        "cost_server_tools_usd": D(0),
        "iterations_count": 1,
        "compactions_count": 0,
    }
    row.update(columns)
    return row


def iteration_row(call_id: str, idx: int, at: str, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "call_id": call_id,
        "idx": idx,
        "start_ms": ms(at) + 2000,
        "type": "message",
        "model": SONNET,
        "known_type": True,
        "declined": False,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "priced": True,
        "cost_input_usd": D(0),
        "cost_output_usd": D(0),
        "cost_cache_read_usd": D(0),
        "cost_cache_write_5m_usd": D(0),
        "cost_cache_write_1h_usd": D(0),
    }
    row.update(columns)
    return row


def _full(table: Any, row: dict[str, Any], dialect: str) -> dict[str, Any]:
    # Every column (NULL when not given). The exporter hands SQLite floats (it has no decimal type);
    # PostgreSQL gets exact NUMERIC.
    full = {column.name: row.get(column.name) for column in table.columns}
    if dialect == "sqlite":
        return {k: float(v) if isinstance(v, Decimal) else v for k, v in full.items()}
    return full


def store_rows(url: str, calls: list[dict[str, Any]], iterations: list[dict[str, Any]]) -> None:
    store.upgrade_database(url)
    engine = store.make_engine(url, writer=True)
    try:
        dialect = engine.dialect.name
        with engine.begin() as connection:
            if calls:
                connection.execute(insert(store.calls), [_full(store.calls, r, dialect) for r in calls])
            if iterations:
                connection.execute(
                    insert(store.iterations), [_full(store.iterations, r, dialect) for r in iterations]
                )
    finally:
        engine.dispose()


def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The store of the module docstring."""
    a = "2025-03-10T09:00:00"
    b = "2025-03-10T09:02:00"
    c = "2025-03-11T23:30:00"
    d = "2025-03-12T10:00:00"
    e = "2025-03-12T11:00:00"
    calls = [
        call_row(
            "a",
            a,
            conversation_id="c1",
            input_tokens=1000,
            output_tokens=500,
            cache_read_tokens=10000,
            cache_write_5m_tokens=2000,
            cost_usd=D("0.021"),
            cost_input_usd=D("0.003"),
            cost_output_usd=D("0.0075"),
            cost_cache_read_usd=D("0.003"),
            cost_cache_write_5m_usd=D("0.0075"),
            cost_cache_write_1h_usd=D(0),
        ),
        call_row(
            "b",
            b,
            conversation_id="c1",
            input_tokens=20200,
            output_tokens=1300,
            cache_read_tokens=12000,
            cache_write_1h_tokens=1000,
            web_search_requests=2,
            cost_usd=D("0.0597"),
            cost_input_usd=D("0.0206"),
            cost_output_usd=D("0.0095"),
            cost_cache_read_usd=D("0.0036"),
            cost_cache_write_5m_usd=D(0),
            cost_cache_write_1h_usd=D("0.006"),
            cost_server_tools_usd=D("0.02"),
            iterations_count=2,
            compactions_count=1,
        ),
        call_row(
            "c",
            c,
            conversation_id="c2",
            service_name="worker",
            request_model=HAIKU,
            response_model=HAIKU,
            input_tokens=4000,
            output_tokens=1000,
            cost_usd=D("0.009"),
            cost_input_usd=D("0.004"),
            cost_output_usd=D("0.005"),
            cost_cache_read_usd=D(0),
            cost_cache_write_5m_usd=D(0),
            cost_cache_write_1h_usd=D(0),
        ),
        call_row(
            "d",
            d,
            conversation_id="c2",
            service_name="worker",
            request_model="mystery-1",
            response_model="mystery-1",
            input_tokens=100,
            output_tokens=50,
            priced=False,
            cost_usd=None,
            cost_input_usd=D(0),
            cost_output_usd=D(0),
            cost_cache_read_usd=D(0),
            cost_cache_write_5m_usd=D(0),
            cost_cache_write_1h_usd=D(0),
        ),
        call_row(
            "e",
            e,
            status="ERROR",
            error_type="APIConnectionError",
            response_model=None,
            input_tokens=None,
            output_tokens=None,
            cache_read_tokens=None,
            cache_write_5m_tokens=None,
            cache_write_1h_tokens=None,
            web_search_requests=None,
            priced=None,
            cost_server_tools_usd=None,
            iterations_count=None,
            compactions_count=None,
        ),
    ]
    iterations = [
        iteration_row(
            "a",
            0,
            a,
            input_tokens=1000,
            output_tokens=500,
            cache_read_tokens=10000,
            cache_write_5m_tokens=2000,
            cost_usd=D("0.021"),
            cost_input_usd=D("0.003"),
            cost_output_usd=D("0.0075"),
            cost_cache_read_usd=D("0.003"),
            cost_cache_write_5m_usd=D("0.0075"),
        ),
        iteration_row(
            "b",
            0,
            b,
            type="compaction",
            model=HAIKU,
            input_tokens=20000,
            output_tokens=1000,
            cost_usd=D("0.025"),
            cost_input_usd=D("0.02"),
            cost_output_usd=D("0.005"),
        ),
        iteration_row(
            "b",
            1,
            b,
            input_tokens=200,
            output_tokens=300,
            cache_read_tokens=12000,
            cache_write_1h_tokens=1000,
            cost_usd=D("0.0147"),
            cost_input_usd=D("0.0006"),
            cost_output_usd=D("0.0045"),
            cost_cache_read_usd=D("0.0036"),
            cost_cache_write_1h_usd=D("0.006"),
        ),
        iteration_row(
            "c",
            0,
            c,
            model=HAIKU,
            input_tokens=4000,
            output_tokens=1000,
            cost_usd=D("0.009"),
            cost_input_usd=D("0.004"),
            cost_output_usd=D("0.005"),
        ),
        iteration_row(
            "d", 0, d, model="mystery-1", input_tokens=100, output_tokens=50, priced=False, cost_usd=None
        ),
    ]
    return calls, iterations


@pytest.fixture
def scenario_url(database_url: str) -> str:
    store_rows(database_url, *scenario())
    return database_url


def report(url: str, by: tuple[str, ...] = ("day",), tz: str = "UTC", **kwargs: Any) -> Any:
    since, until = kwargs.pop("since", None), kwargs.pop("until", None)
    compare, now = kwargs.pop("compare", None), kwargs.pop("now", None)
    engine = store.open_database(url)
    try:
        return cost_report(engine, build_filters(since, until, tz, **kwargs), by, compare=compare, now=now)
    finally:
        engine.dispose()


def measures(**values: Any) -> dict[str, Any]:
    """A row's measures: zeros, then `values`; then the headline, whose rule (the top level leaves the
    compaction iterations out) `test_the_headline_worked_by_hand` checks against figures worked by hand."""
    row: dict[str, Any] = dict.fromkeys(MEASURES, 0)
    for name in MEASURES:
        if name.endswith("_usd"):
            row[name] = D(0)
    row.update(values)
    priced = row["cost_usd"] is not None
    row["top_level_cost_usd"] = row["cost_usd"] - row["compaction_cost_usd"] if priced else None
    row["hidden_cost_usd"] = row["compaction_cost_usd"] if priced else None
    return row


def money(row: dict[str, Any]) -> dict[str, Any]:
    """Money rounded to 6 places (SQLite keeps floats), other values as they are."""
    return {k: round(v, 6) if isinstance(v, Decimal) else v for k, v in row.items()}


# -- hand-worked figures ----------------------------------------------------------------------------------

DAY_ROWS = [
    {
        "day": "2025-03-10",
        **measures(
            calls=2,
            iterations=3,
            compactions=1,
            input_tokens=21200,
            output_tokens=1800,
            cache_read_input_tokens=22000,
            cache_creation_input_tokens=3000,
            cache_creation_5m_input_tokens=2000,
            cache_creation_1h_input_tokens=1000,
            web_search_requests=2,
            cost_usd=D("0.0807"),
            cost_input_usd=D("0.0236"),
            cost_output_usd=D("0.017"),
            cost_cache_read_usd=D("0.0066"),
            cost_cache_write_5m_usd=D("0.0075"),
            cost_cache_write_1h_usd=D("0.006"),
            cost_server_tools_usd=D("0.02"),
            compaction_cost_usd=D("0.025"),
        ),
    },
    {
        "day": "2025-03-11",
        **measures(
            calls=1,
            iterations=1,
            input_tokens=4000,
            output_tokens=1000,
            cost_usd=D("0.009"),
            cost_input_usd=D("0.004"),
            cost_output_usd=D("0.005"),
        ),
    },
    # E failed without usage: a call and an error, nothing billed ($0, priced: it is not unpriced).
    {"day": "2025-03-12", **measures(calls=1, error_calls=1)},
    # D has no price: a row of its own, tokens counted, money unknown (None, never $0).
    {
        "day": "2025-03-12",
        **measures(
            calls=1,
            iterations=1,
            input_tokens=100,
            output_tokens=50,
            unpriced_calls=1,
            **dict.fromkeys([m for m in MEASURES if m.endswith("_usd")]),
        ),
    },
]

TOTALS = measures(
    calls=5,
    error_calls=1,
    iterations=5,
    compactions=1,
    input_tokens=25300,
    output_tokens=2850,
    cache_read_input_tokens=22000,
    cache_creation_input_tokens=3000,
    cache_creation_5m_input_tokens=2000,
    cache_creation_1h_input_tokens=1000,
    web_search_requests=2,
    cost_usd=D("0.0897"),
    unpriced_calls=1,
    cost_input_usd=D("0.0276"),
    cost_output_usd=D("0.022"),
    cost_cache_read_usd=D("0.0066"),
    cost_cache_write_5m_usd=D("0.0075"),
    cost_cache_write_1h_usd=D("0.006"),
    cost_server_tools_usd=D("0.02"),
    compaction_cost_usd=D("0.025"),
)


def test_cost_by_day_worked_by_hand(scenario_url: str) -> None:
    result = report(scenario_url)
    assert [money(r) for r in result.rows] == DAY_ROWS
    totals = dict(result.totals)
    share = totals.pop("compaction_share")
    assert money(totals) == TOTALS
    assert round(share, 9) == round(D("0.025") / D("0.0897"), 9)  # 0.278706800...
    # The cost split adds up to the cost.
    split = sum(TOTALS[k] for k in MEASURES if k.startswith("cost_") and k != "cost_usd")
    assert split == TOTALS["cost_usd"]
    assert result.warnings == [
        "1 call(s) could not be priced (model(s): mystery-1): their tokens are counted, their cost is not in "
        "the totals. Add the price to the file named by COMPACTOBS_PRICING_FILE, then run "
        "`compactobs reprice`."
    ]


def test_cost_by_model_prices_each_iteration_at_its_model(scenario_url: str) -> None:
    rows = [money(r) for r in report(scenario_url, by=("model",)).rows]
    assert rows == [
        # A, B's message (B's last iteration: B counts here, with its 2 web searches) and E (no iterations:
        # its requested model). 0.021 + 0.0147 + 0.02 = 0.0557.
        {
            "model": SONNET,
            **measures(
                calls=3,
                error_calls=1,
                iterations=2,
                input_tokens=1200,
                output_tokens=800,
                cache_read_input_tokens=22000,
                cache_creation_input_tokens=3000,
                cache_creation_5m_input_tokens=2000,
                cache_creation_1h_input_tokens=1000,
                web_search_requests=2,
                cost_usd=D("0.0557"),
                cost_input_usd=D("0.0036"),
                cost_output_usd=D("0.012"),
                cost_cache_read_usd=D("0.0066"),
                cost_cache_write_5m_usd=D("0.0075"),
                cost_cache_write_1h_usd=D("0.006"),
                cost_server_tools_usd=D("0.02"),
            ),
        },
        # B's compaction (not B's last iteration: no call counted for it) and C. 0.025 + 0.009 = 0.034.
        {
            "model": HAIKU,
            **measures(
                calls=1,
                iterations=2,
                compactions=1,
                input_tokens=24000,
                output_tokens=2000,
                cost_usd=D("0.034"),
                cost_input_usd=D("0.024"),
                cost_output_usd=D("0.01"),
                compaction_cost_usd=D("0.025"),
            ),
        },
        {
            "model": "mystery-1",
            **measures(
                calls=1,
                iterations=1,
                input_tokens=100,
                output_tokens=50,
                unpriced_calls=1,
                **dict.fromkeys([m for m in MEASURES if m.endswith("_usd")]),
            ),
        },
    ]


def test_cost_by_iteration_type(scenario_url: str) -> None:
    rows = {
        (r["iteration_type"], r["unpriced_calls"]): money(r)
        for r in report(scenario_url, by=("iteration-type",)).rows
    }
    assert set(rows) == {("message", 0), ("compaction", 0), (None, 0), ("message", 1)}
    # A, B's message (+ B's web searches), C: 0.021 + 0.0347 + 0.009 = 0.0647
    assert rows["message", 0]["calls"] == 3 and rows["message", 0]["cost_usd"] == D("0.0647")
    assert rows["compaction", 0]["calls"] == 0 and rows["compaction", 0]["iterations"] == 1
    assert rows["compaction", 0]["cost_usd"] == rows["compaction", 0]["compaction_cost_usd"] == D("0.025")
    assert rows[None, 0]["calls"] == 1 and rows[None, 0]["error_calls"] == 1  # E: no iterations
    assert rows["message", 1]["cost_usd"] is None and rows["message", 1]["input_tokens"] == 100


def test_cost_by_conversation_and_service(scenario_url: str) -> None:
    result = report(scenario_url, by=("conversation", "service"))
    got = [
        (r["conversation_id"], r["service"], r["calls"], r["cost_usd"] and round(r["cost_usd"], 6))
        for r in result.rows
    ]
    assert got == [
        ("c1", "api", 2, D("0.0807")),
        ("c2", "worker", 1, D("0.009")),
        (None, "api", 1, D(0)),
        ("c2", "worker", 1, None),
    ]


def test_cost_in_another_zone_moves_calls_between_days(scenario_url: str) -> None:
    # C started 2025-03-11 23:30 UTC = 2025-03-12 00:30 in Paris (UTC+1 until 30 March).
    result = report(scenario_url, tz="Europe/Paris")
    got = [(r["day"], r["calls"], r["cost_usd"] and round(r["cost_usd"], 6)) for r in result.rows]
    assert got == [("2025-03-10", 2, D("0.0807")), ("2025-03-12", 2, D("0.009")), ("2025-03-12", 1, None)]
    assert money(result.totals) == money(report(scenario_url).totals)
    assert result.header[0] == "all time · tz Europe/Paris"


def test_filters(scenario_url: str) -> None:
    assert report(scenario_url, models=("claude-haiku-*",)).totals["calls"] == 1  # C: haiku requested
    assert report(scenario_url, conversations=("c1",)).totals["cost_usd"] == pytest.approx(D("0.0807"))
    assert report(scenario_url, services=("worker",)).totals["calls"] == 2
    # An --until date is inclusive: the whole of the 11th (UTC).
    window = report(scenario_url, since="2025-03-11", until="2025-03-11")
    assert [r["day"] for r in window.rows] == ["2025-03-11"]


def test_compare_with_the_previous_period(scenario_url: str) -> None:
    # This period: the 11th and 12th (C, D, E): $0.009. The previous two days (9th, 10th): A, B: $0.0807.
    result = report(scenario_url, by=("service",), since="2025-03-11", until="2025-03-12", compare="prev")
    totals = result.totals
    assert round(totals["prev_cost_usd"], 6) == D("0.0807")
    assert round(totals["delta_cost_usd"], 6) == D("-0.0717")
    assert round(totals["delta_cost_pct"], 6) == round(D("-0.0717") / D("0.0807"), 6)  # -0.888476
    compare = result.extra["compare"]
    assert compare["since"] == datetime(2025, 3, 9, tzinfo=timezone.utc)
    assert compare["until"] == datetime(2025, 3, 11, tzinfo=timezone.utc)
    assert compare["totals"]["calls"] == 2
    rows = {(r["service"], r["cost_usd"] is None): r for r in result.rows}
    # worker: C $0.009 now, nothing before; api: E $0 now, A + B $0.0807 before.
    assert rows["worker", False]["prev_cost_usd"] == 0
    assert round(rows["api", False]["delta_cost_usd"], 6) == D("-0.0807")
    assert rows["worker", True]["prev_cost_usd"] is None  # unpriced: no delta
    # Without --until, the period ends now and the previous one is as long.
    now = datetime(2025, 3, 13, tzinfo=timezone.utc)
    open_ended = report(scenario_url, by=("service",), since="2025-03-11", compare="prev", now=now)
    assert round(open_ended.totals["delta_cost_usd"], 6) == D("-0.0717")


def test_compare_without_since_takes_the_last_7_days(scenario_url: str) -> None:
    # now 2025-03-13 00:00 UTC: this period is 2025-03-06 to 03-13, every call of the scenario ($0.0897);
    # the previous one, 2025-02-27 to 03-06, has none.
    now = datetime(2025, 3, 13, tzinfo=timezone.utc)
    result = report(scenario_url, compare="prev", now=now)
    assert result.extra["since"] == datetime(2025, 3, 6, tzinfo=timezone.utc)
    assert result.extra["compare"]["since"] == datetime(2025, 2, 27, tzinfo=timezone.utc)
    assert round(result.totals["cost_usd"], 6) == D("0.0897")
    assert result.totals["prev_cost_usd"] == 0
    assert round(result.totals["delta_cost_usd"], 6) == D("0.0897")


def test_compare_with_an_unknown_period(scenario_url: str) -> None:
    with pytest.raises(ReportInputError, match="cannot compare with 'last'"):
        report(scenario_url, since="7d", compare="last")


# -- invariants -------------------------------------------------------------------------------------------


def _sum_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for row in rows:
        for name in MEASURES:
            value = row[name]
            if value is not None:
                total[name] = total.get(name, 0) + value
    return total


@pytest.mark.parametrize(
    "by",
    [
        (),
        ("hour",),
        ("week",),
        ("month",),
        ("model",),
        ("conversation",),
        ("iteration-type",),
        ("day", "model"),
    ],
)
def test_groups_add_up_to_the_same_totals(scenario_url: str, by: tuple[str, ...]) -> None:
    result = report(scenario_url, by=by)
    summed = _sum_rows(result.rows)
    for name in MEASURES:
        assert round(summed.get(name, 0), 6) == round(TOTALS[name], 6), name
    totals = dict(result.totals)
    totals.pop("compaction_share")
    assert money(totals) == money(TOTALS)


def _spread(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`count` calls, one every 7 h 13 min from 2025-01-01 (across both 2025 DST changes), costs 1 ... n
    thousandths of a dollar, every 5th at haiku."""
    calls, iterations = [], []
    start = datetime(2025, 1, 1)
    for n in range(count):
        at = (start + n * timedelta(hours=7, minutes=13)).isoformat()
        model = HAIKU if n % 5 == 0 else SONNET
        cost = D(n + 1) / 1000
        calls.append(
            call_row(
                f"s{n}",
                at,
                conversation_id=f"k{n % 7}",
                response_model=model,
                input_tokens=n + 1,
                output_tokens=2 * n,
                cost_usd=cost,
                cost_input_usd=cost,
            )
        )
        iterations.append(
            iteration_row(
                f"s{n}",
                0,
                at,
                model=model,
                input_tokens=n + 1,
                output_tokens=2 * n,
                cost_usd=cost,
                cost_input_usd=cost,
            )
        )
    return calls, iterations


def test_days_add_up_to_months_and_zones_conserve_totals(database_url: str) -> None:
    store_rows(database_url, *_spread(1300))  # ~13 months
    utc = report(database_url, by=(), tz="UTC").totals
    n = 1300
    assert utc["calls"] == n and utc["input_tokens"] == n * (n + 1) // 2
    assert round(utc["cost_usd"], 6) == D(n * (n + 1) // 2) / 1000
    for tz in ("UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"):
        days = report(database_url, by=("day",), tz=tz)
        months = report(database_url, by=("month",), tz=tz)
        by_month: dict[str, dict[str, Any]] = {}
        for row in days.rows:
            month = by_month.setdefault(row["day"][:7], {})
            for name in ("calls", "input_tokens", "cost_usd"):
                month[name] = month.get(name, 0) + row[name]
        assert sorted(by_month) == [r["month"] for r in months.rows]
        for month_row in months.rows:
            summed = by_month[month_row["month"]]
            assert month_row["calls"] == summed["calls"]
            assert month_row["input_tokens"] == summed["input_tokens"]
            assert round(month_row["cost_usd"], 6) == round(summed["cost_usd"], 6)
        for result in (
            days,
            months,
            report(database_url, by=("hour",), tz=tz),
            report(database_url, by=("week",), tz=tz),
        ):
            assert result.totals["calls"] == n, tz
            assert round(result.totals["cost_usd"], 6) == round(utc["cost_usd"], 6), tz


def test_local_days_follow_daylight_saving_time(database_url: str) -> None:
    # Paris: UTC+1 until 2025-03-30 01:00 UTC, then UTC+2 until 2025-10-26 01:00 UTC.
    calls = [
        call_row("p1", "2025-03-29T23:30:00", cost_usd=D("0.001")),  # 00:30 on 30 March (UTC+1)
        call_row("p2", "2025-03-30T22:30:00", cost_usd=D("0.002")),  # 00:30 on 31 March (UTC+2 now)
        call_row("p3", "2025-10-25T21:30:00", cost_usd=D("0.004")),  # 23:30 on 25 Oct (UTC+2)
        call_row("p4", "2025-10-26T00:30:00", cost_usd=D("0.008")),  # 02:30 CEST, the first 02:00 hour
        call_row("p5", "2025-10-26T01:30:00", cost_usd=D("0.016")),  # 02:30 CET, the same hour again
        call_row("p6", "2025-10-26T23:30:00", cost_usd=D("0.032")),  # 00:30 on 27 Oct (UTC+1 again)
    ]
    store_rows(database_url, calls, [])
    days = report(database_url, by=("day",), tz="Europe/Paris")
    assert [(r["day"], r["calls"]) for r in days.rows] == [
        ("2025-03-30", 1),
        ("2025-03-31", 1),
        ("2025-10-25", 1),
        ("2025-10-26", 2),
        ("2025-10-27", 1),
    ]
    hours = report(database_url, by=("hour",), tz="Europe/Paris", since="2025-10-26", until="2025-10-26")
    # The wall-clock hour 02:00 happened twice: its two hours are one row.
    assert [(r["hour"], r["calls"]) for r in hours.rows] == [("2025-10-26 02:00", 2)]
    weeks = report(database_url, by=("week",), tz="Europe/Paris")
    # Weeks start on Monday: 30 March is a Sunday, 27 October (p6, 00:30 local) a Monday.
    assert [(r["week"], r["calls"]) for r in weeks.rows] == [
        ("2025-03-24", 1),
        ("2025-03-31", 1),
        ("2025-10-20", 3),
        ("2025-10-27", 1),
    ]


def test_empty_store(database_url: str) -> None:
    store.upgrade_database(database_url)
    result = report(database_url)
    assert result.rows == [] and result.totals["calls"] == 0 and result.totals["cost_usd"] == 0
    assert "No calls recorded in this window." in render(result, "table")
    document = json.loads(render(result, "json"))
    assert document["rows"] == [] and document["totals"]["calls"] == 0


def test_parse_by() -> None:
    assert parse_by(["day", "model", "day"]) == ("day", "model")
    assert parse_by(["Iteration_Type", "session"]) == ("iteration-type", "conversation")
    assert set(BY_CHOICES) == {
        "hour",
        "day",
        "week",
        "month",
        "model",
        "conversation",
        "service",
        "provider",
        "iteration-type",
    }
    with pytest.raises(ReportInputError, match="cannot group by 'colour'"):
        parse_by(["colour"])
    with pytest.raises(ReportInputError, match="one time unit at a time, not day and month"):
        parse_by(["day", "month"])


# -- exact output ------------------------------------------------------------------------------------------
# tests/golden/cost_by_day.{json,csv,md}: the figures of DAY_ROWS and TOTALS, checked line by line; money
# as numbers rounded to 6 places, the unpriced row with null money (an empty CSV cell, "unpriced" in
# Markdown), never $0.

GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.mark.parametrize("fmt", ["json", "csv", "md"])
def test_golden_output(scenario_url: str, fmt: str) -> None:
    result = report(scenario_url, since="2025-03-10", until="2025-03-12")
    assert render(result, fmt) == (GOLDEN / f"cost_by_day.{fmt}").read_text()


def test_table_output(scenario_url: str) -> None:
    text = render(report(scenario_url), "table", console_width=60)
    lines = text.splitlines()
    assert lines[0] == "Cost by day"
    # Right-aligned numbers with thousands separators, never cut even when the console is narrow.
    row = next(line for line in lines if line.strip().startswith("2025-03-10"))
    # cost $0.0807, of which $0.0250 in the compaction iteration: the top level says $0.0557.
    assert row.split() == [
        *["2025-03-10", "2", "0", "1", "21,200", "1,800", "22,000", "3,000"],
        *["$0.0807", "$0.0557", "$0.0250", "0"],
    ]
    header = next(line for line in lines if "cache read" in line and "calls" in line)
    assert header.index("input") + len("input") == row.index("21,200") + len("21,200")  # right-aligned
    total = next(line for line in lines if line.strip().startswith("Total") and "$0.0897" in line)
    assert "25,300" in total
    assert any(
        line.split()[:2] == ["2025-03-12", "(unpriced)"] and line.split()[-2:] == ["unpriced", "1"]
        for line in lines
    )
    assert "\x1b[" not in text  # plain unless asked for colour
    assert (
        "Top-level usage says $0.0647; billed $0.0897; $0.0250 hidden in compaction iterations "
        "(27.9% of the bill)." in lines
    )
    assert lines[-1].startswith("Warning: 1 call(s) could not be priced (model(s): mystery-1)")


# -- the command ---------------------------------------------------------------------------------------------


def test_cli_cost(scenario_url: str) -> None:
    code, out, err = run("--db", scenario_url, "report", "cost", "--format", "json", "--tz", "UTC")
    assert code == 0, err
    document = json.loads(out)
    assert document["report"] == "cost" and document["by"] == ["day"]
    assert [r["day"] for r in document["rows"]] == ["2025-03-10", "2025-03-11", "2025-03-12", "2025-03-12"]
    assert document["totals"]["cost_usd"] == 0.0897 and document["totals"]["unpriced_calls"] == 1
    code, out, _ = run(
        "--db",
        scenario_url,
        "report",
        "cost",
        "--by",
        "day",
        "--by",
        "model",
        "--format",
        "csv",
        "--tz",
        "UTC",
        "--since",
        "2025-03-10",
        "--until",
        "2025-03-10",
    )
    assert code == 0 and out.splitlines()[0].startswith("day,model,calls,")
    assert [line.split(",")[:3] for line in out.splitlines()[1:]] == [
        ["2025-03-10", SONNET, "2"],
        ["2025-03-10", HAIKU, "0"],
    ]
    code, out, _ = run(
        "--db", scenario_url, "report", "cost", "--by", "model,iteration-type", "--format", "md"
    )
    assert code == 0 and out.startswith("## Cost by model, iteration-type\n")
    code, out, _ = run(
        "--db",
        scenario_url,
        "report",
        "cost",
        "--by",
        "service",
        "--since",
        "2025-03-11",
        "--until",
        "2025-03-12",
        "--compare",
        "prev",
        "--tz",
        "UTC",
    )
    assert code == 0 and "Previous period: $0.0807; change -$0.0717 (-88.8%)." in out
    code, out, err = run("--db", scenario_url, "report", "cost", "--format", "csv")
    assert code == 0 and "Warning: 1 call(s) could not be priced" in err  # CSV keeps warnings off stdout
    # Plain output when NO_COLOR is set or stdout is not a terminal (CliRunner's is not).
    code, out, _ = run("--db", scenario_url, "report", "cost", env={"NO_COLOR": "1"})
    assert code == 0 and "\x1b[" not in out and "$0.0897" in out


def test_cli_empty_store(sqlite_url: str) -> None:
    code, _, _ = run("--db", sqlite_url, "db", "upgrade")  # an explicit path is not created by a report
    assert code == 0
    code, out, _ = run("--db", sqlite_url, "report", "cost")
    assert code == 0 and "No calls recorded in this window." in out
    code, out, _ = run("--db", sqlite_url, "report", "cost", "--format", "json")
    assert code == 0 and json.loads(out)["rows"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2025-13-01"], "Error: invalid date '2025-13-01': no such day"),
        (["--until", "last tuesday"], "Error: invalid date or time 'last tuesday': use YYYY-MM-DD"),
        (["--since", "2025-03-12", "--until", "2025-03-11"], "is not before --until"),
        (["--tz", "Mars/Olympus"], "Error: unknown time zone 'Mars/Olympus'"),
        (["--by", "colour"], "Error: cannot group by 'colour': use one of hour, day, week"),
        (["--by", "day", "--by", "week"], "Error: group by one time unit at a time, not day and week"),
        (["--format", "xml"], "Error: Invalid value for '--format': 'xml' is not one of"),
        (["--compare", "last", "--since", "7d"], "Error: cannot compare with 'last'"),
        (["--since"], "Error: Option '--since' requires an argument."),
        (["--bogus"], "Error: No such option '--bogus'."),
    ],
)
def test_cli_bad_input(sqlite_url: str, args: list[str], message: str) -> None:
    store.upgrade_database(sqlite_url)
    code, _, err = run("--db", sqlite_url, "report", "cost", *args)
    assert message in one_line_error(code, err)


def test_cli_bad_database() -> None:
    code, _, err = run("--db", "nosuchdb://x", "report", "cost")
    assert "Error: " in one_line_error(code, err)
    code, _, err = run("--db", "postgresql+psycopg://nobody@127.0.0.1:9/none", "report", "cost")
    assert "Error: " in one_line_error(code, err)
