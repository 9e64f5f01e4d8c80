"""A guarded conversation's figures: what the guard knows of its spend, where processes share it, and
what the guard tells a request."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Protocol

from compactobs.guard.breaches import Breach

__all__ = ["GO", "NOTHING", "ConversationSpend", "PriorSpend", "SpendSource", "Verdict", "units"]


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


GO: Final = Verdict(False, Decimal(0), False)


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


def units(usd: Decimal) -> int:
    """USD in the store's whole units (10^-10 USD)."""
    return int(usd.scaleb(10).to_integral_value())
