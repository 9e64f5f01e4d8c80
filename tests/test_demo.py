"""`compactobs demo`, as a user runs it: the workload reaches the store whole, with what it claims to show."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from compactobs import store
from compactobs.demo import SERVICE_NAME, planned_calls
from compactobs.store import calls, iterations
from tests.cli import run

CONVERSATIONS_PER_RUN = 10


def rows(database_url: str, query: Any) -> list[Any]:
    engine = store.make_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(query))
    finally:
        engine.dispose()


def call_rows(database_url: str) -> list[Any]:
    return rows(database_url, select(calls))


def run_prefix(out: str) -> str:
    """The run's conversation prefix, from the line that names it."""
    (line,) = [line for line in out.splitlines() if line.startswith("Recorded ")]
    return line.rsplit("conversations ", 1)[1].rstrip("*")


def check_one_run(database_url: str, prefix: str) -> None:
    """Everything the demo claims for the run whose conversations start with `prefix`."""
    stored = [c for c in call_rows(database_url) if c.conversation_id.startswith(prefix)]
    assert len(stored) == planned_calls() == 45
    by_conversation: dict[str, list[Any]] = {}
    for call in stored:
        by_conversation.setdefault(call.conversation_id.removeprefix(prefix), []).append(call)
    assert len(by_conversation) == CONVERSATIONS_PER_RUN
    assert {c.service_name for c in stored} == {SERVICE_NAME}

    # a compaction loop: every turn after the first compacts
    loop = sorted(by_conversation["research-loop"], key=lambda c: c.start_ms)
    assert [c.compactions_count for c in loop] == [0, 1, 1, 1, 1, 1]
    assert loop[0].budget_usd == Decimal(2) and sum(c.cost_usd for c in loop) > 2

    # paused: stop_reason compaction, top level 0/0, the whole cost in the compaction; then the follow-up
    review = sorted(by_conversation["contract-review"], key=lambda c: c.start_ms)
    assert [c.stop_reason for c in review] == ["end_turn", "end_turn", "compaction", "end_turn", "end_turn"]
    paused = review[2]
    assert paused.compaction_pause_after is True and paused.top_level_input_tokens == 0
    assert paused.input_tokens == 110_000 and paused.cost_usd > 0

    # on demand: one call with compaction: summarize, billed though its top level says 0/0
    (on_demand,) = [c for c in stored if c.compaction_on_demand]
    assert on_demand.conversation_id == prefix + "on-demand-summary"
    assert on_demand.stop_reason == "compaction" and on_demand.stream is True
    assert (on_demand.top_level_input_tokens, on_demand.top_level_output_tokens) == (0, 0)
    assert on_demand.input_tokens > 0 and on_demand.cost_usd > 0

    # prompt caching: reads, and writes at both TTLs
    assert sum(c.cache_read_tokens or 0 for c in stored) > 0
    assert sum(c.cache_write_1h_tokens or 0 for c in by_conversation["support-agent"]) > 0
    assert sum(c.cache_write_5m_tokens or 0 for c in by_conversation["support-agent"]) > 0

    # the failed compaction is billed; retries, errors and the unpriced model are recorded as such
    assert sum(c.compactions_failed or 0 for c in by_conversation["nightly-digest"]) == 1
    assert sorted(c.attempts for c in stored if c.conversation_id.startswith(prefix + "triage-"))[-1] == 2
    error, retried = sorted(by_conversation["triage-overloaded"], key=lambda c: c.start_ms)
    assert (error.status, error.error_type, error.cost_usd) == ("ERROR", "529", None)
    assert retried.status != "ERROR" and retried.cost_usd > 0
    unpriced = by_conversation["preview-model"]
    assert all(c.priced is False and c.cost_usd is None and c.input_tokens > 0 for c in unpriced)
    assert {c.stream for c in stored} == {True, False}


def check_billed_totals(database_url: str) -> None:
    """The call's billed totals are the sums over its iterations, compaction entries included."""
    totals = (
        select(
            iterations.c.call_id,
            func.sum(iterations.c.input_tokens).label("input"),
            func.sum(iterations.c.output_tokens).label("output"),
            func.sum(iterations.c.cache_read_tokens).label("read"),
            func.sum(iterations.c.cost_usd).label("cost"),
            func.count().label("n"),
        )
        .group_by(iterations.c.call_id)
        .subquery()
    )
    joined = rows(
        database_url,
        select(calls, totals.c.input, totals.c.output, totals.c.read, totals.c.cost, totals.c.n).join(
            totals, totals.c.call_id == calls.c.call_id
        ),
    )
    assert len(joined) == len(call_rows(database_url)) - 2  # the error calls have no iterations
    for call in joined:
        assert (call.input, call.output, call.read, call.n) == (
            call.input_tokens,
            call.output_tokens,
            call.cache_read_tokens,
            call.iterations_count,
        )
        assert call.cost == call.cost_usd
    compacting = [c for c in joined if c.compactions_count]
    assert len(compacting) == 2 * 10  # two runs, 10 compactions each
    assert all(c.input_tokens > c.top_level_input_tokens for c in compacting)
    compaction_input = rows(
        database_url,
        select(func.sum(iterations.c.input_tokens)).where(iterations.c.type == "compaction"),
    )[0][0]
    billed_input = sum(c.input_tokens for c in joined)
    top_level_input = sum(c.top_level_input_tokens for c in joined)
    assert billed_input == top_level_input + compaction_input


def test_demo_on_sqlite_twice(sqlite_url: str, data_home: Path) -> None:
    code, out, err = run("--db", sqlite_url, "demo")
    assert code == 0, err
    assert f"Recording into {sqlite_url} as service.name=compactobs-demo" in out
    first = run_prefix(out)
    assert first.startswith("demo-") and "Recorded 45 calls in 10 conversations" in out
    check_one_run(sqlite_url, first)
    assert f"report anomalies --conversation '{first}*'" in out  # the reports ran on this run's calls
    # One 429 is queued for the three concurrent triage conversations: the one that met it says so.
    triage = [line.split() for line in out.splitlines() if line.lstrip().startswith(f"{first}triage-")]
    assert len(triage) == 4  # triage-1..3 and triage-overloaded
    (retried,) = [words[0] for words in triage if "429" in words]
    assert "(1 retry)" in " ".join(next(w for w in triage if w[0] == retried))
    attempts = {c.conversation_id: c.attempts for c in call_rows(sqlite_url) if c.attempts == 2}
    assert set(attempts) == {retried}

    # what the workload is built to show, the anomaly report finds
    code, out, err = run(
        "--db", sqlite_url, "report", "anomalies", "--format", "json", "--conversation", f"{first}*"
    )
    assert code == 0, err
    found = {
        (f["kind"], (f["conversation_id"] or "").removeprefix(first)) for f in json.loads(out)["findings"]
    }
    assert {
        ("compaction_loop", "research-loop"),
        ("budget_exceeded", "research-loop"),
        ("failed_compaction", "nightly-digest"),
        ("cache_miss_after_compaction", "nightly-digest"),
        ("unpriced_model", ""),
    } <= found

    # a second run adds its own conversations beside the first's
    code, out, err = run("--db", sqlite_url, "demo", "--no-reports")
    assert code == 0, err
    second = run_prefix(out)
    assert second != first
    check_one_run(sqlite_url, second)
    assert len(call_rows(sqlite_url)) == 2 * 45
    check_billed_totals(sqlite_url)


def test_demo_records_into_its_own_store_not_the_default(data_home: Path, tmp_path: Path) -> None:
    """Simulated costs never land in the user's store: not the embedded default, nor the one
    COMPACTOBS_DATABASE_URL names; the demo says where it records, and its headline."""
    users = f"sqlite:///{tmp_path / 'users.db'}"
    code, out, err = run("demo", "--no-reports", env={"COMPACTOBS_DATABASE_URL": users})
    assert code == 0, err
    own = f"sqlite:///{data_home / 'demo.db'}"
    assert f"Recording into {own} (the demo's own store; --db to record elsewhere)" in out
    assert len(call_rows(own)) == 45
    assert not (data_home / "compactobs.db").exists() and not (tmp_path / "users.db").exists()
    # The headline: what the top level says, the bill, and the compaction iterations' cost between them,
    # the last read here straight from the iterations table.
    line = next(line for line in out.splitlines() if line.startswith("Top-level usage says $"))
    top, billed, hidden = (Decimal(part.split("$")[1].split()[0].rstrip(";")) for part in line.split("; "))
    compaction = rows(
        own, select(func.sum(iterations.c.cost_usd)).where(iterations.c.type == "compaction")
    )[0][0]
    assert hidden == round(Decimal(str(compaction)), 4)
    assert abs(top + hidden - billed) <= Decimal("0.0001")  # each rounded to 4 places
    assert "hidden in compaction iterations" in line
    # `demo --db` records where it is told.
    there = f"sqlite:///{tmp_path / 'there.db'}"
    code, out, err = run("demo", "--no-reports", "--db", there)
    assert code == 0, err
    assert f"Recording into {there} as service.name" in out and len(call_rows(there)) == 45
    # It ends by saying how to look at its store in `serve`, with the --db that opens it.
    assert out.splitlines()[-1] == (
        f"To look at this store in a browser: compactobs --db '{there}' serve, then open http://127.0.0.1:8000/"
    )


def test_demo_on_postgres_needs_the_schema_first(postgres_url: str, data_home: Path) -> None:
    code, out, err = run("--db", postgres_url, "demo", "--no-reports")
    assert code == 2 and "Recording" not in out and "Recorded" not in out
    assert err.startswith("Error: ") and err.count("\n") == 1 and "db upgrade`" in err
    assert not (data_home / "spool").exists() or not any((data_home / "spool").rglob("*.*"))

    assert run("--db", postgres_url, "db", "upgrade")[0] == 0
    code, out, err = run("--db", postgres_url, "demo")
    assert code == 0, err
    check_one_run(postgres_url, run_prefix(out))
    assert len(call_rows(postgres_url)) == 45
