"""The overview's anomalies, computed off the request path (`compactobs.serve.anomalies`): the cache
recomputes when the store's data changed and not otherwise; the page answers while the worker computes and
says so; an error in the worker is one line on the overview and the server goes on; the worker stops with
the application. Real stores written through the real SDK against the Simulator, real servers."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

import compactobs
from compactobs import store
from compactobs.reports.catalog import run_report
from compactobs.reports.model import Report
from compactobs.reports.sources import as_source
from compactobs.reports.sources.base import DataStamp
from compactobs.serve import pages
from compactobs.serve.anomalies import Anomalies, AnomaliesCache
from compactobs.serve.app import create_app, read_only
from compactobs.testing import Reply, message
from tests.recording import recording
from tests.serving import serving

WORKER = "compactobs-overview-anomalies"
UNKNOWN = "claude-unknown-9"
"""A model compactobs has no price for: its call is an `unpriced_model` finding."""


def _record(url: str, model: str, conversation: str = "c1") -> None:
    with recording(url) as (sim, client):
        sim.enqueue(Reply(message(model=model, usage={"input_tokens": 10, "output_tokens": 5})))
        with compactobs.conversation(conversation):
            client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "x"}])


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    _record(url, "claude-sonnet-4-5")
    _record(url, "claude-sonnet-4-5")
    engine = store.open_database(url, create=False)
    read_only(engine)
    try:
        yield url, engine
    finally:
        engine.dispose()


def _get(url: str) -> str:
    with urllib.request.urlopen(url) as response:
        assert response.status == 200
        return str(response.read().decode())


def _poll(url: str, done: Callable[[str], bool]) -> str:
    """The page, fetched until `done` says it shows what the test waits for (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        body = _get(url)
        if done(body) or time.monotonic() > deadline:
            return body
        threading.Event().wait(0.05)


def test_the_cache_recomputes_when_the_data_changed_and_not_otherwise(
    small_store: tuple[str, Engine],
) -> None:
    url, engine = small_store
    runs: list[int] = []

    def compute() -> Any:
        runs.append(1)
        return run_report(engine, "anomalies", {}, refresh=False)

    cache = AnomaliesCache(compute, as_source(engine).data_stamp, every=3600)
    assert cache.latest().findings is None  # nothing computed yet: no list at all, not an empty one
    assert cache.check() is True
    first = cache.latest()
    # Two calls recorded, both of a priced model: no finding.
    assert first.stamp is not None and first.stamp[0] == 2 and first.findings == []
    assert first.error is None and first.started is not None
    # The store unchanged: checking again computes nothing.
    assert cache.check() is False and cache.check() is False
    assert len(runs) == 1 and cache.latest() is first

    _record(url, UNKNOWN)  # one more call (2 + 1 = 3), of a model with no price
    assert cache.check() is True
    second = cache.latest()
    assert second.stamp is not None and second.stamp[0] == 3 and len(runs) == 2
    assert second.stamp[2] is not None and first.stamp[2] is not None and second.stamp[2] >= first.stamp[2]
    assert [f["kind"] for f in second.findings or []] == ["unpriced_model"]
    assert cache.check() is False and len(runs) == 2


def test_a_change_of_the_budgets_file_recomputes_with_the_data_unchanged() -> None:
    """The findings judge budgets: an edited budgets file (its modification time) recomputes them."""
    runs: list[int] = []
    version = [1]

    def compute() -> Any:
        runs.append(1)
        return Report(name="anomalies", columns=[], rows=[])

    cache = AnomaliesCache(compute, lambda: (2, 0, 1), every=3600, inputs=lambda: version[0])
    assert cache.check() is True and cache.check() is False and len(runs) == 1
    version[0] = 2  # the file edited; the store as it was
    assert cache.check() is True and len(runs) == 2
    assert cache.check() is False and len(runs) == 2


def test_a_worker_stopped_mid_computation_does_not_outlive_a_restart() -> None:
    """stop() while computing, then start(): the old worker ends after its computation; one worker runs."""
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def compute() -> Any:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            entered.set()
            release.wait(30)
        return Report(name="anomalies", columns=[], rows=[])

    stamp = [0]

    def changing() -> DataStamp:
        stamp[0] += 1  # every check sees new data: a live worker computes at each check
        return (stamp[0], 0, 1)

    cache = AnomaliesCache(compute, changing, every=0.01)
    cache.start()
    assert entered.wait(30)
    old = cache._thread
    assert old is not None
    threading.Thread(target=cache.stop).start()  # stop waits for the computation: from another thread
    deadline = time.monotonic() + 30
    while cache._thread is not None and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    cache.start()
    release.set()
    old.join(30)
    assert not old.is_alive()  # the stopped worker ended after its computation instead of looping on
    cache.stop()
    workers = [thread for thread in threading.enumerate() if thread.name == "compactobs-overview-anomalies"]
    assert workers == []


def test_before_the_first_computation_the_overview_says_so() -> None:
    cache = AnomaliesCache(lambda: pytest.fail("not computed"), lambda: (0, None, None))
    html = pages.overview_anomalies(cache.latest(), "/anomalies", time.time())
    assert "The anomalies are being computed; refresh in a moment." in html
    # No list, and not "No anomalies found": nothing was computed.
    assert "finding" not in html and "No anomalies" not in html
    assert '<a id="anomalies" href="/anomalies">' in html


def _hold_worker(engine: Engine, release: threading.Event) -> None:
    """Every statement of the worker's thread waits for `release`: the worker is mid-computation."""

    @event.listens_for(engine, "before_cursor_execute")
    def _wait(*_: Any) -> None:
        if threading.current_thread().name == WORKER:
            release.wait(30)


def test_the_page_does_not_wait_for_the_worker(small_store: tuple[str, Engine]) -> None:
    url, engine = small_store
    _record(url, UNKNOWN)
    release = threading.Event()
    _hold_worker(engine, release)
    app = create_app(engine)
    try:
        with serving(app) as base:
            # The worker is held in its first statement; the page answers anyway, and says so.
            page = _get(base + "/")
            assert "The anomalies are being computed; refresh in a moment." in page
            assert 'class="finding' not in page and 'id="billed"' in page
            release.set()
            page = _poll(base + "/", lambda body: 'class="finding' in body)
            # 3 calls: the fixture's 2 and the unpriced one; the finding comes before the bill.
            assert "over 3 calls, the last started" in page
            assert page.index('data-kind="unpriced_model"') < page.index('id="billed"')
            assert page.index('id="anomalies-state"') < page.index('id="billed"')
            thread = app.state.anomalies._thread
            assert thread is not None and thread.is_alive()
        # The server stopped: so did the worker (the lifespan's end).
        assert app.state.anomalies._thread is None and not thread.is_alive()
    finally:
        release.set()


def test_an_error_in_the_worker_is_one_line_and_the_server_goes_on(small_store: tuple[str, Engine]) -> None:
    _, engine = small_store

    # The worker's statements fail in the database itself (a column that is not there): SQLAlchemy's error
    # is several lines (the SQL, a link), the overview shows the first.
    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _broken(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> tuple[str, Any]:
        if threading.current_thread().name == WORKER:
            return "SELECT no_such_column FROM calls", ()
        return statement, parameters

    app = create_app(engine, anomalies_every=0.05)
    with serving(app) as base:
        page = _poll(base + "/", lambda body: 'id="anomalies-error"' in body)
        start = page.index('id="anomalies-error"')
        line = page[start : page.index("</p>", start)]
        assert "no such column: no_such_column" in line
        assert "\n" not in line and "[SQL" not in line and "sqlalche.me" not in line
        assert 'class="finding' not in page and "being computed" not in page
        # The rest of the page is there; the worker retries (every 0.05 s) and is still alive.
        assert 'id="billed"' in page
        thread = app.state.anomalies._thread
        assert thread is not None and thread.is_alive()
        assert "no_such_column" in _get(base + "/")


def test_the_overview_shows_the_first_findings_and_links_to_the_rest() -> None:
    many = [
        {"kind": "error_burst", "severity": "warning", "conversation_id": None, "message": f"hour {n}"}
        for n in range(pages.OVERVIEW_FINDINGS + 5)
    ]
    now = time.time()
    state = Anomalies(findings=many, started=now, seconds=2.0, stamp=(1000, 0, int(now * 1000)))
    html = pages.overview_anomalies(state, "/anomalies", now)
    # 20 shown of 20 + 5 = 25, in the report's order.
    assert html.count('class="finding') == 20 and "hour 19" in html and "hour 20" not in html
    assert "The first 20 of 25 findings (the most severe first)" in html
    assert "(computed in 2.0 s), over 1,000 calls, the last started" in html
