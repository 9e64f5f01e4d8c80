"""What a guard does about a crossed limit: the `Breach` record, its span event, the errors `raise`
raises, the wrap-up message, and the request body that pauses at the next compaction.

What it does (`on_breach`, default "warn"), always after a log line and a span event
(`compactobs.guard.breach`) on the call that crossed:

- `warn`: nothing more;
- `pause`: the conversation's next requests carry `pause_after_compaction: true` (`with_pause`, on the
  request copy the middleware hands on; the application's own objects are untouched), so the application
  gets control back at the next compaction with `stop_reason: "compaction"` (see `compactobs.checkpoint`);
- `raise`: the conversation's next request raises `BudgetExceeded` or `CompactionLoopDetected` before it is
  sent (never in the middle of a response); `allow_wrap_up(id)` lets one more request through, for the
  wrap-up turn (`wrap_up_message`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from compactobs import semconv
from compactobs._types import OTelAttributes
from compactobs._words import counted
from compactobs.errors import CompactobsError
from compactobs.rules import OnBreach
from compactobs.untrusted import bounded_id

__all__ = [
    "Breach",
    "BreachKind",
    "BudgetExceeded",
    "CompactionLoopDetected",
    "GuardError",
    "SpendUnknown",
    "breach_event",
    "with_pause",
    "wrap_up_message",
]

BreachKind = Literal["budget_usd", "budget_tokens", "max_compactions", "compaction_loop", "spend_unknown"]


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


def breach_event(breach: Breach) -> tuple[str, OTelAttributes]:
    """The span event (name, attributes) of a guard breach, for the call that crossed."""
    attributes: OTelAttributes = {
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
