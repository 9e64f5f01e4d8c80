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

from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from compactobs import rules
from compactobs._words import counted
from compactobs.reports.anomalies.finding import Finding, money_text, pct, usd
from compactobs.rules import Budget, Budgets, effective_budget, over_limits
from compactobs.store.models import calls

__all__ = ["ID_CHUNK", "BudgetExceeded", "OverBudget"]

OverBudget = Mapping[str, tuple[Budget, int, Decimal | None, int, int, int]]
"""The conversations over budget: (budget, calls, spent, billed tokens, compactions, unpriced calls)."""

ID_CHUNK: Final = 500
"""Conversation ids per `IN (...)` list of `crossings_statement` (SQLite allows 32766 parameters)."""


class BudgetExceeded:
    """The conversations over budget, found from one grouped query (`totals_statement`), and where each went
    over from an ordered pass over their calls (`crossings_statement`, `first_crossings`)."""

    kind: Final = "budget_exceeded"
    remedy: Final = (
        "stop or cap the conversation (compactobs.conversation budgets, pause_after_compaction with a "
        "compaction counter), or raise its budget"
    )

    @staticmethod
    def totals_statement(conditions: Sequence[ColumnElement[bool]], budgets: Budgets | None) -> Select[Any]:
        """(conversation_id, calls, cost, billed tokens, largest stored budget_usd and budget_tokens, unpriced
        calls, compactions, largest stored budget_max_compactions) of each conversation with a call meeting
        `conditions`, over all its calls; with no budgets file, only of those that stored a budget."""
        c = calls.c
        selected = select(c.conversation_id).where(c.conversation_id.is_not(None), *conditions).distinct()
        query = select(
            c.conversation_id,
            func.count(),
            func.sum(c.cost_usd),
            func.sum(rules.billed_tokens_sql()),
            func.max(c.budget_usd),
            func.max(c.budget_tokens),
            func.sum(case((c.priced.is_(False), 1), else_=0)),
            func.sum(func.coalesce(c.compactions_count, 0)),
            func.max(c.budget_max_compactions),
        ).where(c.conversation_id.is_not(None))
        if conditions:
            query = query.where(c.conversation_id.in_(selected.scalar_subquery()))
        query = query.group_by(c.conversation_id)
        if not budgets:
            stored = (c.budget_usd, c.budget_tokens, c.budget_max_compactions)
            query = query.having(or_(*(func.max(column).is_not(None) for column in stored)))
        return query

    @staticmethod
    def crossings_statement(conversation_ids: Sequence[str]) -> Select[Any]:
        """(conversation_id, call_id, start_ms, cost, billed tokens, compactions) of every call of the
        conversations (at most ID_CHUNK), in conversation order. Summed in Python (`first_crossings`): on
        SQLite about twice as fast as running sums in window functions with the budgets joined in."""
        c = calls.c
        return (
            select(
                c.conversation_id,
                c.call_id,
                c.start_ms,
                c.cost_usd,
                rules.billed_tokens_sql(),
                func.coalesce(c.compactions_count, 0),
            )
            .where(c.conversation_id.in_(conversation_ids))
            .order_by(c.conversation_id, c.start_ms, c.call_id)
        )

    @staticmethod
    def first_crossings(records: Iterable[Sequence[Any]], over: OverBudget) -> dict[str, tuple[int, str]]:
        """(start_ms, call_id) of the first call at which each conversation's running spend went over its
        budget, from `crossings_statement`'s records."""
        found: dict[str, tuple[int, str]] = {}
        current: str | None = None
        skip = False
        budget = Budget()
        spent = Decimal(0)
        tokens = compactions = 0
        for conversation_id, call_id, start_ms, cost, billed, compacted in records:
            if conversation_id != current:
                current, skip, spent, tokens, compactions = conversation_id, False, Decimal(0), 0, 0
                budget = over[conversation_id][0]
            if skip:
                continue
            if cost is not None:
                spent += cost if isinstance(cost, Decimal) else Decimal(str(cost))
            tokens += int(billed or 0)
            compactions += int(compacted or 0)
            if over_limits(budget, spent, tokens, compactions):
                found[conversation_id] = (int(start_ms), call_id)
                skip = True
        return found

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
