"""Forked workers: every call a forked child makes lands in the store, priced, on SQLite and PostgreSQL.

Each test runs an application in a fresh interpreter (forking the pytest process itself would copy its
threads' locks): `compactobs.instrument(url)`, the real SDK against the simulator in the parent, one call
made by the parent before the fork (so the recorder and the store's threads are busy when it forks), then
children that make calls and end as real workers end:
- a multiprocessing Pool with the fork start method (its workers end with `os._exit` after
  multiprocessing's own finalizers, so atexit never runs in them);
- a pre-forking server: a parent forks N workers that each make calls and `sys.exit` (gunicorn's way);
- a child that ends with `os._exit` itself, after `compactobs.flush()` (the documented remedy);
- a child sent SIGTERM while its main thread waits, for good, in a lock another process holds (as `Pool`
  workers are when `Pool.terminate()` ends them).

Every reply bills 1,000 input and 100 output tokens at claude-opus-4-8 ($5/$25 per MTok):
1,000 x 5/1e6 + 100 x 25/1e6 = 0.005 + 0.0025 = $0.0075 a call.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from compactobs import store
from compactobs.store import calls, guard_spend

ROOT = Path(__file__).resolve().parent.parent.parent
PER_CALL = Decimal("0.0075")

PRELUDE = textwrap.dedent(
    """
    import os, sys
    import anthropic, compactobs
    from compactobs.testing import Reply, Simulator, message

    url, children, calls_each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    compactobs.instrument(url)
    sim = Simulator()
    sim.__enter__()
    reply = Reply(message(usage={"input_tokens": 1000, "output_tokens": 100}))
    sim.enqueue(*[reply] * (1 + children * calls_each))
    clients = {}

    def call():
        # A client per process, as a forking app must have: an HTTP connection pool copied by a fork shares
        # its open sockets with the parent, and two processes' requests on one socket mix their answers.
        client = clients.get(os.getpid())
        if client is None:
            client = clients[os.getpid()] = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
        client.messages.create(
            model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )

    call()  # the parent's own call: its recorder and store threads are at work when it forks
    """
)

POOL = PRELUDE + textwrap.dedent(
    """
    import multiprocessing

    def work(_):
        call()
        return os.getpid()

    with multiprocessing.get_context("fork").Pool(children) as pool:
        pids = pool.map(work, range(children * calls_each), chunksize=1)
    print(len(set(pids)), "workers", flush=True)
    """
)

PREFORK = PRELUDE + textwrap.dedent(
    """
    workers = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:  # a worker: serve, then end as gunicorn's workers do
            for _ in range(calls_each):
                call()
            sys.exit(0)
        workers.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    print(codes, flush=True)
    """
)

OS_EXIT = PRELUDE + textwrap.dedent(
    """
    workers = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            for _ in range(calls_each):
                call()
            compactobs.flush()
            os._exit(0)  # no atexit, no finalizers: only what flush() wrote is kept
        workers.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    print(codes, flush=True)
    """
)

TERMINATED = PRELUDE + textwrap.dedent(
    """
    import multiprocessing, signal

    fork = multiprocessing.get_context("fork")
    held = fork.Lock()
    held.acquire()  # held for good, as `Pool.terminate()` holds its task queue's lock
    waiting = fork.Event()

    def work():
        for _ in range(calls_each):
            call()
        # SIGTERM is sent to the process, and the kernel may hand it to any of its threads that does not block
        # it: under load, now and then, one of compactobs' threads while the main thread waits in the lock.
        # Blocking it in the main thread makes that happen every time.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        waiting.set()
        held.acquire()  # never returns

    workers = [fork.Process(target=work) for _ in range(children)]
    for worker in workers:
        worker.start()
    for worker in workers:
        waiting.wait()
    codes = []
    for worker in workers:
        worker.terminate()
        worker.join(60)
        if worker.exitcode is None:  # it did not end: end it, so that the test fails instead of hanging
            worker.kill()
            worker.join()
            codes.append("still running 60 s after SIGTERM")
        else:
            codes.append(worker.exitcode)
    print(codes, flush=True)
    """
)


def run_app(script: str, url: str, tmp_path: Path, children: int, calls_each: int) -> str:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, url, str(children), str(calls_each)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def stored(url: str) -> tuple[int, Decimal]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            count, cost = connection.execute(select(func.count(), func.sum(calls.c.cost_usd))).one()
    finally:
        engine.dispose()
    return count, Decimal(str(cost))


@pytest.fixture
def upgraded(database_url: str) -> str:
    store.upgrade_database(database_url)
    return database_url


def test_a_fork_pool_stores_every_call_its_workers_make(upgraded: str, tmp_path: Path) -> None:
    """Before: the workers' calls waited in memory and went with `os._exit` (1 of 201 stored)."""
    out = run_app(POOL, upgraded, tmp_path, children=4, calls_each=25)
    assert out.strip() == "4 workers"  # every worker took calls
    # 1 parent call + 4 x 25 = 101 calls; 101 x $0.0075 = $0.7575
    assert stored(upgraded) == (101, Decimal("0.7575"))


def test_pre_forked_workers_store_every_call(upgraded: str, tmp_path: Path) -> None:
    out = run_app(PREFORK, upgraded, tmp_path, children=3, calls_each=20)
    assert out.strip() == "[0, 0, 0]"
    # 1 + 3 x 20 = 61 calls; 61 x $0.0075 = $0.4575
    assert stored(upgraded) == (61, Decimal("0.4575"))


def test_a_child_that_ends_with_os_exit_keeps_what_it_flushed(upgraded: str, tmp_path: Path) -> None:
    out = run_app(OS_EXIT, upgraded, tmp_path, children=2, calls_each=15)
    assert out.strip() == "[0, 0]"
    # 1 + 2 x 15 = 31 calls; 31 x $0.0075 = $0.2325
    assert stored(upgraded) == (31, Decimal("0.2325"))


GUARDED_PREFORK = PREFORK.replace(
    "call()  # the parent's own call",
    textwrap.dedent(
        """
        plain_call = call

        def call():  # every call, the parent's and the workers', in one guarded conversation
            with compactobs.conversation("shared-by-workers", budget_usd=100):
                plain_call()

        call()  # the parent's own call"""
    ),
)


def test_forked_workers_share_a_guarded_conversations_spend(upgraded: str, tmp_path: Path) -> None:
    """Before: a child had no guard thread (threads do not survive a fork) and the parent's connections:
    its calls were never counted into the conversation's shared row, which other processes' guards read."""
    out = run_app(GUARDED_PREFORK, upgraded, tmp_path, children=3, calls_each=10)
    assert out.strip() == "[0, 0, 0]"
    # 1 + 3 x 10 = 31 calls, each counted once into the shared row: 31 x $0.0075 = $0.2325
    assert stored(upgraded) == (31, Decimal("0.2325"))
    engine = store.make_engine(upgraded, create=False)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(guard_spend.c.calls, guard_spend.c.cost_units).where(
                    guard_spend.c.conversation_id == "shared-by-workers"
                )
            ).one()
    finally:
        engine.dispose()
    assert (row.calls, Decimal(row.cost_units).scaleb(-10)) == (31, Decimal("0.2325"))


def test_a_child_sigterm_reaches_while_its_main_thread_waits_ends_and_keeps_its_calls(
    upgraded: str, tmp_path: Path
) -> None:
    """Before: the handler never ran (SIGTERM had gone to another thread, the main thread never woke up), and
    the child waited for good: so did a `Pool`'s parent, about 1 run in 10 under load."""
    out = run_app(TERMINATED, upgraded, tmp_path, children=1, calls_each=3)
    assert out.strip() == f"[{-signal.SIGTERM}]"  # ended by SIGTERM, as its default action ends a process
    # 1 parent call + 3 = 4 calls; 4 x $0.0075 = $0.03
    assert stored(upgraded) == (4, Decimal("0.03"))
