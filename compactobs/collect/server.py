"""`compactobs collect`'s OTLP/HTTP receiver: requests in, answers per the OTLP specification.

Standard library only (`http.server` on threads): one request is decoded on its thread, then handed to the
store (`compactobs.collect.sink`), which makes it durable before the answer goes out.

- `/v1/traces`, `/v1/logs`, `/v1/metrics`; protobuf (`application/x-protobuf`) or JSON
  (`application/json`), answered in the encoding of the request;
- bodies plain or gzip, with a Content-Length or chunked; bounded by `max_request_bytes` before and after
  decompression (413);
- a bearer token when one is set (401 without it); a bind beyond loopback must set one;
- 200 with `partial_success` for data it does not keep (and why); 503 with Retry-After when the store
  cannot take a batch now (the spool full, or the store busy past the wait bound), so clients retry; 400
  for a body that is not OTLP, which clients must not retry;
- at most `max_connections` connections served at once (one thread each). A place is held by a request in
  flight or by a connection idle between requests; when none is free, the longest idle connection is closed
  to make one, and the new connection waits on a thread of its own (never the accepting thread) up to
  CONNECTION_WAIT_S for a place, then is answered 503 with Retry-After and closed;
- deadlines for the whole of a request, not per socket read: the next request's first byte within
  IDLE_TIMEOUT_S, its head within HEAD_TIMEOUT_S, its body at MIN_BODY_BYTES_PER_S after BODY_GRACE_S. A
  client that trickles bytes is cut off and its place freed.
"""

from __future__ import annotations

import contextlib
import gzip
import hmac
import io
import ipaddress
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status as RpcStatus

from compactobs.errors import CompactobsError, UserError

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "Answer",
    "CollectError",
    "HttpReceiver",
    "is_loopback",
    "parse_bind",
]

log = logging.getLogger("compactobs.collect")

DEFAULT_HTTP: Final = "127.0.0.1:4318"
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
"""Per request, after decompression. The official SDKs' batches (512 spans) are far below it."""
PATHS: Final = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
RETRY_AFTER_S: Final = 1
DEFAULT_MAX_CONNECTIONS: Final = 64
"""Connections served at once, each on its own thread: the OTLP SDKs keep one or a few per process."""
CONNECTION_WAIT_S: Final = 1.0
"""How long a connection beyond the bound waits for a place (on its own thread) before it is answered 503."""
IDLE_TIMEOUT_S: Final = 15.0
"""A keep-alive connection with no request begun for this long is closed: beyond the SDKs' 5 s batch delay,
so a steady exporter keeps its connection."""
HEAD_TIMEOUT_S: Final = 5.0
"""A request's line and headers, from its first byte, arrive within this or the connection is closed."""
BODY_GRACE_S: Final = 10.0
MIN_BODY_BYTES_PER_S: Final = 32 * 1024
"""A body arrives at this rate at least, after BODY_GRACE_S: 16 MiB within 522 s, 1 MiB within 42 s."""
WRITE_TIMEOUT_S: Final = 30.0
_BUSY_READ_BYTES: Final = 64 * 1024
_BUSY_ANSWER: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
    + str(RETRY_AFTER_S).encode()
    + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


_Request = socket.socket | tuple[bytes, socket.socket]
"""What socketserver hands a server per request: a TCP connection (a datagram server's is a pair)."""
_Address = tuple[str, int] | str


class CollectError(UserError):
    """A setting of `collect` the user can fix (a bind, a token file). One line."""


@dataclass(frozen=True)
class Answer:
    """What a handler gives back for a decoded request: an HTTP status and a message to encode."""

    status: int
    message: Message | None = None
    error: str | None = None
    retry_after_s: int | None = None


Handler = Callable[[str, bytes, bool], Answer]
"""(signal, body, is_json) -> Answer; signal is `traces`, `logs` or `metrics`."""


def parse_bind(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:4318) -> (host, port). Raises CollectError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CollectError(f"{value!r} is not HOST:PORT (e.g. {DEFAULT_HTTP})")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], receiver: HttpReceiver, max_connections: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.receiver = receiver
        self.places = threading.BoundedSemaphore(max_connections)
        self.waiting = threading.BoundedSemaphore(max_connections)
        """Connections waiting for a place, each on its own thread: beyond these, one is answered at once."""
        self._lock = threading.Lock()
        self._idle: dict[_RequestHandler, None] = {}
        """Connections between requests, oldest first: the ones closed when a place is wanted."""
        self.turned_away = 0
        """Connections answered 503 because every place stayed taken for CONNECTION_WAIT_S."""
        super().__init__(address, _RequestHandler)

    def process_request(self, request: _Request, client_address: _Address) -> None:
        # On the accepting thread, which never waits: a place now, or a thread that waits for one.
        if self.places.acquire(blocking=False):
            self._hand_off(self.process_request_thread, request, client_address, self.places)
            return
        self._close_one_idle()
        if self.waiting.acquire(blocking=False):
            self._hand_off(self._wait_for_a_place, request, client_address, self.waiting)
            return
        self._turn_away(request, linger=False)

    def _hand_off(
        self,
        target: Callable[[_Request, _Address], None],
        request: _Request,
        client_address: _Address,
        held: threading.BoundedSemaphore,
    ) -> None:
        try:
            threading.Thread(target=target, args=(request, client_address), daemon=True).start()
        except BaseException:
            held.release()
            self.shutdown_request(request)
            raise

    def _wait_for_a_place(self, request: _Request, client_address: _Address) -> None:
        try:
            placed = self.places.acquire(timeout=CONNECTION_WAIT_S)
        finally:
            self.waiting.release()
        if placed:
            self.process_request_thread(request, client_address)
        else:
            self._turn_away(request, linger=True)

    def _turn_away(self, request: _Request, *, linger: bool) -> None:
        with self._lock:
            self.turned_away += 1
        if isinstance(request, socket.socket):  # a TCP server's request is its connection
            _answer_busy(request, linger=linger)
        self.shutdown_request(request)

    def process_request_thread(self, request: _Request, client_address: _Address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.places.release()

    def idle(self, handler: _RequestHandler) -> None:
        with self._lock:
            self._idle[handler] = None

    def busy(self, handler: _RequestHandler) -> bool:
        """The handler's connection starts a request; False when it was closed to free its place."""
        with self._lock:
            self._idle.pop(handler, None)
            return not handler.evicted

    def _close_one_idle(self) -> None:
        with self._lock:
            if not self._idle:
                return
            handler = next(iter(self._idle))
            del self._idle[handler]
            handler.evicted = True
            # Its thread, waiting to read, sees the end of the connection and frees the place.
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)


def _answer_busy(connection: socket.socket, *, linger: bool) -> None:
    """503 + Retry-After on a connection no place can serve. With `linger` (on a waiting thread, never the
    accepting one), what has arrived of the request is read first (briefly), so that closing does not reset
    the connection before the client reads the answer; without, the answer is sent only if it fits now."""
    try:
        if not linger:
            connection.setblocking(False)
            connection.send(_BUSY_ANSWER)
            return
        connection.settimeout(0.05)
        with contextlib.suppress(OSError):
            connection.recv(_BUSY_READ_BYTES)
        connection.sendall(_BUSY_ANSWER)
        connection.shutdown(socket.SHUT_WR)
        # Until the client closes its side, for a bounded time and amount (on the waiting thread).
        deadline = time.monotonic() + 0.2
        read = 0
        with contextlib.suppress(OSError):
            while read < 16 * _BUSY_READ_BYTES and time.monotonic() < deadline:
                piece = connection.recv(_BUSY_READ_BYTES)
                if not piece:
                    break
                read += len(piece)
    except OSError:
        pass


class _TooLarge(CompactobsError):
    def __init__(self, drained: bool) -> None:
        super().__init__()
        self.drained = drained
        """The body was read to its end: the connection can carry the answer and another request."""


DRAIN_MAX_BYTES: Final = 64 * 1024 * 1024
"""An oversized body up to this size is read and dropped before the 413, so the client reads the answer
instead of a reset connection; a larger one gets the answer and the connection closed."""


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes under one deadline for a whole phase (not per read): fixed, or moving on with
    each byte received (a minimum rate). Past it, reading raises TimeoutError."""

    def __init__(self, connection: socket.socket) -> None:
        super().__init__()
        self._connection = connection
        self._start = time.monotonic()
        self._seconds_per_byte = 0.0
        self._received = 0

    def readable(self) -> bool:
        return True

    def within(self, seconds: float, *, bytes_per_s: float | None = None) -> None:
        """From now, the next bytes arrive within `seconds` (plus one second per `bytes_per_s` received)."""
        self._start = time.monotonic() + seconds
        self._seconds_per_byte = 1 / bytes_per_s if bytes_per_s else 0.0
        self._received = 0

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        remaining = self._start + self._received * self._seconds_per_byte - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client sent too slowly")
        self._connection.settimeout(remaining)
        count = self._connection.recv_into(buffer)
        self._received += count
        return count


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "compactobs-collect"
    timeout = WRITE_TIMEOUT_S  # for answers; reads run under the phase deadlines of `_DeadlineReader`
    server: _Server
    evicted = False
    """Closed while idle to free its place (set by the server under its lock)."""

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader, 64 * 1024)
        self.rfile = self._buffered

    def handle_one_request(self) -> None:
        # Idle until the next request's first byte (closed early when its place is wanted), then its head
        # within HEAD_TIMEOUT_S; `do_POST` sets the body's deadline.
        self.server.idle(self)
        self._reader.within(IDLE_TIMEOUT_S)
        try:
            started = bool(self._buffered.peek(1))
        except OSError:
            started = False
        if not self.server.busy(self) or not started:
            self.close_connection = True
            return
        self._reader.within(HEAD_TIMEOUT_S)
        super().handle_one_request()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("collect: " + format, *args)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        signal = PATHS.get(path)
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        is_json = content_type == JSON
        if signal is None:
            self._fail(HTTPStatus.NOT_FOUND, f"no OTLP endpoint at {path}: use {', '.join(PATHS)}", is_json)
            return
        if receiver.token is not None and not self._authorized(receiver.token):
            self._fail(
                HTTPStatus.UNAUTHORIZED, "a bearer token is required (Authorization: Bearer ...)", is_json
            )
            return
        if content_type not in (PROTOBUF, JSON):
            self._fail(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {content_type or 'missing'}: send {PROTOBUF} or {JSON}",
                is_json,
            )
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            self._fail(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Encoding {encoding}: send gzip or none", is_json
            )
            return
        limit = receiver.max_request_bytes
        self._reader.within(BODY_GRACE_S, bytes_per_s=MIN_BODY_BYTES_PER_S)
        try:
            body = self._read_body(limit)
            if encoding == "gzip":
                body = _gunzip(body, limit)
        except _TooLarge as err:
            self._fail(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request is over {limit} bytes",
                is_json,
                keep_alive=err.drained,
            )
            return
        except TimeoutError:
            self._fail(HTTPStatus.REQUEST_TIMEOUT, "the body arrived too slowly", is_json)
            return
        except (ValueError, OSError, EOFError, zlib.error) as err:
            self._fail(HTTPStatus.BAD_REQUEST, f"unreadable body: {err}", is_json)
            return
        try:
            answer = receiver.handler(signal, body, is_json)
        except Exception:
            # A fault of this request's data or of compactobs, not of the store: resending it would fail
            # the same way, so the answer is not one OTLP clients retry (only a store stall is).
            log.exception("compactobs collect: a %s request failed", signal)
            answer = Answer(HTTPStatus.INTERNAL_SERVER_ERROR, error="internal error")
        if answer.error is not None:
            self._fail(
                answer.status, answer.error, is_json, retry_after_s=answer.retry_after_s, keep_alive=True
            )
            return
        self._send(answer.status, answer.message, is_json)

    def do_GET(self) -> None:
        self._fail(HTTPStatus.METHOD_NOT_ALLOWED, "OTLP/HTTP takes POST", False, keep_alive=True)

    def _authorized(self, token: str) -> bool:
        given = self.headers.get("Authorization") or ""
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        length = int(length_header) if length_header is not None else 0
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > limit:
            raise _TooLarge(self._drain(length))
        body = self.rfile.read(length)
        if len(body) != length:
            raise EOFError("the body ended early")
        return body

    def _drain(self, length: int) -> bool:
        if length > DRAIN_MAX_BYTES:
            return False
        while length > 0:
            piece = self.rfile.read(min(length, 65536))
            if not piece:
                return False
            length -= len(piece)
        return True

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise EOFError("a chunk header ended early")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:  # int() takes a sign, which HTTP does not: read(-1) would read to the end
                raise ValueError("a negative chunk size")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: none is used
                break
            total += size
            if total > DRAIN_MAX_BYTES:
                raise _TooLarge(drained=False)
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.read(2) != b"\r\n":
                raise EOFError("a chunk ended early")
            if total <= limit:
                parts.append(chunk)
        if total > limit:
            raise _TooLarge(drained=True)
        return b"".join(parts)

    def _send(
        self,
        status: int,
        message: Message | None,
        is_json: bool,
        *,
        extra: dict[str, str] | None = None,
        keep_alive: bool = True,
    ) -> None:
        if message is None:
            payload = b""
        elif is_json:
            payload = json_format.MessageToJson(message, indent=None).encode()
        else:
            payload = message.SerializeToString()
        self.connection.settimeout(self.timeout)  # the read deadline may have left a shorter one
        self.send_response(status)
        self.send_header("Content-Type", JSON if is_json else PROTOBUF)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if not keep_alive:
            # The body was not read: the connection cannot carry another request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _fail(
        self,
        status: int,
        message: str,
        is_json: bool,
        *,
        retry_after_s: int | None = None,
        keep_alive: bool = False,
    ) -> None:
        grpc_codes = {401: 16, 404: 12, 408: 4, 413: 8, 415: 3, 400: 3, 500: 13, 503: 14, 429: 8}
        grpc_code = grpc_codes.get(int(status), 2)
        extra = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
        if status == HTTPStatus.UNAUTHORIZED:
            extra["WWW-Authenticate"] = "Bearer"
        self._send(
            status, RpcStatus(code=grpc_code, message=message), is_json, extra=extra, keep_alive=keep_alive
        )


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decompress every member of a gzip body (RFC 1952 allows several, one after another) with the size
    bound applied to the output, so a small gzip bomb stays small. Bytes after the last member that are
    not another member make the body unreadable, not silently shorter."""
    out = bytearray()
    rest = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflater.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise _TooLarge(drained=True)
        if not inflater.eof:
            raise gzip.BadGzipFile("truncated gzip body")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
        if not rest.startswith(b"\x1f\x8b"):
            raise gzip.BadGzipFile("bytes after the gzip data")


class HttpReceiver:
    """The HTTP server: `start()` binds and serves on a thread, `close()` stops. `port` is the bound port
    (useful with port 0)."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 4318,
        token: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if token is None and not is_loopback(host):
            raise CollectError(
                f"listening on {host} (beyond loopback) needs a bearer token: pass --token-file FILE"
            )
        self.handler = handler
        self.token = token
        self.max_request_bytes = max_request_bytes
        try:
            self._server = _Server((host, port), self, max(max_connections, 1))
        except OSError as err:
            raise CollectError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def turned_away(self) -> int:
        """Connections answered 503 because `max_connections` were being served."""
        return self._server.turned_away

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="compactobs-collect-http",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
