"""`compactobs demo`: a realistic compaction workload, recorded into the store through the public API.

The real `anthropic` SDK talks to `compactobs.testing.Simulator` (a loopback Messages API: no API key, no
network). Every client carries `compactobs.Middleware()`; calls are grouped with `compactobs.conversation`;
spans go to the SQL store only (a TracerProvider of the demo's own, `service.name` `compactobs-demo`, never
exported over OTLP, so the demo does not reach a backend the user's environment points at).

```python
from compactobs.demo import run_demo

summary = run_demo("sqlite:////tmp/demo.db")   # about 45 calls, a few seconds
summary.conversation_prefix                   # "demo-20260501-101500-ab12-": this run's conversations
```

What the workload holds (one conversation each unless said):

- `support-agent`: claude-sonnet-4-6, streamed, prompt caching (system prompt cached 1 hour, the newest
  user turn 5 minutes), a 7-minute pause that expires the 5-minute entries, one threshold compaction;
- `research-loop`: claude-opus-4-8, every turn brings a tool result near the trigger, so compaction runs
  on every turn (a compaction loop), over its $2 budget;
- `contract-review`: claude-opus-4-8, `pause_after_compaction`: a paused call (`stop_reason: "compaction"`)
  and the follow-up call that sends the compaction block back;
- `on-demand-summary`: claude-sonnet-4-6, on-demand compaction (`compaction: {"type": "summarize"}`, beta
  `compact-2026-09-04`), the signed block then sent back on later turns;
- `triage-1..3`: claude-haiku-4-5 on the async client, three conversations at once, GA namespace (no
  iterations), a 429 retried by the SDK, a 529 with retries off (an error call) that the app retries;
- `nightly-digest`: claude-sonnet-4-6, a failed compaction (null summary, still billed), then one that
  works but loses the cache (the next turn writes its prefix again);
- `preview-model`: a model genai-prices has no price for: unpriced, never $0.

Each run stamps its conversation ids (`demo-<UTC time>-<4 hex>-<name>`), so running it twice on the same
database adds a second, separate set of conversations rather than mixing with the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final, Literal

import anthropic
from anthropic.types import MessageParam, TextBlockParam
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from sqlalchemy import case, func, select

import compactobs
from compactobs._types import JSON, JSONObject, SDKObject
from compactobs._words import counted
from compactobs.progress import ProgressCallback
from compactobs.progress import progress_bar as _progress_bar
from compactobs.store import calls, default_database_url, display_url, make_engine, open_database
from compactobs.testing import ConversationScenario, ErrorReply, Simulator

__all__ = [
    "SERVICE_NAME",
    "DemoConversation",
    "DemoSummary",
    "ProgressCallback",
    "planned_calls",
    "progress_bar",
    "run_demo",
]

SERVICE_NAME: Final = "compactobs-demo"
"""The `service.name` of every span the demo records (the store's `calls.service_name`)."""

# `progress(description, calls_done, calls_planned)`: called before each conversation and after each call.

THRESHOLD_BETA: Final = "compact-2026-01-12"
ON_DEMAND_BETA: Final = "compact-2026-09-04"

_WORDS: Final = {
    "support": "customer order refund invoice shipping address account login error retry browser",
    "research": "paper result table figure dataset baseline ablation metric method citation appendix",
    "contract": "clause party term liability indemnity warranty notice termination payment schedule",
    "planning": "milestone owner risk estimate backlog sprint release dependency review budget",
    "triage": "alert severity service latency timeout deploy rollback pager incident region",
    "logs": "INFO WARN ERROR job batch worker queue commit duration bytes rows checksum",
}


@dataclass(frozen=True)
class DemoConversation:
    """One conversation the demo ran."""

    id: str
    model: str
    shows: str
    """What it demonstrates, in a few words."""
    calls: int


@dataclass(frozen=True)
class DemoSummary:
    """What `run_demo` did and what the store holds for it afterwards."""

    database_url: str
    """Where it recorded (password hidden)."""
    service_name: str
    run_id: str
    started_at: datetime
    """UTC, just before the first call."""
    conversations: tuple[DemoConversation, ...]
    calls: int
    """API calls the demo made (one per `create`/`stream`, whatever its HTTP attempts)."""
    stored_calls: int
    """Rows of this run in `calls` after the flush: equal to `calls` unless some wait in the spool."""
    stored_iterations: int
    """The sum of `calls.iterations_count` over this run's rows."""
    compactions: int
    cost_usd: Decimal
    """Billed cost of this run's priced calls."""
    unpriced_calls: int
    cache_read_tokens: int
    elapsed_s: float
    top_level_cost_usd: Decimal = Decimal(0)
    """What the top-level usage of these calls says they cost (the bill less its compaction iterations)."""
    hidden_cost_usd: Decimal = Decimal(0)
    """The gap: what the compaction iterations cost, which the top-level usage leaves out."""

    @property
    def conversation_prefix(self) -> str:
        """Every conversation id of this run starts with it."""
        return f"demo-{self.run_id}-"

    @property
    def complete(self) -> bool:
        """Every call the demo made is in the store."""
        return self.stored_calls == self.calls

    def lines(self) -> list[str]:
        """What `compactobs demo` says the run did: the calls recorded, the headline, one line per
        conversation."""
        from compactobs.reports.cost import headline  # the reports only when the summary is printed

        priced = f"${self.cost_usd:,.4f} billed" + (
            f", {self.unpriced_calls} unpriced call(s)" if self.unpriced_calls else ""
        )
        words = headline(self.top_level_cost_usd, self.cost_usd, self.hidden_cost_usd)
        lines = [
            f"Recorded {self.stored_calls} calls in {len(self.conversations)} conversations "
            f"({counted(self.stored_iterations, 'iteration')}, "
            f"{counted(self.compactions, 'compaction')}), {priced}, "
            f"in {self.elapsed_s:.1f} s; conversations {self.conversation_prefix}*",
            words[0].upper() + words[1:],
        ]
        width = max(len(c.id) for c in self.conversations)
        lines += [
            f"  {c.id:<{width}}  {c.model:<19} {c.calls:>3} calls  {c.shows}" for c in self.conversations
        ]
        return lines


def _text(tokens: int, topic: str, lead: str = "") -> str:
    """A text of exactly `tokens` tokens under the simulator's rule (4 characters per token)."""
    words = _WORDS[topic].split()
    length = 4 * max(1, tokens)
    parts = [lead] if lead else []
    size = len(lead)
    i = 0
    while size < length:
        word = words[(i * 7 + i // len(words)) % len(words)]
        parts.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(parts)[:length]


def _cached(text: str, ttl: Literal["5m", "1h"] = "5m") -> list[TextBlockParam]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}]


def _compact_edit(trigger: int, pause: bool = False) -> JSONObject:
    edit: JSONObject = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": trigger}}
    if pause:
        edit["pause_after_compaction"] = True
    return {"edits": [edit]}


_calls_in_conversation: ContextVar[list[int] | None] = ContextVar("demo_calls", default=None)


@dataclass
class _Run:
    """State shared by the workloads: the simulator, the clients, and the call counter."""

    sim: Simulator
    run_id: str
    planned: int
    progress: ProgressCallback | None
    done: int = 0
    conversations: list[DemoConversation] = field(default_factory=list)
    _label: str = ""

    def conversation_id(self, name: str) -> str:
        return f"demo-{self.run_id}-{name}"

    def client(self, *, max_retries: int = 2) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.sim.base_url,
            api_key="demo-key-not-used",
            max_retries=max_retries,
            # only the client knows its retry budget: the middleware needs it to tell a call's last attempt
            middleware=[compactobs.Middleware()],
        )

    def async_client(self, *, max_retries: int = 2) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.sim.base_url,
            api_key="demo-key-not-used",
            max_retries=max_retries,
            # only the client knows its retry budget: the middleware needs it to tell a call's last attempt
            middleware=[compactobs.Middleware()],
        )

    def begin(self, label: str) -> None:
        self._label = label
        self._report()

    def called(self) -> None:
        self.done += 1
        counter = _calls_in_conversation.get()
        if counter is not None:
            counter[0] += 1
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self._label, self.done, max(self.planned, self.done))

    @contextlib.contextmanager
    def conversation(
        self, name: str, model: str, shows: str, *, budget_usd: float | None = None
    ) -> Iterator[str]:
        """Group the calls made inside under this run's conversation `name` (asyncio tasks included)."""
        conversation_id = self.conversation_id(name)
        counter = [0]
        index = len(self.conversations)  # listed in the order they started
        self.conversations.append(DemoConversation(conversation_id, model, shows, 0))
        token = _calls_in_conversation.set(counter)
        try:
            with compactobs.conversation(conversation_id, budget_usd=budget_usd):
                yield conversation_id
        finally:
            _calls_in_conversation.reset(token)
            self.conversations[index] = replace(self.conversations[index], calls=counter[0])

    def also_shows(self, conversation_id: str, more: str) -> None:
        """Add to what a conversation shows, once it is known (e.g. which of concurrent calls was retried)."""
        for index, conversation in enumerate(self.conversations):
            if conversation.id == conversation_id:
                self.conversations[index] = replace(conversation, shows=f"{conversation.shows}; {more}")


class _Chat:
    """A client that keeps its history and sends it back every turn, content blocks included (with
    `to_dict()`, as the compaction docs ask), like an application would."""

    def __init__(
        self, run: _Run, client: anthropic.Anthropic, model: str, *, beta: bool = True, **params: SDKObject
    ) -> None:
        self.run = run
        self.client = client
        self.model = model
        self.beta = beta
        self.params = {"max_tokens": 2048, **params}
        self.history: list[JSONObject] = []

    def turn(self, content: JSON, *, stream: bool = False, **extra: SDKObject) -> SDKObject:
        self.history.append({"role": "user", "content": content})
        return self.send(stream=stream, **extra)

    def send(self, *, stream: bool = False, **extra: SDKObject) -> SDKObject:
        """Send the history as it is; the answer's blocks join the last assistant message, or a new one."""
        args = {"model": self.model, "messages": self.history, **self.params, **extra}
        messages = self.client.beta.messages if self.beta else self.client.messages
        try:
            if stream:
                with messages.stream(**args) as events:
                    result = events.get_final_message()
            else:
                result = messages.create(**args)
        finally:
            self.run.called()
        blocks = [block.to_dict() for block in result.content]
        if self.history and self.history[-1]["role"] == "assistant":
            self.history[-1]["content"].extend(blocks)  # a paused call's continuation
        else:
            self.history.append({"role": "assistant", "content": blocks})
        return result

    def move_cache_breakpoint(self) -> None:
        """Clients keep one moving breakpoint on the newest turn: older user turns lose theirs."""
        for entry in self.history:
            if entry["role"] == "user" and isinstance(entry["content"], list):
                entry["content"] = [
                    {k: v for k, v in block.items() if k != "cache_control"} for block in entry["content"]
                ]


# -- the workloads ----------------------------------------------------------------------------------------


def _support_agent(run: _Run) -> None:
    model = "claude-sonnet-4-6"
    run.sim.scenario = ConversationScenario(reply_tokens=400)
    shows = "streamed; prompt cache 1h system + 5m turns; one compaction"
    with run.conversation("support-agent", model, shows):
        chat = _Chat(
            run,
            run.client(),
            model,
            system=_cached(_text(3000, "support", "You are the support agent of an online shop."), "1h"),
            betas=[THRESHOLD_BETA],
            context_management=_compact_edit(60_000),
        )
        for turn in range(1, 11):
            if turn == 5:
                run.sim.advance_clock(7 * 60)  # the customer comes back after 7 minutes: 5m entries expired
            chat.move_cache_breakpoint()
            chat.turn(
                _cached(_text(6500, "support", f"Ticket update {turn}, with the order history:")), stream=True
            )


def _research_loop(run: _Run) -> None:
    model = "claude-opus-4-8"
    run.sim.scenario = ConversationScenario(reply_tokens=800)
    shows = "a compaction on every turn (loop), over its $2 budget"
    with run.conversation("research-loop", model, shows, budget_usd=2.0):
        chat = _Chat(
            run,
            run.client(),
            model,
            system=_text(1500, "research", "You are a research assistant reading papers."),
            betas=[THRESHOLD_BETA],
            context_management=_compact_edit(50_000),
        )
        # Each turn hands the model a whole paper (48,000 tokens): summary + paper crosses the 50,000
        # trigger again, so every turn after the first compacts.
        for turn in range(1, 7):
            chat.turn(_text(48_000, "research", f"Tool result {turn}: the full text of paper {turn}."))


def _contract_review(run: _Run) -> None:
    model = "claude-opus-4-8"
    run.sim.scenario = ConversationScenario(reply_tokens=1500)
    shows = "pause_after_compaction: a paused call, then the follow-up"
    with run.conversation("contract-review", model, shows):
        chat = _Chat(
            run,
            run.client(),
            model,
            system=_text(2000, "contract", "You review contracts for a legal team."),
            betas=[THRESHOLD_BETA],
            context_management=_compact_edit(100_000, pause=True),
        )
        for section in range(1, 4):
            result = chat.turn(_text(35_000, "contract", f"Section {section} of the contract:"), stream=True)
            if result.stop_reason == "compaction":
                # Paused: the history now ends with the compaction block; send it back to get the answer.
                chat.send()
        chat.turn(_text(15_000, "contract", "The schedule of payments:"))


def _on_demand(run: _Run) -> None:
    model = "claude-sonnet-4-6"
    run.sim.scenario = ConversationScenario(reply_tokens=500)
    shows = "on-demand compaction (compaction: summarize), block sent back"
    with run.conversation("on-demand-summary", model, shows):
        chat = _Chat(
            run,
            run.client(),
            model,
            system=_text(1000, "planning", "You help a team plan its quarter."),
            betas=[ON_DEMAND_BETA],
        )
        for week in range(1, 5):
            chat.turn(_text(12_000, "planning", f"Notes from planning meeting {week}:"))
        # The app decides the context is big enough and asks for a summary now, streamed; the signed block
        # joins the last assistant message, and everything before it is ignored from then on.
        chat.send(compaction={"type": "summarize"}, stream=True)
        for followup in range(1, 3):
            chat.turn(_text(2000, "planning", f"Follow-up question {followup}:"))


async def _triage_async(run: _Run) -> None:
    model = "claude-haiku-4-5"
    client = run.async_client()
    system = _cached(_text(1200, "triage", "You triage production alerts."))

    async def one(index: int) -> None:
        shows = "async, 3 at once, GA namespace, prompt cache"
        with run.conversation(f"triage-{index}", model, shows) as conversation_id:
            history: list[MessageParam] = []
            for alert in range(1, 4):
                history.append(
                    {"role": "user", "content": _text(800, "triage", f"Alert {index}.{alert} fired:")}
                )
                try:
                    raw = await client.messages.with_raw_response.create(
                        model=model, max_tokens=512, system=system, messages=history
                    )
                finally:
                    run.called()
                result = await raw.parse()
                # Whichever of the three reached the simulator first met the one queued 429.
                if raw.retries_taken:
                    run.also_shows(
                        conversation_id,
                        f"a 429 retried by the SDK ({counted(raw.retries_taken, 'retry', 'retries')})",
                    )
                reply: JSON = [b.to_dict() for b in result.content]  # sent back as the SDK gave them
                history.append({"role": "assistant", "content": reply})

    run.sim.scenario = ConversationScenario(reply_tokens=200)
    run.sim.enqueue(ErrorReply(429, retry_after=0))  # the first request is rate limited; the SDK retries it
    await asyncio.gather(one(1), one(2), one(3))

    # An overloaded answer with retries off: the call fails (recorded as an error, no cost), the app
    # waits and tries again itself.
    shows = "a 529 with retries off (error call), retried by the app"
    with run.conversation("triage-overloaded", model, shows):
        strict = run.async_client(max_retries=0)
        messages: list[MessageParam] = [{"role": "user", "content": _text(900, "triage", "Alert 4 fired:")}]
        run.sim.enqueue(ErrorReply(529))
        try:
            await strict.messages.create(model=model, max_tokens=512, system=system, messages=messages)
        except anthropic.APIStatusError:
            pass
        finally:
            run.called()
        try:
            await strict.messages.create(model=model, max_tokens=512, system=system, messages=messages)
        finally:
            run.called()
    await strict.close()
    await client.close()


def _triage(run: _Run) -> None:
    asyncio.run(_triage_async(run))


def _nightly_digest(run: _Run) -> None:
    model = "claude-sonnet-4-6"
    shows = "a failed compaction (billed), then a cache miss after compaction"
    with run.conversation("nightly-digest", model, shows):
        chat = _Chat(
            run,
            run.client(),
            model,
            system=_cached(_text(2000, "logs", "You summarise the nightly batch logs."), "1h"),
            betas=[THRESHOLD_BETA],
            context_management=_compact_edit(50_000),
        )
        run.sim.scenario = ConversationScenario(reply_tokens=300)
        chat.turn(_cached(_text(30_000, "logs", "Log of job 1:")))
        run.sim.scenario = ConversationScenario(reply_tokens=300, fail_compaction=True)
        chat.move_cache_breakpoint()
        chat.turn(_cached(_text(20_000, "logs", "Log of job 2:")))  # compaction fails: null summary
        run.sim.scenario = ConversationScenario(reply_tokens=300, cache_miss_after_compaction=True)
        chat.move_cache_breakpoint()
        chat.turn(_cached(_text(3000, "logs", "Log of job 3:")))  # compacts, and the cache is lost
        chat.move_cache_breakpoint()
        chat.turn(_cached(_text(25_000, "logs", "Log of job 4:")))  # writes the whole prefix again


def _preview_model(run: _Run) -> None:
    model = "claude-preview-2027"
    run.sim.scenario = ConversationScenario(reply_tokens=300)
    with run.conversation("preview-model", model, "a model with no price: unpriced, not $0"):
        chat = _Chat(run, run.client(), model, beta=False)
        chat.turn(_text(4000, "planning", "Draft the release notes from these items:"))
        chat.turn(_text(500, "planning", "Shorter, please:"))


_WORKLOADS: Final[tuple[tuple[str, int, Callable[[_Run], None]], ...]] = (
    ("support agent: streaming + prompt caching", 10, _support_agent),
    ("research agent: compaction loop", 6, _research_loop),
    ("contract review: pause_after_compaction", 5, _contract_review),
    ("planning: on-demand compaction", 7, _on_demand),
    ("alert triage: async, retries, errors", 11, _triage),
    ("nightly digest: failed compaction, cache miss", 4, _nightly_digest),
    ("preview model: unpriced", 2, _preview_model),
)


@contextlib.contextmanager
def progress_bar(
    enabled: bool | None = None, unit: str = "calls", total: int | None = None
) -> Iterator[ProgressCallback | None]:
    """`compactobs.progress.progress_bar`, counting the demo's planned calls unless `total` is given."""
    with _progress_bar(enabled, unit, planned_calls() if total is None else total) as progress:
        yield progress


def planned_calls() -> int:
    """How many API calls a demo run makes."""
    return sum(calls for _, calls, _ in _WORKLOADS)


def _new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class _Stored:
    calls: int
    iterations: int
    compactions: int
    cost_usd: Decimal
    unpriced: int
    cache_read: int


def _stored(database_url: str, prefix: str) -> _Stored:
    engine = make_engine(database_url)
    try:
        query = select(
            func.count(),
            func.coalesce(func.sum(calls.c.iterations_count), 0),
            func.coalesce(func.sum(calls.c.compactions_count), 0),
            func.coalesce(func.sum(calls.c.cost_usd), 0),
            func.coalesce(func.sum(case((calls.c.priced.is_(False), 1), else_=0)), 0),
            func.coalesce(func.sum(calls.c.cache_read_tokens), 0),
        ).where(calls.c.conversation_id.startswith(prefix, autoescape=True))
        with engine.connect() as connection:
            row = connection.execute(query).one()
    finally:
        engine.dispose()
    return _Stored(int(row[0]), int(row[1]), int(row[2]), Decimal(str(row[3])), int(row[4]), int(row[5]))


def run_demo(
    database_url: str | None = None,
    *,
    progress: ProgressCallback | None = None,
    run_id: str | None = None,
    span_processors: Sequence[SpanProcessor] = (),
) -> DemoSummary:
    """Run the demo workload through the real SDK against a loopback simulator; record it into the store.

    `database_url`: default `COMPACTOBS_DATABASE_URL`, else the embedded SQLite file. The store must be at
    this version's schema: an empty SQLite file is created, but PostgreSQL is never migrated unasked, so
    a database without compactobs' tables raises StoreError saying which `compactobs db upgrade` to run
    (before any call is made). `run_id` defaults to the UTC time and 4 random hex digits.

    Uses compactobs' process-wide setup: it `configure()`s compactobs for the run (replacing any earlier
    configuration) and `shutdown()`s it at the end. Runs an asyncio loop of its own (`asyncio.run`), so call
    it from synchronous code. `span_processors`: more processors on the demo's TracerProvider, beside the
    store's (a test keeps the finished spans this way, to write them to another sink).
    """
    url = database_url or default_database_url()
    open_database(url).dispose()  # create an empty SQLite store, or raise StoreError with the fix
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    run = _Run(
        sim=Simulator(),
        run_id=run_id or _new_run_id(started_at),
        planned=planned_calls(),
        progress=progress,
    )
    # The demo's own TracerProvider: spans go to the store only (never to an OTLP endpoint the environment
    # names), under service.name compactobs-demo.
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    for processor in span_processors:
        provider.add_span_processor(processor)
    compactobs.configure(
        url, tracer_provider=provider, meter_provider=NoOpMeterProvider(), service_name=SERVICE_NAME
    )
    try:
        with run.sim:
            for label, _, workload in _WORKLOADS:
                run.begin(label)
                workload(run)
        run.begin("writing to the store")
    finally:
        compactobs.shutdown()  # flushes the store's processor
        provider.shutdown()
    stored = _stored(url, f"demo-{run.run_id}-")
    top_level, hidden = _headline(url, f"demo-{run.run_id}-*")
    return DemoSummary(
        database_url=display_url(url),
        service_name=SERVICE_NAME,
        run_id=run.run_id,
        started_at=started_at,
        conversations=tuple(run.conversations),
        calls=run.done,
        stored_calls=stored.calls,
        stored_iterations=stored.iterations,
        compactions=stored.compactions,
        cost_usd=stored.cost_usd,
        unpriced_calls=stored.unpriced,
        cache_read_tokens=stored.cache_read,
        elapsed_s=time.perf_counter() - started,
        top_level_cost_usd=top_level,
        hidden_cost_usd=hidden,
    )


# -- the runtime guard on the research agent's script --------------------------------------------------------

GUARD_BUDGET_USD: Final = Decimal(2)
"""The research agent's budget, as in the workload above."""


@dataclass(frozen=True)
class GuardComparison:
    """The research agent's script run twice on the same simulated papers: without the guard, and with
    `compactobs.conversation(..., budget_usd=2, on_breach="pause")`. Figures are billed totals summed from
    the call spans (every iteration, compaction included)."""

    unguarded_usd: Decimal
    unguarded_calls: int
    unguarded_tokens: int
    """Billed tokens: uncached input + output + cache reads + cache writes, over every iteration."""
    compactions: int
    trigger_tokens: int
    guarded_usd: Decimal
    guarded_calls: int
    crossed_at_call: int | None
    """The call (1-based) whose billed total took the guarded run over its budget."""
    paused_at_call: int | None
    """The call that came back paused (`stop_reason: "compaction"`), after which the script wrapped up."""

    @property
    def saved_usd(self) -> Decimal:
        return self.unguarded_usd - self.guarded_usd

    @property
    def estimate_tokens(self) -> int:
        """The docs' estimate of the unguarded run's spend: compactions x trigger."""
        return self.compactions * self.trigger_tokens

    def lines(self) -> list[str]:
        """What `compactobs demo` prints about it."""
        crossed = f"call {self.crossed_at_call}" if self.crossed_at_call else "no call"
        paused = f"call {self.paused_at_call} came back paused" if self.paused_at_call else "nothing paused"
        return [
            f"Without the guard: {counted(self.unguarded_calls, 'call')}, "
            f"{counted(self.compactions, 'compaction')}, "
            f"${self.unguarded_usd:,.4f} billed ({self.unguarded_tokens:,} billed tokens; the docs' "
            f"estimate, compactions x trigger, says {self.estimate_tokens:,} tokens)",
            f"With the guard (budget ${GUARD_BUDGET_USD:,.2f}, on_breach=pause): {crossed} crossed the "
            f"budget, {paused} at the next compaction and the script wrapped up: {self.guarded_calls} calls, "
            f"${self.guarded_usd:,.4f} billed",
            f"Saved ${self.saved_usd:,.4f} ({self.saved_usd / self.unguarded_usd:.0%}) on the same script",
        ]


_RESEARCH_TRIGGER: Final = 50_000


def _research_script(run: _Run, conversation_id: str, **policy: Any) -> None:
    """The research agent as an application would write it: a turn per paper, and at a paused compaction
    (which only the guard asks for here) a checkpoint, then one wrap-up turn."""
    chat = _Chat(
        run,
        run.client(),
        "claude-opus-4-8",
        system=_text(1500, "research", "You are a research assistant reading papers."),
        betas=[THRESHOLD_BETA],
        context_management=_compact_edit(_RESEARCH_TRIGGER),
    )
    with compactobs.conversation(conversation_id, **policy):
        for turn in range(1, 7):
            result = chat.turn(
                _text(48_000, "research", f"Tool result {turn}: the full text of paper {turn}.")
            )
            if result.stop_reason == "compaction":
                point = compactobs.checkpoint(result, chat.history[:-1], keep=[f"paper {turn}"])
                chat.history = point.next_messages(wrap_up=True)
                chat.send()
                return


def run_guard_comparison() -> GuardComparison:
    """Run the research agent's script without and with the guard, against a simulator of its own, and
    compare the bill. Replaces compactobs' process-wide setup for the run (spans in memory only, nothing
    stored) and shuts it down at the end; run it after `run_demo`, not during it."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from compactobs import semconv as t

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.configure(tracer_provider=provider, meter_provider=NoOpMeterProvider(), store=False)
    run_id = _new_run_id(datetime.now(timezone.utc))
    try:
        with Simulator() as sim:
            sim.scenario = ConversationScenario(reply_tokens=800)
            run = _Run(sim=sim, run_id=run_id, planned=0, progress=None)
            unguarded, guarded = (
                run.conversation_id("research-unguarded"),
                run.conversation_id("research-guarded"),
            )
            _research_script(run, unguarded)
            _research_script(run, guarded, budget_usd=GUARD_BUDGET_USD, on_breach="pause")
        compactobs.flush()
    finally:
        compactobs.shutdown()
        provider.shutdown()

    def calls_of(conversation_id: str) -> list[dict[str, Any]]:
        found = [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
            and (s.attributes or {}).get(t.CONVERSATION_ID) == conversation_id
        ]
        found.sort(key=lambda s: s.start_time or 0)
        return [{**(s.attributes or {}), "events": [e.name for e in s.events]} for s in found]

    def usd(spans: list[dict[str, Any]]) -> Decimal:
        return sum((Decimal(str(s.get(t.COST_USD, 0))) for s in spans), Decimal(0))

    before, after = calls_of(unguarded), calls_of(guarded)
    crossed = next((i for i, s in enumerate(after, 1) if t.EVENT_GUARD_BREACH in s["events"]), None)
    paused = next((i for i, s in enumerate(after, 1) if s.get(t.STOP_REASON) == "compaction"), None)
    billed = sum(
        s.get(t.TOKENS_INPUT, 0)
        + s.get(t.TOKENS_OUTPUT, 0)
        + s.get(t.TOKENS_CACHE_READ, 0)
        + s.get(t.TOKENS_CACHE_WRITE_5M, 0)
        + s.get(t.TOKENS_CACHE_WRITE_1H, 0)
        for s in before
    )
    return GuardComparison(
        unguarded_usd=usd(before),
        unguarded_calls=len(before),
        unguarded_tokens=billed,
        compactions=sum(s.get(t.COMPACTIONS_COUNT, 0) for s in before),
        trigger_tokens=_RESEARCH_TRIGGER,
        guarded_usd=usd(after),
        guarded_calls=len(after),
        crossed_at_call=crossed,
        paused_at_call=paused,
    )


def _headline(database_url: str, pattern: str) -> tuple[Decimal, Decimal]:
    """(what the top-level usage says, what it leaves out) for the run's conversations, as `report cost`
    computes them."""
    from compactobs.reports.cost import cost_report
    from compactobs.reports.times import build_filters

    engine = make_engine(database_url)
    try:
        totals = cost_report(engine, build_filters(None, None, "UTC", (), (pattern,), ()), by=()).totals
    finally:
        engine.dispose()
    assert totals is not None
    return totals["top_level_cost_usd"], totals["hidden_cost_usd"]


TUNE_TRIGGER: Final = 75_000
"""The trigger the demo's closing tune line prices (the compaction docs' suggested start)."""


def tune_line(database_url: str, pattern: str) -> str:
    """`compactobs tune` on the run's conversations at trigger 75K, as one line: what it would have cost
    against the recorded bill of the conversations it models (those that ran threshold compaction)."""
    from compactobs.reports.times import build_filters
    from compactobs.reports.tune import TuneOptions, tune

    engine = make_engine(database_url)
    try:
        result = tune(
            engine, build_filters(None, None, "UTC", (), (pattern,), ()), TuneOptions((TUNE_TRIGGER,))
        )
    finally:
        engine.dispose()
    setting = next(s for s in result.settings if s.setting.trigger == TUNE_TRIGGER)
    if setting.predicted_usd is None:
        return f"trigger 75K: not estimated ({setting.unsupported})"
    recorded = result.recorded_usd
    change = (setting.predicted_usd - recorded) / recorded if recorded else Decimal(0)
    sign = "−" if change < 0 else "+"
    return (
        f"trigger 75K would have cost ${setting.predicted_usd:,.4f} ({sign}{abs(change):.0%}) against "
        f"${recorded:,.4f} recorded, over the {result.conversations} conversations that ran threshold "
        "compaction "
        f"(interval ${setting.low_usd:,.4f}-${setting.high_usd:,.4f})"
    )
