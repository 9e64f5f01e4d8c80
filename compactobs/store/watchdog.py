"""A client-side bound on waiting for PostgreSQL: for a server that stops answering.

`statement_timeout` and `lock_timeout` bound what the server does, and only a server that still runs can
enforce them; a frozen server (SIGSTOP, a dead host behind a live proxy, a network that drops packets)
leaves the driver blocked on its socket for as long as TCP lets it. The watchdog shuts those sockets down
(`shutdown(2)`, which wakes a thread blocked reading them) once an armed deadline passes: the driver then
fails with a lost connection, which the exporter treats like any outage, spooling the rows. A transaction
cut that way may or may not have committed; the replay's idempotent upsert makes either harmless.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Iterator

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["SocketWatchdog"]


class SocketWatchdog:
    """Watches one engine's connections (used by one thread at a time, as the exporter does)."""

    def __init__(self, engine: Engine) -> None:
        self._connections: weakref.WeakSet[DBAPIConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._armed = threading.Condition(self._lock)
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self.fired = 0
        """How many times a deadline passed and sockets were cut."""
        event.listen(engine, "connect", self._connected)

    def _connected(self, dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        self._connections.add(dbapi_connection)

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Cut the engine's sockets if the block has not finished within `seconds`."""
        with self._lock:
            self._deadline = time.monotonic() + seconds
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch, name="compactobs-store-watchdog", daemon=True
                )
                self._thread.start()
            self._armed.notify()
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _watch(self) -> None:
        with self._lock:
            while True:
                if self._deadline is None:
                    # Idle: the thread ends after a while and is started again when needed.
                    if not self._armed.wait(60) and self._deadline is None:
                        self._thread = None
                        return
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._armed.wait(remaining)
                    continue
                self._deadline = None
                self.fired += 1
                self._cut()

    def _cut(self) -> None:
        for connection in list(self._connections):
            try:
                fd = connection.fileno()
            except Exception:  # closed meanwhile
                continue
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=socket.dup(fd))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()
