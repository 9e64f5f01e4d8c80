"""ClickHouse's HTTP interface in front of a chdb session, for the `clickhouse://` source's tests.

No ClickHouse server can be installed here (Debian's package is 18.16, without Map columns or window
functions), so the real engine, chdb's, answers behind a minimal HTTP front: what clickhouse-connect sends
(the query in the body or the `query` parameter, settings and `default_format` as URL parameters, HTTP
basic or `X-ClickHouse-User` credentials) becomes one chdb query; its output is the response; an engine
error is a 500 with ClickHouse's `Code: N. DB::Exception: ...` text and `X-ClickHouse-Exception-Code`,
as the server answers (ClickHouse docs, "HTTP Interface"). Requests run one at a time: a chdb session
runs one query at a time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# URL parameters that are the interface's own, not query settings.
_NOT_SETTINGS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "client_protocol_version",
        "wait_end_of_query",
    }
)
_FORMAT_AT_END = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)


def _literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.session = session
        self.lock = threading.Lock()
        self.queries: list[tuple[str, dict[str, str]]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Front

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _answer(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path == "/ping":
            self._send(200, b"Ok.\n", {})
            return
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        sql = (params.get("query", "") + "\n" + body.decode("utf-8")).strip()
        settings = {k: v for k, v in params.items() if k not in _NOT_SETTINGS}
        output = params.get("default_format", "TabSeparated")
        found = _FORMAT_AT_END.search(sql)
        if found:
            output, sql = found.group(1), sql[: found.start()]
        if settings:
            sql += " SETTINGS " + ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items())
        with self.server.lock:
            self.server.queries.append((sql, settings))
            try:
                result = self.server.session.query(sql, output)
                data = result.bytes() if hasattr(result, "bytes") else bytes(result)
            except Exception as err:
                text = str(err).strip()
                code = re.search(r"Code: (\d+)", text)
                self._send(
                    500,
                    (text if text.startswith("Code:") else f"Code: 1. DB::Exception: {text}").encode(),
                    {"X-ClickHouse-Exception-Code": code.group(1) if code else "1"},
                )
                return
        headers = {
            "X-ClickHouse-Format": output,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Query-Id": params.get("query_id", "0"),
            "X-ClickHouse-Summary": '{"read_rows":"0","read_bytes":"0","written_rows":"0"}',
        }
        self._send(200, data, headers)

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def http_front(session: Any) -> Iterator[_Front]:
    """Serve `session` over HTTP on a free loopback port (`front.server_port`) until the block ends."""
    front = _Front(session)
    thread = threading.Thread(target=front.serve_forever, name="clickhouse-http", daemon=True)
    thread.start()
    try:
        yield front
    finally:
        front.shutdown()
        front.server_close()
        thread.join(5)
