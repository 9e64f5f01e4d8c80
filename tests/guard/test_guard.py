"""The runtime guard (compactobs.guard): real SDK, real HTTP and SSE against compactobs.testing's simulator.

Costs are worked by hand from the list prices of claude-opus-4-8: $5 input, $25 output per MTok.

The looping conversation is the demo's research agent: a 1,500-token system prompt, then each turn a
48,000-token tool result and an 800-token reply, with a 50,000-token compaction trigger (the summary is 2%
of it, 1,000 tokens). By the simulator's counting:
- turn 1: 1,500 + 48,000 = 49,500 < 50,000, no compaction: 49,500 in, 800 out = $0.2475 + $0.02 = $0.2675;
- turn 2: 49,500 + 800 + 48,000 = 98,300 compacts: the compaction reads 98,300 and writes the 1,000-token
  summary ($0.4915 + $0.025 = $0.5165), the reply reads 1,500 + 1,000 + 48,000 = 50,500 ($0.2525 + $0.02
  = $0.2725): $0.789;
- turns 3 on: 1,500 + 1,000 + 800 + 48,000 = 51,300 compacts again ($0.2565 + $0.025 = $0.2815), reply as
  above ($0.2725): $0.554.
Every compaction leaves 50,500 tokens, 101% of the trigger (>= 80%: ineffective), so the loop rule (3
ineffective compactions within 5 calls) fires at turn 4. Spend after each turn: $0.2675, $1.0565, $1.6105,
$2.1645, $2.7185, $3.2725: a $2 budget is crossed at turn 4 too.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import compactobs
from compactobs import guard, store
from compactobs import semconv as t
from compactobs.testing import ConversationScenario, Reply, Simulator, message

MODEL = "claude-opus-4-8"
BETAS = ["compact-2026-01-12"]
SYSTEM = "s" * (4 * 1500)
TURN_COST = [Decimal(x) for x in ("0.2675", "0.789", "0.554", "0.554", "0.554", "0.554")]


def spend_after(turns: int) -> Decimal:
    return sum(TURN_COST[:turns], Decimal(0))


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


@pytest.fixture
def spans(sim: Simulator) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.configure(tracer_provider=provider, meter_provider=MeterProvider(), store=False)
    sim.reset()
    sim.scenario = ConversationScenario(reply_tokens=800)
    try:
        yield exporter
    finally:
        compactobs.shutdown()


def client(sim: Simulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()])


def call_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    compactobs.flush()
    found = [
        s for s in exporter.get_finished_spans() if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def breach_events(exporter: InMemorySpanExporter) -> list[tuple[ReadableSpan, Any]]:
    return [(s, e) for s in call_spans(exporter) for e in s.events if e.name == t.EVENT_GUARD_BREACH]


def paper(turn: int) -> str:
    lead = f"Tool result {turn}: paper {turn}. "
    return lead + "p" * (4 * 48_000 - len(lead))


class Research:
    """The research agent's script: a turn per paper; at a paused compaction (`stop_reason: "compaction"`)
    it wraps up through the checkpoint helper and stops. The same script runs guarded and unguarded."""

    def __init__(self, api: anthropic.Anthropic, *, pause: bool = False) -> None:
        self.api = api
        self.messages: list[dict[str, Any]] = []
        self.results: list[Any] = []
        edit: dict[str, Any] = {
            "type": "compact_20260112",
            "trigger": {"type": "input_tokens", "value": 50_000},
        }
        if pause:
            edit["pause_after_compaction"] = True
        self.params: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 2048,
            "system": SYSTEM,
            "betas": BETAS,
            "context_management": {"edits": [edit]},
        }

    def run(self, turns: int = 6) -> None:
        for turn in range(1, turns + 1):
            self.messages.append({"role": "user", "content": paper(turn)})
            result = self.api.beta.messages.create(**self.params, messages=self.messages)
            self.results.append(result)
            if result.stop_reason == "compaction":
                point = compactobs.checkpoint(result, self.messages, keep=[f"paper {turn}"])
                self.messages = point.next_messages(wrap_up=True)
                self.results.append(self.api.beta.messages.create(**self.params, messages=self.messages))
                return
            self.messages.append({"role": "assistant", "content": [b.to_dict() for b in result.content]})


def cost(span: ReadableSpan) -> Decimal:
    return Decimal(str((span.attributes or {})[t.COST_USD]))


# -- a looping conversation under each action -----------------------------------------------------------


def test_unguarded_the_loop_runs_its_six_turns(spans: InMemorySpanExporter, sim: Simulator) -> None:
    with compactobs.conversation("loop-free"):
        Research(client(sim)).run()
    calls = call_spans(spans)
    assert [(s.attributes or {})[t.COMPACTIONS_COUNT] for s in calls] == [0, 1, 1, 1, 1, 1]
    assert [cost(s) for s in calls] == TURN_COST
    assert guard.spend("loop-free") is None and breach_events(spans) == []


def test_raise_stops_before_the_next_request_once_over_budget(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    research = Research(client(sim))
    policy = {"budget_usd": 2, "loop": False, "on_breach": "raise"}
    with compactobs.conversation("loop-raise", **policy), pytest.raises(compactobs.BudgetExceeded) as raised:
        research.run()
    assert len(sim.requests) == 4  # the fifth request was never sent
    error = raised.value
    calls = call_spans(spans)
    assert error.spent_usd == spend_after(4) == Decimal("2.1645") and error.limit == Decimal(2)
    assert error.compactions == 3 and error.breach.kind == "budget_usd"
    assert error.response_ids == (research.results[3].id,)  # turn 4 crossed $2
    assert [cost(s) for s in calls] == TURN_COST[:4]
    # the span event is on the crossing call only
    [(span, event)] = breach_events(spans)
    assert span is calls[3] and event.attributes[t.GUARD_KIND] == "budget_usd"
    assert event.attributes[t.GUARD_ACTION] == "raise" and event.attributes[t.GUARD_LIMIT] == 2.0
    assert event.attributes[t.GUARD_SPENT_USD] == pytest.approx(2.1645)
    # the conversation stays stopped, and allow_wrap_up lets exactly one more request through
    with compactobs.conversation("loop-raise", **policy):
        with pytest.raises(compactobs.BudgetExceeded):
            client(sim).beta.messages.create(**research.params, messages=research.messages)
        compactobs.guard.allow_wrap_up("loop-raise")
        research.messages.append(compactobs.wrap_up_message(error))
        client(sim).beta.messages.create(**research.params, messages=research.messages)
        with pytest.raises(compactobs.BudgetExceeded):
            client(sim).beta.messages.create(**research.params, messages=research.messages)
    assert len(sim.requests) == 5


def test_raise_on_a_compaction_loop(spans: InMemorySpanExporter, sim: Simulator) -> None:
    research = Research(client(sim))
    loop = pytest.raises(compactobs.CompactionLoopDetected)
    with compactobs.conversation("loop-detect", on_breach="raise"), loop as raised:
        research.run()
    assert len(sim.requests) == 4
    error = raised.value
    assert error.compactions == 3 and error.limit is None and error.spent_usd == Decimal("2.1645")
    # the loop's calls: turns 2, 3 and 4, each leaving 50,500 of 50,000 tokens
    assert error.response_ids == tuple(r.id for r in research.results[1:4])


def test_pause_gets_control_back_at_the_next_compaction(spans: InMemorySpanExporter, sim: Simulator) -> None:
    research = Research(client(sim))
    with compactobs.conversation("loop-pause", budget_usd=2, on_breach="pause"):
        research.run()
    bodies = [r.body for r in sim.requests]
    paused = [b["context_management"]["edits"][0].get("pause_after_compaction") for b in bodies]
    # turns 1-4 as the app wrote them; turn 5 and the wrap-up carry pause_after_compaction
    assert paused == [None, None, None, None, True, True]
    assert "pause_after_compaction" not in research.params["context_management"]["edits"][0]  # the app's own
    fifth = research.results[4]
    assert fifth.stop_reason == "compaction" and [b.type for b in fifth.content] == ["compaction"]
    calls = call_spans(spans)
    # turn 5 paused: only its compaction was billed, 51,300 in and 1,000 out = $0.2815; the wrap-up reads
    # 1,500 + the 1,000-token summary + the wrap-up message and answers in 800 tokens
    assert cost(calls[4]) == Decimal("0.2815")
    assert (calls[4].attributes or {})[t.COMPACTION_PAUSE_AFTER] is True
    wrap_up_input = (calls[5].attributes or {})[t.USAGE_INPUT_TOKENS]
    assert 2_500 < wrap_up_input < 3_000 and research.results[5].stop_reason == "end_turn"
    guarded = spend_after(4) + Decimal("0.2815") + cost(calls[5])
    assert guard.spend("loop-pause").spent_usd == guarded == sum(cost(s) for s in calls)
    assert spend_after(6) - guarded > Decimal("0.79")  # the unguarded script spends $3.2725
    # the budget and the loop (on by default) are both crossed at turn 4
    events = breach_events(spans)
    assert [
        (calls.index(s), e.attributes[t.GUARD_KIND], e.attributes[t.GUARD_ACTION]) for s, e in events
    ] == [
        (3, "budget_usd", "pause"),
        (3, "compaction_loop", "pause"),
    ]


def test_warn_logs_once_and_marks_the_crossing_call(
    spans: InMemorySpanExporter, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="compactobs")
    with compactobs.conversation("loop-warn", budget_usd=2):
        Research(client(sim)).run()
    calls = call_spans(spans)
    assert len(calls) == 6  # warn does not stop anything
    events = breach_events(spans)
    # both the $2 budget and the loop are crossed at turn 4, once each
    assert [(calls.index(s), e.attributes[t.GUARD_KIND]) for s, e in events] == [
        (3, "budget_usd"),
        (3, "compaction_loop"),
    ]
    lines = [r.getMessage() for r in caplog.records if "compactobs guard" in r.getMessage()]
    assert len(lines) == 2
    assert "'loop-warn' is over its $2.0000 budget: $2.1645 billed" in lines[0]
    spent = guard.spend("loop-warn")
    assert spent.spent_usd == spend_after(6) and spent.compactions == 5 and len(spent.breaches) == 2


def test_a_breach_after_one_compaction_says_one_compaction(
    spans: InMemorySpanExporter, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A $1 budget: turn 2 (the first compaction) brings the spend to $1.0565, over it. Tokens: turn 1
    49,500 + 800; turn 2's compaction 98,300 + 1,000 and reply 50,500 + 800: 200,900."""
    caplog.set_level(logging.WARNING, logger="compactobs")
    with compactobs.conversation("one-compaction", budget_usd=1):
        Research(client(sim)).run(turns=2)
    compactobs.flush()  # the breach is settled, and logged, on the recording thread
    (line,) = [r.getMessage() for r in caplog.records if "compactobs guard" in r.getMessage()]
    assert line.endswith("$1.0565 billed, 200,900 tokens, 1 compaction; on_breach=warn"), line


def test_a_healthy_conversation_is_never_touched(
    spans: InMemorySpanExporter, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="compactobs")
    api = client(sim)
    messages: list[dict[str, Any]] = []
    params = Research(api).params
    with compactobs.conversation("healthy", budget_usd=5, max_compactions=2, on_breach="raise"):
        for turn in range(1, 5):
            # 20,001-token turns: turn 3 compacts (63,103 tokens) and leaves 22,501, 45% of the trigger
            messages.append({"role": "user", "content": f"turn {turn} " + "h" * 80_000})
            result = api.beta.messages.create(**params, messages=messages)
            messages.append({"role": "assistant", "content": [b.to_dict() for b in result.content]})
    calls = call_spans(spans)
    assert [(s.attributes or {})[t.COMPACTIONS_COUNT] for s in calls] == [0, 0, 1, 0]
    assert all("pause_after_compaction" not in r.body["context_management"]["edits"][0] for r in sim.requests)
    assert breach_events(spans) == [] and not [r for r in caplog.records if "guard" in r.getMessage()]
    spent = guard.spend("healthy")
    assert spent.breaches == () and spent.spent_usd == sum(cost(s) for s in calls) and spent.calls == 4


def test_pause_on_a_streamed_conversation_and_the_checkpoint(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    api = client(sim)
    research = Research(api)
    messages: list[dict[str, Any]] = []
    with compactobs.conversation("stream-pause", max_compactions=1, loop=False, on_breach="pause"):
        for turn in range(1, 5):
            messages.append({"role": "user", "content": paper(turn) + " see src/agent/loop.py, TICKET-42"})
            with api.beta.messages.stream(**research.params, messages=messages) as stream:
                result = stream.get_final_message()
            if result.stop_reason == "compaction":
                break
            messages.append({"role": "assistant", "content": [b.to_dict() for b in result.content]})
    # turn 2 compacts once (allowed), turn 3 a second time: over max_compactions=1, so turn 4 pauses
    assert turn == 4 and result.stop_reason == "compaction"
    point = compactobs.checkpoint(result, messages, keep=["src/agent/loop.py", "TICKET-42"])
    # the simulator's summary is filler text: it keeps neither string, which the checkpoint says
    assert point.summary_tokens == 1_000 and point.summary is not None and len(point.summary) == 4_000
    assert point.kept == {"src/agent/loop.py": False, "TICKET-42": False}
    assert point.missing == ("src/agent/loop.py", "TICKET-42")
    # Printed, it says its sizes, not the ~800 KB of history it holds.
    assert repr(point) == (
        "Checkpoint(7 messages, 1 block, summary of 4,000 characters and 1000 tokens, kept 0 of 2 named, "
        "missing ['src/agent/loop.py', 'TICKET-42'])"
    )
    following = point.next_messages()
    assert following[-2] == {"role": "assistant", "content": [result.content[0].to_dict()]}
    assert following[-1]["role"] == "user"
    assert "src/agent/loop.py" in following[-1]["content"][0]["text"]
    assert "TICKET-42" in following[-1]["content"][0]["text"]
    answer = api.beta.messages.create(**research.params, messages=following)
    assert answer.stop_reason == "end_turn"


# -- exactly once, with threads and asyncio tasks --------------------------------------------------------

# Each reply: 100,000 input tokens, no output: $0.50. 40 calls spend $20; a $10.20 budget is crossed by
# the 21st call counted, at $10.50.
FLAT = {"input_tokens": 100_000, "output_tokens": 0}


def flat_replies(sim: Simulator, n: int) -> None:
    sim.enqueue(*[Reply(message(model=MODEL, usage=FLAT, id=f"msg_flat_{i}")) for i in range(n)])


def assert_crossed_once(spans: InMemorySpanExporter, conversation_id: str) -> None:
    calls = call_spans(spans)
    assert len(calls) == 40
    [(span, event)] = breach_events(spans)
    spent = guard.spend(conversation_id)
    [breach] = spent.breaches
    assert spent.spent_usd == Decimal(20) and spent.calls == 40
    assert breach.spent_usd == Decimal("10.5") and breach.response_ids == (
        (span.attributes or {})[t.RESPONSE_ID],
    )
    assert event.attributes[t.GUARD_SPENT_USD] == 10.5


# Under warn no request waits for the figures (the recording thread counts every call); under pause each
# request first settles the calls that returned (counting them itself, or waiting for the thread counting
# them). These requests have no compaction to pause: every call is sent.
ACTIONS = ["warn", "pause"]


@pytest.mark.parametrize("action", ACTIONS)
def test_exactly_once_with_8_threads(spans: InMemorySpanExporter, sim: Simulator, action: str) -> None:
    flat_replies(sim, 40)
    api = client(sim)

    def work() -> None:
        with compactobs.conversation("threads", budget_usd=10.2, on_breach=action):
            for _ in range(5):
                api.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "x"}])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_crossed_once(spans, "threads")


@pytest.mark.parametrize("action", ACTIONS)
def test_exactly_once_with_20_asyncio_tasks(spans: InMemorySpanExporter, sim: Simulator, action: str) -> None:
    flat_replies(sim, 40)

    async def main() -> None:
        api = anthropic.AsyncAnthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
        )

        async def task() -> None:
            for _ in range(2):
                stream = await api.messages.create(
                    model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "x"}], stream=True
                )
                async for _event in stream:
                    pass

        with compactobs.conversation("tasks", budget_usd=10.2, on_breach=action):
            await asyncio.gather(*[task() for _ in range(20)])
        await api.close()

    asyncio.run(main())
    assert_crossed_once(spans, "tasks")


# -- policies from the service and the budgets file ------------------------------------------------------


def test_service_policy_and_budgets_file_globs(sim: Simulator, tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[budgets."batch-*"]\nusd = 0.9\non_breach = "raise"\n[budgets."free-*"]\nloop = false\n')
    monkeypatch.setenv("COMPACTOBS_BUDGETS_FILE", str(path))
    compactobs.configure(
        store=False,
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(),
        guard={"budget_tokens": 250_000},
    )
    try:
        api = client(sim)
        args = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
        flat_replies(sim, 5)
        # the file's glob: $0.90 and raise, under the service's 250,000 tokens (not reached here)
        with compactobs.conversation("batch-7"):
            api.messages.create(**args)
            api.messages.create(**args)  # $1.00 > $0.90
            with pytest.raises(compactobs.BudgetExceeded) as raised:
                api.messages.create(**args)
        assert raised.value.breach.kind == "budget_usd"
        assert [b.kind for b in guard.spend("batch-7").breaches] == ["budget_usd"]
        # the service's token budget alone, with the default action (warn): 300,000 > 250,000 at call 3
        with compactobs.conversation("other"):
            for _ in range(3):
                api.messages.create(**args)
        assert [(b.kind, b.action, b.billed_tokens) for b in guard.spend("other").breaches] == [
            ("budget_tokens", "warn", 300_000)
        ]
        # the file's limits replace the application's own $5, as report anomalies takes them
        flat_replies(sim, 2)
        with compactobs.conversation("batch-8", budget_usd=5):
            api.messages.create(**args)
            api.messages.create(**args)  # $1.00 > $0.90
        assert [(b.kind, b.limit, b.action) for b in guard.spend("batch-8").breaches] == [
            ("budget_usd", Decimal("0.9"), "raise")
        ]
        # the file's `loop = false` entry sets no limit: the conversation's own $0.40 applies
        flat_replies(sim, 1)
        with compactobs.conversation("free-1", budget_usd=0.4):
            api.messages.create(**args)
        assert [b.kind for b in guard.spend("free-1").breaches] == ["budget_usd"]
    finally:
        compactobs.shutdown()


def test_a_bad_budgets_file_fails_at_configure(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[budgets."x"]\non_breach = "stop"\nusd = 1\n')
    monkeypatch.setenv("COMPACTOBS_BUDGETS_FILE", str(path))
    with pytest.raises(ValueError, match=r'\[budgets."x"\].on_breach must be one of warn, pause, raise'):
        compactobs.configure(store=False, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    compactobs.shutdown()
    with (
        pytest.raises(ValueError, match="on_breach must be one of"),
        compactobs.conversation("x", on_breach="stop"),
    ):
        pass


def test_the_budgets_file_is_read_again_when_it_changes(
    sim: Simulator, tmp_path: Any, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """$0.50 a call. The file allows $5, then is changed to $0.90 without a restart: once the guard has read
    it again (at most once a second, so this waits a second), the second call ($1.00) crosses and the third
    is refused. Then the file is broken: the guard keeps the $0.90, says so in one log line."""
    import time

    caplog.set_level(logging.INFO, logger="compactobs")
    path = tmp_path / "budgets.toml"
    path.write_text('[budgets."hot-*"]\nusd = 5\non_breach = "raise"\n')
    monkeypatch.setenv("COMPACTOBS_BUDGETS_FILE", str(path))
    compactobs.configure(store=False, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    try:
        api = client(sim)
        flat_replies(sim, 4)
        with compactobs.conversation("hot-1"):
            api.messages.create(**FLAT_ARGS)  # $0.50 < $5
            path.write_text('[budgets."hot-*"]\nusd = 0.9\non_breach = "raise"\n')
            time.sleep(1.1)  # the guard looks at the file at most once a second
            api.messages.create(**FLAT_ARGS)  # $1.00 > $0.90
            with pytest.raises(compactobs.BudgetExceeded) as raised:
                api.messages.create(**FLAT_ARGS)
        assert raised.value.limit == Decimal("0.9") and raised.value.spent_usd == Decimal("1.0")
        path.write_text('[budgets."hot-*"]\nusd = "lots"\n')
        time.sleep(1.1)
        with compactobs.conversation("hot-2"):
            api.messages.create(**FLAT_ARGS)
            api.messages.create(**FLAT_ARGS)  # $1.00 > $0.90: the last good file still applies
            with pytest.raises(compactobs.BudgetExceeded):
                api.messages.create(**FLAT_ARGS)
            time.sleep(1.1)
            with pytest.raises(compactobs.BudgetExceeded):  # looked at again: still broken, not logged again
                api.messages.create(**FLAT_ARGS)
        kept = [r for r in caplog.records if "keeping the budgets read before" in r.getMessage()]
        assert len(kept) == 1 and "usd must be a number" in kept[0].getMessage()
        assert kept[0].getMessage().count("\n") == 0
    finally:
        compactobs.shutdown()


def test_budgets_check_validates_a_file_in_one_line(tmp_path: Any) -> None:
    from tests.cli import one_line_error, run

    good = tmp_path / "good.toml"
    good.write_text('[budgets."ticket-42"]\nusd = 5\n[budgets."batch-*"]\nusd = 0.5\nunknown = "raise"\n')
    code, out, err = run("budgets", "check", str(good))
    assert (code, err) == (0, "")
    assert out == f"{good}: valid, 1 exact conversation id and 1 glob\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('[budgets."batch-*"]\nusd = 0.5\nunknown = "ignore"\n')
    code, out, err = run("budgets", "check", str(bad))
    assert "unknown must be one of warn, raise, not 'ignore'" in one_line_error(code, err)
    code, out, err = run("budgets", "check", str(tmp_path / "missing.toml"))
    assert "does not exist" in one_line_error(code, err)


# -- a budget shared by two processes through PostgreSQL -------------------------------------------------


def first_process(database_url: str) -> None:
    """The other process: two calls of $0.50 in the shared conversation, under its $1.20 budget; its calls
    are stored by the time it exits (shutdown flushes)."""
    with Simulator() as own:
        flat_replies(own, 2)
        compactobs.configure(database_url, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
        api = client(own)
        with compactobs.conversation("shared-ticket", budget_usd=1.2, on_breach="raise"):
            for _ in range(2):
                api.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "x"}])
        compactobs.shutdown()


def test_a_budget_shared_by_two_processes_through_postgresql(
    postgres_url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.upgrade_database(postgres_url)
    # A healthy store answers within the read bound; this loaded test machine sometimes takes over 50 ms.
    monkeypatch.setenv("COMPACTOBS_GUARD_READ_TIMEOUT_MS", "1000")
    # process 1: two calls of $0.50, under its $1.20 budget; it exits with its calls stored
    # A forked process (it has the SDK imported already; a fresh interpreter takes seconds to import it).
    first = multiprocessing.get_context("fork").Process(target=first_process, args=(postgres_url,))
    first.start()
    first.join(60)
    assert first.exitcode == 0
    # process 2 (this one) reads the $1.00 at its first call: its first $0.50 crosses, the next is refused
    compactobs.configure(postgres_url, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    try:
        flat_replies(sim, 2)
        api = client(sim)
        args = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
        with compactobs.conversation("shared-ticket", budget_usd=1.2, on_breach="raise"):
            crossing = api.messages.create(**args)
            with pytest.raises(compactobs.BudgetExceeded) as raised:
                api.messages.create(**args)
        assert raised.value.spent_usd == Decimal("1.5") and raised.value.response_ids == (crossing.id,)
        spent = guard.spend("shared-ticket")
        assert spent.calls == 3 and spent.billed_tokens == 300_000
    finally:
        compactobs.shutdown()


# -- the demo's comparison -------------------------------------------------------------------------------


def test_the_demo_guard_saves_money_on_the_same_script() -> None:
    from compactobs.demo import run_guard_comparison

    result = run_guard_comparison()
    # unguarded: the six turns worked out at the top of this file
    assert (result.unguarded_calls, result.compactions, result.unguarded_usd) == (6, 5, spend_after(6))
    # billed tokens: 50,300 + (98,300 + 1,000 + 50,500 + 800) + 4 x (51,300 + 1,000 + 50,500 + 800)
    assert result.unguarded_tokens == 50_300 + 150_600 + 4 * 103_600 == 615_300
    assert result.estimate_tokens == 5 * 50_000  # the docs' estimate: 2.5x under the bill
    # guarded: turn 4 crosses $2; turn 5 pauses (its compaction alone, $0.2815); a small wrap-up turn
    assert (result.crossed_at_call, result.paused_at_call, result.guarded_calls) == (4, 5, 6)
    wrap_up = result.guarded_usd - spend_after(4) - Decimal("0.2815")
    assert Decimal("0.02") < wrap_up < Decimal("0.04")  # ~2,600 tokens in, 800 out
    assert result.saved_usd == spend_after(6) - result.guarded_usd > Decimal("0.75")
    assert result.lines()[2].startswith(f"Saved ${result.saved_usd:,.4f} (24%)")


# -- one rule for the guard and the report ---------------------------------------------------------------


def test_the_guard_and_report_anomalies_agree(
    sqlite_url: str, sim: Simulator, tmp_path: Any, monkeypatch: Any
) -> None:
    from sqlalchemy import select

    from compactobs.reports.anomalies import find_anomalies, load_budgets
    from compactobs.reports.times import build_filters

    path = tmp_path / "budgets.toml"
    path.write_text('[budgets."agree"]\nmax_compactions = 1\n')
    monkeypatch.setenv("COMPACTOBS_BUDGETS_FILE", str(path))
    sim.reset()
    sim.scenario = ConversationScenario(reply_tokens=800)
    compactobs.configure(sqlite_url, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    try:
        with compactobs.conversation("agree", budget_usd=2):  # the file's limit replaces the $2
            research = Research(client(sim))
            research.run()
        breaches = {b.kind: b for b in guard.spend("agree").breaches}
    finally:
        compactobs.shutdown()
    ids = [r.id for r in research.results]
    # turn 3 makes 2 compactions (> 1); turns 2-4 are the first loop window
    assert set(breaches) == {"max_compactions", "compaction_loop"}
    assert breaches["max_compactions"].response_ids == (ids[2],)
    assert breaches["compaction_loop"].response_ids == tuple(ids[1:4])
    engine = store.open_database(sqlite_url)
    with engine.connect() as connection:
        response_of = dict(connection.execute(select(store.calls.c.call_id, store.calls.c.response_id)).all())
    findings = find_anomalies(engine, build_filters(None, None, "UTC"), budgets=load_budgets(path))
    engine.dispose()
    by_kind = {f.kind: f for f in findings}
    assert [response_of[c] for c in by_kind["budget_exceeded"].call_ids] == [ids[2]]
    assert by_kind["budget_exceeded"].evidence["max_compactions"] == 1
    # the report merges the overlapping windows into one loop of turns 2-6; the guard stopped at its first
    assert [response_of[c] for c in by_kind["compaction_loop"].call_ids] == ids[1:6]


# -- max_compactions stored with the calls, for report anomalies -----------------------------------------

# Four turns of the research agent under max_compactions=2: turns 2, 3 and 4 compact once each, so the
# third compaction (turn 4) takes the conversation over. Billed tokens: 50,300 + 150,600 + 2 x 103,600.
CAPPED_TOKENS = 50_300 + 150_600 + 2 * 103_600


def record_capped_conversation(
    database_url: str, sim: Simulator, conversation_id: str, tracer_provider: TracerProvider | None = None
) -> list[Any]:
    """The research agent's first four turns in a conversation with max_compactions=2 (warn), recorded into
    the store; the responses, in order."""
    store.upgrade_database(database_url)
    sim.reset()
    sim.scenario = ConversationScenario(reply_tokens=800)
    compactobs.configure(
        database_url, tracer_provider=tracer_provider or TracerProvider(), meter_provider=MeterProvider()
    )
    try:
        with compactobs.conversation(conversation_id, max_compactions=2, loop=False):
            research = Research(client(sim))
            research.run(turns=4)
    finally:
        compactobs.shutdown()
    return research.results


def test_max_compactions_is_stored_and_report_anomalies_names_the_breach(
    database_url: str, sim: Simulator
) -> None:
    import json

    from sqlalchemy import select

    from tests.cli import run

    results = record_capped_conversation(database_url, sim, "capped")
    engine = store.open_database(database_url)
    with engine.connect() as connection:
        c = store.calls.c
        rows = connection.execute(
            select(c.call_id, c.response_id, c.budget_max_compactions, c.budget_usd).order_by(c.start_ms)
        ).all()
    engine.dispose()
    assert [(r.response_id, r.budget_max_compactions, r.budget_usd) for r in rows] == [
        (result.id, 2, None) for result in results
    ]
    code, out, _ = run("--db", database_url, "report", "anomalies", "--format", "json")
    assert code == 0
    [finding] = [f for f in json.loads(out)["findings"] if f["kind"] == "budget_exceeded"]
    assert finding["conversation_id"] == "capped" and finding["severity"] == "critical"
    assert finding["call_ids"] == [rows[3].call_id]  # turn 4, the third compaction
    assert finding["message"] == "over budget: 3 compactions, more than the 2 allowed"
    evidence = finding["evidence"]
    assert (evidence["compactions"], evidence["max_compactions"], evidence["calls"]) == (3, 2, 4)
    assert evidence["budget_source"] == "stored" and evidence["budget_usd"] is None
    assert evidence["billed_tokens"] == CAPPED_TOKENS == 408_100
    assert Decimal(str(evidence["spent_usd"])) == spend_after(4) == Decimal("2.1645")


# -- the guard's counting runs off the caller's thread ---------------------------------------------------


def pricing_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that price guarded calls, in order (through the guard's one pricing hook)."""
    names: list[str] = []
    price = guard.Guard._price

    def recorded(entry: guard.ReturnedCall) -> Any:
        names.append(threading.current_thread().name)
        return price(entry)

    monkeypatch.setattr(guard.Guard, "_price", staticmethod(recorded))
    return names


FLAT_ARGS: dict[str, Any] = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("action", ["warn", "raise"])
def test_a_guarded_call_is_priced_on_the_recording_thread_when_it_is_free(
    spans: InMemorySpanExporter, sim: Simulator, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """$0.50 a call under a $1.20 budget: call 3 crosses ($1.50). Between calls the application waits for
    the recorder (flush), as real applications do something between calls: no call is priced on the
    caller's thread, and under raise the fourth request still sees call 3's figures."""
    names = pricing_threads(monkeypatch)
    flat_replies(sim, 4)
    api = client(sim)
    with compactobs.conversation("off-path", budget_usd=1.2, on_breach=action):
        results = []
        for _ in range(3):
            results.append(api.messages.create(**FLAT_ARGS))
            compactobs.flush()
        if action == "raise":
            with pytest.raises(compactobs.BudgetExceeded) as raised:
                api.messages.create(**FLAT_ARGS)
            assert raised.value.spent_usd == Decimal("1.5")
            assert raised.value.response_ids == (results[2].id,)
    assert names == ["compactobs-recorder"] * 3
    spent = guard.spend("off-path")
    assert (spent.calls, spent.spent_usd) == (3, Decimal("1.5"))
    [(span, _)] = breach_events(spans)
    assert (span.attributes or {})[t.RESPONSE_ID] == results[2].id


def test_a_stalled_recorder_the_request_counts_what_returned_once(
    spans: InMemorySpanExporter, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recording thread blocks: each request counts the call before it on its own thread (calls 1 to 3,
    $0.50 each), so the fourth is refused at $1.50 over $1.20. Once the recorder resumes, it records the
    three calls with the figures already counted: nothing lost, nothing counted twice."""
    from compactobs.recorder import Telemetry

    names = pricing_threads(monkeypatch)
    release = threading.Event()
    record_waiting = Telemetry._record_waiting

    def stalled(self: Telemetry) -> None:
        if threading.current_thread().name == "compactobs-recorder":
            release.wait(60)
        record_waiting(self)

    monkeypatch.setattr(Telemetry, "_record_waiting", stalled)
    flat_replies(sim, 4)
    api = client(sim)
    try:
        with compactobs.conversation("stalled", budget_usd=1.2, on_breach="raise"):
            results = [api.messages.create(**FLAT_ARGS) for _ in range(3)]
            with pytest.raises(compactobs.BudgetExceeded) as raised:
                api.messages.create(**FLAT_ARGS)
        assert raised.value.spent_usd == Decimal("1.5") and raised.value.response_ids == (results[2].id,)
        assert len(sim.requests) == 3
        assert names == [threading.current_thread().name] * 3  # the inline fallback, each call once
        spent = guard.spend("stalled")
        assert (spent.calls, spent.spent_usd, len(spent.breaches)) == (3, Decimal("1.5"), 1)
    finally:
        release.set()
    calls = call_spans(spans)  # flushes: the recorder records the three calls
    assert [cost(s) for s in calls] == [Decimal("0.5")] * 3
    assert len(names) == 3  # not priced again
    [(span, event)] = breach_events(spans)
    assert span is calls[2] and event.attributes[t.GUARD_SPENT_USD] == 1.5
    spent = guard.spend("stalled")
    assert (spent.calls, spent.spent_usd, len(spent.breaches)) == (3, Decimal("1.5"), 1)


def test_an_event_loop_is_not_blocked_while_the_recorder_counts(
    spans: InMemorySpanExporter, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Call 1 ($0.50) crosses a $0.40 budget under raise. The recorder, counting it, is held inside its
    pricing until a coroutine on the loop lets it go: the loop must keep running while request 2 waits for
    the figures, and request 2 must then be refused with them."""
    price = guard.Guard._price
    pricing = threading.Event()
    let_go = threading.Event()

    def held(entry: guard.ReturnedCall) -> Any:
        if threading.current_thread().name == "compactobs-recorder":
            pricing.set()
            let_go.wait(30)
        return price(entry)

    monkeypatch.setattr(guard.Guard, "_price", staticmethod(held))
    flat_replies(sim, 2)

    async def main() -> tuple[Any, BaseException | None]:
        api = anthropic.AsyncAnthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
        )
        loop = asyncio.get_running_loop()
        with compactobs.conversation("loop-wait", budget_usd=0.4, on_breach="raise"):
            first = await api.messages.create(**FLAT_ARGS)
            assert await loop.run_in_executor(None, pricing.wait, 30)  # the recorder is counting call 1
            second = asyncio.ensure_future(api.messages.create(**FLAT_ARGS))
            state = guard.installed()._states["loop-wait"]  # type: ignore[union-attr]
            for _ in range(10_000):  # request 2 waits on the loop, then this coroutine lets the recorder go
                if state.waiters:
                    break
                await asyncio.sleep(0.001)
            let_go.set()
            outcome = (await asyncio.gather(second, return_exceptions=True))[0]
        await api.close()
        return first, outcome

    try:
        first, outcome = asyncio.run(main())
    finally:
        let_go.set()
    assert isinstance(outcome, compactobs.BudgetExceeded)
    assert outcome.spent_usd == Decimal("0.5") and outcome.response_ids == (first.id,)
    assert len(sim.requests) == 1
