"""The five compaction findings, one class each, judged per conversation from one query: its compacting calls
with their neighbours (`compaction_records`, in `reports.measures.anomalies`).

Only compacting calls are visited: the turns between two compacting calls are counted with an index range on
(conversation_id, start_ms), and the previous and next turns are index lookups. The work is linear in the
calls of the conversations that compact, even for a conversation that compacts at every turn, and on SQLite
cheaper than window functions (ROW_NUMBER, LAG, LEAD) over all those calls: at 1M calls (612,317 turns of
6,124 compacting conversations) the window pass took 1.7x the CPU; on PostgreSQL, with JIT off, it was no
faster. Only the compacting calls in which some kind may find something come back (`compaction_candidates`,
each kind's `candidate` OR-ed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, Final

from compactobs._words import counted
from compactobs.reports.anomalies.finding import (
    MAX_CALL_IDS,
    Finding,
    few_ids,
    money_text,
    pct,
    ratio,
    share_span,
    total_cost,
    usd,
)
from compactobs.reports.measures.anomalies import (
    COMPACTION_RECORD,
    cache_miss_candidate,
    compaction_candidates,
    compaction_records,
    cost_share_candidate,
    failed_candidate,
    ineffective_candidate,
)
from compactobs.reports.thresholds import Thresholds
from compactobs.rules import LoopWindow

__all__ = [
    "COMPACTION_KINDS",
    "COMPACTION_RECORD",
    "CacheMissAfterCompaction",
    "CompactingCall",
    "CompactionCostShare",
    "CompactionLoop",
    "Conversation",
    "FailedCompaction",
    "IneffectiveCompaction",
    "compaction_candidates",
    "compaction_findings",
    "compaction_records",
]


@dataclass(slots=True)
class CompactingCall:
    call_id: str
    rn: int
    start_ms: int
    compactions: int
    failed: int
    trigger: int | None
    context_after: int | None
    cost: Decimal | None
    compaction_cost: Decimal | None
    prev_call_id: str | None
    prev_reads: int | None
    prev_writes: int | None
    next_call_id: str | None
    next_reads: int | None
    next_writes: int | None


@dataclass
class Conversation:
    """One conversation's compacting calls (those `compaction_candidates` kept), in order, and its
    figures."""

    conversation_id: str
    calls: int
    cost: Any
    rows: list[CompactingCall]
    thresholds: Thresholds
    in_loop: set[str] = field(default_factory=set)
    """The calls of its compaction loops, filled by `CompactionLoop` (an ineffective compaction inside a loop
    is not reported again)."""

    @cached_property
    def ineffective(self) -> list[CompactingCall]:
        rule = self.thresholds.loop_rule
        return [row for row in self.rows if rule.ineffective(row.context_after, row.trigger)]


# -- the kinds ----------------------------------------------------------------------------------------------


class CompactionLoop:
    """compaction_loop (compactobs.rules, as the runtime guard judges it): windows of `loop_window`
    consecutive calls holding >= `loop_min` ineffective compactions; overlapping windows merge into one
    loop. Its candidates are IneffectiveCompaction's."""

    kind: Final = "compaction_loop"
    remedy: Final = (
        "raise the trigger or shrink what survives a compaction (instructions asking for a shorter summary, "
        "fewer/lighter tool results), and use pause_after_compaction with a compaction counter as a breaker"
    )

    @classmethod
    def findings(cls, conversation: Conversation) -> Iterator[Finding]:
        loops: list[list[CompactingCall]] = []
        sliding: LoopWindow[CompactingCall] = LoopWindow(conversation.thresholds.loop_rule)
        for row in conversation.ineffective:
            window = sliding.add(row.rn, row.compactions, row)
            if window is not None:
                if loops and loops[-1][-1].rn >= window[0].rn:
                    known = {r.call_id for r in loops[-1]}
                    loops[-1].extend(r for r in window if r.call_id not in known)
                else:
                    loops.append(list(window))
        for loop in loops:
            conversation.in_loop.update(r.call_id for r in loop)
            compactions = sum(r.compactions for r in loop)
            span = loop[-1].rn - loop[0].rn + 1
            shares = [r.context_after / r.trigger for r in loop]  # type: ignore[operator]
            cost = total_cost(r.compaction_cost for r in loop)
            yield Finding(
                kind=cls.kind,
                severity="critical",
                conversation_id=conversation.conversation_id,
                call_ids=few_ids([r.call_id for r in loop]),
                message=(
                    f"{counted(compactions, 'compaction')} within {span} consecutive calls, each leaving the "
                    f"context at "
                    f"{share_span(min(shares), max(shares))} of the trigger: compaction keeps re-firing"
                ),
                evidence={
                    "compactions": compactions,
                    "calls_spanned": span,
                    "calls": len(loop),
                    "min_context_share": ratio(min(shares)),
                    "max_context_share": ratio(max(shares)),
                    "compaction_cost_usd": usd(cost),
                    "steps": [
                        {
                            "call_id": r.call_id,
                            "position": r.rn,
                            "compactions": r.compactions,
                            "context_tokens": r.context_after,
                            "trigger_tokens": r.trigger,
                            "context_share": ratio(r.context_after / r.trigger),  # type: ignore[operator]
                        }
                        for r in loop[:MAX_CALL_IDS]
                    ],
                },
                remedy=cls.remedy,
                first_ms=loop[0].start_ms,
            )


class IneffectiveCompaction:
    """ineffective_compaction: a compaction leaving the context >= `ineffective_ratio` of the trigger, outside
    a loop (run after CompactionLoop)."""

    kind: Final = "ineffective_compaction"
    remedy: Final = (
        "the summary plus what follows it nearly fills the trigger: raise the trigger or ask for a shorter "
        "summary in the compaction instructions"
    )

    candidate: Final = staticmethod(ineffective_candidate)

    @classmethod
    def findings(cls, conversation: Conversation) -> Iterator[Finding]:
        for row in conversation.ineffective:
            if row.call_id in conversation.in_loop:
                continue
            share = row.context_after / row.trigger  # type: ignore[operator]
            yield Finding(
                kind=cls.kind,
                severity="warning",
                conversation_id=conversation.conversation_id,
                call_ids=(row.call_id,),
                message=(
                    f"compaction left {row.context_after:,} tokens, {pct(share)} of the "
                    f"{row.trigger:,}-token trigger: it freed too little room and will fire again soon"
                ),
                evidence={
                    "compactions": row.compactions,
                    "context_tokens": row.context_after,
                    "trigger_tokens": row.trigger,
                    "context_share": ratio(share),
                    "position": row.rn,
                    "compaction_cost_usd": usd(row.compaction_cost),
                },
                remedy=cls.remedy,
                first_ms=row.start_ms,
            )


class FailedCompaction:
    """failed_compaction: compaction blocks with null content (billed, no summary), one finding per
    conversation."""

    kind: Final = "failed_compaction"
    remedy: Final = (
        "a null summary is billed and changes nothing: avoid tool calls at the compaction point and check "
        "the compaction instructions; retry the compaction on demand"
    )

    candidate: Final = staticmethod(failed_candidate)

    @classmethod
    def findings(cls, conversation: Conversation) -> Iterator[Finding]:
        failed = [row for row in conversation.rows if row.failed > 0]
        if not failed:
            return
        count = sum(row.failed for row in failed)
        cost = total_cost(r.compaction_cost for r in failed)
        yield Finding(
            kind=cls.kind,
            severity="warning",
            conversation_id=conversation.conversation_id,
            call_ids=few_ids([row.call_id for row in failed]),
            message=(
                f"{count} compaction(s) returned no summary (content null) in {len(failed)} call(s): billed, "
                f"and the context was not reduced"
            ),
            evidence={"failed_compactions": count, "calls": len(failed), "compaction_cost_usd": usd(cost)},
            remedy=cls.remedy,
            first_ms=failed[0].start_ms,
        )


class CompactionCostShare:
    """compaction_cost_share: compaction iterations cost > `cost_share` of the conversation's priced cost
    (an unpriced call's compaction has no cost to share)."""

    kind: Final = "compaction_cost_share"
    remedy: Final = (
        "compaction dominates the bill: raise the trigger so it fires less often, keep the context cached so "
        "the summarisation reads from cache, or end long conversations sooner"
    )

    candidate: Final = staticmethod(cost_share_candidate)

    @classmethod
    def findings(cls, conversation: Conversation) -> Iterator[Finding]:
        cost = conversation.cost
        total = Decimal(str(cost)) if cost is not None else None
        priced = [r for r in conversation.rows if r.cost is not None and r.compaction_cost is not None]
        if total is None or total <= 0 or not priced:
            return
        compaction_cost = sum((Decimal(str(r.compaction_cost)) for r in priced), Decimal(0))
        share = compaction_cost / total
        threshold = conversation.thresholds.cost_share
        if share <= Decimal(str(threshold)):
            return
        yield Finding(
            kind=cls.kind,
            severity="warning",
            conversation_id=conversation.conversation_id,
            call_ids=few_ids([r.call_id for r in priced]),
            message=(
                f"compaction cost {money_text(compaction_cost)} of {money_text(total)}, "
                f"{float(share):.1%} of the conversation (threshold {threshold:.0%})"
            ),
            evidence={
                "compaction_cost_usd": usd(compaction_cost),
                "conversation_cost_usd": usd(total),
                "share": ratio(float(share)),
                "compactions": sum(r.compactions for r in priced),
                "conversation_calls": conversation.calls,
            },
            remedy=cls.remedy,
            first_ms=priced[0].start_ms,
        )


class CacheMissAfterCompaction:
    """cache_miss_after_compaction: the call after a compaction reads <= `cache_drop_ratio` of what the call
    before it read from the cache, while its cache writes jump (above the call before's, and >=
    `cache_min_tokens`)."""

    kind: Final = "cache_miss_after_compaction"
    remedy: Final = (
        'put cache_control {"type": "ephemeral"} on the compaction block (and keep one on the system prompt) '
        "so the calls after a compaction read the summary from the cache instead of writing it again"
    )

    candidate: Final = staticmethod(cache_miss_candidate)

    @classmethod
    def findings(cls, conversation: Conversation) -> Iterator[Finding]:
        thresholds = conversation.thresholds
        for row in conversation.rows:
            before, after = row.prev_reads, row.next_reads
            written_before, written = row.prev_writes, row.next_writes
            if before is None or after is None or written is None or row.next_call_id is None:
                continue
            if not (
                before >= thresholds.cache_min_tokens
                and before > 0
                and after <= thresholds.cache_drop_ratio * before
                and written >= thresholds.cache_min_tokens
                and written > (written_before or 0)
            ):
                continue
            assert row.prev_call_id is not None
            yield Finding(
                kind=cls.kind,
                severity="warning",
                conversation_id=conversation.conversation_id,
                call_ids=(row.prev_call_id, row.call_id, row.next_call_id),
                message=(
                    f"after the compaction, cache reads fell from {before:,} to {after:,} tokens while cache "
                    f"writes rose from {written_before or 0:,} to {written:,}: the summary is not cached"
                ),
                evidence={
                    "cache_read_before": before,
                    "cache_read_after": after,
                    "cache_write_before": written_before or 0,
                    "cache_write_after": written,
                    "read_ratio": ratio(after / before),
                    "compaction_call_id": row.call_id,
                },
                remedy=cls.remedy,
                first_ms=row.start_ms,
            )


COMPACTION_KINDS: Final = (
    CompactionLoop,
    IneffectiveCompaction,
    FailedCompaction,
    CompactionCostShare,
    CacheMissAfterCompaction,
)
"""In the order each conversation is judged (a loop before the ineffective compactions it holds)."""


def compaction_findings(records: Iterable[Sequence[Any]], thresholds: Thresholds) -> Iterator[Finding]:
    """Every compaction kind over `compaction_records`' records (or a source's that match them), one
    conversation at a time."""
    conversation: Conversation | None = None
    for record in records:
        if conversation is None or record[0] != conversation.conversation_id:
            if conversation is not None:
                yield from _judged(conversation)
            conversation = Conversation(record[0], record[1], record[2], [], thresholds)
        conversation.rows.append(CompactingCall(record[4], int(record[3]), *record[5:]))
    if conversation is not None:
        yield from _judged(conversation)


def _judged(conversation: Conversation) -> Iterator[Finding]:
    for kind in COMPACTION_KINDS:
        yield from kind.findings(conversation)
