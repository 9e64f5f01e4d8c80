"""The store across processes: concurrent writers on one SQLite file, what a hard kill (SIGKILL) loses, and
what SIGTERM keeps.

Children are real interpreters running compactobs' store behind the real BatchSpanProcessor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from compactobs import store
from compactobs.store import calls
from compactobs.store.exporter import DEFAULT_MAX_EXPORT_BATCH_SIZE
from tests.store.test_exporter import count

ROOT = Path(__file__).resolve().parent.parent.parent
SPANS_PER_CALL = 3  # emit_call: the call span and two iteration spans

WRITER = """
import json, sys, threading
from opentelemetry.sdk.trace import TracerProvider
from compactobs import semconv as t
from compactobs import store
from tests.store.test_exporter import emit_call

url, spool, name, threads, calls = sys.argv[1:]
stats = []

def work(k):
    provider = TracerProvider()
    processor = store.install(provider, url, spool_dir=spool)
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    for i in range(int(calls)):
        emit_call(tracer, conversation=f"{name}-{k}-{i}")
        if i % 10 == 9:
            processor.force_flush()  # many small transactions, racing the other writers
    provider.shutdown()
    stats.append(vars(processor.exporter.stats))

workers = [threading.Thread(target=work, args=(k,)) for k in range(int(threads))]
for w in workers: w.start()
for w in workers: w.join()
print(json.dumps(stats))
"""

STEADY_TRAFFIC = """
import os, sys, time
from opentelemetry.sdk.trace import TracerProvider
from compactobs import semconv as t
from compactobs import store
from tests.store.test_exporter import emit_call

url, spool, progress = sys.argv[1:]
provider = TracerProvider()
store.install(provider, url, spool_dir=spool)
tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
fd = os.open(progress, os.O_RDWR | os.O_CREAT)
i = 0
while True:
    emit_call(tracer, conversation=str(i))
    i += 1
    os.pwrite(fd, i.to_bytes(8, "little"), 0)  # calls ended so far, for the parent to read after the kill
    if i % 10 == 0:
        time.sleep(0.005)  # about 1,500 calls/s: a busy service, well under the store's throughput
"""

SPOOL_THEN_HANG = """
import sys, time
from opentelemetry.sdk.trace import TracerProvider
from compactobs import semconv as t
from compactobs import store
from tests.store.test_exporter import emit_call

url, spool = sys.argv[1:]
provider = TracerProvider()
processor = store.install(provider, url, spool_dir=spool)
tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
for i in range(100):
    emit_call(tracer, conversation=str(i))
processor.force_flush()
print(processor.exporter.stats.spooled, flush=True)
time.sleep(600)
"""

SIGTERM_INSIDE_A_HAND_OVER = """
import os, signal, sys, time
import anthropic, compactobs
from compactobs.instrument import state
from compactobs.testing import Reply, Simulator, message

url, calls = sys.argv[1], int(sys.argv[2])
compactobs.configure(url)
with Simulator() as sim:
    sim.enqueue(*[Reply(message(usage={"input_tokens": 10, "output_tokens": 2}))] * calls)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()])
    for _ in range(calls):
        client.messages.create(
            model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    # SIGTERM lands while this thread holds the lock a call's hand-over to the recorder takes (Event.set
    # holds it), as it can at any moment in a busy application; the flush needs that lock too.
    with state.get_telemetry_if_set()._wake._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        while signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # until the handler has run
            time.sleep(0.001)
        print("handler returned", flush=True)  # still holding the lock: the flush waits for it
        time.sleep(0.2)
    time.sleep(60)  # SIGTERM's default action, after the flush, ends the process long before this does
print("not terminated", flush=True)
"""

# The store's tests run on SQLite and on PostgreSQL through each driver compactobs supports.
@pytest.fixture
def postgres_url(postgres_url_by_driver: str) -> str:
    return postgres_url_by_driver


@pytest.fixture
def database_url(database_url_by_driver: str) -> str:
    return database_url_by_driver



def python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_processes_of_four_threads_share_one_sqlite_file(sqlite_url: str, tmp_path: Path) -> None:
    """16 writers, each with its own processor and engine, on a file none of them has created yet."""
    processes = [python(WRITER, sqlite_url, str(tmp_path / "spool"), f"p{n}", "4", "50") for n in range(4)]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        stats = json.loads(out)
        assert len(stats) == 4
        assert all(s["spooled"] == 0 and s["dropped"] == 0 and s["written"] == 50 for s in stats), stats
    assert count(sqlite_url) == (4 * 4 * 50, 4 * 4 * 50 * 2)


def test_a_hard_kill_loses_at_most_the_batch_in_flight_and_the_queue(sqlite_url: str, tmp_path: Path) -> None:
    store.upgrade_database(sqlite_url)
    progress = tmp_path / "progress"
    child = python(STEADY_TRAFFIC, sqlite_url, str(tmp_path / "spool"), str(progress))
    try:
        deadline = time.monotonic() + 60
        ended = 0
        while ended < 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
            ended = int.from_bytes(progress.read_bytes()[:8] or b"\0", "little") if progress.exists() else 0
        assert ended >= 3000, child.stderr.read() if child.poll() is not None and child.stderr else "too slow"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    ended = int.from_bytes(progress.read_bytes()[:8], "little")

    engine = store.make_engine(sqlite_url, create=False)
    with engine.connect() as connection:
        stored = [int(c) for (c,) in connection.execute(select(calls.c.conversation_id))]
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    engine.dispose()
    lost = ended - len(stored)
    print(f"\nSIGKILL after {ended} calls ended: {len(stored)} stored, {lost} lost")
    # Exported oldest first and committed whole: what is stored is every call up to some point, no holes.
    assert sorted(stored) == list(range(len(stored)))
    # What a kill can lose is what only memory held: the processor's queue, which it exports whenever it
    # reaches a batch (or each second), plus the batch whose transaction the kill cut.
    batch_calls = DEFAULT_MAX_EXPORT_BATCH_SIZE // SPANS_PER_CALL
    assert 0 <= lost <= 2 * batch_calls + 1


def test_rows_spooled_by_a_killed_process_are_written_by_the_next(postgres_url: str, tmp_path: Path) -> None:
    """The database is not ready (never upgraded), the process spools, and dies by SIGKILL."""
    spool = str(tmp_path / "spool")
    child = python(SPOOL_THEN_HANG, postgres_url, spool)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "100", child.stderr.read() if child.stderr else ""
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)

    store.upgrade_database(postgres_url)
    exporter = store.SqlSpanExporter(postgres_url, spool_dir=spool)
    assert exporter.force_flush()
    assert exporter.stats.replayed == 100
    assert count(postgres_url) == (100, 200)
    assert exporter.spool.segments() == []
    exporter.shutdown()


def test_sigterm_flushes_every_call_then_terminates_even_when_it_lands_inside_a_lock(sqlite_url: str) -> None:
    """Before, the handler flushed on the interrupted thread and waited forever on a lock that thread held."""
    store.upgrade_database(sqlite_url)
    child = python(SIGTERM_INSIDE_A_HAND_OVER, sqlite_url, "25")
    try:
        out, err = child.communicate(timeout=50)
    finally:
        if child.poll() is None:  # hung: the deadlock this test is about
            child.kill()
            child.communicate()
    assert child.returncode == -signal.SIGTERM, (child.returncode, out, err)
    assert out.splitlines() == ["handler returned"], err  # the application went on until the flush ended
    assert "Traceback" not in err, err
    assert count(sqlite_url) == (25, 25)  # every call, each one message iteration (no iterations array)
