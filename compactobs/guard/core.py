"""The `Guard`: judges each guarded request and counts each guarded call that returned; the guard in
place (`install`, `installed`) and its module-level views (`spend`, `allow_wrap_up`).

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

The judging is `compactobs.rules`', the rules `report anomalies` applies afterwards:

- a budget (USD, billed tokens, compactions) is crossed by the call whose billed total takes the
  conversation's spend above it: exactly one call, whatever the threads and tasks;
- a compaction loop is `LoopRule`'s (>= 3 ineffective compactions within 5 calls, by default); the context a
  paused compaction left is the next call's, as in the report.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from compactobs.guard.breaches import Breach, breach_event
from compactobs.guard.figures import GO, ConversationSpend, PriorSpend, SpendSource, Verdict
from compactobs.guard.policy import GuardPolicy, Policies
from compactobs.guard.sharing import READ_TIMEOUT_S, REFRESH_S, Sharing
from compactobs.guard.state import CallIds, ConversationState, Pending, ReturnedCall, wake
from compactobs.rules import Budgets, LoopRule, LoopWindow, billed_tokens, over_limits
from compactobs.usage import CallObservation, CallUsage

if TYPE_CHECKING:
    from compactobs.pricing import Pricer

__all__ = ["MAX_CONVERSATIONS", "SETTLE_WAIT_S", "Guard", "allow_wrap_up", "install", "installed", "spend"]

log = logging.getLogger("compactobs")

MAX_CONVERSATIONS: Final = 10_000
"""Conversations whose spend the guard keeps in memory; the least recently used beyond it are dropped (and
read again from the store, when there is one, at their next call)."""

SETTLE_WAIT_S: Final = 1.0
"""How long a request waits for another thread that is counting its conversation's returned calls (which
takes microseconds) before it goes on without their figures, saying so in a warning."""


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
        self.rule = rule or LoopRule()
        self.read_timeout_s = read_timeout_s
        self._max = max(1, max_conversations)
        self._policies = Policies(policy, budgets, budgets_file, self._max)
        self._sharing = Sharing(store, read_timeout_s, refresh_s) if store is not None else None
        if store is not None and hasattr(os, "register_at_fork"):
            forked = weakref.WeakMethod(self._forked)
            os.register_at_fork(after_in_child=lambda: (method := forked()) and method())
        self._lock = threading.Lock()
        self._states: OrderedDict[str, ConversationState] = OrderedDict()

    @property
    def policy(self) -> GuardPolicy | None:
        """The service's policy."""
        return self._policies.policy

    @property
    def budgets(self) -> Budgets | None:
        """The budgets file's entries, as last read."""
        return self._policies.budgets

    @property
    def watches_all(self) -> bool:
        """Whether conversations nobody named a policy for may still be guarded (service policy, file)."""
        return self._policies.watches_all

    def policy_for(self, conversation_id: str | None, own: GuardPolicy | None) -> GuardPolicy | None:
        """The policy guarding this conversation, or None when it is not guarded. Never raises."""
        return self._policies.policy_for(conversation_id, own)

    def tags_for(self, own: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """A call's tags: the service policy's, under its conversation's `own` (see `Policies.tags_for`)."""
        return self._policies.tags_for(own)

    # -- state --------------------------------------------------------------------------------------------

    def _state(self, conversation_id: str, policy: GuardPolicy | None) -> ConversationState:
        """The conversation's state; at its first call in the process, its row in the store is asked for
        (in the background)."""
        with self._lock:
            state = self._states.get(conversation_id)
            if state is not None:
                self._states.move_to_end(conversation_id)
                new = False
            else:
                state = ConversationState(conversation_id=conversation_id, known=self._sharing is None)
                self._states[conversation_id] = state
                while len(self._states) > self._max:
                    # A dropped conversation's uncounted figures stay with the exchange that holds it.
                    self._states.popitem(last=False)
                new = True
        if policy is not None:
            state.policy = policy
        if new and self._sharing is not None:
            self._sharing.ask(state)
        return state

    def _forked(self) -> None:
        """In a forked child: a fresh lock, and the store's exchanges started again (`Sharing.forked`)."""
        self._lock = threading.Lock()
        if self._sharing is not None:
            self._sharing.forked(list(self._states.values()))

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
            target = None
            if self._sharing is not None:
                target = self._sharing.due(state, policy)
                if target is not None and wait:
                    self._sharing.wait(state, target)
            with state.lock:
                complete = state.complete(target, self.read_timeout_s)
                stopping = state.stopping if first_attempt else None
                if stopping is not None and state.allowance > 0:
                    state.allowance -= 1
                    stopping = None
                if stopping is None and first_attempt and not complete and policy.unknown == "raise":
                    stopping = state.breach("spend_unknown", conversation_id, policy, (), self.read_timeout_s)
                reported: tuple[Breach, ...] = ()
                if stopping is None and first_attempt:
                    reported, state.unreported = tuple(state.unreported), []
                verdict = Verdict(state.pausing, state.spent_usd, complete, reported)
        except Exception:
            log.debug("compactobs guard: could not check a request", exc_info=True)
            return GO
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
            if self._sharing is not None:
                target = self._sharing.due(state, policy)
                if target is not None:
                    await self._sharing.wait_async(state, target)
        except Exception:
            log.debug("compactobs guard: could not wait for a conversation's figures", exc_info=True)

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

    def _settle(self, state: ConversationState, upto: ReturnedCall | None, *, block: bool) -> bool:
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
                loop.call_soon_threadsafe(wake, future)
            for breach in crossed:
                log.warning("compactobs guard: %s", breach.message)
            if self._sharing is not None:
                self._sharing.ask(state)  # to the store, and the other processes' spend back
            return True
        except Exception:
            log.debug("compactobs guard: could not count a conversation's calls", exc_info=True)
            return False

    @staticmethod
    def _late(state: ConversationState) -> None:
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
        self, state: ConversationState, entry: ReturnedCall, usage: CallUsage | None, cost: Decimal | None
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
        state: ConversationState,
        policy: GuardPolicy,
        usage: CallUsage,
        cost_usd: Decimal | None,
        trigger: int | None,
        ids: CallIds,
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
        if self._sharing is not None:
            counted = PriorSpend(cost_usd or Decimal(0), tokens, compactions, 1, int(cost_usd is None))
            state.unpublished = state.unpublished.plus(counted)
        found: list[Breach] = []
        for kind in over_limits(policy.budget, state.spent_usd, state.tokens, state.compactions):
            if kind not in state.crossed:
                found.append(state.breach(kind, conversation_id, policy, (ids,), self.read_timeout_s))
        if policy.watches_loops:
            loop = self._loop(state, usage, compactions, trigger, ids)
            if loop is not None and "compaction_loop" not in state.crossed:
                found.append(
                    state.breach("compaction_loop", conversation_id, policy, loop, self.read_timeout_s)
                )
        for breach in found:
            state.act(breach)
        return found

    def _loop(
        self,
        state: ConversationState,
        usage: CallUsage,
        compactions: int,
        trigger: int | None,
        ids: CallIds,
    ) -> tuple[CallIds, ...] | None:
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
                state.pending = Pending(state.position, compactions, trigger, ids)
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
        if self._sharing is None:
            return True
        with self._lock:
            states = list(self._states.values())
        return self._sharing.send_counted(states, timeout_s)

    def close(self) -> None:
        """Send what this process counted to the store (waiting at most CLOSE_WAIT_S), then release its
        connection. Never raises."""
        if self._sharing is not None:
            self._sharing.close()

    def allow_wrap_up(self, conversation_id: str, requests: int = 1) -> None:
        with self._lock:
            state = self._states.get(conversation_id)
        if state is not None:
            with state.lock:
                state.allowance += requests


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
