"""Rollups (compactobs.reports.sources.sql.rollup): the triggers mark what they must, and a report answered
from the rollups equals the same report read from raw rows, whatever state the rollups are in.

Equivalence is checked three ways on random stores, on SQLite and PostgreSQL: rollups refreshed, rollups
stale (rows added after the last refresh, some of them out of order, read as marked slots), and no rollups
at all (every row raw). The figures themselves are worked by hand in test_reports_cost and
test_reports_cache, which now run through the rollups too.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from compactobs import store
from compactobs.reports.cache import cache_report
from compactobs.reports.cost import cost_report
from compactobs.reports.sources.sql import rollup
from compactobs.reports.times import build_filters
from tests.reports.test_cost import call_row, iteration_row, ms, store_rows

D = Decimal
SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
MYSTERY = "claude-mystery-9"  # unpriced
NOW = datetime(2025, 6, 20, tzinfo=timezone.utc)


def slot(at: str) -> int:
    """The 15-minute slot of an ISO UTC time, worked out by hand by the caller (e.g. 09:07 -> 09:00)."""
    return ms(at)


def marked(url: str) -> set[int]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            return set(connection.scalars(select(store.rollup_dirty.c.slot_ms)))
    finally:
        engine.dispose()


def calls_and_cost(url: str) -> tuple[int, Decimal]:
    """The store's calls and cost in all, by `report cost` (which refreshes the rollups first)."""
    engine = store.make_engine(url, create=False)
    try:
        totals = cost_report(engine, build_filters(None, None, "UTC"), by=()).totals
    finally:
        engine.dispose()
    return totals["calls"], totals["cost_usd"]


def refresh(url: str) -> rollup.RefreshResult:
    engine = store.make_engine(url, create=False)
    try:
        return rollup.refresh(engine)
    finally:
        engine.dispose()


# -- the triggers ------------------------------------------------------------------------------------------


def test_triggers_mark_the_slot_and_the_conversations_previous_call(database_url: str) -> None:
    store_rows(
        database_url,
        [
            call_row("a1", "2025-06-01T09:07:00", conversation_id="k"),
            call_row("a2", "2025-06-01T11:59:59", conversation_id="k"),
            call_row("b1", "2025-06-01T10:20:00", conversation_id="other"),
        ],
        [iteration_row("a1", 0, "2025-06-01T09:07:00")],
    )
    # 09:07 -> 09:00, 11:59:59 -> 11:45, 10:20 -> 10:15.
    assert marked(database_url) == {
        slot("2025-06-01T09:00:00"),
        slot("2025-06-01T11:45:00"),
        slot("2025-06-01T10:15:00"),
    }
    assert refresh(database_url).slots == 3
    assert marked(database_url) == set()

    # A call arriving late, between a1 and a2: its slot (10:30 -> 10:30) and a1's (its next call changed,
    # 09:00); not a2's, nor b1's (another conversation).
    store_rows(database_url, [call_row("a3", "2025-06-01T10:30:00", conversation_id="k")], [])
    assert marked(database_url) == {slot("2025-06-01T10:30:00"), slot("2025-06-01T09:00:00")}
    refresh(database_url)

    # An iteration arriving after its call marks the call's slot (start 11:59:59 -> 11:45), not the
    # iteration's own time.
    store_rows(database_url, [], [iteration_row("a2", 0, "2025-06-01T11:59:59")])
    assert marked(database_url) == {slot("2025-06-01T11:45:00")}
    refresh(database_url)

    # A reprice (an UPDATE of costs) marks the call's slot.
    engine = store.make_engine(database_url, writer=True)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(store.calls).where(store.calls.c.call_id == "b1").values(cost_usd=D("0.5"))
            )
    finally:
        engine.dispose()
    assert marked(database_url) == {slot("2025-06-01T10:15:00")}


def test_upgrading_marks_the_stored_calls(database_url: str) -> None:
    engine = store.make_engine(database_url, writer=True)
    try:
        store.upgrade(engine, "0001")
        with engine.begin() as connection:
            connection.execute(
                store.calls.insert(),
                [
                    {
                        k: float(v) if isinstance(v, Decimal) and engine.dialect.name == "sqlite" else v
                        for k, v in call_row("c1", "2025-06-01T00:14:59", cost_usd=D("1.25")).items()
                    }
                ],
            )
        store.upgrade(engine)
    finally:
        engine.dispose()
    assert marked(database_url) == {slot("2025-06-01T00:00:00")}
    assert calls_and_cost(database_url) == (1, D("1.25"))
    assert marked(database_url) == set()


def test_deleting_or_moving_a_call_marks_its_conversations_neighbours(database_url: str) -> None:
    store_rows(
        database_url,
        [
            call_row("a1", "2025-06-01T09:07:00", conversation_id="k"),
            call_row("a2", "2025-06-01T10:40:00", conversation_id="k"),
            call_row("a3", "2025-06-01T12:01:00", conversation_id="k"),
        ],
        [],
    )
    refresh(database_url)
    engine = store.make_engine(database_url, writer=True)
    try:
        # Deleting a2 (10:40 -> 10:30) marks its slot and its predecessor a1's (09:07 -> 09:00), whose next
        # call is now a3.
        with engine.begin() as connection:
            connection.execute(store.calls.delete().where(store.calls.c.call_id == "a2"))
        assert marked(database_url) == {slot("2025-06-01T10:30:00"), slot("2025-06-01T09:00:00")}
        refresh(database_url)
        # Moving a3 from 12:01 to 08:50 (before a1): its old slot (12:00), its new one (08:45), its old
        # predecessor a1 (09:00); at 08:50 it has no predecessor.
        with engine.begin() as connection:
            connection.execute(
                update(store.calls)
                .where(store.calls.c.call_id == "a3")
                .values(
                    start_ms=ms("2025-06-01T08:50:00"),
                    start_time=datetime(2025, 6, 1, 8, 50, tzinfo=timezone.utc),
                )
            )
        assert marked(database_url) == {
            slot("2025-06-01T12:00:00"),
            slot("2025-06-01T08:45:00"),
            slot("2025-06-01T09:00:00"),
        }
    finally:
        engine.dispose()


def test_sqlite_insert_work_does_not_grow_with_the_conversation(tmp_path: Any) -> None:
    """The predecessor lookup is an index seek: an insert into a conversation of 2,000 calls runs as many
    SQLite VM instructions as one into a conversation of 10 (0002's `max()` walked every earlier call)."""
    url = f"sqlite:///{tmp_path / 'long.db'}"
    start = datetime(2025, 6, 1, tzinfo=timezone.utc)

    def at(i: int) -> str:
        return (start + timedelta(seconds=i)).isoformat()[:19]

    store_rows(
        url,
        [call_row(f"s{i}", at(i), conversation_id="short") for i in range(10)]
        + [call_row(f"l{i}", at(i), conversation_id="long") for i in range(2000)],
        [],
    )
    engine = store.make_engine(url, writer=True)
    try:

        def instructions_to_insert(row: dict[str, Any]) -> int:
            steps = 0

            def count() -> int:
                nonlocal steps
                steps += 1
                return 0

            with engine.begin() as connection:
                raw = connection.connection.driver_connection
                raw.set_progress_handler(count, 10)
                try:
                    connection.execute(store.calls.insert(), [{**row, "cost_usd": 0.0}])
                finally:
                    raw.set_progress_handler(None, 10)
            return steps

        short = instructions_to_insert(call_row("s-new", at(5000), conversation_id="short"))
        long = instructions_to_insert(call_row("l-new", at(5000), conversation_id="long"))
    finally:
        engine.dispose()
    # A scan of the long conversation would be 2,000 index entries, thousands of instructions more.
    assert short > 0 and long <= short + 5


# -- open writes: their waste is judged at the report's clock ------------------------------------------


def test_waste_of_a_last_call_is_judged_at_the_reports_clock(database_url: str) -> None:
    # One conversation, one call that wrote 1,000 tokens to the 5-minute cache and ended at 09:00:02.
    store_rows(
        database_url,
        [call_row("w", "2025-06-01T09:00:00", conversation_id="k", cache_write_5m_tokens=1000)],
        [iteration_row("w", 0, "2025-06-01T09:00:00", cache_write_5m_tokens=1000)],
    )
    engine = store.make_engine(database_url, create=False)
    try:
        filters = build_filters(None, None, "UTC")
        # 4 minutes after: within the TTL, not wasted yet; 6 minutes after: wasted.
        early = cache_report(engine, filters, by=(), now=datetime(2025, 6, 1, 9, 4, tzinfo=timezone.utc))
        late = cache_report(engine, filters, by=(), now=datetime(2025, 6, 1, 9, 6, tzinfo=timezone.utc))
        with engine.connect() as connection:
            open_calls = connection.scalars(select(store.rollup_open_calls.c.call_id)).all()
            cache_rows = connection.scalar(
                select(func.count()).select_from(store.rollups).where(store.rollups.c.level == "cache")
            )
    finally:
        engine.dispose()
    assert open_calls == ["w"] and cache_rows == 0  # read from calls, not rolled up
    assert early.totals["wasted_5m_write_tokens"] == 0
    assert late.totals["wasted_5m_write_tokens"] == 1000
    assert (
        early.totals["cache_creation_5m_input_tokens"]
        == late.totals["cache_creation_5m_input_tokens"]
        == 1000
    )


# -- equivalence with raw rows -----------------------------------------------------------------------------


def random_store(seed: int, count: int, first: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`count` calls over 3 days from 2025-06-10 at random times, in 12 conversations (and some without),
    two services, three models (one unpriced), errors without usage, compactions at another model, and
    cache reads and writes (5m, 1h) spaced so that some are read back in time and some are not."""
    rng = random.Random(seed)
    calls, iterations = [], []
    origin = datetime(2025, 6, 10)
    for n in range(first, first + count):
        at = (origin + timedelta(seconds=rng.randrange(3 * 86400))).isoformat()
        call_id = f"r{n}"
        model = rng.choice([SONNET, SONNET, HAIKU, MYSTERY])
        priced = model != MYSTERY
        conversation = rng.choice([None, *(f"k{i}" for i in range(12))])
        service = rng.choice(["api", "batch"])
        if rng.random() < 0.08:
            calls.append(
                call_row(
                    call_id,
                    at,
                    conversation_id=conversation,
                    service_name=service,
                    request_model=model,
                    response_model=None,
                    status="ERROR",
                    iterations_count=None,
                    input_tokens=None,
                    output_tokens=None,
                    priced=None,
                    cost_server_tools_usd=None,
                )
            )
            continue
        steps: list[dict[str, Any]] = []
        if rng.random() < 0.25:
            steps.append({"type": "compaction", "model": HAIKU})
        steps.append({"type": "message", "model": model})
        totals: dict[str, Any] = dict.fromkeys(
            (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_5m_tokens",
                "cache_write_1h_tokens",
            ),
            0,
        )
        costs = dict.fromkeys(
            (
                "cost_input_usd",
                "cost_output_usd",
                "cost_cache_read_usd",
                "cost_cache_write_5m_usd",
                "cost_cache_write_1h_usd",
            ),
            D(0),
        )
        for idx, step in enumerate(steps):
            tokens = {
                "input_tokens": rng.choice([0, rng.randrange(1, 50_000)]),
                "output_tokens": rng.randrange(0, 4_000),
                "cache_read_tokens": rng.choice([0, rng.randrange(1, 80_000)]),
                "cache_write_5m_tokens": rng.choice([0, 0, rng.randrange(1, 20_000)]),
                "cache_write_1h_tokens": rng.choice([0, 0, 0, rng.randrange(1, 20_000)]),
            }
            rate = D(3) if step["model"] == SONNET else D(1)
            money = {
                "cost_input_usd": tokens["input_tokens"] * rate / 1_000_000,
                "cost_output_usd": tokens["output_tokens"] * rate * 5 / 1_000_000,
                "cost_cache_read_usd": tokens["cache_read_tokens"] * rate / 10 / 1_000_000,
                "cost_cache_write_5m_usd": tokens["cache_write_5m_tokens"] * rate * D("1.25") / 1_000_000,
                "cost_cache_write_1h_usd": tokens["cache_write_1h_tokens"] * rate * 2 / 1_000_000,
            }
            step_priced = priced or step["model"] != model
            iterations.append(
                iteration_row(
                    call_id,
                    idx,
                    at,
                    type=step["type"],
                    model=step["model"],
                    priced=step_priced,
                    cost_usd=sum(money.values()) if step_priced else None,
                    **tokens,
                    **(money if step_priced else dict.fromkeys(money)),
                )
            )
            for name in totals:
                totals[name] += tokens[name]
            for name in costs:
                costs[name] += money[name]
        web = rng.choice([0, 0, 2])
        server = D(web) * D("0.01")
        calls.append(
            call_row(
                call_id,
                at,
                conversation_id=conversation,
                service_name=service,
                request_model=model,
                response_model=model,
                iterations_count=len(steps),
                compactions_count=len(steps) - 1,
                web_search_requests=web,
                priced=priced,
                cost_usd=(sum(costs.values()) + server) if priced else None,
                cost_server_tools_usd=server if priced else None,
                **totals,
                **(costs if priced else dict.fromkeys(costs)),
            )
        )
    return calls, iterations


def _normal(value: Any, sqlite: bool) -> Any:
    # SQLite sums money as floats: the rollups add partial sums, raw rows add row by row, so the last bits
    # differ. PostgreSQL's NUMERIC is exact: compared exactly.
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal) and sqlite:
        return round(value, 9)
    return value


def _figures(report: Any, sqlite: bool) -> tuple[Any, ...]:
    rows = [{k: _normal(v, sqlite) for k, v in row.items()} for row in report.rows]
    rows.sort(key=lambda row: repr(sorted((k, str(v)) for k, v in row.items())))
    totals = {k: _normal(v, sqlite) for k, v in report.totals.items()}
    return rows, totals, report.warnings


WINDOWS = [
    (None, None),
    ("2025-06-10T13:07:11", "2025-06-12T05:52:00"),  # edges inside slots: read raw
    ("2025-06-11", "2025-06-12"),  # whole slots only
]
GROUPINGS = [(), ("day",), ("hour", "service"), ("model",), ("iteration-type", "week"), ("month", "model")]


def _chosen(window: int, case: int, seed: int) -> bool:
    """Whether a seed's test reads a (window, case) pair: the two seeds split the pairs between them (each
    pair is read by one seed, on each database), and each seed reads every case in some window and every
    window with some case. A case is a grouping of GROUPINGS (cost and cache by it), or, last, the
    model and service filters."""
    return (window + case + seed) % 2 == 0


def _reports(url: str, tz: str, seed: int) -> list[tuple[Any, ...]]:
    sqlite = url.startswith("sqlite")
    engine = store.make_engine(url, create=False)
    results = []
    try:
        for w, (since, until) in enumerate(WINDOWS):
            filters = build_filters(since, until, tz, now=NOW)
            for k, by in enumerate(GROUPINGS):
                if _chosen(w, k, seed):
                    results.append(_figures(cost_report(engine, filters, by=by), sqlite))
                    results.append(_figures(cache_report(engine, filters, by=by, now=NOW), sqlite))
            if _chosen(w, len(GROUPINGS), seed):
                models = build_filters(
                    since, until, tz, models=("claude-s*", MYSTERY), services=("api",), now=NOW
                )
                results.append(_figures(cost_report(engine, models, by=("day", "model")), sqlite))
                results.append(_figures(cache_report(engine, models, by=("model",), now=NOW), sqlite))
    finally:
        engine.dispose()
    return results


def test_the_seeds_split_the_pairs_between_them() -> None:
    """The sampling of the equivalence test below: seeds 1 and 2 read every (window, case) pair once."""
    cases = range(len(GROUPINGS) + 1)
    for w in range(len(WINDOWS)):
        for k in cases:
            assert _chosen(w, k, 1) != _chosen(w, k, 2), (w, k)
    for seed in (1, 2):
        assert all(any(_chosen(w, k, seed) for w in range(len(WINDOWS))) for k in cases)
        assert all(any(_chosen(w, k, seed) for k in cases) for w in range(len(WINDOWS)))


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_answer_what_raw_rows_answer(
    database_url: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each seed reads its half of the (window, case) pairs (`_chosen`), three ways: stale, raw, fresh."""
    store_rows(database_url, *random_store(seed, 400))
    refresh(database_url)
    # Rows added since the refresh, interleaved in time with the first ones: their slots (and their
    # predecessors') are marked and read raw until the next refresh.
    store_rows(database_url, *random_store(seed + 100, 60, first=400))
    tz = "Asia/Kolkata" if seed % 2 else "Europe/Paris"  # a half-hour offset; a DST zone

    with monkeypatch.context() as patch:
        patch.setattr(rollup, "try_refresh", lambda engine: None)
        assert marked(database_url)
        stale = _reports(database_url, tz, seed)
        assert marked(database_url)
    with monkeypatch.context() as patch:
        patch.setattr(rollup, "plan", lambda *args: None)
        patch.setattr(rollup, "try_refresh", lambda engine: None)
        raw = _reports(database_url, tz, seed)
        engine = store.make_engine(database_url, create=False)
        try:
            everything = build_filters(None, None, tz, now=NOW)
            totals = cost_report(engine, everything, by=()).totals
            cache_totals = cache_report(engine, everything, by=(), now=NOW).totals
        finally:
            engine.dispose()
    fresh = _reports(database_url, tz, seed)
    assert not marked(database_url)

    assert len(raw) == len(stale) == len(fresh) > 0
    for index, (expected, from_stale, from_fresh) in enumerate(zip(raw, stale, fresh, strict=True)):
        assert from_fresh == expected, index
        assert from_stale == expected, index
    # The data is what it claims: unpriced calls, compactions and wasted writes all occur.
    assert totals["unpriced_calls"] > 0 and totals["compactions"] > 0 and totals["error_calls"] > 0
    assert cache_totals["wasted_write_calls"] > 0 and cache_totals["saved_usd"] > 0


def test_rollups_are_used(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard for the test above: with the rollups refreshed, a report over whole slots reads no call row."""
    store_rows(database_url, *random_store(3, 100))
    refresh(database_url)
    seen: list[Any] = []
    original = rollup.read

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(rollup, "read", spy)
    engine = store.make_engine(database_url, create=False)
    try:
        filters = build_filters("2025-06-11", "2025-06-12", "UTC", now=NOW)
        with engine.connect() as connection:
            split = rollup.plan(connection, filters)
        assert split is not None and split.raw_condition is None
        cost_report(engine, filters, by=("day",))
        cost_report(engine, filters, by=("model",))
        cache_report(engine, filters, by=("model",), now=NOW)
    finally:
        engine.dispose()
    assert seen[:1] == ["call"] and "iteration" in seen and "cache" in seen


def test_refreshing_while_calls_arrive_loses_no_call(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer commits batches while refreshes run: once both are done, the rollups equal raw rows (a mark
    committed during a refresh is kept for the next one, never deleted unseen)."""
    store_rows(database_url, [], [])
    batches = [random_store(10 + n, 40, first=1000 * n) for n in range(8)]
    engine = store.make_engine(database_url, writer=True)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for call_rows, iteration_rows in batches:
                sqlite = engine.dialect.name == "sqlite"
                with engine.begin() as connection:
                    for table, rows in ((store.calls, call_rows), (store.iterations, iteration_rows)):
                        connection.execute(
                            table.insert(),
                            [
                                {
                                    column.name: float(v) if sqlite and isinstance(v, Decimal) else v
                                    for column in table.columns
                                    for v in [row.get(column.name)]
                                }
                                for row in rows
                            ],
                        )
        except BaseException as err:
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    refreshes = 0
    while writer.is_alive() or refreshes < 2:
        refresh(database_url)
        refreshes += 1
    writer.join()
    engine.dispose()
    assert errors == []
    refresh(database_url)
    assert not marked(database_url)

    sqlite = database_url.startswith("sqlite")
    reader = store.make_engine(database_url, create=False)
    try:
        filters = build_filters(None, None, "UTC", now=NOW)
        fresh = [_figures(cost_report(reader, filters, by=("day", "model")), sqlite)]
        fresh.append(_figures(cache_report(reader, filters, by=("hour",), now=NOW), sqlite))
        with monkeypatch.context() as patch:
            patch.setattr(rollup, "plan", lambda *args: None)
            raw = [_figures(cost_report(reader, filters, by=("day", "model")), sqlite)]
            raw.append(_figures(cache_report(reader, filters, by=("hour",), now=NOW), sqlite))
    finally:
        reader.dispose()
    assert raw[0][1]["calls"] == 8 * 40
    assert fresh == raw


def test_a_call_committed_during_a_refresh_stays_marked(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL lets writers commit while a refresh runs. A call committed into a slot after the refresh
    read that slot's marks keeps its own mark, so the next refresh counts it."""
    store_rows(postgres_url, [call_row("first", "2025-06-01T09:01:00", cost_usd=D("1"))], [])
    other = store.make_engine(postgres_url)
    original = rollup._level_statements

    def statements_then_a_concurrent_commit() -> list[Any]:
        with other.begin() as connection:
            connection.execute(
                store.calls.insert(), [call_row("second", "2025-06-01T09:02:00", cost_usd=D("2"))]
            )
        return original()

    try:
        with monkeypatch.context() as patch:
            patch.setattr(rollup, "_level_statements", statements_then_a_concurrent_commit)
            refresh(postgres_url)
    finally:
        other.dispose()
    # 09:01 and 09:02 -> the 09:00 slot, marked again by the second call's transaction.
    assert marked(postgres_url) == {slot("2025-06-01T09:00:00")}
    assert calls_and_cost(postgres_url) == (2, D("3"))


def test_a_report_answers_when_the_rollups_cannot_be_refreshed(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A user who may only read (or a database locked for writing): the report reads the marked slots from
    `calls`, says so once in the log, and its figures are the same."""
    store_rows(database_url, [call_row("a", "2025-06-01T09:00:00", cost_usd=D("1.5"))], [])
    refresh(database_url)
    store_rows(database_url, [call_row("b", "2025-06-01T09:20:00", cost_usd=D("2.25"))], [])

    def refuse(*args: Any) -> int:
        raise OperationalError("DELETE FROM rollups", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(rollup, "_refresh_range", refuse)
    with caplog.at_level("WARNING", logger="compactobs.reports.sources.sql.rollup"):
        assert calls_and_cost(database_url) == (2, D("3.75"))  # 1.5 + 2.25, b read raw
    assert marked(database_url) == {slot("2025-06-01T09:15:00")}  # 09:20 -> 09:15, still to do
    assert "rollups not refreshed" in caplog.text


def test_a_zone_off_the_quarter_hour_reads_raw_rows(database_url: str) -> None:
    """Liberia was UTC-0:44:30 until 1972: its local days did not start on a 15-minute slot, so a day report
    in that zone must not read slots. A call at 1970-01-02 00:44:45 UTC is 00:00:15 local, on 1970-01-02,
    while its slot (from 00:30 UTC, 23:45:30 local) starts on 1970-01-01."""
    store_rows(database_url, [call_row("liberia", "1970-01-02T00:44:45", cost_usd=D("1"))], [])
    refresh(database_url)
    engine = store.make_engine(database_url, create=False)
    try:
        days = cost_report(engine, build_filters(None, None, "Africa/Monrovia"), by=("day",))
        utc_days = cost_report(engine, build_filters(None, None, "UTC"), by=("day",))
    finally:
        engine.dispose()
    assert [(row["day"], row["calls"]) for row in days.rows] == [("1970-01-02", 1)]
    assert [(row["day"], row["calls"]) for row in utc_days.rows] == [("1970-01-02", 1)]


def test_a_refresh_during_a_report_moves_no_call_between_its_parts(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: between the report's raw query and its rollup query, another process records the next
    call of a conversation and refreshes the slot, so a call read raw as an open write is now in the
    rollups. The report reads one snapshot: it counts that call once, and not the call recorded after
    it began."""
    store_rows(
        postgres_url,
        [call_row("x", "2025-06-01T09:00:00", conversation_id="k", cache_write_5m_tokens=1000)],
        [iteration_row("x", 0, "2025-06-01T09:00:00", cache_write_5m_tokens=1000)],
    )
    refresh(postgres_url)
    original = rollup.read
    interleaved: list[bool] = []

    def read_after_a_concurrent_refresh(*args: Any, **kwargs: Any) -> Any:
        if not interleaved:
            interleaved.append(True)
            store_rows(
                postgres_url,
                [call_row("y", "2025-06-01T09:02:00", conversation_id="k")],
                [iteration_row("y", 0, "2025-06-01T09:02:00")],
            )
            refresh(postgres_url)
        return original(*args, **kwargs)

    monkeypatch.setattr(rollup, "read", read_after_a_concurrent_refresh)
    engine = store.make_engine(postgres_url, create=False)
    try:
        totals = cache_report(engine, build_filters(None, None, "UTC"), by=(), now=NOW).totals
    finally:
        engine.dispose()
    assert interleaved
    assert (totals["calls"], totals["cache_creation_5m_input_tokens"]) == (1, 1000)


_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
)


def test_upgrading_marks_the_slots_of_calls_without_usage(database_url: str) -> None:
    """Migration 0005: rollups built before error calls (NULL tokens) were counted by the cache rollup
    left them out; upgrading marks their slots, so the next report rebuilds them and counts them again.
    The old rollup is reproduced by deleting the error call's cache row; its slot alone is marked."""
    error_slot = slot("2025-06-01T09:00:00")
    store_rows(
        database_url,
        [
            call_row("a1", "2025-06-01T09:07:00", conversation_id="k", cache_write_5m_tokens=1000),
            call_row(
                "e1",
                "2025-06-01T09:10:00",
                conversation_id="k",
                status="ERROR",
                response_model=None,
                priced=None,
                **dict.fromkeys(_TOKEN_COLUMNS, None),
            ),
            call_row("b1", "2025-06-01T11:00:00", conversation_id="other"),
        ],
        [
            iteration_row("a1", 0, "2025-06-01T09:07:00", cache_write_5m_tokens=1000),
            iteration_row("b1", 0, "2025-06-01T11:00:00"),
        ],
    )
    refresh(database_url)
    engine = store.make_engine(database_url, writer=True)
    try:
        store.schema.downgrade(engine, "0004")
        with engine.begin() as connection:
            gone = connection.execute(
                store.rollups.delete().where(
                    store.rollups.c.level == "cache",
                    store.rollups.c.slot_ms == error_slot,
                    store.rollups.c.response_model.is_(None),
                )
            )
            assert gone.rowcount == 1
            connection.execute(store.rollup_dirty.delete())
        stale = cache_report(engine, build_filters(None, None, "UTC"), by=(), now=NOW).totals
        assert stale["calls"] == 2  # the old rollup is what the report reads

        store.schema.upgrade(engine)
        assert marked(database_url) == {error_slot}
        totals = cache_report(engine, build_filters(None, None, "UTC"), by=(), now=NOW).totals
    finally:
        engine.dispose()
    assert (totals["calls"], totals["cache_creation_5m_input_tokens"]) == (3, 1000)
