"""Runtime budgets and the compaction-loop breaker: stop a conversation while it runs, on its billed totals.

A conversation is *guarded* when a policy applies to it: `compactobs.conversation(id, budget_usd=...,
budget_tokens=..., max_compactions=..., loop=..., on_breach=...)`, an entry of the budgets file
(`COMPACTOBS_BUDGETS_FILE`, globs on conversation ids), or a service-wide `compactobs.instrument(guard=
GuardPolicy(...))`. A file entry that sets limits replaces the conversation's own limits, as in the report
(`rules.effective_budget`), and the service's apply when neither sets any; `on_breach` and `loop` come from
the file, then the conversation, then the service. The guard judges with `compactobs.rules`, the rules
`report anomalies` applies afterwards:

- a budget (USD, billed tokens, compactions) is crossed by the call whose billed total takes the
  conversation's spend above it: exactly one call, whatever the threads and tasks;
- a compaction loop is `LoopRule`'s (>= 3 ineffective compactions within 5 calls, by default); the context a
  paused compaction left is the next call's, as in the report.

What it does then (`on_breach`, default "warn"), always after a log line and a span event
(`compactobs.guard.breach`) on the call that crossed:

- `warn`: nothing more;
- `pause`: the conversation's next requests carry `pause_after_compaction: true` (set on the request copy the
  middleware hands on; the application's own objects are untouched), so the application gets control back at
  the next compaction with `stop_reason: "compaction"` (see `compactobs.checkpoint`);
- `raise`: the conversation's next request raises `BudgetExceeded` or `CompactionLoopDetected` before it is
  sent (never in the middle of a response); `allow_wrap_up(id)` lets one more request through, for the
  wrap-up turn (`wrap_up_message`).

Billed totals are the bill, counted off the caller's path: a guarded call's response goes to the recording
thread as an unguarded one's does, registered with its conversation as returned (`ReturnedCall`). The
recording thread prices and counts it before it records it, in its batch. A request whose conversation has
a returned call still uncounted under a policy that acts on a breach (`pause`, `raise`) settles it first:
it waits for the recording thread if that is counting it right now, else counts it itself (about 0.1 ms
for a short response, more for a long non-streamed one, whose body is parsed whole; a stream keeps only
its few usage-carrying events: the recorder has not got to it yet, is busy elsewhere or stalled). The
recorder is not woken for such a call: a wake-up per call would undo its batching and cost the caller more
than the counting.
One thread settles a conversation at a time, taking its returned calls in the order they returned, so each
call is priced and counted once, whoever gets to it first. Under `warn` nothing about the next request
depends on the figures, so it never waits; `spend()` settles first, so it sees every call that returned.

Spend is kept in memory per conversation, for at most `max_conversations` (least recently used dropped).
With a store (`Guard(store=...)`, `compactobs.guard.store.StoreSpend`), the conversation's spend is shared
across processes through its row in the store's `guard_spend` table: a background thread adds the calls this
process counts to the row and reads it back, in one short transaction (`SpendSource.exchange`): at the
conversation's first call, after calls are counted (at most every PUBLISH_EVERY_S when no request waits),
and before a request when the last read is older than `refresh_s`. A caller never does that I/O. A request
that must know the figures (its policy pauses, raises, or refuses unknown spend) waits for the exchange it
needs at most `read_timeout_s` (50 ms by default), then goes on with what the guard knows. It waits only
when a read is due: the conversation's first, one older than `refresh_s`, or, while other processes may be
spending on the conversation, one after this process's last call (the conversation is presumed shared
until `refresh_s` of reads show only this process's spend). Until a read succeeds, and while the store
leaves an exchange unanswered past the bound, the conversation's spend elsewhere is *unknown*:
`unknown="warn"` (default) goes on and logs once, `unknown="raise"` refuses the request (`SpendUnknown`).
The figure a request went on, and whether it was complete, is on its call span
(`compactobs.guard.seen_usd`, `compactobs.guard.complete`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from compactobs import semconv
from compactobs._words import counted
from compactobs.errors import CompactobsError
from compactobs.rules import (
    ON_BREACH,
    ON_UNKNOWN,
    Budget,
    Budgets,
    LoopRule,
    LoopWindow,
    OnBreach,
    OnUnknown,
    billed_tokens,
    effective_budget,
    over_limits,
)
from compactobs.untrusted import bounded_id
from compactobs.usage import CallObservation, CallUsage

if TYPE_CHECKING:
    from compactobs.pricing import Pricer

__all__ = [
    "MAX_CONVERSATIONS",
    "Breach",
    "BudgetExceeded",
    "CompactionLoopDetected",
    "ConversationSpend",
    "Guard",
    "GuardError",
    "GuardPolicy",
    "PriorSpend",
    "ReturnedCall",
    "SpendSource",
    "SpendUnknown",
    "Verdict",
    "allow_wrap_up",
    "breach_event",
    "install",
    "installed",
    "spend",
    "with_pause",
    "wrap_up_message",
]

log = logging.getLogger("compactobs")

MAX_CONVERSATIONS: Final = 10_000
"""Conversations whose spend the guard keeps in memory; the least recently used beyond it are dropped (and
read again from the store, when there is one, at their next call)."""

SETTLE_WAIT_S: Final = 1.0
"""How long a request waits for another thread that is counting its conversation's returned calls (which
takes microseconds) before it goes on without their figures, saying so in a warning."""

READ_TIMEOUT_S: Final = 0.05
"""How long a request waits for the store's answer when it needs one, by default: well under a real API
call's latency. `COMPACTOBS_GUARD_READ_TIMEOUT_MS` sets it."""
ENV_READ_TIMEOUT_MS: Final = "COMPACTOBS_GUARD_READ_TIMEOUT_MS"
REFRESH_S: Final = 1.0
"""A conversation's figures from the store older than this are read again before its next request."""
RETRY_S: Final = (0.25, 5.0)
"""The background exchange's first and longest pause between tries while the store does not answer."""
PUBLISH_EVERY_S: Final = 0.1
"""Between two exchanges that only send what was counted (no request waits for them), the background
thread lets this much time pass: a busy process makes one short transaction per 100 ms (the recording
thread's own batching window), not one per call, and its calls reach the other processes that much later.
A request that waits for an exchange cuts the pause short."""
CLOSE_WAIT_S: Final = 2.0
"""At close, how long the last counted calls may take to reach the store."""

BreachKind = Literal["budget_usd", "budget_tokens", "max_compactions", "compaction_loop", "spend_unknown"]


def _usd(value: float | int | Decimal | None, name: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"{name} must be a number of dollars, not {value!r}")
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return amount


def _count(value: int | None, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Limits and what to do when one is crossed. A field left None is taken from the next source down
    (conversation, then budgets file, then service); `on_breach` defaults to "warn", `loop` to True."""

    budget_usd: Decimal | None = None
    budget_tokens: int | None = None
    max_compactions: int | None = None
    loop: bool | None = None
    on_breach: OnBreach | None = None
    unknown: OnUnknown | None = None
    """What to do while the conversation's spend in other processes is unknown: "warn" (default) or
    "raise"."""

    @classmethod
    def of(
        cls,
        *,
        budget_usd: float | int | Decimal | None = None,
        budget_tokens: int | None = None,
        max_compactions: int | None = None,
        loop: bool | None = None,
        on_breach: str | None = None,
        unknown: str | None = None,
    ) -> GuardPolicy:
        """A policy from user input; raises ValueError saying what is wrong."""
        if loop is not None and not isinstance(loop, bool):
            raise ValueError(f"loop must be True or False, not {loop!r}")
        if on_breach is not None and on_breach not in ON_BREACH:
            raise ValueError(f"on_breach must be one of {', '.join(ON_BREACH)}, not {on_breach!r}")
        if unknown is not None and unknown not in ON_UNKNOWN:
            raise ValueError(f"unknown must be one of {', '.join(ON_UNKNOWN)}, not {unknown!r}")
        return cls(
            _usd(budget_usd, "budget_usd"),
            _count(budget_tokens, "budget_tokens"),
            _count(max_compactions, "max_compactions"),
            loop,
            on_breach,
            unknown,
        )

    @classmethod
    def from_budget(cls, budget: Budget) -> GuardPolicy:
        return cls(
            budget.usd, budget.tokens, budget.max_compactions, budget.loop, budget.on_breach, budget.unknown
        )

    def over(self, below: GuardPolicy | None) -> GuardPolicy:
        """This policy, its unset fields taken from `below`."""
        if below is None:
            return self
        return GuardPolicy(
            self.budget_usd if self.budget_usd is not None else below.budget_usd,
            self.budget_tokens if self.budget_tokens is not None else below.budget_tokens,
            self.max_compactions if self.max_compactions is not None else below.max_compactions,
            self.loop if self.loop is not None else below.loop,
            self.on_breach if self.on_breach is not None else below.on_breach,
            self.unknown if self.unknown is not None else below.unknown,
        )

    @property
    def budget(self) -> Budget:
        return Budget(usd=self.budget_usd, tokens=self.budget_tokens, max_compactions=self.max_compactions)

    @property
    def action(self) -> OnBreach:
        return self.on_breach or "warn"

    @property
    def watches_loops(self) -> bool:
        return self.loop is not False

    @property
    def needs_figures(self) -> bool:
        """Whether a request's fate depends on the figures (pause, raise, or unknown="raise")."""
        return self.on_breach in ("pause", "raise") or self.unknown == "raise"


@dataclass(frozen=True, slots=True)
class Breach:
    """A limit a conversation crossed, with the figures, and the call that crossed it (its response id and
    request id; the store has the response id as `calls.response_id`). A conversation already over its
    limit when this process first saw it has no crossing call here (`crossed_before=True`)."""

    kind: BreachKind
    conversation_id: str
    action: OnBreach
    spent_usd: Decimal
    billed_tokens: int
    compactions: int
    limit: Decimal | int | None
    """The limit crossed: USD, tokens or compactions; None for a compaction loop."""
    response_ids: tuple[str, ...] = ()
    """The calls that crossed the line: the crossing call, or the loop's calls."""
    request_ids: tuple[str, ...] = ()
    unpriced_calls: int = 0
    crossed_before: bool = False
    """Crossed by calls this process did not count (another process's, or earlier ones)."""
    complete: bool = True
    """Whether the figures included every process's spend (False: the store had not answered)."""

    @property
    def message(self) -> str:
        spent = (
            f"${self.spent_usd:,.4f} billed, {counted(self.billed_tokens, 'token')}, "
            f"{counted(self.compactions, 'compaction')}"
        )
        where = " (crossed by calls this process did not make)" if self.crossed_before else ""
        if not self.complete:
            where += " (other processes' spend unknown: the store did not answer)"
        if self.kind == "spend_unknown":
            return (
                f"conversation {self.conversation_id!r}: its spend in other processes is unknown (the store "
                f"does not answer); unknown=raise refuses its requests until it does; this process counted "
                f"{spent}"
            )
        if self.kind == "budget_usd":
            what = f"over its ${self.limit:,.4f} budget"
        elif self.kind == "budget_tokens":
            what = f"over its {self.limit:,} billed-token budget"
        elif self.kind == "max_compactions":
            what = f"over its {self.limit} allowed {'compaction' if self.limit == 1 else 'compactions'}"
        else:
            what = "in a compaction loop (compaction keeps re-firing without freeing room)"
        return f"conversation {self.conversation_id!r} is {what}{where}: {spent}; on_breach={self.action}"

    def error(self) -> GuardError:
        kinds: dict[str, type[GuardError]] = {
            "compaction_loop": CompactionLoopDetected,
            "spend_unknown": SpendUnknown,
        }
        return kinds.get(self.kind, BudgetExceeded)(self)


def breach_event(breach: Breach) -> tuple[str, dict[str, Any]]:
    """The span event (name, attributes) of a guard breach, for the call that crossed."""
    attributes: dict[str, Any] = {
        semconv.GUARD_KIND: breach.kind,
        semconv.GUARD_ACTION: breach.action,
        semconv.GUARD_SPENT_USD: float(breach.spent_usd),
        semconv.GUARD_BILLED_TOKENS: breach.billed_tokens,
        semconv.GUARD_COMPACTIONS: breach.compactions,
        semconv.GUARD_RESPONSE_IDS: [bounded_id(response_id) for response_id in breach.response_ids],
        semconv.GUARD_COMPLETE: breach.complete,
    }
    limit = breach.limit
    if limit is not None:
        attributes[semconv.GUARD_LIMIT] = float(limit) if isinstance(limit, Decimal) else limit
    return semconv.EVENT_GUARD_BREACH, attributes


class GuardError(CompactobsError):
    """Raised, under `on_breach="raise"`, before a guarded conversation's next request is sent."""

    def __init__(self, breach: Breach) -> None:
        super().__init__(breach.message)
        self.breach = breach
        self.conversation_id = breach.conversation_id
        self.spent_usd = breach.spent_usd
        self.billed_tokens = breach.billed_tokens
        self.limit = breach.limit
        self.compactions = breach.compactions
        self.response_ids = breach.response_ids
        self.request_ids = breach.request_ids


class BudgetExceeded(GuardError):
    """The conversation's billed USD, tokens or compactions went over its budget."""


class CompactionLoopDetected(GuardError):
    """The conversation is in a compaction loop (`compactobs.rules.LoopRule`)."""


class SpendUnknown(GuardError):
    """Under `unknown="raise"`: the conversation's spend in other processes could not be read in time."""


def wrap_up_message(breach: Breach | GuardError | None = None) -> dict[str, Any]:
    """The user message to append once a budget is crossed, asking the model to finish now."""
    if isinstance(breach, GuardError):
        breach = breach.breach
    reason = "the budget for this task is spent"
    if breach is not None and breach.kind == "compaction_loop":
        reason = "the context keeps filling up faster than it can be summarised"
    text = (
        f"Stop here: {reason}. Do not start new work or call tools. Reply with a short wrap-up: what you "
        "completed, what is left undone, and anything the next person must know to continue."
    )
    return {"role": "user", "content": [{"type": "text", "text": text}]}


@dataclass(frozen=True, slots=True)
class PriorSpend:
    """A conversation's spend figures: a row of the store's `guard_spend` (every process's), or what one
    process counted and has yet to add to it."""

    spent_usd: Decimal = Decimal(0)
    billed_tokens: int = 0
    compactions: int = 0
    calls: int = 0
    unpriced_calls: int = 0

    def plus(self, other: PriorSpend) -> PriorSpend:
        return PriorSpend(
            self.spent_usd + other.spent_usd,
            self.billed_tokens + other.billed_tokens,
            self.compactions + other.compactions,
            self.calls + other.calls,
            self.unpriced_calls + other.unpriced_calls,
        )

    def __bool__(self) -> bool:
        return bool(self.calls or self.spent_usd or self.billed_tokens or self.compactions)


NOTHING: Final = PriorSpend()


class SpendSource(Protocol):
    """Where guards share conversations' spend (`compactobs.guard.store.StoreSpend` over the SQL store)."""

    def exchange(
        self, added: Mapping[str, PriorSpend], read: Collection[str], seed: Mapping[str, int]
    ) -> Mapping[str, PriorSpend]:
        """In one transaction: make the rows of `seed` that do not exist yet, from what the store already
        holds of those conversations' calls that began before the given time (epoch ms: when this process
        first saw the conversation, so that none of its own calls, which `added` brings, is counted twice),
        add `added` to their rows, and return the rows of `read` (a conversation without a row is left
        out). Raises on any failure, having changed nothing."""
        ...

    def close(self) -> None: ...

    def forked(self) -> None:
        """In a forked child: forget the parent's connections without closing them (they are the
        parent's), so the child's exchanges open their own."""
        ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard decided for a request: pause it, and the figure it went on."""

    pausing: bool
    seen_usd: Decimal
    """The conversation's billed USD the guard knew when it let the request go."""
    complete: bool
    """Whether that figure included other processes' spend (the store answered), or only this one's."""
    breaches: tuple[Breach, ...] = ()
    """Limits crossed by calls this process did not make, found since its last request: for this call's
    span, as no call of this process crossed them."""


_GO: Final = Verdict(False, Decimal(0), False)


@dataclass(frozen=True, slots=True)
class ConversationSpend:
    """A guarded conversation's figures as the guard sees them now."""

    conversation_id: str
    spent_usd: Decimal
    billed_tokens: int
    compactions: int
    calls: int
    unpriced_calls: int
    breaches: tuple[Breach, ...]
    pausing: bool


@dataclass(slots=True)
class _Pending:
    """A paused compaction (no message iteration) waits for the next call's context."""

    position: int
    compactions: int
    trigger: int | None
    ids: tuple[str | None, str | None]


@dataclass(slots=True, eq=False)
class ReturnedCall:
    """A guarded call that has returned, until it is counted: whoever settles its conversation first (the
    recording thread, the conversation's next request, `spend`) prices and counts it, once."""

    guard: Guard
    state: _State
    conversation_id: str
    policy: GuardPolicy
    observation: CallObservation | None
    """Dropped once counted (it refers back to this entry)."""
    pricer: Pricer | None
    counted: bool = False

    @property
    def acts(self) -> bool:
        """Whether a breach it crosses changes the conversation's next requests (pause, raise)."""
        return self.policy.action != "warn"

    def settle(self) -> None:
        """Count this call and the conversation's calls that returned before it. Never raises; when
        another thread is settling the conversation, waits for it."""
        self.guard._settle(self.state, self, block=True)


@dataclass(slots=True)
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    """Notified (under `lock`) when a settling thread has counted what it took."""
    returned: deque[ReturnedCall] = field(default_factory=deque)
    """Returned calls not yet taken by a settling thread, in the order they returned."""
    acting: int = 0
    """Returned calls not yet counted whose breach would change a request (their policy pauses or raises)."""
    settling: bool = False
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list)
    """Requests on event loops waiting for the settling thread, woken through their loop."""
    spent_usd: Decimal = Decimal(0)
    tokens: int = 0
    compactions: int = 0
    calls: int = 0
    unpriced: int = 0
    position: int = 0
    window: LoopWindow[tuple[str | None, str | None]] | None = None
    pending: _Pending | None = None
    crossed: set[str] = field(default_factory=set)
    breaches: list[Breach] = field(default_factory=list)
    pausing: bool = False
    stopping: Breach | None = None
    allowance: int = 0
    conversation_id: str = ""
    first_seen_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    """When this process first saw the conversation: its calls began after, so the row's history stops
    there."""
    policy: GuardPolicy | None = None
    """The policy of the conversation's last request (the background exchange judges with it)."""
    # Shared with other processes through the store (all under `lock`). The figures above are
    # `shared` + `sending` + `unpublished`: the row as last read, what the exchange under way adds to it,
    # and what this process has counted since.
    shared: PriorSpend = NOTHING
    sending: PriorSpend = NOTHING
    unpublished: PriorSpend = NOTHING
    known: bool = True
    """Whether the row has been read once (always True without a store)."""
    seeded: bool = False
    read_at: float | None = None
    """When (time.monotonic) the last successful exchange began."""
    failed: bool = False
    """The last exchange failed: the figures lack other processes' spend since the last read."""
    others: bool = True
    """Another process may be spending on this conversation: under a policy that needs the figures, each
    request waits for a read after this process's last call. Presumed until `refresh_s` of reads in a row
    show no spend but this process's (`solo_since`); set again by the first read that shows some."""
    solo_since: float | None = None
    unreported: list[Breach] = field(default_factory=list)
    """Breaches a read found (crossed by other processes' calls), for the next request's span."""
    wanted: int = 0
    """Exchanges asked for (a counter): a request waits until `done` reaches the value it saw."""
    done: int = 0
    asked_at: float = 0.0
    """When (time.monotonic) the oldest exchange still to answer was asked for."""

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def forked(self) -> None:
        """In a forked child: fresh locks (one held at the fork would never be released here), and none of
        the parent's work. The calls the parent had counted but not yet sent, or not yet counted, are the
        parent's to publish: the child keeps the figures it knew as the row's, sends only its own calls,
        and takes the row as the parent leaves it at the next exchange."""
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.returned = deque()
        self.acting = 0
        self.settling = False
        self.waiters = []
        self.shared = self.shared.plus(self.sending).plus(self.unpublished)
        self.sending = self.unpublished = NOTHING
        self.done = self.wanted

    def set_figures(self, figures: PriorSpend) -> None:
        self.spent_usd = figures.spent_usd
        self.tokens = figures.billed_tokens
        self.compactions = figures.compactions
        self.calls = figures.calls
        self.unpriced = figures.unpriced_calls


class Guard:
    """The guard of one compactobs setup. Thread-safe; every method that runs inside a call never raises,
    except `before_request`'s deliberate GuardError."""

    def __init__(
        self,
        policy: GuardPolicy | None = None,
        budgets: Budgets | None = None,
        *,
        rule: LoopRule | None = None,
        store: SpendSource | None = None,
        max_conversations: int = MAX_CONVERSATIONS,
        read_timeout_s: float = READ_TIMEOUT_S,
        refresh_s: float = REFRESH_S,
        budgets_file: str | None = None,
    ) -> None:
        """`store`: where processes share conversations' spend (None: this process's own figures only).
        `read_timeout_s`: the longest a request waits for it. `budgets_file`: the file `budgets` came from,
        read again when it changes (at most once a second)."""
        self.policy = policy
        self.budgets = budgets if budgets else None
        self.rule = rule or LoopRule()
        self._source = store
        self.read_timeout_s = read_timeout_s
        self.refresh_s = refresh_s
        self._max = max(1, max_conversations)
        self._queue: dict[str, _State] = {}
        """Conversations waiting for the background exchange."""
        self._queue_changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closing = False
        self._exchange_began: float | None = None
        self._exchange_ended = 0.0
        self._hurry = False
        """A request waits for the next exchange: no pause before it."""
        self._worker_idle = False
        """The background thread waits for work (not pausing between exchanges, nor exchanging)."""
        self._retry_at = 0.0
        self._outage: str | None = None
        """The store's last error while it does not answer (logged once per outage)."""
        if store is not None:
            self._start_worker()
            if hasattr(os, "register_at_fork"):
                forked = weakref.WeakMethod(self._forked)
                os.register_at_fork(after_in_child=lambda: (method := forked()) and method())
        self._budgets_file = budgets_file
        self._budgets_seen: tuple[float, int, int] | None = _file_stamp(budgets_file)
        self._budgets_checked = time.monotonic()
        self._budgets_bad: tuple[float, int, int] | None = None
        self._lock = threading.Lock()
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._file_policies: dict[str, GuardPolicy | None] = {}
        self._policies: dict[tuple[str, GuardPolicy | None], GuardPolicy | None] = {}
        """Resolved policies by (conversation, its own policy): the same every call of a conversation."""

    @property
    def watches_all(self) -> bool:
        """Whether conversations nobody named a policy for may still be guarded (service policy, file)."""
        return self.policy is not None or self.budgets is not None or self._budgets_file is not None

    def policy_for(self, conversation_id: str | None, own: GuardPolicy | None) -> GuardPolicy | None:
        """The policy guarding this conversation, or None when it is not guarded. Never raises."""
        if conversation_id is None:
            return None
        if self._budgets_file is not None and time.monotonic() - self._budgets_checked >= 1.0:
            self._reload_budgets()
        key = (conversation_id, own)
        cached = self._policies.get(key, ...)
        if cached is not ...:
            return cached
        policy = self._resolve(conversation_id, own)
        if len(self._policies) >= self._max:
            self._policies.clear()
        self._policies[key] = policy
        return policy

    def _resolve(self, conversation_id: str, own: GuardPolicy | None) -> GuardPolicy | None:
        try:
            found = self._file_policy(conversation_id) if self.budgets is not None else None
            service = self.policy
            if found is None and own is None and service is None:
                return None
            # Limits as report anomalies takes them (rules.effective_budget), then the service's; how to
            # act, on unknown spend too, and whether to watch loops: the file, the conversation, the service.
            limits = effective_budget(found.budget if found else None, own.budget if own else None)
            if limits is None and service is not None:
                limits = service.budget
            behaviour = (found or GuardPolicy()).over(own).over(service)
            policy = GuardPolicy(
                limits.usd if limits else None,
                limits.tokens if limits else None,
                limits.max_compactions if limits else None,
                behaviour.loop,
                behaviour.on_breach,
                behaviour.unknown,
            )
            if not policy.budget.has_limits and policy.loop is False:
                return None  # what applies watches nothing
            return policy
        except Exception:
            log.debug("compactobs guard: no policy for %r", conversation_id, exc_info=True)
            return None

    def _file_policy(self, conversation_id: str) -> GuardPolicy | None:
        cached = self._file_policies.get(conversation_id, ...)
        if cached is not ...:
            return cached
        assert self.budgets is not None
        budget = self.budgets.for_conversation(conversation_id)
        found = GuardPolicy.from_budget(budget) if budget is not None else None
        if len(self._file_policies) >= self._max:
            self._file_policies.clear()
        self._file_policies[conversation_id] = found
        return found

    def _reload_budgets(self) -> None:
        """Read the budgets file again if it changed; a file that no longer parses keeps the last good
        budgets, said in one log line. Runs at most once a second (on a request's thread: a stat, and a
        small file's parse when it changed). Never raises."""
        self._budgets_checked = time.monotonic()
        try:
            stamp = _file_stamp(self._budgets_file)
            if stamp == self._budgets_seen or stamp == self._budgets_bad:
                return
            from compactobs.rules import load_budgets

            assert self._budgets_file is not None
            try:
                budgets = load_budgets(self._budgets_file)
            except Exception as err:
                self._budgets_bad = stamp
                # repr: one line, and a hostile key in the file cannot put escape sequences in the log
                log.error("compactobs guard: %r; keeping the budgets read before", " ".join(str(err).split()))
                return
            self.budgets = budgets if budgets else None
            self._budgets_seen, self._budgets_bad = stamp, None
            self._file_policies = {}
            self._policies = {}
            log.info("compactobs guard: budgets read again from %s", self._budgets_file)
        except Exception:
            log.debug("compactobs guard: could not read the budgets file again", exc_info=True)

    # -- state --------------------------------------------------------------------------------------------

    def _state(self, conversation_id: str, policy: GuardPolicy | None) -> _State:
        """The conversation's state; at its first call in the process, its row in the store is asked for
        (in the background)."""
        with self._lock:
            state = self._states.get(conversation_id)
            if state is not None:
                self._states.move_to_end(conversation_id)
                new = False
            else:
                state = _State(conversation_id=conversation_id, known=self._source is None)
                self._states[conversation_id] = state
                while len(self._states) > self._max:
                    # A dropped conversation's uncounted figures stay with the exchange that holds it.
                    self._states.popitem(last=False)
                new = True
        if policy is not None:
            state.policy = policy
        if new and self._source is not None:
            self._ask(state)
        return state

    def _ask(self, state: _State) -> None:
        """Queue an exchange of the conversation's figures with the store. Never raises."""
        with state.lock:
            if state.done >= state.wanted:
                state.asked_at = time.monotonic()
            state.wanted += 1
        with self._queue_changed:
            if self._closing:
                return
            self._queue[state.conversation_id] = state
            if self._worker_idle:  # else it takes the queue when its pause ends: no wake-up per call
                self._queue_changed.notify()

    def _forked(self) -> None:
        """In a forked child, where only the forking thread lives on: the store thread is started again,
        with fresh locks, the parent's connections left to it, and every conversation the parent guarded
        asked for again (its row may have moved since). Never raises."""
        try:
            self._lock = threading.Lock()
            self._queue_changed = threading.Condition()
            self._queue = {}
            self._exchange_began = None
            self._hurry = self._worker_idle = False
            self._retry_at = 0.0
            self._worker = None
            if self._source is not None:
                self._source.forked()
            states = list(self._states.values())
            for state in states:
                state.forked()
            if self._closing or self._source is None:
                return
            self._start_worker()
            for state in states:
                self._ask(state)
        except Exception:
            log.debug("compactobs guard: could not start again after a fork", exc_info=True)

    def _start_worker(self) -> None:
        name = "compactobs-guard-store"
        self._worker = threading.Thread(target=self._exchange_loop, name=name, daemon=True)
        self._worker.start()

    def _stuck(self) -> bool:
        """Whether the store is not answering now: no exchange is worth waiting for."""
        began = self._exchange_began
        now = time.monotonic()
        return now < self._retry_at or (began is not None and now - began > self.read_timeout_s)

    def _exchange_loop(self) -> None:
        """The background thread: exchange the queued conversations' figures with the store, all of them in
        one transaction, again and again; while the store does not answer, try again after a pause that
        doubles up to RETRY_S[1]."""
        try:  # connect now, at setup: the first conversation's first read is then one round trip
            assert self._source is not None
            self._source.exchange({}, (), {})
        except Exception:
            log.debug("compactobs guard: the store does not answer yet", exc_info=True)
        pause = RETRY_S[0]
        while True:
            with self._queue_changed:
                while not self._queue or (time.monotonic() < self._retry_at and not self._closing):
                    if self._closing and not self._queue:
                        return
                    timeout = self._retry_at - time.monotonic() if self._queue else None
                    self._worker_idle = not self._queue
                    self._queue_changed.wait(timeout)
                    self._worker_idle = False
                due = self._exchange_ended + PUBLISH_EVERY_S
                while not (self._hurry or self._closing) and (wait := due - time.monotonic()) > 0:
                    self._queue_changed.wait(wait)
                self._hurry = False
                batch, self._queue = self._queue, {}
                self._exchange_began = time.monotonic()
            ok = self._exchange(batch)
            with self._queue_changed:
                self._exchange_began = None
                self._exchange_ended = time.monotonic()
                if ok:
                    pause = RETRY_S[0]
                    continue
                if self._closing:
                    return  # the store does not answer: what this process counted stays unpublished
                for conversation_id, state in batch.items():
                    self._queue.setdefault(conversation_id, state)
                self._retry_at = time.monotonic() + pause
                pause = min(pause * 2, RETRY_S[1])

    def _exchange(self, batch: dict[str, _State]) -> bool:
        """One exchange: add what each conversation counted since to its row, read the rows back. Never
        raises; False when the store did not answer (nothing changed there, the figures stay to send)."""
        began = time.monotonic()
        added: dict[str, PriorSpend] = {}
        seed: dict[str, int] = {}
        asked: dict[str, int] = {}
        for conversation_id, state in batch.items():
            with state.lock:
                asked[conversation_id] = state.wanted
                state.sending, state.unpublished = state.unpublished, NOTHING
                if state.sending:
                    added[conversation_id] = state.sending
                if not state.seeded:
                    seed[conversation_id] = state.first_seen_ms
        try:
            assert self._source is not None
            rows = self._source.exchange(added, tuple(batch), seed)
        except Exception as err:
            for conversation_id, state in batch.items():
                with state.changed:
                    state.unpublished, state.sending = state.unpublished.plus(state.sending), NOTHING
                    state.failed = True
                    state.done = max(state.done, asked[conversation_id])
                    state.asked_at = began  # what is still asked for was asked after this exchange began
                    self._wake_all(state)
            if self._outage is None:
                log.warning(
                    "compactobs guard: cannot read conversations' spend from the store (%s); guarding with "
                    "this process's own figures until it answers (unknown=raise refuses instead)",
                    " ".join(str(err).split())[:300],
                )
            self._outage = str(err)
            return False
        if self._outage is not None:
            self._outage = None
            log.warning("compactobs guard: the store answers again; conversations' spend is shared again")
        for conversation_id, state in batch.items():
            crossed: list[Breach] = []
            with state.changed:
                state.done = max(state.done, asked[conversation_id])
                state.asked_at = time.monotonic()  # answered: what is still asked for waits from now
                try:
                    crossed = self._read_back(state, rows.get(conversation_id), began)
                except Exception:
                    log.debug("compactobs guard: could not take a conversation's figures", exc_info=True)
                finally:
                    self._wake_all(state)
            for breach in crossed:
                log.warning("compactobs guard: %s", breach.message)
        return True

    def _read_back(self, state: _State, row: PriorSpend | None, began: float) -> list[Breach]:
        """Take the row the store returned (under the conversation's lock); judge the new figures."""
        sent, state.sending = state.sending, NOTHING
        if row is None:  # no row (it was removed): made again from the store's calls at the next exchange
            state.seeded = False
            row = state.shared.plus(sent)
        else:
            expected = state.shared.plus(sent) if state.seeded else sent
            if _units(row.spent_usd) != _units(expected.spent_usd) or row.calls != expected.calls:
                state.others, state.solo_since = True, None  # spent on by another process
            elif state.solo_since is None:
                state.solo_since = began
            elif began - state.solo_since >= self.refresh_s:
                state.others = False
            state.seeded = True
        state.shared = row
        state.known = True
        state.failed = False
        state.read_at = began
        state.set_figures(row.plus(state.unpublished))
        policy = state.policy
        if policy is None:
            return []
        found = []
        for kind in over_limits(policy.budget, state.spent_usd, state.tokens, state.compactions):
            if kind not in state.crossed:
                breach = self._breach(kind, state.conversation_id, state, policy, (), crossed_before=True)
                self._act(state, breach)
                found.append(breach)
        state.unreported += found
        return found

    @staticmethod
    def _wake_all(state: _State) -> None:
        """Wake the threads and event loops waiting on the conversation (under its lock)."""
        state.changed.notify_all()
        waiters, state.waiters = state.waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_wake, future)

    def _due(self, state: _State, policy: GuardPolicy) -> int | None:
        """Before a request: the exchange it must wait for (the value `state.done` must reach), or None.
        Asks for a read when the last one is older than `refresh_s`. Never raises."""
        if self._source is None:
            return None
        now = time.monotonic()
        with state.lock:
            # Read again when the figures are old, and, under a policy that needs them, before every request
            # of a conversation other processes spend on (one short exchange; solo ones never wait).
            fresh = state.read_at is None or now - state.read_at > self.refresh_s
            fresh = fresh or (state.others and policy.needs_figures)
            idle = state.done >= state.wanted
        if fresh and idle:
            self._ask(state)
        with state.lock:
            due = state.done < state.wanted and (not state.known or fresh)
            target = state.wanted
        if not due or not policy.needs_figures or self._stuck():
            return None
        with self._queue_changed:
            self._hurry = True
            self._queue_changed.notify()
        return target

    def _complete(self, state: _State, target: int | None) -> bool:
        """Whether the figures include every process's spend as of the read the request needed."""
        if self._source is None:
            return True
        if not state.known or state.failed or (target is not None and state.done < target):
            return False
        late = state.done < state.wanted and time.monotonic() - state.asked_at > self.read_timeout_s
        return not late  # an exchange asked for has gone unanswered beyond the bound: a stalled store

    def _wait_exchange(self, state: _State, target: int) -> None:
        deadline = time.monotonic() + self.read_timeout_s
        with state.changed:
            while state.done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                state.changed.wait(remaining)

    def _breach(
        self,
        kind: BreachKind,
        conversation_id: str,
        state: _State,
        policy: GuardPolicy,
        ids: tuple[tuple[str | None, str | None], ...],
        *,
        crossed_before: bool = False,
    ) -> Breach:
        """(Under the conversation's lock.)"""
        budget = policy.budget
        limit: Decimal | int | None = {
            "budget_usd": budget.usd,
            "budget_tokens": budget.tokens,
            "max_compactions": budget.max_compactions,
            "compaction_loop": None,
            "spend_unknown": None,
        }[kind]
        return Breach(
            kind=kind,
            conversation_id=conversation_id,
            action=policy.action,
            spent_usd=state.spent_usd,
            billed_tokens=state.tokens,
            compactions=state.compactions,
            limit=limit,
            response_ids=tuple(r for r, _ in ids if r),
            request_ids=tuple(q for _, q in ids if q),
            unpriced_calls=state.unpriced,
            crossed_before=crossed_before,
            complete=self._complete(state, None),
        )

    @staticmethod
    def _act(state: _State, breach: Breach) -> None:
        state.crossed.add(breach.kind)
        state.breaches.append(breach)
        if breach.action == "pause":
            state.pausing = True
        elif breach.action == "raise" and state.stopping is None:
            state.stopping = breach

    # -- the call's path ----------------------------------------------------------------------------------

    def before_request(
        self, conversation_id: str, policy: GuardPolicy, *, first_attempt: bool = True, wait: bool = True
    ) -> Verdict:
        """Whether the request must carry `pause_after_compaction: true`, and the figure it goes on. Raises
        the conversation's GuardError under `raise` once it is over, and SpendUnknown under
        `unknown="raise"` while other processes' spend is unknown (a retry of a call already sent is never
        stopped).

        First settles the conversation's returned calls when one of them could change this request (its
        policy pauses or raises): counted here, or, when another thread is counting them right now, waited
        for (`wait`; an event loop waits beforehand with `settled`, and passes wait=False). Then, when the
        policy needs the figures and a read of the store is due, waits for it at most `read_timeout_s`."""
        try:
            state = self._state(conversation_id, policy)
            if state.acting:
                self._settle(state, None, block=wait)
            target = self._due(state, policy)
            if target is not None and wait:
                self._wait_exchange(state, target)
            with state.lock:
                complete = self._complete(state, target)
                stopping = state.stopping if first_attempt else None
                if stopping is not None and state.allowance > 0:
                    state.allowance -= 1
                    stopping = None
                if stopping is None and first_attempt and not complete and policy.unknown == "raise":
                    stopping = self._breach("spend_unknown", conversation_id, state, policy, ())
                reported: tuple[Breach, ...] = ()
                if stopping is None and first_attempt:
                    reported, state.unreported = tuple(state.unreported), []
                verdict = Verdict(state.pausing, state.spent_usd, complete, reported)
        except Exception:
            log.debug("compactobs guard: could not check a request", exc_info=True)
            return _GO
        if stopping is not None:
            raise stopping.error()
        return verdict

    async def settled(self, conversation_id: str, policy: GuardPolicy) -> None:
        """On an event loop, before `before_request(..., wait=False)`: count the conversation's returned
        calls that could change the next request, here, or await the thread counting them; then await the
        store's answer when one is due (at most `read_timeout_s`). Never blocks the loop; never raises."""
        try:
            state = self._state(conversation_id, policy)
            deadline = time.monotonic() + SETTLE_WAIT_S
            while state.acting and not self._settle(state, None, block=False):
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                with state.lock:
                    if not state.settling:
                        continue
                    state.waiters.append((loop, future))
                remaining = deadline - time.monotonic()
                try:
                    await asyncio.wait_for(future, max(remaining, 0.0))
                except asyncio.TimeoutError:
                    self._late(state)
                    break
            target = self._due(state, policy)
            if target is not None:
                await self._await_exchange(state, target)
        except Exception:
            log.debug("compactobs guard: could not wait for a conversation's figures", exc_info=True)

    async def _await_exchange(self, state: _State, target: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.read_timeout_s
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with state.lock:
                if state.done >= target:
                    return
                state.waiters.append((loop, future))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(future, remaining)
            except asyncio.TimeoutError:
                return

    def returned(
        self, conversation_id: str, policy: GuardPolicy, observation: CallObservation, pricer: Pricer | None
    ) -> ReturnedCall | None:
        """Register a guarded call that has returned, to be priced and counted by whoever settles its
        conversation first (`ReturnedCall.settle`). None when it cannot be registered. Never raises."""
        try:
            state = self._state(conversation_id, policy)
            entry = ReturnedCall(self, state, conversation_id, policy, observation, pricer)
            with state.lock:
                state.returned.append(entry)
                if entry.acts:
                    state.acting += 1
            return entry
        except Exception:
            log.debug("compactobs guard: could not register a returned call", exc_info=True)
            return None

    def _settle(self, state: _State, upto: ReturnedCall | None, *, block: bool) -> bool:
        """Price and count the conversation's returned calls, in the order they returned, up to `upto` (all
        when None). One thread settles a conversation at a time; another waits for it when `block`, else
        returns False at once. True once the calls are counted. Never raises."""
        try:
            with state.changed:
                deadline = None
                while state.settling:
                    if upto is not None and upto.counted:
                        return True
                    if not block:
                        return False
                    deadline = deadline or time.monotonic() + SETTLE_WAIT_S
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not state.changed.wait(remaining):
                        self._late(state)
                        return False
                if upto is not None and upto.counted:
                    return True
                taken: list[ReturnedCall] = []
                returned = state.returned
                while returned:
                    entry = returned.popleft()
                    taken.append(entry)
                    if entry is upto:
                        break
                if not taken:
                    return True
                state.settling = True
            # Outside the lock: reading a body and pricing it are the slow part, and touch no shared state.
            figures = [self._price(entry) for entry in taken]
            crossed: list[Breach] = []
            with state.changed:
                try:
                    for entry, (usage, cost) in zip(taken, figures, strict=True):
                        try:
                            crossed += self._count_returned(state, entry, usage, cost)
                        except Exception:
                            log.debug("compactobs guard: could not count a call", exc_info=True)
                finally:
                    state.settling = False
                    state.changed.notify_all()
                    waiters, state.waiters = state.waiters, []
            for loop, future in waiters:
                loop.call_soon_threadsafe(_wake, future)
            for breach in crossed:
                log.warning("compactobs guard: %s", breach.message)
            if self._source is not None:
                self._ask(state)  # to the store, and the other processes' spend back
            return True
        except Exception:
            log.debug("compactobs guard: could not count a conversation's calls", exc_info=True)
            return False

    @staticmethod
    def _late(state: _State) -> None:
        log.warning(
            "compactobs guard: a conversation's returned calls are still being counted after %.1f s; "
            "a request goes on without their figures",
            SETTLE_WAIT_S,
        )

    @staticmethod
    def _price(entry: ReturnedCall) -> tuple[CallUsage | None, Decimal | None]:
        """A returned call's usage and billed USD, read from its response. The recording thread reuses the
        price (`CallObservation.priced`). Never raises."""
        try:
            observation = entry.observation
            assert observation is not None  # taken by one settling thread, before it is counted
            observation.complete()
            usage = observation.usage
            if usage is None or entry.pricer is None:
                return usage, None
            when = datetime.fromtimestamp(observation.start_ns / 1e9, tz=timezone.utc)
            observation.priced = entry.pricer.price_call(usage, when)
            return usage, observation.priced.cost_usd
        except Exception:
            log.debug("compactobs guard: could not price a call", exc_info=True)
            return None, None

    def _count_returned(
        self, state: _State, entry: ReturnedCall, usage: CallUsage | None, cost: Decimal | None
    ) -> list[Breach]:
        """Count one returned call (under the conversation's lock); its breaches become span events on its
        call span, which the recording thread emits only once the call is counted."""
        entry.counted = True
        if entry.acts:
            state.acting -= 1
        observation, entry.observation = entry.observation, None
        if usage is None or observation is None:  # a call without usage (an error) spends nothing
            return []
        ids = (observation.response_id, observation.request_id)
        trigger = observation.request.compaction_trigger
        breaches = self._count(entry.conversation_id, state, entry.policy, usage, cost, trigger, ids)
        if breaches:
            observation.events = [*(observation.events or ()), *map(breach_event, breaches)]
        return breaches

    def _count(
        self,
        conversation_id: str,
        state: _State,
        policy: GuardPolicy,
        usage: CallUsage,
        cost_usd: Decimal | None,
        trigger: int | None,
        ids: tuple[str | None, str | None],
    ) -> list[Breach]:
        compactions = usage.compactions
        tokens = billed_tokens(usage.totals)
        state.calls += 1
        state.position += 1
        state.tokens += tokens
        state.compactions += compactions
        if cost_usd is None:
            state.unpriced += 1
        else:
            state.spent_usd += cost_usd
        if self._source is not None:
            counted = PriorSpend(cost_usd or Decimal(0), tokens, compactions, 1, int(cost_usd is None))
            state.unpublished = state.unpublished.plus(counted)
        found: list[Breach] = []
        for kind in over_limits(policy.budget, state.spent_usd, state.tokens, state.compactions):
            if kind not in state.crossed:
                found.append(self._breach(kind, conversation_id, state, policy, (ids,)))
        if policy.watches_loops:
            loop = self._loop(state, usage, compactions, trigger, ids)
            if loop is not None and "compaction_loop" not in state.crossed:
                found.append(self._breach("compaction_loop", conversation_id, state, policy, loop))
        for breach in found:
            self._act(state, breach)
        return found

    def _loop(
        self,
        state: _State,
        usage: CallUsage,
        compactions: int,
        trigger: int | None,
        ids: tuple[str | None, str | None],
    ) -> tuple[tuple[str | None, str | None], ...] | None:
        """Feed the loop rule: this call's compaction, and a paused one before it now that its context (this
        call's) is known."""
        if state.window is None:
            state.window = LoopWindow(self.rule)
        context = usage.context_tokens
        loop = None
        pending, state.pending = state.pending, None
        if pending is not None and context is not None and self.rule.ineffective(context, pending.trigger):
            loop = state.window.add(pending.position, pending.compactions, pending.ids)
        if compactions:
            if context is None:
                state.pending = _Pending(state.position, compactions, trigger, ids)
            elif self.rule.ineffective(context, trigger):
                loop = state.window.add(state.position, compactions, ids) or loop
        return loop

    # -- public views -------------------------------------------------------------------------------------

    def spend(self, conversation_id: str) -> ConversationSpend | None:
        """The conversation's figures, every call that has returned counted (settled here first, or waited
        for while another thread counts them)."""
        with self._lock:
            state = self._states.get(conversation_id)
        if state is None:
            return None
        if state.returned or state.settling:
            self._settle(state, None, block=True)
        with state.lock:
            return ConversationSpend(
                conversation_id,
                state.spent_usd,
                state.tokens,
                state.compactions,
                state.calls,
                state.unpriced,
                tuple(state.breaches),
                state.pausing,
            )

    def send_counted(self, timeout_s: float) -> bool:
        """Send to the store what this process counted and has not sent yet, waiting at most `timeout_s`
        for the answer; the guard stays in place (the process is ending, its last calls may still return).
        False when something was left unsent. Never raises."""
        try:
            if self._source is None:
                return True
            with self._lock:
                states = list(self._states.values())
            unsent = []
            for state in states:
                with state.lock:
                    if state.unpublished or state.sending:
                        unsent.append(state)
            for state in unsent:
                self._ask(state)
            with self._queue_changed:
                self._hurry = True
                self._queue_changed.notify_all()
            deadline = time.monotonic() + timeout_s
            for state in unsent:
                with state.changed:
                    while state.done < state.wanted:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        state.changed.wait(remaining)
                    if state.unpublished or state.sending:
                        return False  # the store did not answer
            return True
        except Exception:
            log.debug("compactobs guard: could not send the counted calls", exc_info=True)
            return False

    def close(self) -> None:
        """Send what this process counted to the store (waiting at most CLOSE_WAIT_S), then release its
        connection. Never raises."""
        with self._queue_changed:
            self._closing = True
            self._queue_changed.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(CLOSE_WAIT_S)
        if self._source is not None and (worker is None or not worker.is_alive()):
            try:
                self._source.close()
            except Exception:
                log.debug("compactobs guard: closing the store failed", exc_info=True)

    def allow_wrap_up(self, conversation_id: str, requests: int = 1) -> None:
        with self._lock:
            state = self._states.get(conversation_id)
        if state is not None:
            with state.lock:
                state.allowance += requests


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_installed: Guard | None = None


def install(guard: Guard | None) -> None:
    """Make `guard` the one calls are judged by (compactobs' setup does this)."""
    global _installed
    _installed = guard


def installed() -> Guard | None:
    return _installed


def spend(conversation_id: str) -> ConversationSpend | None:
    """What the guard counted for a guarded conversation so far (None if it has not seen it)."""
    guard = _installed
    return guard.spend(conversation_id) if guard is not None else None


def allow_wrap_up(conversation_id: str, requests: int = 1) -> None:
    """Under `on_breach="raise"`: let the conversation's next `requests` requests through (the wrap-up)."""
    guard = _installed
    if guard is not None:
        guard.allow_wrap_up(conversation_id, requests)


def with_pause(body: object) -> dict[str, Any] | None:
    """A new request body whose `compact_20260112` edits carry `pause_after_compaction: true`; None when
    there is nothing to change (no threshold compaction configured, or already pausing)."""
    if not isinstance(body, dict):
        return None
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    if not isinstance(edits, list):
        return None
    changed = False
    new_edits = []
    for edit in edits:
        if (
            isinstance(edit, dict)
            and edit.get("type") == "compact_20260112"
            and edit.get("pause_after_compaction") is not True
        ):
            edit = {**edit, "pause_after_compaction": True}
            changed = True
        new_edits.append(edit)
    if not changed:
        return None
    assert isinstance(management, dict)
    return {**body, "context_management": {**management, "edits": new_edits}}


def _units(usd: Decimal) -> int:
    """USD in the store's whole units (10^-10 USD)."""
    return int(usd.scaleb(10).to_integral_value())


def _file_stamp(path: str | None) -> tuple[float, int, int] | None:
    """What tells a file changed: its modification time, size and inode (None: no such file)."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime, info.st_size, info.st_ino)
