"""`report conversation ID`: the timeline with its running cost worked by hand, the context chart, and the
errors (unknown ID, bad flags) as one line with exit code 2, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from compactobs import store
from compactobs.reports.conversation import conversation_report, marks
from compactobs.reports.model import ReportInputError
from compactobs.reports.render import render
from compactobs.reports.render.conversation import context_chart
from compactobs.reports.times import build_filters
from tests.cli import one_line_error, run
from tests.reports.test_anomalies import (
    compacting,
    failed_call,
    iteration,
    plain,
    store_rows,
)


def _rows() -> list[dict[str, Any]]:
    return [
        plain("a1", 0, "t42", 60_000, cost_usd=Decimal("0.10"), iterations_count=1),
        compacting("a2", 1, "t42", 90_000, cost_usd=Decimal("0.50"), stop_reason="tool_use"),
        failed_call("a3", 2, 529, "t42"),
        # paused after compacting: no message iteration, so no context size of its own
        compacting(
            "a4",
            3,
            "t42",
            None,  # type: ignore[arg-type]
            cost_usd=Decimal("0.20"),
            compaction_pause_after=True,
            stop_reason="compaction",
            iterations_count=1,
        ),
        compacting(
            "a5",
            4,
            "t42",
            40_000,
            compactions_failed=1,
            compactions_count=2,
            cost_usd=Decimal("0.30"),
            iterations_count=3,
        ),
        plain(
            "a6",
            5,
            "t42",
            45_000,
            priced=False,
            request_model="claude-mystery",
            response_model="claude-mystery",
        ),
        plain("a7", 6, "t42", 47_000, cost_usd=Decimal("0.05")),
        # another conversation, never shown
        plain("z1", 0, "other", cost_usd=Decimal("9")),
    ]


def _report(url: str, conversation: str = "t42", since: str | None = None) -> Any:
    engine = store.open_database(url)
    try:
        return conversation_report(engine, build_filters(since, None, "UTC"), conversation)
    finally:
        engine.dispose()


def test_timeline_with_running_cost_by_hand(database_url: str) -> None:
    store_rows(database_url, _rows())
    report = _report(database_url)
    got = [
        (
            r["n"],
            r["call_id"],
            r["stop_reason"],
            r["iterations"],
            r["marks"],
            r["context_tokens"],
            r["context_share"],
            r["cost_usd"],
            r["cumulative_cost_usd"],
        )
        for r in report.rows
    ]
    assert got == [
        (1, "a1", "end_turn", 1, "", 60_000, 0.6, Decimal("0.1"), Decimal("0.1")),
        (2, "a2", "tool_use", 2, "C", 90_000, 0.9, Decimal("0.5"), Decimal("0.6")),  # 0.10 + 0.50
        (3, "a3", "error 529", None, "", None, None, None, Decimal("0.6")),  # failed: no cost
        (4, "a4", "compaction", 1, "CP", None, None, Decimal("0.2"), Decimal("0.8")),  # + 0.20
        (5, "a5", "end_turn", 3, "C2!", 40_000, 0.4, Decimal("0.3"), Decimal("1.1")),  # + 0.30
        (6, "a6", "end_turn", 1, "", 45_000, 0.45, None, Decimal("1.1")),  # unpriced: adds nothing
        (7, "a7", "end_turn", 1, "", 47_000, 0.47, Decimal("0.05"), Decimal("1.15")),  # + 0.05
    ]
    assert report.rows[0]["time"] == "2026-01-01 00:00:00"
    assert report.rows[0]["started_at"] == "2026-01-01T00:00:00.000+00:00"
    assert report.rows[5]["model"] == "claude-mystery"
    assert report.totals == {
        "calls": 7,
        "iterations": 9,  # 1 + 2 + 0 (the failed call) + 1 + 3 + 1 + 1
        "compactions": 4,
        "cost_usd": Decimal("1.15"),
        "cumulative_cost_usd": Decimal("1.15"),
        # No call here has iteration rows: each priced call's whole cost is of no known type.
        "message_cost_usd": Decimal(0),
        "compaction_cost_usd": Decimal(0),
        "advisor_cost_usd": Decimal(0),
        "fallback_cost_usd": Decimal(0),
        "other_cost_usd": Decimal("1.15"),
    }
    assert report.extra["failed_compactions"] == 1 and report.extra["unpriced_calls"] == 1
    assert report.warnings == ["1 unpriced call(s): their cost is unknown and left out of the running total"]


def test_cost_per_call_split_by_iteration_type_by_hand(database_url: str) -> None:
    """Each call's cost by the type of iteration it was billed as; the call's server tools on its last
    iteration, as `report cost --by iteration-type` counts them."""
    calls = [
        compacting("b1", 0, "t7", 60_000, cost_usd=Decimal("0.50")),
        plain(
            "b2", 1, "t7", cost_usd=Decimal("0.32"), cost_server_tools_usd=Decimal("0.02"), iterations_count=3
        ),
        plain("b3", 2, "t7", cost_usd=Decimal("0.40"), iterations_count=2),
        plain("b4", 3, "t7", cost_usd=Decimal("0.10"), iterations_count=2),
        plain("b5", 4, "t7", cost_usd=Decimal("0.06"), iterations_count=None),  # no iteration rows
        plain("b6", 5, "t7", priced=False, response_model="claude-mystery"),
    ]
    iterations = [
        iteration("b1", 0, "compaction", "0.30"),
        iteration("b1", 1, "message", "0.20"),
        iteration("b2", 0, "message", "0.10"),
        iteration("b2", 1, "advisor_message", "0.05"),
        iteration("b2", 2, "message", "0.15"),
        iteration("b3", 0, "message", "0", declined=True),
        iteration("b3", 1, "fallback_message", "0.40"),
        iteration("b4", 0, "web_thing", "0.07", known_type=False),
        iteration("b4", 1, "message", "0.03"),
        iteration("b6", 0, "message", None, model="claude-mystery"),
    ]
    store_rows(database_url, calls, iterations)
    report = _report(database_url, "t7")
    names = ("message_cost_usd", "compaction_cost_usd", "advisor_cost_usd", "fallback_cost_usd")
    got = {r["call_id"]: tuple(r[name] for name in (*names, "other_cost_usd")) for r in report.rows}
    d, zero = Decimal, Decimal(0)
    assert got == {
        "b1": (d("0.20"), d("0.30"), zero, zero, zero),
        # 0.10 + 0.15 + the server tools' 0.02 on the last iteration (a message) = 0.27
        "b2": (d("0.27"), zero, d("0.05"), zero, zero),
        "b3": (zero, zero, zero, d("0.40"), zero),  # the declined message billed $0
        "b4": (d("0.03"), zero, zero, zero, d("0.07")),  # a type compactobs does not know: other
        "b5": (zero, zero, zero, zero, d("0.06")),  # no iteration rows: the call's own cost
        "b6": (None, None, None, None, None),  # unpriced
    }
    assert report.totals is not None
    # message 0.20 + 0.27 + 0.03; compaction 0.30; advisor 0.05; fallback 0.40; other 0.07 + 0.06
    assert [report.totals[name] for name in (*names, "other_cost_usd")] == [
        d("0.50"),
        d("0.30"),
        d("0.05"),
        d("0.40"),
        d("0.13"),
    ]
    assert report.totals["cost_usd"] == d("1.38")  # 0.50 + 0.32 + 0.40 + 0.10 + 0.06: the parts' sum
    document = json.loads(render(report, "json"))
    assert document["rows"][1]["message_cost_usd"] == 0.27
    assert document["totals"]["other_cost_usd"] == 0.13


def test_window_and_zone(database_url: str) -> None:
    store_rows(database_url, _rows())
    engine = store.open_database(database_url)
    try:
        report = conversation_report(engine, build_filters("2026-01-01T09:04", None, "Asia/Tokyo"), "t42")
    finally:
        engine.dispose()
    assert [r["call_id"] for r in report.rows] == ["a5", "a6", "a7"]
    assert report.rows[0]["time"] == "2026-01-01 09:04:00"  # UTC+9
    assert report.rows[-1]["cumulative_cost_usd"] == Decimal("0.35")  # the window's own running total
    empty = _report(database_url, since="2026-02-01")
    assert empty.rows == [] and empty.totals is None


def test_unknown_conversation(database_url: str) -> None:
    store_rows(database_url, _rows())
    with pytest.raises(ReportInputError, match="unknown conversation 'nope'"):
        _report(database_url, "nope")


def test_marks() -> None:
    assert marks(0, 0, False) == "" and marks(None, None, False) == ""
    assert marks(1, 0, False) == "C" and marks(3, 1, False) == "C3!" and marks(1, 0, True) == "CP"


def test_context_chart_plain() -> None:
    rows = [
        {
            "n": 1,
            "context_tokens": 50_000,
            "trigger_tokens": 100_000,
            "marks": "",
            "compactions": 0,
            "stop_reason": "end_turn",
        },
        {
            "n": 2,
            "context_tokens": 100_000,
            "trigger_tokens": 100_000,
            "marks": "C",
            "compactions": 1,
            "stop_reason": "x",
        },
        {
            "n": 3,
            "context_tokens": None,
            "trigger_tokens": None,
            "marks": "",
            "compactions": 0,
            "stop_reason": "error 529",
        },
    ]
    # label width 2, values up to 7 characters ("100,000"): bar = 40 - 2 - 7 - 10 = 21 cells, full scale
    # 100,000 tokens; the trigger is the 21st cell; 50,000 fills round(10.5) = 10 cells
    assert context_chart(rows, 40).splitlines() == [
        "Context after each call (tokens; | = trigger 100,000 tokens; marks as in the table)",
        "#1 " + "#" * 10 + " " * 10 + "|  50,000",
        "#2 " + "#" * 20 + "| 100,000 C",
        "#3 " + " " * 21 + "       - error",
    ]


def test_context_chart_merges_long_conversations() -> None:
    rows = [
        {
            "n": i,
            "context_tokens": 1000 * i,
            "trigger_tokens": 500_000,
            "marks": "C" if i == 7 else "",
            "compactions": 1 if i == 7 else 0,
            "stop_reason": "end_turn",
        }
        for i in range(1, 301)
    ]
    lines = context_chart(rows, 80).splitlines()
    assert len(lines) == 1 + 100  # 300 calls, 3 per line
    assert lines[1].startswith("    #1-3 ") and lines[1].endswith(" 3,000")
    assert lines[3].startswith("    #7-9 ") and lines[3].endswith(" 9,000 C")


def test_cli_table_is_plain_when_not_a_terminal(database_url: str) -> None:
    store_rows(database_url, _rows())
    code, out, _ = run("--db", database_url, "report", "conversation", "t42", "--tz", "UTC")
    assert code == 0
    assert "Conversation t42" in out and "$1.1500" in out and "unpriced" in out
    assert "C2!" in out
    assert "Context after each call" not in out  # a chart is for a terminal (tests/reports/test_terminal.py)
    assert "\x1b[" not in out and "█" not in out
    code, colored, _ = run("--db", database_url, "report", "conversation", "t42", env={"NO_COLOR": "1"})
    assert "\x1b[" not in colored


def test_cli_json_csv_md(database_url: str) -> None:
    store_rows(database_url, _rows())
    code, out, _ = run(
        "--db", database_url, "report", "conversation", "t42", "--format", "json", "--tz", "UTC"
    )
    assert code == 0
    document = json.loads(out)
    assert document["report"] == "conversation" and document["conversation_id"] == "t42"
    assert [r["cumulative_cost_usd"] for r in document["rows"]] == [0.1, 0.6, 0.6, 0.8, 1.1, 1.1, 1.15]
    assert document["totals"]["cost_usd"] == 1.15
    code, out, err = run(
        "--db", database_url, "report", "conversation", "t42", "--format", "csv", "--tz", "UTC"
    )
    lines = out.splitlines()
    assert lines[0].startswith("n,time,started_at,call_id,model,stop_reason,iterations,compactions,marks")
    assert lines[5].startswith("5,2026-01-01 00:04:00,2026-01-01T00:04:00.000+00:00,a5,")
    # ... cost, cumulative, then by iteration type: a5 has no iteration rows, so its 0.3 is "other"
    assert lines[5].endswith(",C2!,40000,100000,0.4,0.3,1.1,0.0,0.0,0.0,0.0,0.3")
    assert "Warning: 1 unpriced call(s)" in err
    code, out, _ = run("--db", database_url, "report", "conversation", "t42", "--format", "md")
    assert "## Conversation t42" in out and "Context after each call" not in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("nope",), "unknown conversation 'nope'"),
        ((), "Missing argument 'ID'"),
        (("t42", "--since", "last tuesday"), "invalid date or time 'last tuesday'"),
        (("t42", "--tz", "Atlantis"), "unknown time zone 'Atlantis'"),
        (("t42", "--format", "html"), "'html' is not one of"),
        (("t42", "t43"), "Got unexpected extra argument (t43)"),
    ],
)
def test_cli_bad_input_is_one_line(sqlite_url: str, args: tuple[str, ...], expected: str) -> None:
    store_rows(sqlite_url, _rows())
    code, _, err = run("--db", sqlite_url, "report", "conversation", *args)
    assert expected in one_line_error(code, err)


def test_context_chart_in_colour() -> None:
    rows = [
        {
            "n": 1,
            "context_tokens": 50_000,
            "trigger_tokens": 100_000,
            "marks": "",
            "compactions": 0,
            "stop_reason": "x",
        },
        {
            "n": 2,
            "context_tokens": 85_000,
            "trigger_tokens": 100_000,
            "marks": "C",
            "compactions": 1,
            "stop_reason": "x",
        },
    ]
    text = context_chart(rows, 60, color=True)
    assert "\x1b[32m█" in text  # 50%: green
    assert "\x1b[33m█" in text  # 85%, at or over 80% of the trigger: yellow
    assert "│" in text and "##" not in text  # block bars, not the plain "#"
