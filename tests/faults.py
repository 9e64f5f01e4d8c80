"""Faults for the store, shared by tests/store/test_faults.py and bench/faults.py: real calls through the
real SDK against the loopback simulator, recorded by compactobs into a real database while it misbehaves,
then counted: tried / stored / lost / doubled / spooled, and calls stored without all their iterations."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, make_url, select

from compactobs import store
from compactobs.store import calls, iterations

# Every call bills two iterations: a compaction, then the message.
USAGE = {
    "input_tokens": 100,
    "output_tokens": 10,
    "iterations": [
        {"type": "compaction", "input_tokens": 1000, "output_tokens": 50},
        {"type": "message", "input_tokens": 100, "output_tokens": 10},
    ],
}
ITERATIONS_PER_CALL = 2


@dataclass
class Outcome:
    tried: int
    stored: int
    lost: int
    doubled: int
    incomplete: int
    """Calls stored without all their iterations (or with iterations but no call)."""
    spooled: int

    def row(self) -> str:
        return (
            f"tried {self.tried:>6}  stored {self.stored:>6}  lost {self.lost:>4}  "
            f"doubled {self.doubled:>3}  incomplete {self.incomplete:>3}  spooled {self.spooled:>5}"
        )


def outcome(url: str, conversations: list[str], spooled: int) -> Outcome:
    """Count, per conversation id (one per call tried), what the store holds."""
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            per_call = dict(
                connection.execute(
                    select(iterations.c.call_id, func.count()).group_by(iterations.c.call_id)
                ).all()
            )
            rows = connection.execute(select(calls.c.call_id, calls.c.conversation_id)).all()
    finally:
        engine.dispose()
    seen: dict[str, int] = {}
    incomplete = 0
    call_ids = set()
    for call_id, conversation in rows:
        seen[conversation] = seen.get(conversation, 0) + 1
        call_ids.add(call_id)
        if per_call.get(call_id, 0) != ITERATIONS_PER_CALL:
            incomplete += 1
    incomplete += sum(1 for call_id in per_call if call_id not in call_ids)
    tried = len(conversations)
    stored = sum(1 for c in conversations if c in seen)
    doubled = sum(n - 1 for n in seen.values() if n > 1)
    return Outcome(tried, stored, tried - stored, doubled, incomplete, spooled)


class App:
    """An application: the real SDK calling the simulator, recorded by compactobs into `url`."""

    def __init__(self, url: str, spool_dir: Path, *, write_timeout_s: float, calls: int) -> None:
        import anthropic

        import compactobs
        from compactobs.testing import Reply, Simulator, message

        self._compactobs = compactobs
        self.sim = Simulator()
        self.sim.__enter__()
        self.sim.enqueue(*[Reply(message(usage=USAGE))] * calls)
        self.provider = TracerProvider()
        compactobs.configure(tracer_provider=self.provider, store=False)
        self.processor = store.install(
            self.provider, url, spool_dir=spool_dir, write_timeout_s=write_timeout_s
        )
        self.client = anthropic.Anthropic(
            base_url=self.sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
        )
        self.conversations: list[str] = []

    def traffic(self, seconds: float, rate: float, tag: str, threads: int = 1) -> None:
        """Calls at about `rate` per second for `seconds` (shared by `threads` client threads), each in a
        conversation of its own."""
        if threads > 1:
            workers = [
                threading.Thread(target=self.traffic, args=(seconds, rate / threads, f"{tag}-t{k}"))
                for k in range(threads)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            return
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
            name = f"{tag}-{n}"
            with self._compactobs.conversation(name):
                self.client.messages.create(
                    model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
            self.conversations.append(name)
            n += 1

    @property
    def spooled(self) -> int:
        stats = self.processor.exporter.stats
        return stats.spooled + stats.overflowed

    def drain(self, timeout_s: float = 30) -> None:
        """Flush until nothing waits in the spool (the database is back)."""
        deadline = time.monotonic() + timeout_s
        self._compactobs.flush()
        while not self.processor.force_flush() and time.monotonic() < deadline:
            time.sleep(0.2)

    def close(self) -> None:
        self._compactobs.shutdown()
        self.provider.shutdown()
        self.sim.__exit__(None, None, None)


class FreezingProxy:
    """A loopback TCP proxy to a server that can stop forwarding (connections stay open, bytes wait): a
    server that stops answering, as a frozen process or a black-holed network looks to its clients."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def postgres_table_lock(url: str) -> Iterator[None]:
    """`LOCK TABLE calls IN ACCESS EXCLUSIVE MODE` held by another session for the block's duration."""
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.exec_driver_sql("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


_SQLITE_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@contextlib.contextmanager
def sqlite_locked_by_another_process(url: str) -> Iterator[None]:
    """Another process holds the SQLite file's write lock (BEGIN EXCLUSIVE) for the block's duration."""
    path = str(store.sqlite_path(store.parse_url(url)))
    sqlite3.connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _SQLITE_HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)


def run_fault(
    url: str,
    spool_dir: Path,
    fault: Callable[[], contextlib.AbstractContextManager[Any]],
    *,
    rate: float,
    before_s: float,
    during_s: float,
    after_s: float,
    write_timeout_s: float,
    tag: str = "c",
    threads: int = 1,
) -> Outcome:
    """Traffic before, during and after the fault, then drain and count."""
    capacity = int(rate * (before_s + during_s + after_s) * 1.2) + 100
    app = App(url, spool_dir, write_timeout_s=write_timeout_s, calls=capacity)
    try:
        app.traffic(before_s, rate, f"{tag}-before", threads)
        with fault():
            app.traffic(during_s, rate, f"{tag}-during", threads)
        app.traffic(after_s, rate, f"{tag}-after", threads)
        app.drain()
        return outcome(url, app.conversations, app.spooled)
    finally:
        app.close()


# --- SIGTERM to a busy application ------------------------------------------------------------------------

_SIGTERM_APP = """
import os, sys, threading, time
import anthropic, compactobs
from compactobs.testing import Reply, Simulator, message
from tests.faults import USAGE

url, progress, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
compactobs.configure(url)
fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
THREADS = 3
with Simulator() as sim:
    sim.enqueue(*[Reply(message(usage=USAGE))] * 100_000)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()])

    def work(k):
        pause = THREADS / rate if rate > 0 else 0.0
        for i in range(100_000):
            started = time.monotonic()
            name = f"{k}-{i}"
            with compactobs.conversation(name):
                client.messages.create(
                    model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
            os.write(fd, (name + "\\n").encode())  # returned to the application
            time.sleep(max(0.0, pause - (time.monotonic() - started)))

    for k in range(THREADS):
        threading.Thread(target=work, args=(k,), daemon=True).start()
    threading.Event().wait()
"""
"""An application making calls on 3 threads (at `rate` calls/s in all; 0: as fast as it can), writing each
conversation id to the progress file once its call has returned."""


@dataclass
class SigtermRun:
    returned: list[str]
    """Conversation ids of the calls that returned to the application before it ended."""
    returncode: int | None
    stderr: str
    spooled: int
    """Calls that had gone to the spool (ended after the store closed), written from it afterwards."""


def sigterm_under_load(url: str, work: Path, *, after_calls: int, rate: float = 0.0) -> SigtermRun:
    """Run `_SIGTERM_APP` against the store at `url` (data directory under `work`), send it SIGTERM once
    `after_calls` calls have returned, then write what waits in its spool (what ended after the store closed
    waits there for the next compactobs on the database)."""
    import os
    import signal

    work.mkdir(parents=True, exist_ok=True)
    progress = work / "progress"
    env = {**os.environ, "XDG_DATA_HOME": str(work / "xdg")}
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_APP, url, str(progress), str(rate)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if progress.exists() and progress.read_text().count("\n") >= after_calls:
                break
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    exporter = store.SqlSpanExporter(url, spool_dir=work / "xdg" / "compactobs" / "spool")
    try:
        exporter.force_flush()
        spooled = exporter.stats.replayed
    finally:
        exporter.shutdown()
    returned = progress.read_text().splitlines() if progress.exists() else []
    return SigtermRun(returned, child.returncode, err, spooled)
