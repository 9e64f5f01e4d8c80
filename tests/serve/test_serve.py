"""`compactobs serve` over real HTTP: its JSON API answers, byte for byte, what `compactobs report NAME
--format json` prints, for every report, on SQLite, PostgreSQL and chdb (the demo's workload through the
real SDK against the loopback simulator); it is read-only, GET/HEAD only, guarded by its token, and shows
hostile strings escaped."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from compactobs import store
from compactobs.demo import run_demo
from compactobs.reports.model import Filters
from compactobs.reports.sources import as_source
from compactobs.reports.sources.clickhouse.source import ClickHouseSource
from compactobs.serve import ENV_TOKEN, resolve_token
from compactobs.serve.app import CSP, TOKEN_COOKIE, create_app, read_only
from tests.cli import one_line_error, run
from tests.otel_traces import write_spans
from tests.serving import serving

# (CLI arguments after `report`, the API's path and query): each pair must answer the same bytes.
CASES: list[tuple[tuple[str, ...], str, list[tuple[str, str]]]] = [
    (("cost",), "cost", []),
    (
        ("cost", "--by", "model", "--by", "day", "--since", "2020-01-01"),
        "cost",
        [("by", "model"), ("by", "day"), ("since", "2020-01-01")],
    ),
    (
        ("cost", "--by", "conversation,model", "--sort", "cost_usd", "--limit", "3"),
        "cost",
        [("by", "conversation,model"), ("sort", "cost_usd"), ("limit", "3")],
    ),
    (
        # a closed window: an open one ends now, which moves between the two requests
        (
            "cost",
            "--by",
            "iteration-type",
            "--compare",
            "prev",
            "--tz",
            "Asia/Tokyo",
            "--since",
            "2026-01-01",
            "--until",
            "2099-12-31",
        ),
        "cost",
        [
            ("by", "iteration-type"),
            ("compare", "prev"),
            ("tz", "Asia/Tokyo"),
            ("since", "2026-01-01"),
            ("until", "2099-12-31"),
        ],
    ),
    (
        ("cost", "--by", "service", "--model", "claude-opus-*", "--forecast"),
        "cost",
        [("by", "service"), ("model", "claude-opus-*"), ("forecast", "true")],
    ),
    (("cache",), "cache", []),
    (("cache", "--by", "conversation", "--limit", "2"), "cache", [("by", "conversation"), ("limit", "2")]),
    (("ops",), "ops", []),
    (("ops", "--until", "2020-01-01"), "ops", [("until", "2020-01-01")]),
    (("anomalies",), "anomalies", []),
    (
        ("anomalies", "--loop-min", "2", "--cost-share", "0.3"),
        "anomalies",
        [("loop-min", "2"), ("cost-share", "0.3")],
    ),
    # `compactobs tune`, not a `report` subcommand: the same catalog answers it
    (("tune",), "tune", []),
    (
        (
            "tune",
            *("--trigger", "60000,80K", "--cache-ttl", "5m,1h", "--budget-usd", "1.5"),
            *("--pause-after-compaction", "--by", "service", "--tz", "UTC", "--summary-tokens", "900"),
        ),
        "tune",
        [
            *[("trigger", "60000,80K"), ("cache-ttl", "5m,1h"), ("budget-usd", "1.5")],
            *[("pause-after-compaction", "true"), ("by", "service"), ("tz", "UTC")],
            ("summary-tokens", "900"),
        ],
    ),
]


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "chdb"])
def recorded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The demo's workload in a store of each kind: its URL, and the loop conversation's id."""
    kept = InMemorySpanExporter()
    if request.param == "postgresql":
        url = request.getfixturevalue("module_postgres_url")
        store.upgrade_database(url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('serve') / 'demo.db'}"
    summary = run_demo(url, span_processors=[SimpleSpanProcessor(kept)])
    if request.param == "chdb":
        directory: Path = tmp_path_factory.mktemp("serve-chdb")
        source = ClickHouseSource(f"chdb://{directory}")
        try:
            write_spans(source, kept.get_finished_spans())
        finally:
            source.close()
        url = f"chdb://{directory}"
    loop = next(c.id for c in summary.conversations if c.id.endswith("-research-loop"))
    yield {"url": url, "kind": request.param, "loop": loop}


def _open(url: str) -> Any:
    if url.startswith("chdb://"):
        return ClickHouseSource(url)
    engine = store.open_database(url, create=False)
    read_only(engine)
    return engine


def _close(source: Any) -> None:
    if isinstance(source, ClickHouseSource):
        source.close()
    else:
        source.dispose()


def test_the_api_answers_what_the_cli_prints_for_every_report(recorded: dict[str, Any]) -> None:
    url, loop = recorded["url"], recorded["loop"]
    code, out, err = run("--db", url, "report", "conversation", loop, "--format", "json")
    assert code == 0, err
    call_id = json.loads(out)["rows"][-1]["call_id"]
    cases = [
        *CASES,
        (("conversation", loop), f"conversation/{quote(loop, safe='')}", []),
        (
            ("conversation", loop, "--tz", "UTC", "--since", "2020-01-01"),
            f"conversation/{quote(loop)}",
            [("tz", "UTC"), ("since", "2020-01-01")],
        ),
    ]
    cases.append((("call", call_id), "", []))

    def cli() -> list[tuple[int, str]]:
        printed = []
        for args, _, _ in cases:
            command = args if args[0] == "tune" else ("report", *args)
            code, out, err = run("--db", url, *command, "--format", "json")
            printed.append((code, out or err))
        return printed

    def api() -> list[tuple[int, str]]:
        source = _open(url)
        answered = []
        try:
            with serving(create_app(source)) as base:
                for args, path, query in cases:
                    where = f"call/{quote(call_id)}" if args[0] == "call" else f"report/{path}"
                    status, body, headers = _get(f"{base}/api/{where}?{urlencode(query)}")
                    if status == 200:
                        assert headers["Content-Type"] == "application/json"
                    answered.append((status, body.decode()))
        finally:
            _close(source)
        return answered

    # A SQL store: the server first, so that it reads calls the CLI has not rolled up yet (the server writes
    # nothing); a chdb directory takes one session at a time, so the CLI goes first there.
    if recorded["kind"] == "chdb":
        printed, answered = cli(), api()
    else:
        answered, printed = api(), cli()
    for (args, _, _), (code, out), (status, body) in zip(cases, printed, answered, strict=True):
        if args[0] == "call" and recorded["kind"] == "chdb":
            # `report call` reads the SQL store: on ClickHouse, the CLI's one-line error is the API's 400.
            assert (code, status, "Error: " + body) == (2, 400, out)
            continue
        assert (code, status) == (0, 200), (args, out, body)
        assert body == out, args
    if recorded["kind"] != "chdb":
        assert json.loads(answered[-1][1])["report"] == "call"


PAGES = ["/", "/conversations", "/cache", "/ops", "/anomalies", "/tune", "/claude-code"]


def test_every_page_answers_through_the_read_only_source(recorded: dict[str, Any]) -> None:
    """Every page and its API over a store opened by `read_only` (PostgreSQL: every transaction read-only),
    on each engine: none needs to write."""
    source = _open(recorded["url"])
    loop = quote(recorded["loop"], safe="")
    try:
        with serving(create_app(source)) as base:
            apis = [f"/api/report/conversation/{loop}", "/api/report/tune", "/api/report/cost"]
            for path in [*PAGES, f"/conversation/{loop}", *apis]:
                status, body, _ = _get(base + path)
                assert status == 200, (path, body[:300])
    finally:
        _close(source)


def test_the_overview_shows_the_worker_s_anomalies_on_every_source(recorded: dict[str, Any]) -> None:
    """The worker computes the anomalies through the read-only source of each engine (chdb: under the
    page lock) and the overview shows them with the calls they cover: the source's DataStamp, whose count
    and range are those the reports give."""
    code, out, err = run("--db", recorded["url"], "report", "cost", "--by", "model", "--format", "json")
    assert code == 0, err
    calls = json.loads(out)["totals"]["calls"]
    source = _open(recorded["url"])
    try:
        stamped = as_source(source)
        everything = Filters(None, None, timezone.utc)
        assert stamped.data_stamp() == (calls, *(stamped.data_range(everything) or (None, None)))
        with serving(create_app(source)) as base:
            deadline = time.monotonic() + 60
            while True:
                status, body, _ = _get(base + "/")
                page = body.decode()
                if 'data-kind="compaction_loop"' in page or time.monotonic() > deadline:
                    break
                threading.Event().wait(0.1)
            assert status == 200 and 'data-kind="compaction_loop"' in page
            assert f"over {calls:,} calls, the last started" in page and "anomalies-error" not in page
    finally:
        _close(source)


def test_a_write_through_the_read_only_postgresql_engine_fails(module_postgres_url: str) -> None:
    """PostgreSQL refuses the write itself (`default_transaction_read_only`), and a CREATE, even of a
    temporary table; reading works."""
    store.upgrade_database(module_postgres_url)
    engine = store.open_database(module_postgres_url, create=False)
    read_only(engine)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW transaction_read_only")).scalar() == "on"
            assert connection.execute(text("SELECT count(*) FROM calls")).scalar() is not None
        for statement in (
            "DELETE FROM calls",
            "INSERT INTO guard_spend VALUES ('c', 1, 0, 0, 0, 1, 0)",
            "CREATE TEMP TABLE scratch (x INTEGER)",
        ):
            with pytest.raises(Exception, match="read-only transaction"), engine.begin() as connection:
                connection.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def sqlite_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('serve-sqlite') / 'demo.db'}"
    summary = run_demo(url)
    engine = store.open_database(url, create=False)
    read_only(engine)
    loop = next(c.id for c in summary.conversations if c.id.endswith("-research-loop"))
    try:
        yield {"url": url, "engine": engine, "loop": loop}
    finally:
        engine.dispose()


def test_the_overview_links_to_the_anomalies_with_its_filters(sqlite_demo: dict[str, Any]) -> None:
    with serving(create_app(sqlite_demo["engine"])) as base:
        status, body, _ = _get(base + "/?since=7d&model=claude-*%22%3E")
        assert status == 200
        page = body.decode()
        # No finding on a filtered overview (serve's worker computes the unfiltered ones only); the link keeps
        # the page's filters, URL-encoded and escaped.
        assert 'class="finding' not in page
        assert 'id="anomalies" href="/anomalies?since=7d&amp;model=claude-%2A%22%3E"' in page
        status, body, _ = _get(base + "/anomalies?since=7d&model=claude-*")
        assert status == 200 and 'data-kind="compaction_loop"' in body.decode()


def test_a_bad_option_is_a_400_with_one_line(sqlite_demo: dict[str, Any]) -> None:
    with serving(create_app(sqlite_demo["engine"])) as base:
        for path, words in [
            ("/api/report/cost?bogus=1", "report cost has no option 'bogus'"),
            ("/api/report/cost?since=yesterday-ish", "yesterday-ish"),
            ("/api/report/cost?tz=Mars/Olympus", "Mars/Olympus"),
            ("/api/report/cost?limit=many", "'limit': 'many' is not an integer"),
            ("/api/report/cost?by=colour", "colour"),
            ("/api/report/anomalies?loop-min=1", "--loop-min must be at least 2"),
            ("/api/report/ops?since=2020-01-01&since=2021-01-01", "given 2 times"),
            ("/api/report/nothing", "no report 'nothing'"),
            ("/api/report/conversation", "report conversation needs an id"),
            ("/api/report/conversation/no-such-conversation", "no-such-conversation"),
            ("/api/call/req_nothing", "req_nothing"),
            ("/api/report/tune?trigger=1000", "below the API's minimum"),
            ("/api/report/tune?budget-usd=lots", "not a number of dollars"),
            ("/api/report/tune?sort=cost_usd", "report tune has no option 'sort'"),
        ]:
            status, body, headers = _get(base + path)
            assert status == 400, path
            assert headers["Content-Type"].startswith("text/plain")
            assert body.decode().count("\n") == 1 and words in body.decode(), (path, body)


def test_only_get_and_head_are_served(sqlite_demo: dict[str, Any]) -> None:
    with serving(create_app(sqlite_demo["engine"])) as base:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, _, headers = _get(base + "/api/report/cost", method=method)
            assert (status, headers["Allow"]) == (405, "GET, HEAD"), method
        status, body, headers = _get(base + "/api/report/cost", method="HEAD")
        assert (status, body) == (200, b"")
        status, body, headers = _get(base + "/")
        assert status == 200 and headers["Content-Security-Policy"] == CSP
        assert "script-src" not in CSP and "default-src 'none'" in CSP  # no script of any origin


def test_the_store_is_opened_read_only(sqlite_demo: dict[str, Any]) -> None:
    """A write through the server's SQLite engine fails in SQLite itself (`mode=ro`), while the reports'
    temporary tables still work (every page and report of this module reads through it)."""
    engine = sqlite_demo["engine"]
    with pytest.raises(Exception, match="readonly"), engine.begin() as connection:
        connection.execute(text("DELETE FROM calls"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM calls")).scalar() == 45
        connection.execute(text("CREATE TEMP TABLE scratch (x INTEGER)"))

    # Nor are the rollups refreshed (a writer engine of its own would): the slots marked stay marked.
    def marked() -> tuple[int, int]:
        with engine.connect() as connection:
            dirty = connection.execute(text("SELECT count(*) FROM rollup_dirty")).scalar()
            return int(dirty or 0), int(
                connection.execute(text("SELECT count(*) FROM rollups")).scalar() or 0
            )

    before = marked()
    assert before[0] > 0  # the demo's calls are not rolled up yet
    with serving(create_app(engine)) as base:
        assert _get(base + "/api/report/cost?by=model")[0] == 200
    assert marked() == before


def test_with_a_token_every_request_carries_it(sqlite_demo: dict[str, Any]) -> None:
    token = "s3cret-token"
    with serving(create_app(sqlite_demo["engine"], token=token)) as base:
        status, _, headers = _get(base + "/api/report/ops")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert _get(base + "/api/report/ops", {"Authorization": "Bearer wrong"})[0] == 401
        assert _get(base + "/api/report/ops", {"Authorization": f"Bearer {token}"})[0] == 200
        assert _get(base + "/?token=wrong")[0] == 401
        # A browser opens /?token=... once: the token moves into an HttpOnly cookie, and out of the URL.
        status, _, headers = _get(base + f"/conversations?q=loop&token={token}")
        assert (status, headers["Location"]) == (303, "/conversations?q=loop")
        cookie = headers["Set-Cookie"]
        assert (
            cookie.startswith(f"{TOKEN_COOKIE}={token};")
            and "HttpOnly" in cookie
            and "SameSite=strict" in cookie
        )
        assert _get(base + "/", {"Cookie": f"{TOKEN_COOKIE}={token}"})[0] == 200
        assert _get(base + "/", {"Cookie": f"{TOKEN_COOKIE}=wrong"})[0] == 401


def test_another_bind_needs_a_token(tmp_path: Path) -> None:
    assert resolve_token("127.0.0.1", None, {}) is None
    message = one_line_error(*run("serve", "--host", "0.0.0.0", env={ENV_TOKEN: ""})[::2])
    assert "--host 0.0.0.0" in message and "--token-file" in message and ENV_TOKEN in message
    assert resolve_token("0.0.0.0", None, {ENV_TOKEN: "from-env"}) == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    assert resolve_token("0.0.0.0", str(token_file), {ENV_TOKEN: "from-env"}) == "from-file"
    token_file.write_text("\n", encoding="utf-8")
    assert "first line is empty" in one_line_error(*run("serve", "--token-file", str(token_file))[::2])
    missing = tmp_path / "missing"
    assert "cannot read a token" in one_line_error(*run("serve", "--token-file", str(missing))[::2])


HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "a/b?c#d&e=<i>"]


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Conversations named by the hostile ids, and a model and iteration type that carry HTML too."""
    import compactobs
    from compactobs.testing import Reply, message
    from tests.recording import recording

    url = f"sqlite:///{tmp_path_factory.mktemp('serve-hostile') / 'obs.db'}"
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "iterations": [
            {"type": "<b>compaction</b>", "input_tokens": 100, "output_tokens": 7},
            {"type": "message", "input_tokens": 10, "output_tokens": 5},
        ],
    }
    with recording(url) as (sim, client):
        for conversation in HOSTILE:
            sim.enqueue(Reply(message(model="claude-sonnet-4-5<svg onload=alert(2)>", usage=usage)))
            with compactobs.conversation(conversation):
                client.messages.create(
                    model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
    engine = store.open_database(url, create=False)
    read_only(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_hostile_strings_are_escaped_in_every_page(hostile_store: Any) -> None:
    with serving(create_app(hostile_store)) as base:
        paths = [*PAGES, *(f"/conversation/{quote(c, safe='')}" for c in HOSTILE)]
        for path in paths:
            status, body, _ = _get(base + path)
            assert status == 200, path
            page = body.decode()
            for raw in ("<script", "<img", "<svg onload", "<b>compaction", "<i>"):
                assert raw not in page, (path, raw)
        page = _get(base + f"/conversation/{quote(HOSTILE[0], safe='')}")[1].decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        # JSON keeps the exact strings (as the CLI's does), in a response no browser renders as a page.
        status, body, headers = _get(base + "/api/report/cost?by=conversation")
        assert {row["conversation_id"] for row in json.loads(body)["rows"]} == set(HOSTILE)
        assert (
            headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
        )
        conversations = _get(base + "/conversations")[1].decode()
        assert f'href="/conversation/{quote(HOSTILE[2], safe="")}"' in conversations


def test_the_claude_code_page_sets_compactobs_price_beside_claude_codes(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Claude Code's events through the real collector; the page shows the service's spend, its compaction
    spend, and compactobs' price beside the `cost_usd` Claude Code sent, with the difference explained."""
    from compactobs.collect import Collector
    from compactobs.collect.claude_code import SERVICE
    from compactobs.serve import pages
    from tests.collect.test_claude_code import _event, logs_request
    from tests.collect.test_collect import post, prepared

    assert pages.CLAUDE_CODE == SERVICE
    sonnet = {"model": "claude-sonnet-4-5", "duration_ms": 1000, "cache_read_tokens": 0}
    body = logs_request(
        # 1,000 x $3/M + 200 x $15/M = $0.006, as Claude Code says
        _event(
            "api_request",
            1,
            **sonnet,
            input_tokens=1000,
            output_tokens=200,
            cache_creation_tokens=0,
            cost_usd=0.006,
            request_id="req_a",
            query_source="main",
        ),
        # compactobs: 10,000 x $3/M + 1,000 x $15/M + 100,000 x $3.75/M (5-minute writes) = $0.42;
        # Claude Code sends $0.645 (the writes at $6/M, the 1-hour price)
        _event(
            "api_request",
            2,
            **sonnet,
            input_tokens=10000,
            output_tokens=1000,
            cache_creation_tokens=100000,
            cost_usd=0.645,
            request_id="req_b",
            query_source="main",
        ),
        # Claude Code's own compaction: 50,000 x $3/M + 2,000 x $15/M = $0.18, compaction spend
        _event(
            "api_request",
            3,
            **sonnet,
            input_tokens=50000,
            output_tokens=2000,
            cache_creation_tokens=0,
            cost_usd=0.18,
            request_id="req_c",
            query_source="compact",
        ),
    )
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        status, _, _ = post(collector.endpoint, body, {"Content-Type": "application/json"}, path="/v1/logs")
        assert status == 200
    engine = store.open_database(sqlite_url, create=False)
    read_only(engine)
    try:
        with serving(create_app(engine)) as base:
            status, page, _ = _get(base + "/claude-code?tz=UTC")
    finally:
        engine.dispose()
    assert status == 200
    text = page.decode()
    # billed 0.006 + 0.42 + 0.18 = 0.606, of which the compaction's 0.18
    assert '<b id="claude-code-billed">$0.6060</b>' in text
    assert '<b id="claude-code-compaction">$0.1800</b>' in text
    assert 'data-chart="claude-code-by-day"' in text and 'data-chart="claude-code-by-model"' in text
    table = text[text.index('<div id="source-cost">') :]
    cells = [c.split(">")[-1] for c in table.split("</td>")[:6]]
    # Claude Code: 0.006 + 0.645 + 0.18 = 0.831; compactobs 0.606; 0.606 - 0.831 = -0.225
    assert cells == ["claude-code", "3", "$0.8310", "$0.6060", "-$0.2250", "0"]
    assert "The difference is the two price tables" in table
