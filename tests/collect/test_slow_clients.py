"""`compactobs collect` against clients that hold connections: idle ones give their place up when it is
wanted, ones that trickle a request's head or body are cut off, and none of them keeps a real exporter out.
Real sockets; the only times asserted are generous upper bounds."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compactobs.collect import Collector
from compactobs.collect.server import HEAD_TIMEOUT_S
from tests.collect.test_claude_code import logs_request
from tests.collect.test_collect import _export_one, post, prepared, rows

GENEROUS_S = 90.0
"""An upper bound far beyond the server's deadlines (5 s for a head, 10 s of grace for a body)."""
STEP_S = 0.5
"""A trickler's pause between pieces: far below the 30 s per-read timeout that used to be the only bound."""


def _address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _post_logs(endpoint: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = post(endpoint, logs_request(), {"Content-Type": "application/json"}, path="/v1/logs")
    return status, headers


class Trickler(threading.Thread):
    """A client without the token that starts a request and then sends one more piece every STEP_S until the
    server ends the connection (or GENEROUS_S pass)."""

    def __init__(self, endpoint: str, *, body: bool) -> None:
        super().__init__(daemon=True)
        self.connection = socket.create_connection(_address(endpoint), timeout=30)
        head = b"POST /v1/logs HTTP/1.1\r\nHost: x\r\n"
        if body:  # the head complete; the body announced, then sent a byte at a time
            head += b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        self.connection.sendall(head)
        self.piece = b"{" if body else b"X-Slow: y\r\n"
        self.pieces_sent = 0
        self.cut_off = threading.Event()
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        with self.connection:
            while time.monotonic() - started < GENEROUS_S:
                try:
                    readable, _, _ = select.select([self.connection], [], [], STEP_S)
                    if readable:
                        while self.connection.recv(65536):  # an answer (a 408), then the end
                            pass
                        break
                    self.connection.sendall(self.piece)
                    self.pieces_sent += 1
                except OSError:  # reset or broken pipe: the server closed it
                    break
            else:
                return
        self.seconds = time.monotonic() - started
        self.cut_off.set()


@contextlib.contextmanager
def trickling(endpoint: str, count: int, *, body: bool = False) -> Iterator[list[Trickler]]:
    tricklers = [Trickler(endpoint, body=body) for _ in range(count)]
    for trickler in tricklers:
        trickler.start()
    try:
        yield tricklers
    finally:
        for trickler in tricklers:
            trickler.join(GENEROUS_S + 10)


def test_idle_connections_give_their_places_to_a_new_request(sqlite_url: str, tmp_path: Path) -> None:
    with Collector(
        prepared(sqlite_url), http="127.0.0.1:0", max_connections=2, spool_dir=tmp_path / "spool"
    ) as collector:
        address = _address(collector.endpoint)
        with contextlib.ExitStack() as held:
            # Two idle keep-alive connections take both places (each has a thread waiting for a request).
            oldest, newest = (
                held.enter_context(socket.create_connection(address, timeout=30)) for _ in range(2)
            )
            time.sleep(0.2)  # let the server accept both before the third arrives
            assert _post_logs(collector.endpoint)[0] == 200
            assert collector.turned_away == 0
            assert oldest.recv(1) == b""  # the oldest idle one was closed for it
            newest.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open: one place was wanted, one connection closed
                newest.recv(1)


def test_clients_trickling_a_head_or_a_body_are_cut_off_and_their_places_freed(
    sqlite_url: str, tmp_path: Path
) -> None:
    with Collector(
        prepared(sqlite_url), http="127.0.0.1:0", max_connections=2, spool_dir=tmp_path / "spool"
    ) as collector:
        with trickling(collector.endpoint, 1) as heads, trickling(collector.endpoint, 1, body=True) as bodies:
            time.sleep(0.2)  # both accepted: each has begun a request, so neither is idle
            status, headers = _post_logs(collector.endpoint)
            assert (status, headers.get("Retry-After")) == (503, "1")
            assert collector.turned_away == 1
            for trickler in (*heads, *bodies):
                assert trickler.cut_off.wait(GENEROUS_S + 10)
        # Each kept sending well inside any per-read timeout, and was cut off all the same.
        (head,), (body,) = heads, bodies
        assert head.pieces_sent > HEAD_TIMEOUT_S / STEP_S / 2
        assert body.pieces_sent > 2
        # max_connections=2 and both places free again: two requests at once are served.
        results: list[int] = []
        both = [
            threading.Thread(target=lambda: results.append(_post_logs(collector.endpoint)[0]))
            for _ in range(2)
        ]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join(60)
        assert results == [200, 200]
        assert collector.turned_away == 1


def test_a_real_exporter_lands_while_idle_and_trickling_clients_hold_every_place(
    sqlite_url: str, tmp_path: Path
) -> None:
    with Collector(
        prepared(sqlite_url), http="127.0.0.1:0", max_connections=3, spool_dir=tmp_path / "spool"
    ) as collector:
        with contextlib.ExitStack() as held, trickling(collector.endpoint, 2):
            held.enter_context(socket.create_connection(_address(collector.endpoint), timeout=30))
            time.sleep(0.2)  # all three places taken: one idle connection, two requests trickling
            _export_one(collector.endpoint)  # the idle connection gives its place up
            assert collector.turned_away == 0
        assert collector.stats.spans_stored == 3  # the call and its two iterations


def test_a_real_exporter_lands_when_trickling_clients_hold_every_place(
    sqlite_url: str, tmp_path: Path
) -> None:
    with Collector(
        prepared(sqlite_url), http="127.0.0.1:0", max_connections=2, spool_dir=tmp_path / "spool"
    ) as collector:
        with trickling(collector.endpoint, 2) as tricklers:
            time.sleep(0.2)  # both places taken by requests that never finish their head
            _export_one(collector.endpoint)  # 503 + Retry-After until the tricklers are cut off; it retries
            assert all(trickler.cut_off.is_set() for trickler in tricklers)
        assert collector.stats.spans_stored == 3
    ((call,), iteration_rows) = rows(sqlite_url)
    assert len(iteration_rows) == 2 and call["conversation_id"] == "conv-0"
