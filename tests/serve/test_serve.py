"""`compactobs serve` over real HTTP: its JSON API answers, byte for byte, what `compactobs report NAME
--format json` prints, for every report, on SQLite, PostgreSQL and chdb (the demo's workload through the
real SDK against the loopback simulator); it is read-only, GET/HEAD only, guarded by its token, and shows
hostile strings escaped."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from compactobs import store
from compactobs.demo import run_demo
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
            code, out, err = run("--db", url, "report", *args, "--format", "json")
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
        # No finding on the overview (the anomalies read every call); the link keeps the page's filters,
        # URL-encoded and escaped.
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
        paths = ["/", "/conversations", "/cache", "/ops", "/anomalies"]
        paths += [f"/conversation/{quote(c, safe='')}" for c in HOSTILE]
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
