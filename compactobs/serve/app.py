"""The `serve` web application: a read-only JSON API and HTML pages over the reports, safe by default.

Every request but GET and HEAD is refused; with a token, every request carries it (a bearer header, or the
HttpOnly cookie that opening `/?token=...` once sets); every response forbids scripts and any other host
(Content-Security-Policy). The API answers what `compactobs report NAME --format json` prints, through
`reports.catalog`, the one place that runs a report from its options.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlencode

from sqlalchemy import Engine, event
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from compactobs.errors import UserError
from compactobs.reports.catalog import report_json, run_report
from compactobs.reports.model import Report
from compactobs.reports.source_cost import source_cost_report
from compactobs.reports.sources import as_source
from compactobs.reports.sources.base import DataStamp
from compactobs.reports.sources.sql.rollup import READ_ONLY
from compactobs.reports.times import build_filters
from compactobs.serve import pages
from compactobs.serve.anomalies import DEFAULT_EVERY, AnomaliesCache, one_line

__all__ = ["CSP", "TOKEN_COOKIE", "create_app", "read_only"]

CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""No script at all (the charts are SVG drawn on the server), nothing from another host."""
TOKEN_COOKIE: Final = "compactobs_token"
PAGE_SIZE: Final = 50
_FILTER_KEYS: Final = ("since", "until", "tz", "model", "service")
"""The page options passed on to the reports a page shows."""


def read_only(engine: Engine) -> None:
    """Open every later connection of `engine` read-only, so that nothing serve runs can write the store.

    SQLite: `mode=ro`; the reports' temporary tables still work (they live in SQLite's temp database).
    PostgreSQL: `default_transaction_read_only=on` in the connection's options: every transaction refuses
    INSERT, UPDATE, DELETE and every CREATE (the reports build no temporary table there: their buckets are
    `width_bucket` over an array). A client could switch it off with SET, so it guards against mistakes;
    against a hostile process, give `serve` a role that may only SELECT. The rollups are not refreshed
    through `engine` either (`rollup.READ_ONLY`): the reports read the slots not rolled up from `calls`. The
    connections already pooled are closed, so none escapes."""
    engine.update_execution_options(**{READ_ONLY: True})
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "do_connect")
        def _connect_pg(_dialect: Any, _record: Any, _cargs: list[Any], cparams: dict[str, Any]) -> None:
            # libpq's `options`, added to any the URL carries (a search_path).
            given = str(cparams.get("options") or "").strip()
            cparams["options"] = f"{given} -c default_transaction_read_only=on".strip()

    elif engine.dialect.name == "sqlite":

        @event.listens_for(engine, "do_connect")
        def _connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
            path = cparams.pop("database", None) if not cargs else cargs.pop(0)
            cargs.insert(0, f"file:{quote(str(path))}?mode=ro")
            cparams["uri"] = True

    engine.dispose()


def _options(request: Request, keys: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key == "token" or (keys is not None and key not in keys):
            continue
        options.setdefault(key, []).append(value)
    return options


def _last(options: Mapping[str, list[str]], key: str) -> str | None:
    values = options.get(key)
    return values[-1] if values else None


class _Guard(BaseHTTPMiddleware):
    """GET and HEAD only; the token when there is one; the security headers on every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await self._answer(request, call_next)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _answer(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only: only GET and HEAD\n", 405, headers={"Allow": "GET, HEAD"})
        if self.token is None:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            # The token leaves the URL (history, logs): the cookie carries it from now on.
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            redirect = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
            redirect.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return redirect
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else ""
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        if any(v and hmac.compare_digest(v.encode(), self.token.encode()) for v in (bearer, cookie)):
            return await call_next(request)
        return PlainTextResponse(
            "a token is required: Authorization: Bearer <token>, or open /?token=<token> once\n",
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )


def create_app(
    source: Any,
    *,
    token: str | None = None,
    budgets_file: str | None = None,
    anomalies_every: float = DEFAULT_EVERY,
) -> Starlette:
    """The application over `source` (an Engine opened for reading, or a ClickHouse source). `token`: the
    secret every request must carry; `budgets_file`: the anomalies' budgets, as `report anomalies
    --budgets`; `anomalies_every`: seconds between two checks of the store by the worker that computes the
    overview's anomalies (`serve.anomalies`), started and stopped with the application (its lifespan)."""
    # One report at a time: a chdb session is not shared between threads, and a small server loses little.
    lock = threading.Lock()

    def report(name: str, options: Mapping[str, list[str]], subject: str | None = None) -> Report:
        with lock:
            return run_report(source, name, options, subject, budgets_file=budgets_file, refresh=False)

    # The overview's anomalies, unfiltered, off the request path. An Engine's pool serves threads, so the
    # worker does not take the lock (a page never waits for it); any other source is one report at a time.
    shared = isinstance(source, Engine)

    def compute_anomalies() -> Report:
        if shared:
            return run_report(source, "anomalies", {}, budgets_file=budgets_file, refresh=False)
        return report("anomalies", {})

    def data_stamp() -> DataStamp:
        if shared:
            return as_source(source).data_stamp()
        with lock:
            return as_source(source).data_stamp()

    def budgets_changed() -> int | None:
        # The findings judge budgets from this file: an edit recomputes them (a missing file fails the
        # computation, which the overview shows).
        try:
            return os.stat(budgets_file).st_mtime_ns if budgets_file else None
        except OSError:
            return None

    cached = AnomaliesCache(compute_anomalies, data_stamp, anomalies_every, inputs=budgets_changed)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        cached.start()
        try:
            yield
        finally:
            await asyncio.to_thread(cached.stop)

    def api(name: str, subject: str | None, request: Request) -> Response:
        try:
            text = report_json(report(name, _options(request), subject))
        except UserError as err:
            return PlainTextResponse(one_line(err) + "\n", 400)
        return Response(text, media_type="application/json")

    def api_report(request: Request) -> Response:
        return api(request.path_params["name"], None, request)

    def api_conversation(request: Request) -> Response:
        return api("conversation", request.path_params["id"], request)

    def api_call(request: Request) -> Response:
        return api("call", request.path_params["id"], request)

    def html(title: str, here: str, build: Callable[[], str]) -> Response:
        try:
            body = build()
        except UserError as err:
            return HTMLResponse(pages.page("Error", pages.texts([one_line(err)], "warnings"), here), 400)
        return HTMLResponse(pages.page(title, body, here))

    def overview(request: Request) -> Response:
        filters = _options(request, _FILTER_KEYS)

        def build() -> str:
            by_day = report("cost", {**filters, "by": ["day"]})
            by_model = report("cost", {**filters, "by": ["model"]})
            # The cached findings are the unfiltered ones: a page with filters links to the live page.
            return pages.overview(
                by_day, by_model, filters, None if filters else cached.latest(), time.time()
            )

        return html("Overview", "/", build)

    def conversations(request: Request) -> Response:
        params = request.query_params
        query = params.get("q", "").strip()
        sort = params.get("sort", "cost_usd")
        try:
            page_no = max(1, int(params.get("page", "1")))
        except ValueError:
            page_no = 1

        def build() -> str:
            options = {**_options(request, _FILTER_KEYS), "by": ["conversation"], "sort": [sort]}
            if query:
                options["conversation"] = [query if "*" in query else f"*{query}*"]
            listing = report("cost", options)
            pages_count = max(1, math.ceil(len(listing.rows) / PAGE_SIZE))
            start = (min(page_no, pages_count) - 1) * PAGE_SIZE
            rows = listing.rows[start : start + PAGE_SIZE]
            return pages.conversations(listing, rows, query, sort, min(page_no, pages_count), pages_count)

        return html("Conversations", "/conversations", build)

    def conversation(request: Request) -> Response:
        conversation_id = request.path_params["id"]
        filters = _options(request, _FILTER_KEYS)

        def build() -> str:
            calls = report("conversation", filters, conversation_id)
            only = {**filters, "conversation": [conversation_id]}
            by_type = report("cost", {**only, "by": ["iteration-type"]})
            cache = report("cache", {**only, "by": ["model"]})
            found = report("anomalies", only).extra.get("findings", [])
            return pages.conversation(calls, by_type, cache, found)

        return html(f"Conversation {conversation_id}", "/conversations", build)

    def claude_code(request: Request) -> Response:
        filters = {**_options(request, _FILTER_KEYS), "service": [pages.CLAUDE_CODE]}

        def build() -> str:
            by_day = report("cost", {**filters, "by": ["day"]})
            by_model = report("cost", {**filters, "by": ["model"]})
            window = build_filters(
                _last(filters, "since"),
                _last(filters, "until"),
                _last(filters, "tz"),
                filters.get("model", ()),
                (),
                filters["service"],
            )
            with lock:
                prices = source_cost_report(source, window)
            return pages.claude_code(by_day, by_model, prices)

        return html("Claude Code", "/claude-code", build)

    def call(request: Request) -> Response:
        call_id = request.path_params["id"]
        return html(f"Call {call_id}", "", lambda: pages.generic(report("call", {}, call_id)))

    def generic(name: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            def build() -> str:
                result = report(name, _options(request))
                if name == "anomalies":
                    return pages.findings(result.extra.get("findings", [])) + pages.texts(result.warnings)
                return pages.generic(result)

            return html(name.capitalize(), f"/{name}", build)

        return endpoint

    static = StaticFiles(directory=str(resources.files("compactobs.serve") / "static"))
    routes = [
        Route("/", overview, methods=["GET", "HEAD"]),
        Route("/conversations", conversations, methods=["GET", "HEAD"]),
        Route("/conversation/{id:path}", conversation, methods=["GET", "HEAD"]),
        Route("/call/{id:path}", call, methods=["GET", "HEAD"]),
        Route("/claude-code", claude_code, methods=["GET", "HEAD"]),
        *(
            Route(f"/{name}", generic(name), methods=["GET", "HEAD"])
            for name in ("cache", "ops", "anomalies", "tune")
        ),
        Route("/api/report/conversation/{id:path}", api_conversation, methods=["GET", "HEAD"]),
        Route("/api/report/{name}", api_report, methods=["GET", "HEAD"]),
        Route("/api/call/{id:path}", api_call, methods=["GET", "HEAD"]),
        Mount("/static", static, name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Guard, token=token)], lifespan=lifespan)
    app.state.anomalies = cached
    return app
