"""The five compaction findings, one class each, judged per conversation from one query: its compacting calls
with their neighbours (`compaction_records`).

Only compacting calls are visited: the turns between two compacting calls are counted with an index range on
(conversation_id, start_ms), and the previous and next turns are index lookups. The work is linear in the
calls of the conversations that compact, even for a conversation that compacts at every turn, and on SQLite
much cheaper than window functions over all those calls (about 5x on 1M calls). Only the compacting calls in
which some kind may find something come back (`compaction_candidates`, each kind's `candidate` OR-ed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, Final

from sqlalchemy import Select, Subquery, and_, case, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

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
from compactobs.reports.thresholds import Thresholds
from compactobs.rules import LoopWindow
from compactobs.store.models import calls, iterations

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

Row = Callable[[str], Any]
"""A column of a compacting call's record by its `COMPACTION_RECORD` name, for a kind's `candidate`."""

COMPACTION_RECORD: Final = (
    "conversation_id",
    "conversation_calls",
    "conversation_cost",
    "position",
    "call_id",
    "start_ms",
    "compactions_count",
    "failed",
    "trigger",
    "context_after",
    "cost_usd",
    "compaction_cost",
    "prev_id",
    "prev_reads",
    "prev_writes",
    "next_id",
    "next_reads",
    "next_writes",
)
"""The columns of a compacting call's record, in order: its conversation's figures, then the
`CompactingCall` fields (`position`: its place among the conversation's turns, 1, 2, ...)."""


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

    @staticmethod
    def candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
        return thresholds.loop_rule.ineffective_sql(row("context_after"), row("trigger"))

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

    @staticmethod
    def candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
        return row("failed") > 0

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

    @staticmethod
    def candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
        """Every compacting call of a conversation over the share (`priced_compaction_cost`: its compaction
        cost over its priced calls). Compared in Decimal by the rule; here with a hair of slack for float
        sums (SQLite)."""
        return and_(
            row("conversation_cost") > 0,
            row("priced_compaction_cost")
            > row("conversation_cost") * literal(thresholds.cost_share * (1 - 1e-9)),
        )

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

    @staticmethod
    def candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
        before, after, written = row("prev_reads"), row("next_reads"), row("next_writes")
        least = thresholds.cache_min_tokens
        return and_(
            row("next_id").is_not(None),
            before >= least,
            before > 0,
            after <= literal(thresholds.cache_drop_ratio) * before,
            written >= least,
            written > func.coalesce(row("prev_writes"), 0),
        )

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


def compaction_candidates(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
    """The compacting calls in which a compaction kind may find something, as a condition over the columns
    `row(name)` gives (`COMPACTION_RECORD`'s, and `priced_compaction_cost`): a superset, the kinds decide on
    the rows it selects, so the database sends back those only (at 1M calls, about 1 in 12 compacting
    calls). A loop is made of ineffective compactions: IneffectiveCompaction's candidates hold it."""
    return or_(
        IneffectiveCompaction.candidate(row, thresholds),
        FailedCompaction.candidate(row, thresholds),
        CacheMissAfterCompaction.candidate(row, thresholds),
        CompactionCostShare.candidate(row, thresholds),
    )


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


# -- the query ----------------------------------------------------------------------------------------------


def compaction_records(conditions: Sequence[ColumnElement[bool]], thresholds: Thresholds) -> Select[Any]:
    """The compacting calls that `compaction_candidates` selects among the calls meeting `conditions`, with
    their neighbours, in conversation order, as `COMPACTION_RECORD`s."""
    compacting = _compacting_calls(conditions)
    located = _with_neighbours(compacting, conditions)
    record = _with_conversation_figures(located, conditions).c
    return (
        select(*(record[name] for name in COMPACTION_RECORD))
        .where(compaction_candidates(lambda name: record[name], thresholds))
        .order_by(record.conversation_id, record.start_ms, record.call_id)
    )


def _compacting_calls(conditions: Sequence[ColumnElement[bool]]) -> Subquery:
    """The calls that compacted and returned usage, each with the start and id of the conversation's
    compacting call before it."""
    call = calls.alias("c")
    in_window = [ClauseAdapter(call).traverse(condition) for condition in conditions]
    conversation, order = call.c.conversation_id, (call.c.start_ms, call.c.call_id)
    return (
        select(
            call.c.conversation_id,
            call.c.call_id,
            call.c.start_ms,
            call.c.compactions_count,
            call.c.compactions_failed,
            call.c.compaction_trigger,
            call.c.context_tokens,
            call.c.cost_usd,
            func.lag(call.c.start_ms).over(partition_by=conversation, order_by=order).label("last_ms"),
            func.lag(call.c.call_id).over(partition_by=conversation, order_by=order).label("last_id"),
        )
        .where(
            call.c.compactions_count > 0,
            call.c.conversation_id.is_not(None),
            call.c.input_tokens.is_not(None),
            *in_window,
        )
        .subquery("compacting")
    )


def _with_neighbours(compacting: Subquery, conditions: Sequence[ColumnElement[bool]]) -> Subquery:
    """Each compacting call with the number of turns since the conversation's previous compacting call
    (`gap`), its compaction cost, and the previous and next turns' ids, cache reads and writes (and the
    next one's context: a paused call has none of its own)."""
    this = compacting.c
    turn = calls.alias("x")
    # The turns of this call's conversation: calls that returned usage, in (start_ms, call_id) order.
    of_conversation = [
        turn.c.conversation_id == this.conversation_id,
        turn.c.input_tokens.is_not(None),
        *(ClauseAdapter(turn).traverse(condition) for condition in conditions),
    ]
    start, call_id = turn.c.start_ms, turn.c.call_id
    earlier = and_(start <= this.start_ms, or_(start < this.start_ms, call_id < this.call_id))
    later = and_(start >= this.start_ms, or_(start > this.start_ms, call_id > this.call_id))
    since_last_compaction = and_(
        start >= func.coalesce(this.last_ms, -1),
        or_(this.last_ms.is_(None), start > this.last_ms, call_id > this.last_id),
    )
    # The bounds set by this call come first: SQLite takes the first range terms it meets on start_ms for the
    # index search, and with the report window's terms first it scanned the conversation's whole window for
    # each lookup (quadratic in a long conversation: 38 s instead of 0.5 s for 10,000 calls in one).
    gap = (
        select(func.count())
        .select_from(turn)
        .where(earlier, since_last_compaction, *of_conversation)
        .scalar_subquery()
        + 1
    )

    def previous(column: Any) -> Any:
        ordered = select(column).where(earlier, *of_conversation).order_by(start.desc(), call_id.desc())
        return ordered.limit(1).scalar_subquery()

    def following(column: Any) -> Any:
        return (
            select(column).where(later, *of_conversation).order_by(start, call_id).limit(1).scalar_subquery()
        )

    reads = func.coalesce(turn.c.cache_read_tokens, 0)
    writes = func.coalesce(turn.c.cache_write_5m_tokens, 0) + func.coalesce(turn.c.cache_write_1h_tokens, 0)
    step = iterations.c
    compaction_cost = (
        select(func.sum(step.cost_usd))
        .where(step.call_id == this.call_id, step.type == "compaction")
        .scalar_subquery()
    )
    # The neighbours' values as correlated lookups (an index probe each), not joins: a join on the looked-up
    # id makes PostgreSQL hash the whole table and evaluate the lookup twice.
    return select(
        compacting,
        gap.label("gap"),
        compaction_cost.label("compaction_cost"),
        previous(call_id).label("prev_id"),
        previous(reads).label("prev_reads"),
        previous(writes).label("prev_writes"),
        following(call_id).label("next_id"),
        following(reads).label("next_reads"),
        following(writes).label("next_writes"),
        following(turn.c.context_tokens).label("next_context"),
    ).subquery("located")


def _with_conversation_figures(located: Subquery, conditions: Sequence[ColumnElement[bool]]) -> Subquery:
    """The located calls as records: their conversation's turns and cost, their position among its turns
    (the gaps summed), and the conversation's compaction cost over its priced calls."""
    this = located.c
    call = calls.c
    conversation = (
        select(call.conversation_id, func.count().label("calls"), func.sum(call.cost_usd).label("cost"))
        .where(
            call.conversation_id.in_(select(this.conversation_id)),
            call.input_tokens.is_not(None),
            *conditions,
        )
        .group_by(call.conversation_id)
        .subquery("totals")
    )
    in_order = (this.start_ms, this.call_id)
    return (
        select(
            this.conversation_id,
            conversation.c.calls.label("conversation_calls"),
            conversation.c.cost.label("conversation_cost"),
            func.sum(this.gap)
            .over(partition_by=this.conversation_id, order_by=in_order, rows=(None, 0))
            .label("position"),
            this.call_id,
            this.start_ms,
            this.compactions_count,
            func.coalesce(this.compactions_failed, 0).label("failed"),
            this.compaction_trigger.label("trigger"),
            func.coalesce(this.context_tokens, this.next_context).label("context_after"),
            this.cost_usd,
            this.compaction_cost,
            this.prev_id,
            this.prev_reads,
            this.prev_writes,
            this.next_id,
            this.next_reads,
            this.next_writes,
            func.sum(case((this.cost_usd.is_not(None), this.compaction_cost)))
            .over(partition_by=this.conversation_id)
            .label("priced_compaction_cost"),
        )
        .select_from(located.join(conversation, conversation.c.conversation_id == this.conversation_id))
        .subquery("located_rows")
    )
