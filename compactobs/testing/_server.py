"""The loopback HTTP server: a ThreadingHTTPServer speaking HTTP/1.1 keep-alive, JSON and chunked SSE."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from compactobs._types import JSON, JSONObject
from compactobs.testing._batches import Batches, encode_answer, is_batches_route
from compactobs.testing._conversation import ConversationEngine, ConversationScenario, SimulationError
from compactobs.testing._platforms import platform_request, write_bedrock
from compactobs.testing._replies import ErrorReply, Reply, encode_event, stream_events
from compactobs.testing._reports import COST_ROUTE, USAGE_ROUTE, Ledger, ReportScenario
from compactobs.testing._telemetry import PlatformTelemetry

__all__ = ["RecordedRequest", "Simulator"]

_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"
_REPORTS = (USAGE_ROUTE, COST_ROUTE)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulator received: `path` with its query (`/v1/messages?beta=true` from the beta
    namespace), `headers` with lower-cased names, `body` parsed from JSON (`{}` when it was not a JSON
    object), and the HTTP `method`."""

    path: str
    headers: dict[str, str]
    body: JSONObject
    method: str = "POST"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes the connections itself; never wait on an idle keep-alive client
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers, body and each SSE chunk are separate writes; without this Nagle holds them back
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.simulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client went away first
        finally:
            self.server.simulator._track(self.connection, add=False)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a test server should not write a line per request

    def do_POST(self) -> None:
        self.server.simulator._serve(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


class Simulator:
    """A loopback Messages API on 127.0.0.1 that the real `anthropic` SDK talks to over HTTP.

    ```python
    with Simulator() as sim:
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key")
        sim.enqueue(ErrorReply(429, retry_after=0), Reply(message(usage={...})))
        client.messages.create(...)          # retried by the SDK, answered with the message
        assert len(sim.requests) == 2
    ```

    The server starts at construction, on an ephemeral port, in a daemon thread; `stop()` (or leaving
    the `with` block) shuts it down and closes open connections. Queued replies answer requests in order
    (`/v1/messages`, `/v1/messages/count_tokens`, with or without `?beta=true`); with an empty queue the
    simulated conversation mode answers (see the package docstring), configured by `scenario`.
    Thread-safe: any number of clients, sync or async, may call it at once.
    """

    def __init__(
        self, scenario: ConversationScenario | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Reply | ErrorReply] = deque()
        self._requests: list[RecordedRequest] = []
        self._scenario = scenario if scenario is not None else ConversationScenario()
        self._engine = ConversationEngine()
        self._ledger = Ledger()
        self.batches = Batches()
        """Message Batches: plans, batches, `hold` (see compactobs.testing._batches)."""
        self.telemetry = PlatformTelemetry()
        """Server-side telemetry: the spans the API would export for what was served (see _telemetry)."""
        self._connections: set[socket.socket] = set()
        self._served = 0
        self._server = _Server((host, port), self)
        bound_host, bound_port = self._server.server_address[:2]
        self._base_url = f"http://{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="compactobs-simulator",
            daemon=True,
        )
        self._stopped = False
        self._thread.start()

    # -- public API -----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`, for `anthropic.Anthropic(base_url=...)`."""
        return self._base_url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since start or `reset()`, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many queued replies have not been served yet."""
        with self._lock:
            return len(self._queue)

    @property
    def scenario(self) -> ConversationScenario:
        """The scenario of simulated conversation mode; assign to change it (None restores the default)."""
        return self._scenario

    @scenario.setter
    def scenario(self, scenario: ConversationScenario | None) -> None:
        with self._lock:
            self._scenario = scenario if scenario is not None else ConversationScenario()

    @property
    def report_scenario(self) -> ReportScenario:
        """How the organisation usage and cost reports differ from the traffic served (see
        `ReportScenario`); assign to change it (None restores the default)."""
        return self._ledger.scenario

    @report_scenario.setter
    def report_scenario(self, scenario: ReportScenario | None) -> None:
        self._ledger.scenario = scenario if scenario is not None else ReportScenario()

    def enqueue(self, *replies: Reply | ErrorReply) -> None:
        """Queue replies; each answers one later request, in order, before conversation mode resumes."""
        for reply in replies:
            if not isinstance(reply, (Reply, ErrorReply)):
                raise TypeError(f"enqueue() takes Reply or ErrorReply, not {type(reply).__name__}")
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Clear the queue, the recorded requests and the conversation state (prompt cache, clock)."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._engine = ConversationEngine()
        self._ledger.clear()
        self.batches.clear()

    def advance_clock(self, seconds: float) -> None:
        """Move the prompt cache's wall clock forward, to expire 5-minute (300 s) or 1-hour entries."""
        with self._lock:
            self._engine.clock_offset += seconds

    def stop(self) -> None:
        """Shut the server down and close its connections. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Simulator(base_url={self._base_url!r}, pending={len(self._queue)})"

    # -- serving --------------------------------------------------------------------------------------

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _serve(self, handler: _Handler) -> None:
        started_ns = time.time_ns()
        raw = _read_body(handler)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else {}
        route = handler.path.split("?", 1)[0].rstrip("/")
        received = (body, headers)  # recorded as sent; a platform's request is answered as a Messages one
        platform = platform_request(route, body)  # Bedrock, Vertex, /anthropic: see _platforms
        if platform is not None:
            route, body, headers = platform.route, platform.body, platform.headers(headers)
            parsed = body
        with self._lock:
            self._served += 1
            request_id = f"req_sim_{self._served}"
            self._requests.append(RecordedRequest(handler.path, received[1], received[0], handler.command))
            if is_batches_route(route):
                args = (parsed, headers, self._engine, self._scenario, self.base_url)
                answer = self.batches.answer(handler.command, handler.path, *args)
            else:
                reply = self._choose(handler.command, route, parsed, headers)
        if is_batches_route(route):
            status, head, data = encode_answer(answer, request_id)
            with contextlib.suppress(OSError):  # the client hung up
                handler.wfile.write(_head(handler, status, head) + data)
            return
        if route in _REPORTS and isinstance(reply, Reply) and reply.body is _ANSWER_REPORT:
            query = handler.path.split("?", 1)[1] if "?" in handler.path else ""
            try:
                reply = Reply(self._ledger.answer(route, query, headers))
            except SimulationError as err:
                reply = ErrorReply(err.status, error_type=err.error_type, message=err.message)
        elif (
            route == _MESSAGES
            and isinstance(reply, Reply)
            and reply.cut_after_events is None
            and reply.error_after_events is None
        ):
            # booked as served: what the organisation reports count. Never fails the reply: a queued body
            # may be deliberately malformed, and then it is simply not booked. A platform's calls are
            # billed by the cloud, not in Anthropic's reports.
            with contextlib.suppress(Exception):
                if platform is None:
                    self._ledger.record(reply.body, _api_key(headers), time.time())
                    self.telemetry.record(reply.body, request_id, headers, started_ns, time.time_ns())
        streaming = isinstance(reply, Reply) and route == _MESSAGES and body.get("stream") is True
        if isinstance(reply, Reply) and reply.delay_s > 0:
            time.sleep(reply.delay_s)  # outside the lock: only this connection waits
        try:
            if platform is not None and platform.bedrock and isinstance(reply, Reply):
                write_bedrock(handler, reply, request_id, streaming, _head)
            elif isinstance(reply, ErrorReply):
                _write_json(
                    handler,
                    reply.status,
                    {**reply.body, "request_id": request_id},
                    request_id,
                    reply.response_headers(),
                )
            elif streaming:
                _write_sse(handler, reply, request_id)
            else:
                _write_json(
                    handler,
                    200,
                    reply.body,
                    request_id,
                    reply.headers,
                    cut=reply.cut_after_events is not None,
                )
        except OSError:
            handler.close_connection = True  # the client hung up mid-response
        except (TypeError, ValueError) as err:
            # a queued body that is not JSON; replies are encoded before any byte is written, so the
            # client can still get a proper error
            error = ErrorReply(500, message=f"simulator: the queued reply is not JSON: {err}")
            _write_json(handler, 500, {**error.body, "request_id": request_id}, request_id, None)

    def _choose(self, method: str, route: str, parsed: JSON, headers: dict[str, str]) -> Reply | ErrorReply:
        """What answers this request; called under the lock."""
        if method == "GET" and route in _REPORTS:
            # a queued error answers a report request too (to test a client's handling of 401, 429...)
            if self._queue and isinstance(self._queue[0], ErrorReply):
                return self._queue.popleft()
            return Reply(_ANSWER_REPORT)
        if method != "POST" or route not in (_MESSAGES, _COUNT_TOKENS):
            return ErrorReply(404, error_type="not_found_error", message=f"Not found: {method} {route}")
        if self._queue:
            return self._queue.popleft()
        if not isinstance(parsed, dict):
            return ErrorReply(400, message="The request body is not valid JSON.")
        betas = {b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()}
        try:
            if route == _COUNT_TOKENS:
                return Reply(self._engine.count(parsed))
            return Reply(self._engine.respond(parsed, betas, self._scenario))
        except SimulationError as err:
            return ErrorReply(err.status, error_type=err.error_type, message=err.message)
        except Exception as err:  # a bug here must reach the test as a response, not a hung connection
            return ErrorReply(500, message=f"simulator error: {err!r}")


def _api_key(headers: dict[str, str]) -> str:
    """The key a request carried: `x-api-key`, or `authorization: Bearer ...` (what the SDK sends)."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")


_ANSWER_REPORT: JSONObject = {}
"""Marks a report request to be answered from the ledger, outside the lock."""


def _read_body(handler: _Handler) -> bytes:
    if "chunked" in (handler.headers.get("transfer-encoding") or "").lower():
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    try:
        length = int(handler.headers.get("content-length") or 0)
    except ValueError:
        length = 0  # a malformed length reads as an empty body, answered with a 400
    return handler.rfile.read(length) if length > 0 else b""


def _head(handler: _Handler, status: int, headers: dict[str, str]) -> bytes:
    if handler.close_connection:
        headers["connection"] = "close"
    lines = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _merged(base: dict[str, str], extra: JSON) -> dict[str, str]:
    merged = dict(base)
    for key, value in (extra or {}).items():
        merged[str(key).lower()] = str(value)
    return merged


def _write_json(
    handler: _Handler, status: int, body: JSON, request_id: str, extra: JSON, cut: bool = False
) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = _merged(
        {"content-type": "application/json", "content-length": str(len(data)), "request-id": request_id},
        extra,
    )
    if cut:
        # a body shorter than its content-length, then a closed connection: a truncated response
        data = data[: len(data) // 2]
        handler.close_connection = True
    handler.wfile.write(_head(handler, status, headers) + data)  # one write: one packet on loopback


def _write_sse(handler: _Handler, reply: Reply, request_id: str) -> None:
    # chunked, not connection-close: the connection stays reusable, and a cut is detectable as an
    # unterminated body rather than looking like a normal end of stream
    headers = _merged(
        {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            "request-id": request_id,
        },
        reply.headers,
    )
    events = stream_events(reply.body)
    cut = reply.cut_after_events
    if cut is not None:
        events = events[: max(cut, 0)]
        handler.close_connection = True  # the body is never ended, even when every event was sent
    if reply.error_after_events is not None:
        events = [*events[: max(reply.error_after_events, 0)], reply.error_event()]
    parts = [_head(handler, 200, headers)]
    for event in events:
        chunk = encode_event(event)
        parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    if cut is None:
        parts.append(b"0\r\n\r\n")
    # one write per response: the SDK parses event by event all the same, at a fraction of the syscalls
    handler.wfile.write(b"".join(parts))
