"""The guard across processes and under store faults: real processes, the real SDK over real HTTP against the
simulator, a real PostgreSQL server (or one SQLite file) between them, and real faults (a proxy that stops
forwarding, a locked `calls` table, a server that stops and comes back).

Every call bills 6,000 input and 500 output tokens of claude-opus-4-8 ($5 / $25 per MTok):
6,000 x $5 / 1M = $0.03, plus 500 x $25 / 1M = $0.0125: $0.0425 a call. A $0.40 budget holds 9 calls
($0.3825); the 10th takes the conversation to $0.425, over it. Each process runs on_breach="raise" and
calls until it is refused, so the calls the simulators answered are what the conversation spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import make_url, select

import compactobs
from compactobs import guard, store
from compactobs import semconv as t
from compactobs.guard.store import StoreSpend
from compactobs.store import guard_spend
from compactobs.testing import Reply, Simulator, message
from tests.faults import FreezingProxy, postgres_table_lock, sqlite_locked_by_another_process

MODEL = "claude-opus-4-8"
USAGE = {"input_tokens": 6000, "output_tokens": 500}
CALL_USD = Decimal("0.0425")
BUDGET_USD = Decimal("0.40")
WITHIN_BUDGET = 9  # 9 x $0.0425 = $0.3825 <= $0.40; the 10th call crosses
ARGS: dict[str, Any] = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
LATENCY_S = 0.05
"""The simulator's answer time: well under a real API call's, above an exchange with a healthy store."""
HEALTHY_READ_TIMEOUT_MS = "1000"
"""The healthy-store tests give the guard's read this bound: on this shared 2-core machine four processes
and PostgreSQL can take longer than the default 50 ms now and then, and the bound under test is the one for
a store that answers within it."""


def replies(sim: Simulator, n: int, delay_s: float = LATENCY_S) -> None:
    sim.enqueue(*[Reply(message(model=MODEL, usage=USAGE), delay_s=delay_s) for _ in range(n)])


def configure(url: str) -> None:
    compactobs.configure(url, tracer_provider=TracerProvider(), meter_provider=MeterProvider())


def client(sim: Simulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
    )


def stored_spend(url: str, conversation_id: str) -> tuple[Decimal, int] | None:
    """The conversation's row in `guard_spend`: (USD, calls)."""
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(guard_spend.c.cost_units, guard_spend.c.calls).where(
                    guard_spend.c.conversation_id == conversation_id
                )
            ).one_or_none()
    finally:
        engine.dispose()
    return None if row is None else (Decimal(row[0]).scaleb(-10), row[1])


def wait_for_row(url: str, conversation_id: str, expected_calls: int = 3) -> tuple[Decimal, int] | None:
    """The conversation's row once it holds `expected_calls` calls (the guard sends in the background;
    after a fault, once its next try succeeds), or as it is after 20 s."""
    deadline = time.monotonic() + 20
    while (row := stored_spend(url, conversation_id)) is None or row[1] < expected_calls:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return row


# -- N processes on one conversation -------------------------------------------------------------------


def spender(
    url: str,
    index: int,
    processes: int,
    turns: bool,
    ready: Any,
    go: Any,
    turn: Any,
    whose: Any,
    done: Any,
    out: Any,
) -> None:
    """One process: calls in conversation "shared" until refused; with `turns`, one call per turn, in
    process order. Puts (index, calls answered, longest wait beyond the server's answer time)."""
    os.environ["COMPACTOBS_GUARD_READ_TIMEOUT_MS"] = HEALTHY_READ_TIMEOUT_MS
    with Simulator() as sim:
        replies(sim, 40)
        configure(url)
        api = client(sim)
        with compactobs.conversation(f"warm-up-{index}"):  # unguarded: the SDK's connection, the prices
            api.messages.create(**ARGS)
        sim.reset()
        replies(sim, 40)
        ready.release()
        go.wait(60)
        sent, longest, refused = 0, 0.0, False
        with compactobs.conversation("shared", budget_usd=BUDGET_USD, on_breach="raise"):
            while True:
                if turns:
                    with turn:
                        assert turn.wait_for(lambda: whose.value == index, 60)
                if not refused:
                    started = time.perf_counter()
                    try:
                        api.messages.create(**ARGS)
                        sent += 1
                        longest = max(longest, time.perf_counter() - started - LATENCY_S)
                    except compactobs.BudgetExceeded:
                        refused = True
                        longest = max(longest, time.perf_counter() - started)
                        with done.get_lock():
                            done.value += 1
                if turns:
                    with turn:
                        whose.value = (whose.value + 1) % processes
                        turn.notify_all()
                    if done.value == processes:
                        break
                elif refused:
                    break
        compactobs.shutdown()
        assert len(sim.requests) == sent
        out.put((index, sent, longest))


def run_processes(url: str, processes: int, turns: bool) -> list[tuple[int, int, float]]:
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Semaphore(0), ctx.Event()
    turn, whose = ctx.Condition(), ctx.Value("i", 0)
    done, out = ctx.Value("i", 0), ctx.Queue()
    children = [
        ctx.Process(target=spender, args=(url, k, processes, turns, ready, go, turn, whose, done, out))
        for k in range(processes)
    ]
    for child in children:
        child.start()
    for _ in children:
        assert ready.acquire(timeout=60)
    go.set()
    results = sorted(out.get(timeout=120) for _ in children)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    return results


@pytest.mark.parametrize("processes", [2, 4])
@pytest.mark.parametrize("turns", [False, True], ids=["concurrently", "taking-turns"])
def test_n_processes_overspend_at_most_one_call_each(database_url: str, processes: int, turns: bool) -> None:
    """Healthy store: the conversation spends at most its budget plus one call per process (the call each
    had in flight when the budget was crossed): at most 9 + N calls."""
    store.upgrade_database(database_url)
    results = run_processes(database_url, processes, turns)
    calls = sum(sent for _, sent, _ in results)
    longest = max(wait for _, _, wait in results)
    spent = calls * CALL_USD
    print(
        f"\n{processes} processes, {'turns' if turns else 'at once'}: {calls} calls, ${spent}; per process "
        f"{[sent for _, sent, _ in results]}; longest wait beyond the server {longest * 1000:.0f} ms"
    )
    assert calls > WITHIN_BUDGET  # the budget was reached: someone crossed it
    assert spent <= BUDGET_USD + processes * CALL_USD, (calls, results)
    assert longest < 5.0  # generous: the figures are due in under a second on a healthy store
    # Every call counted reached the shared row (each process sends its figures at shutdown too).
    assert stored_spend(database_url, "shared") == (spent, calls)


# -- store faults, one process (this one) ---------------------------------------------------------------


class StoppableProxy(FreezingProxy):
    """A FreezingProxy that can also stop (its connections cut, new ones refused) and start again on the
    same port: a database server that dies and is restarted, as its clients see it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._sockets: list[socket.socket] = []
        super().__init__(target)

    def _accept(self) -> None:
        listener = self._listener
        while True:
            try:
                accepted, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [accepted, upstream]
            for source, sink in ((accepted, upstream), (upstream, accepted)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def stop(self) -> None:
        # shutdown wakes the thread blocked in accept(), which otherwise keeps the port bound after close
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._sockets = []

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()


@contextlib.contextmanager
def proxied(url: str) -> Iterator[tuple[StoppableProxy, str]]:
    parsed = make_url(url)
    proxy = StoppableProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        yield proxy, proxy.url(url)
    finally:
        proxy.thaw()
        proxy.close()


def earlier_spend(url: str, conversation_id: str, calls: int) -> None:
    """Another process's guard counted `calls` calls of the conversation (through the same exchange)."""
    source = StoreSpend(url)
    try:
        spent = PriorCalls(calls)
        source.exchange({conversation_id: spent}, [conversation_id], {conversation_id: 0})
    finally:
        source.close()


def PriorCalls(calls: int) -> guard.PriorSpend:
    return guard.PriorSpend(calls * CALL_USD, calls * 6500, 0, calls, 0)


def wait_for_calls(conversation_id: str, calls: int) -> None:
    """Until the guard counts `calls` calls of the conversation (its own and those read from the store), or
    30 s: the store's answer comes in the background."""
    deadline = time.monotonic() + 30
    while (spent := guard.spend(conversation_id)) is None or spent.calls < calls:
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def timed_call(api: anthropic.Anthropic) -> tuple[float, BaseException | None]:
    started = time.perf_counter()
    try:
        api.messages.create(**ARGS)
    except compactobs.GuardError as err:
        return time.perf_counter() - started, err
    return time.perf_counter() - started, None


def guarded_setup(url: str, read_timeout_s: float = guard.READ_TIMEOUT_S) -> InMemorySpanExporter:
    """compactobs recording to OpenTelemetry only, its guard sharing spend through the store at `url` (the
    store's exporter is not what these tests are about, and it would spool while the proxy is frozen)."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    compactobs.configure(store=False, tracer_provider=provider, meter_provider=MeterProvider())
    guard.install(guard.Guard(store=StoreSpend(url), read_timeout_s=read_timeout_s))
    return spans


@contextlib.contextmanager
def app(
    url: str, calls: int, read_timeout_s: float = guard.READ_TIMEOUT_S
) -> Iterator[tuple[Simulator, anthropic.Anthropic, InMemorySpanExporter]]:
    """This process as the application: a simulator with `calls` replies, a client, and its guard sharing
    spend through the store at `url` (the simulator, the client, the spans)."""
    with Simulator() as sim:
        replies(sim, calls)
        spans = guarded_setup(url, read_timeout_s)
        yield sim, client(sim), spans


@contextlib.contextmanager
def guarded_app(
    postgres_url: str, calls: int, read_timeout_s: float = guard.READ_TIMEOUT_S
) -> Iterator[tuple[StoppableProxy, Simulator, anthropic.Anthropic, InMemorySpanExporter]]:
    """`app`, its store reached through a proxy (the proxy, the simulator, the client, the spans)."""
    with proxied(postgres_url) as (proxy, url), app(url, calls, read_timeout_s) as (sim, api, spans):
        yield proxy, sim, api, spans


def call_spans(spans: InMemorySpanExporter) -> list[Any]:
    compactobs.flush()
    found = [
        s for s in spans.get_finished_spans() if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def test_the_span_says_what_the_guard_went_on(postgres_url: str) -> None:
    """Under warn, another process's 9 calls ($0.3825) in the row. Call 1 goes with the store frozen (its
    figure: $0, incomplete), counted alone ($0.0425). Once the store answers, the row and call 1 make
    $0.3825 + $0.0425 = $0.425 > $0.40: crossed by calls this process did not make alone, reported on call
    2's span, which went on $0.425, complete. With the store frozen again and the exchange after call 2
    unanswered past the read bound, call 3 goes on $0.4675 and says it is incomplete."""
    store.upgrade_database(postgres_url)
    earlier_spend(postgres_url, "seen", 9)
    with guarded_app(postgres_url, 3) as (proxy, _sim, api, spans):
        try:
            with compactobs.conversation("seen", budget_usd=BUDGET_USD):
                proxy.freeze()
                api.messages.create(**ARGS)
                compactobs.flush()  # call 1 counted, by this process alone
                assert guard.spend("seen").calls == 1  # type: ignore[union-attr]
                proxy.thaw()
                wait_for_calls("seen", 10)
                api.messages.create(**ARGS)
                proxy.freeze()
                compactobs.flush()  # call 2 counted: its exchange is asked, and hangs
                time.sleep(0.1)  # past the 50 ms read bound
                api.messages.create(**ARGS)
            first, second, third = (s.attributes or {} for s in call_spans(spans))
            assert first[t.GUARD_COMPLETE] is False and first[t.GUARD_SEEN_USD] == 0.0
            assert second[t.GUARD_COMPLETE] is True and second[t.GUARD_SEEN_USD] == pytest.approx(0.425)
            assert third[t.GUARD_COMPLETE] is False and third[t.GUARD_SEEN_USD] == pytest.approx(0.4675)
            events = [(s, e) for s in call_spans(spans) for e in s.events if e.name == t.EVENT_GUARD_BREACH]
            [(span, event)] = events
            assert span.attributes[t.GUARD_SEEN_USD] == pytest.approx(0.425)  # call 2: after the read
            assert event.attributes[t.GUARD_SPENT_USD] == pytest.approx(0.425)
            assert event.attributes[t.GUARD_COMPLETE] is True
        finally:
            proxy.thaw()
            compactobs.shutdown()


def test_a_frozen_store_never_holds_a_caller_and_its_spend_counts_once_it_answers(postgres_url: str) -> None:
    """Another process spent 7 calls ($0.2975). The store freezes before this process's first call: each
    call goes on within the read bound, counted by this process alone ($0.0425 each, 3 calls while frozen).
    Once the store answers, its $0.2975 is counted: 7 + 3 = 10 calls, $0.425 > $0.40: the next request is
    refused. Before: the first call waited on the frozen server, and the spend there was never read."""
    store.upgrade_database(postgres_url)
    earlier_spend(postgres_url, "frozen", 7)
    with guarded_app(postgres_url, 10) as (proxy, sim, api, _spans):
        try:
            with compactobs.conversation("frozen", budget_usd=BUDGET_USD, on_breach="raise"):
                proxy.freeze()
                waits = [timed_call(api) for _ in range(3)]
                assert [err for _, err in waits] == [None] * 3
                spent = guard.spend("frozen")
                assert spent is not None and (spent.calls, spent.spent_usd) == (3, 3 * CALL_USD)
                proxy.thaw()
                wait_for_calls("frozen", 10)
                _, refused = timed_call(api)
            assert isinstance(refused, compactobs.BudgetExceeded)
            assert refused.spent_usd == 10 * CALL_USD  # 7 + 3 calls: $0.425
            assert len(sim.requests) == 3
            longest = max(w for w, _ in waits) - LATENCY_S
            print(f"\nlongest wait beyond the server while the store was frozen: {longest * 1000:.0f} ms")
            assert longest < 2.0  # generous; the read bound is 50 ms (the old first read: 20 s)
        finally:
            compactobs.shutdown()
    assert stored_spend(postgres_url, "frozen") == (10 * CALL_USD, 10)


def test_unknown_raise_refuses_while_the_store_is_frozen(postgres_url: str) -> None:
    """unknown="raise" fails closed: a conversation never read (the store frozen from its first request),
    and one read before the store froze, are refused (SpendUnknown) within the read bound; once the store
    answers, their requests go again. $0.0425 a call, far under the budget: only the unknown refuses."""
    store.upgrade_database(postgres_url)
    # a read bound of 0.5 s: the healthy first read, on this loaded machine, in time
    with guarded_app(postgres_url, 3, read_timeout_s=0.5) as (proxy, sim, api, _spans):
        strict = {"budget_usd": BUDGET_USD, "on_breach": "raise", "unknown": "raise"}
        try:
            with compactobs.conversation("read-before", **strict):
                assert timed_call(api)[1] is None  # the store answers
                proxy.freeze()
                wait_read, refused_read = timed_call(api)
            with compactobs.conversation("never-read", **strict):
                wait_new, refused_new = timed_call(api)
            for refused in (refused_read, refused_new):
                assert isinstance(refused, compactobs.SpendUnknown), refused
                assert "spend in other processes is unknown" in str(refused)
            assert max(wait_read, wait_new) < 2.0  # generous (bound: 0.5 s here)
            proxy.thaw()
            for conversation_id in ("read-before", "never-read"):
                with compactobs.conversation(conversation_id, **strict):
                    deadline = time.monotonic() + 30
                    while (refused := timed_call(api)[1]) is not None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert refused is None
            assert len(sim.requests) == 3
        finally:
            compactobs.shutdown()


def test_a_locked_calls_table_never_holds_a_caller(postgres_url: str) -> None:
    """A new conversation's row is made from `calls`, which another session holds locked: each call goes
    on within the read bound (before: 18.6-21.5 s for the first); the row is made once the lock goes."""
    store.upgrade_database(postgres_url)
    with app(postgres_url, 3) as (_sim, api, _spans):
        try:
            with compactobs.conversation("locked", budget_usd=BUDGET_USD, on_breach="raise"):
                with postgres_table_lock(postgres_url):
                    waits = [timed_call(api) for _ in range(3)]
                assert [err for _, err in waits] == [None] * 3
                longest = max(w for w, _ in waits) - LATENCY_S
                print(f"\nlongest wait beyond the server while calls was locked: {longest * 1000:.0f} ms")
                assert longest < 2.0  # generous (bound: 50 ms)
            assert wait_for_row(postgres_url, "locked") == (3 * CALL_USD, 3)  # sent once the lock went
        finally:
            compactobs.shutdown()


def test_a_store_stopped_then_restarted_mid_conversation(postgres_url: str) -> None:
    """Healthy for 2 calls, then the server dies (connections cut, new ones refused) while another process
    spends 6 calls there; this process makes 2 more calls, each within the read bound, its own figures
    alone; the server comes back: 6 + 4 = 10 calls, $0.425: refused, and its 4 calls are in the row."""
    store.upgrade_database(postgres_url)
    with guarded_app(postgres_url, 10) as (proxy, _sim, api, _spans):
        try:
            with compactobs.conversation("restarted", budget_usd=BUDGET_USD, on_breach="raise"):
                before = [timed_call(api) for _ in range(2)]
                proxy.stop()
                earlier_spend(postgres_url, "restarted", 6)  # through the real server, not the proxy
                during = [timed_call(api) for _ in range(2)]
                assert [err for _, err in before + during] == [None] * 4
                proxy.start()
                wait_for_calls("restarted", 10)
                _, refused = timed_call(api)
            assert isinstance(refused, compactobs.BudgetExceeded)
            assert refused.spent_usd == 10 * CALL_USD
            longest = max(w for w, _ in during) - LATENCY_S
            print(f"\nlongest wait beyond the server while it was down: {longest * 1000:.0f} ms")
            assert longest < 2.0
        finally:
            compactobs.shutdown()
    assert stored_spend(postgres_url, "restarted") == (10 * CALL_USD, 10)


def test_a_locked_sqlite_file_never_holds_a_caller(sqlite_url: str) -> None:
    """Another process holds the SQLite file's write lock: the exchange waits on it in the background; the
    calls go on within the read bound."""
    store.upgrade_database(sqlite_url)
    with app(sqlite_url, 3) as (_sim, api, _spans):
        try:
            with (
                compactobs.conversation("sqlite-locked", budget_usd=BUDGET_USD, on_breach="raise"),
                sqlite_locked_by_another_process(sqlite_url),
            ):
                waits = [timed_call(api) for _ in range(3)]
            assert [err for _, err in waits] == [None] * 3
            assert max(w for w, _ in waits) - LATENCY_S < 2.0
            assert wait_for_row(sqlite_url, "sqlite-locked") == (3 * CALL_USD, 3)
        finally:
            compactobs.shutdown()


def test_an_event_loop_never_stalls_on_a_frozen_store(postgres_url: str) -> None:
    """An async client, the store frozen from the first call: a ticker on the loop measures its longest
    stall while 3 calls go (before: 5 s); once the store answers, the earlier 7 calls are counted and the
    next request is refused, 7 + 3 = 10 calls, $0.425."""
    store.upgrade_database(postgres_url)
    earlier_spend(postgres_url, "async", 7)

    async def main(base_url: str) -> tuple[float, list[float], BaseException | None]:
        api = anthropic.AsyncAnthropic(
            base_url=base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
        )
        stall = 0.0
        ticking = True

        async def ticker() -> None:
            nonlocal stall
            last = time.perf_counter()
            while ticking:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                stall = max(stall, now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        waits = []
        refused: BaseException | None = None
        with compactobs.conversation("async", budget_usd=BUDGET_USD, on_breach="raise"):
            proxy.freeze()
            for _ in range(3):
                started = time.perf_counter()
                await api.messages.create(**ARGS)
                waits.append(time.perf_counter() - started - LATENCY_S)
            proxy.thaw()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and guard.spend("async").calls < 10:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
            try:
                await api.messages.create(**ARGS)
            except compactobs.BudgetExceeded as err:
                refused = err
        ticking = False
        await tick
        await api.close()
        return stall, waits, refused

    with guarded_app(postgres_url, 10) as (proxy, sim, _, _):
        try:
            stall, waits, refused = asyncio.run(main(sim.base_url))
        finally:
            compactobs.shutdown()
    print(
        f"\nlongest event-loop stall {stall * 1000:.0f} ms; longest wait beyond the server "
        f"{max(waits) * 1000:.0f} ms"
    )
    assert isinstance(refused, compactobs.BudgetExceeded) and refused.spent_usd == 10 * CALL_USD
    assert max(waits) < 2.0
    assert stall < 1.0  # generous: the loop never waits on the store (before: 5 s)
