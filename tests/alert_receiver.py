"""A loopback HTTP receiver for alert sinks: records each POST's path and JSON body, and answers with the
status the test sets (e.g. 503 for a destination that is down)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """`with Receiver() as r:` r.url (a path under it is a secret-looking webhook path), r.bodies."""

    def __init__(
        self, status: int = 200, answer: bytes = b"ok", path: str = "/hook/T000/B000/s3cr3tPath"
    ) -> None:
        self.status = status
        self.answer = answer
        self.path = path
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers), json.loads(raw)))
                    status, answer = receiver.status, receiver.answer
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    @property
    def bodies(self) -> list[Any]:
        with self._lock:
            return [body for _, _, body in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (a destination that is down)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook/down"
