"""budget_exceeded: a conversation's billed tokens, USD or compactions over its budget (`rules.over_limits`,
the guard's rule), and the call at which the spend went over.

The budget is a budgets file entry when one matches, else the budget stored with its calls by
`compactobs.conversation(..., budget_usd=..., budget_tokens=..., max_compactions=...)` (the largest each
carries). A budget is for the whole conversation: its totals sum every call of each conversation that has a
selected call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from compactobs._words import counted
from compactobs.reports.anomalies.finding import Finding, money_text, pct, usd
from compactobs.reports.measures.anomalies import (
    ID_CHUNK,
    OverBudget,
    budget_crossings_statement,
    budget_totals_statement,
    first_crossings,
)
from compactobs.rules import Budget, Budgets, effective_budget, over_limits

__all__ = ["ID_CHUNK", "BudgetExceeded", "OverBudget"]


class BudgetExceeded:
    """The conversations over budget, found from one grouped query (`totals_statement`), and where each went
    over from an ordered pass over their calls (`crossings_statement`, `first_crossings`)."""

    kind: Final = "budget_exceeded"
    remedy: Final = (
        "stop or cap the conversation (compactobs.conversation budgets, pause_after_compaction with a "
        "compaction counter), or raise its budget"
    )

    totals_statement: Final = staticmethod(budget_totals_statement)
    crossings_statement: Final = staticmethod(budget_crossings_statement)
    first_crossings: Final = staticmethod(first_crossings)

    @classmethod
    def findings(
        cls,
        totals: Iterable[Sequence[Any]],
        crossings_of: Callable[[OverBudget], Mapping[str, Any]],
        budgets: Budgets | None,
    ) -> Iterator[Finding]:
        """The rule over `totals_statement`'s records (or a source's); `crossings_of` finds where each
        conversation over budget went over."""
        over: dict[str, tuple[Budget, int, Decimal | None, int, int, int]] = {}
        for record in totals:
            conversation_id, count, cost, tokens, stored_usd, stored_tokens, unpriced, compactions = record[
                :8
            ]
            stored_compactions = record[8]
            stored = Budget(
                usd=Decimal(str(stored_usd)) if stored_usd is not None else None,
                tokens=int(stored_tokens) if stored_tokens is not None else None,
                max_compactions=int(stored_compactions) if stored_compactions is not None else None,
            )
            budget = effective_budget(budgets.for_conversation(conversation_id) if budgets else None, stored)
            if budget is None:
                continue
            spent = Decimal(str(cost)) if cost is not None else None
            tokens, compactions = int(tokens or 0), int(compactions or 0)
            if over_limits(budget, spent, tokens, compactions):
                over[conversation_id] = (budget, count, spent, tokens, compactions, int(unpriced or 0))
        if not over:
            return
        crossings = crossings_of(over)
        for conversation_id, (budget, count, spent, tokens, compactions, unpriced) in over.items():
            first_ms, crossing = crossings.get(conversation_id, (0, None))
            yield Finding(
                kind=cls.kind,
                severity="critical",
                conversation_id=conversation_id,
                call_ids=(crossing,) if crossing else (),
                message="over budget: " + "; ".join(_overs(budget, spent, tokens, compactions)),
                evidence={
                    "spent_usd": usd(spent),
                    "budget_usd": usd(budget.usd),
                    "billed_tokens": tokens,
                    "budget_tokens": budget.tokens,
                    "compactions": compactions,
                    "max_compactions": budget.max_compactions,
                    "calls": count,
                    "unpriced_calls": unpriced,
                    "budget_source": budget.source,
                    "crossed_at_call_id": crossing,
                },
                remedy=cls.remedy,
                first_ms=first_ms,
            )


def _overs(budget: Budget, spent: Decimal | None, tokens: int, compactions: int) -> list[str]:
    """What went over, one phrase per limit."""
    parts = []
    limits = over_limits(budget, spent, tokens, compactions)
    if "budget_usd" in limits:
        assert budget.usd is not None and spent is not None
        share = pct(float(spent / budget.usd)) if budget.usd else "over"
        parts.append(f"{money_text(spent)} of a {money_text(budget.usd)} budget ({share})")
    if "budget_tokens" in limits:
        assert budget.tokens is not None
        share = f"{pct(tokens / budget.tokens)}" if budget.tokens else "over"
        parts.append(f"{tokens:,} of {budget.tokens:,} budgeted tokens ({share})")
    if "max_compactions" in limits:
        parts.append(
            f"{counted(compactions, 'compaction')}, more than the {budget.max_compactions:,} allowed"
        )
    return parts
