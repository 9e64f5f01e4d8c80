"""What a guard keeps per conversation (`ConversationState`), the calls that returned and wait to be
counted (`ReturnedCall`), and the judging of figures against a policy (under the conversation's lock)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from compactobs.guard.breaches import Breach, BreachKind
from compactobs.guard.figures import NOTHING, PriorSpend
from compactobs.guard.policy import GuardPolicy
from compactobs.rules import LoopWindow
from compactobs.usage import CallObservation

if TYPE_CHECKING:
    from compactobs.pricing import Pricer

__all__ = ["CallIds", "ConversationState", "Pending", "ReturnedCall", "Settler", "wake"]

CallIds = tuple[str | None, str | None]
"""A call's (response id, request id)."""


class Settler(Protocol):
    """What counts a conversation's returned calls (the `Guard`)."""

    def _settle(self, state: ConversationState, upto: ReturnedCall | None, *, block: bool) -> bool: ...


@dataclass(slots=True)
class Pending:
    """A paused compaction (no message iteration) waits for the next call's context."""

    position: int
    compactions: int
    trigger: int | None
    ids: CallIds


@dataclass(slots=True, eq=False)
class ReturnedCall:
    """A guarded call that has returned, until it is counted: whoever settles its conversation first (the
    recording thread, the conversation's next request, `spend`) prices and counts it, once."""

    guard: Settler
    state: ConversationState
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
class ConversationState:
    """A guarded conversation's figures, its returned calls and its exchanges with the store."""

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
    window: LoopWindow[CallIds] | None = None
    pending: Pending | None = None
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

    def complete(self, target: int | None, read_timeout_s: float) -> bool:
        """Whether the figures include every process's spend as of the read (`target`) a request needed.
        Always True without a store (no exchange is ever asked for, the figures are known)."""
        if not self.known or self.failed or (target is not None and self.done < target):
            return False
        late = self.done < self.wanted and time.monotonic() - self.asked_at > read_timeout_s
        return not late  # an exchange asked for has gone unanswered beyond the bound: a stalled store

    def wake_all(self) -> None:
        """Wake the threads and event loops waiting on the conversation (under its lock)."""
        self.changed.notify_all()
        waiters, self.waiters = self.waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(wake, future)

    def breach(
        self,
        kind: BreachKind,
        conversation_id: str,
        policy: GuardPolicy,
        ids: tuple[CallIds, ...],
        read_timeout_s: float,
        *,
        crossed_before: bool = False,
    ) -> Breach:
        """The breach of `kind` with the figures as they are now (under the conversation's lock)."""
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
            spent_usd=self.spent_usd,
            billed_tokens=self.tokens,
            compactions=self.compactions,
            limit=limit,
            response_ids=tuple(r for r, _ in ids if r),
            request_ids=tuple(q for _, q in ids if q),
            unpriced_calls=self.unpriced,
            crossed_before=crossed_before,
            complete=self.complete(None, read_timeout_s),
        )

    def act(self, breach: Breach) -> None:
        """Take a breach on (under the conversation's lock): the next requests pause or raise."""
        self.crossed.add(breach.kind)
        self.breaches.append(breach)
        if breach.action == "pause":
            self.pausing = True
        elif breach.action == "raise" and self.stopping is None:
            self.stopping = breach


def wake(future: asyncio.Future[None]) -> None:
    """Resolve a waiting request's future (on its event loop)."""
    if not future.done():
        future.set_result(None)
