"""A guard's sharing of conversations' spend with other processes, through a `SpendSource` (the store).

Spend is kept in memory per conversation. With a store (`Guard(store=...)`, `compactobs.guard.store.
StoreSpend`), the conversation's spend is shared across processes through its row in the store's
`guard_spend` table: a background thread adds the calls this process counts to the row and reads it back,
in one short transaction (`SpendSource.exchange`): at the conversation's first call, after calls are
counted (at most every PUBLISH_EVERY_S when no request waits), and before a request when the last read is
older than `refresh_s`. A caller never does that I/O. A request that must know the figures (its policy
pauses, raises, or refuses unknown spend) waits for the exchange it needs at most `read_timeout_s` (50 ms
by default), then goes on with what the guard knows. It waits only when a read is due: the conversation's
first, one older than `refresh_s`, or, while other processes may be spending on the conversation, one
after this process's last call (the conversation is presumed shared until `refresh_s` of reads show only
this process's spend). Until a read succeeds, and while the store leaves an exchange unanswered past the
bound, the conversation's spend elsewhere is *unknown*: `unknown="warn"` (default) goes on and logs once,
`unknown="raise"` refuses the request (`SpendUnknown`). The figure a request went on, and whether it was
complete, is on its call span (`compactobs.guard.seen_usd`, `compactobs.guard.complete`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Final

from compactobs.guard.breaches import Breach
from compactobs.guard.figures import NOTHING, PriorSpend, SpendSource, units
from compactobs.guard.policy import GuardPolicy
from compactobs.guard.state import ConversationState
from compactobs.rules import over_limits

__all__ = [
    "CLOSE_WAIT_S",
    "ENV_READ_TIMEOUT_MS",
    "PUBLISH_EVERY_S",
    "READ_TIMEOUT_S",
    "REFRESH_S",
    "RETRY_S",
    "Sharing",
]

log = logging.getLogger("compactobs")

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


class Sharing:
    """The background exchange of a guard's conversations' figures with its `SpendSource`. Every method a
    request's path calls never raises and never does I/O; the exchanges run on the one background thread."""

    def __init__(self, source: SpendSource, read_timeout_s: float, refresh_s: float) -> None:
        self._source = source
        self.read_timeout_s = read_timeout_s
        self.refresh_s = refresh_s
        self._queue: dict[str, ConversationState] = {}
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
        self._start_worker()

    def ask(self, state: ConversationState) -> None:
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

    def forked(self, states: Sequence[ConversationState]) -> None:
        """In a forked child, where only the forking thread lives on: the store thread is started again,
        with fresh locks, the parent's connections left to it, and every conversation the parent guarded
        (`states`) asked for again (its row may have moved since). Never raises."""
        try:
            self._queue_changed = threading.Condition()
            self._queue = {}
            self._exchange_began = None
            self._hurry = self._worker_idle = False
            self._retry_at = 0.0
            self._worker = None
            self._source.forked()
            for state in states:
                state.forked()
            if self._closing:
                return
            self._start_worker()
            for state in states:
                self.ask(state)
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

    def _exchange(self, batch: dict[str, ConversationState]) -> bool:
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
            rows = self._source.exchange(added, tuple(batch), seed)
        except Exception as err:
            for conversation_id, state in batch.items():
                with state.changed:
                    state.unpublished, state.sending = state.unpublished.plus(state.sending), NOTHING
                    state.failed = True
                    state.done = max(state.done, asked[conversation_id])
                    state.asked_at = began  # what is still asked for was asked after this exchange began
                    state.wake_all()
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
                    state.wake_all()
            for breach in crossed:
                log.warning("compactobs guard: %s", breach.message)
        return True

    def _read_back(self, state: ConversationState, row: PriorSpend | None, began: float) -> list[Breach]:
        """Take the row the store returned (under the conversation's lock); judge the new figures."""
        sent, state.sending = state.sending, NOTHING
        if row is None:  # no row (it was removed): made again from the store's calls at the next exchange
            state.seeded = False
            row = state.shared.plus(sent)
        else:
            expected = state.shared.plus(sent) if state.seeded else sent
            if units(row.spent_usd) != units(expected.spent_usd) or row.calls != expected.calls:
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
                breach = state.breach(
                    kind, state.conversation_id, policy, (), self.read_timeout_s, crossed_before=True
                )
                state.act(breach)
                found.append(breach)
        state.unreported += found
        return found

    def due(self, state: ConversationState, policy: GuardPolicy) -> int | None:
        """Before a request: the exchange it must wait for (the value `state.done` must reach), or None.
        Asks for a read when the last one is older than `refresh_s`. Never raises."""
        now = time.monotonic()
        with state.lock:
            # Read again when the figures are old, and, under a policy that needs them, before every request
            # of a conversation other processes spend on (one short exchange; solo ones never wait).
            fresh = state.read_at is None or now - state.read_at > self.refresh_s
            fresh = fresh or (state.others and policy.needs_figures)
            idle = state.done >= state.wanted
        if fresh and idle:
            self.ask(state)
        with state.lock:
            due = state.done < state.wanted and (not state.known or fresh)
            target = state.wanted
        if not due or not policy.needs_figures or self._stuck():
            return None
        with self._queue_changed:
            self._hurry = True
            self._queue_changed.notify()
        return target

    def wait(self, state: ConversationState, target: int) -> None:
        """Block until the exchange `target` (from `due`) is answered, at most `read_timeout_s`."""
        deadline = time.monotonic() + self.read_timeout_s
        with state.changed:
            while state.done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                state.changed.wait(remaining)

    async def wait_async(self, state: ConversationState, target: int) -> None:
        """`wait` on an event loop, without blocking it."""
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

    def send_counted(self, states: Sequence[ConversationState], timeout_s: float) -> bool:
        """Send to the store what this process counted and has not sent yet, waiting at most `timeout_s`
        for the answer; the guard stays in place (the process is ending, its last calls may still return).
        False when something was left unsent. Never raises."""
        try:
            unsent = []
            for state in states:
                with state.lock:
                    if state.unpublished or state.sending:
                        unsent.append(state)
            for state in unsent:
                self.ask(state)
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
        if worker is None or not worker.is_alive():
            try:
                self._source.close()
            except Exception:
                log.debug("compactobs guard: closing the store failed", exc_info=True)
