"""Group calls into conversations: `compactobs.conversation(...)`, else the SDK's, else a fingerprint.

A ContextVar carries the conversation, so it follows threads started with `contextvars.copy_context()`
and every asyncio task (tasks copy the context they are created in).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compactobs.usage import field_of

if TYPE_CHECKING:
    from compactobs.guard import GuardPolicy

__all__ = ["Conversation", "conversation", "current_conversation", "fingerprint"]


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    budget_usd: float | None = None
    budget_tokens: int | None = None
    guard: GuardPolicy | None = None
    """The runtime guard's policy from this block's arguments (None when it gave none)."""
    max_compactions: int | None = None
    tags: tuple[tuple[str, str], ...] = ()
    """The block's tags (key, value), by key: on every call as `compactobs.tag.KEY` attributes."""


_current: ContextVar[Conversation | None] = ContextVar("compactobs_conversation", default=None)


@contextmanager
def conversation(
    conversation_id: str,
    *,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
    max_compactions: int | None = None,
    loop: bool | None = None,
    on_breach: str | None = None,
    unknown: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Conversation]:
    """Group the calls made inside this block under `conversation_id`, with an optional budget.

    Budgets (all three limits) are recorded on every call so the anomaly report can flag a conversation
    that exceeds them, and the runtime guard (`compactobs.guard`) watches them live: `budget_usd`,
    `budget_tokens` (billed tokens) and `max_compactions` are limits; `loop` (default True once guarded)
    stops compaction loops too; `on_breach` is "warn" (default: a log line and a span event), "pause"
    (`pause_after_compaction` on the next requests) or "raise" (`BudgetExceeded` /
    `CompactionLoopDetected` before the next request); `unknown` is what to do while the conversation's
    spend in other processes is unknown (the store does not answer): "warn" (default) or "raise".

    `tags` (e.g. `{"agent": "planner", "customer": "acme"}`) go on every call as span attributes
    `compactobs.tag.KEY`, are stored, and group the reports (`--by tag:KEY`): at most 16, keys of letters,
    digits, `_`, `.` and `-` (up to 64 characters), values non-empty strings (a value beyond 256 characters
    is cut, as a long id is).
    """
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ValueError("conversation id must be a non-empty string")
    if budget_usd is not None and budget_usd < 0:
        raise ValueError("budget_usd must be >= 0")
    if budget_tokens is not None and budget_tokens < 0:
        raise ValueError("budget_tokens must be >= 0")
    kept = _tags(tags)
    given = (budget_usd, budget_tokens, max_compactions, loop, on_breach, unknown)
    policy = None
    if any(value is not None for value in given):
        # The guard (asyncio, the rules) is imported by a conversation that sets limits, not by the package.
        from compactobs.guard import GuardPolicy

        policy = GuardPolicy.of(
            budget_usd=budget_usd,
            budget_tokens=budget_tokens,
            max_compactions=max_compactions,
            loop=loop,
            on_breach=on_breach,
            unknown=unknown,
        )
    # Recorded on the calls as span attributes: a float, whatever number type the application passed.
    recorded_usd = float(budget_usd) if budget_usd is not None else None
    value = Conversation(conversation_id, recorded_usd, budget_tokens, policy, max_compactions, kept)
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def _tags(tags: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The tags as kept on the calls; ValueError for what would not be (a mistake in the caller's code)."""
    if tags is None:
        return ()
    # Loaded by a conversation with tags, not by `import compactobs` (tests/test_architecture.py).
    from compactobs.untrusted import checked_tags

    return checked_tags(tags)


def current_conversation() -> Conversation | None:
    return _current.get()


_ENCODER = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False)
"""What `json.dumps` with these options would build anew on every call."""


def fingerprint(body: object) -> str | None:
    """A stable id from the system prompt and first message, which a re-sent history keeps. Never raises."""
    try:
        messages = field_of(body, "messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if first is None:
            return None
        payload = _ENCODER.encode([field_of(body, "system"), first])
        return "fp-" + hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()
    except Exception:
        return None
