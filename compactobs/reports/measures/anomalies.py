"""The anomaly kinds' SQL: their thresholds and the statements a source runs to find them, over the store's
`calls` and `iterations` (or a dialect's equivalent of them). No connection; a source runs them
(`sources.sql_anomalies_ops`) or compiles its own shapes from the same conditions (`sources.clickhouse`), and
the kinds in `reports.anomalies` judge the records that come back. One place for both sides of each rule's
SQL: what the report and the dashboards run, what the sources read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from sqlalchemy import Select, Subquery, and_, case, func, literal, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

from compactobs.reports.thresholds import Thresholds
from compactobs.store.models import calls, iterations

if TYPE_CHECKING:
    from compactobs.rules import Budget, Budgets


__all__ = [
    "COMPACTION_RECORD",
    "ERROR_STATUSES",
    "HOUR_MS",
    "ID_CHUNK",
    "MAX_CALL_IDS",
    "OverBudget",
    "Row",
    "Thresholds",
    "budget_crossings_statement",
    "budget_totals_statement",
    "cache_miss_candidate",
    "compaction_candidates",
    "compaction_records",
    "cost_share_candidate",
    "error_hours_statement",
    "error_sample_statement",
    "failed_candidate",
    "first_crossings",
    "ineffective_candidate",
    "server_error",
    "unpriced_model",
    "unpriced_sample_statement",
    "unpriced_statement",
]

MAX_CALL_IDS: Final = 50
"""A finding lists at most this many call ids (the evidence has the full count)."""


# -- compaction ----------------------------------------------------------------------------------------------


Row = Callable[[str], ColumnElement[Any]]
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


def ineffective_candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
    """ineffective_compaction's (and so compaction_loop's) candidates: `LoopRule.ineffective_sql`."""
    rule = thresholds.loop_rule
    condition: ColumnElement[bool] = rule.ineffective_sql(row("context_after"), row("trigger"))
    return condition


def failed_candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
    """failed_compaction's candidates: a compaction block with null content."""
    return row("failed") > 0


def cost_share_candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
    """compaction_cost_share's candidates: every compacting call of a conversation over the share
    (`priced_compaction_cost`: its compaction cost over its priced calls). Compared in Decimal by the rule;
    here with a hair of slack for float sums (SQLite)."""
    return and_(
        row("conversation_cost") > 0,
        row("priced_compaction_cost")
        > row("conversation_cost") * literal(thresholds.cost_share * (1 - 1e-9)),
    )


def cache_miss_candidate(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
    """cache_miss_after_compaction's candidates: the rule itself, on the neighbours' cache figures."""
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


def compaction_candidates(row: Row, thresholds: Thresholds) -> ColumnElement[bool]:
    """The compacting calls in which a compaction kind may find something, as a condition over the columns
    `row(name)` gives (`COMPACTION_RECORD`'s, and `priced_compaction_cost`): a superset, the kinds decide on
    the rows it selects, so the database sends back those only (at 1M calls, about 1 in 12 compacting
    calls). A loop is made of ineffective compactions: the ineffective candidates hold it."""
    return or_(
        ineffective_candidate(row, thresholds),
        failed_candidate(row, thresholds),
        cache_miss_candidate(row, thresholds),
        cost_share_candidate(row, thresholds),
    )


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


# -- budget_exceeded -----------------------------------------------------------------------------------------


OverBudget: TypeAlias = "Mapping[str, tuple[Budget, int, Decimal | None, int, int, int]]"
"""The conversations over budget: (budget, calls, spent, billed tokens, compactions, unpriced calls)."""

ID_CHUNK: Final = 500
"""Conversation ids per `IN (...)` list of `crossings_statement` (SQLite allows 32766 parameters)."""


def budget_totals_statement(
    conditions: Sequence[ColumnElement[bool]], budgets: Budgets | None
) -> Select[Any]:
    """(conversation_id, calls, cost, billed tokens, largest stored budget_usd and budget_tokens, unpriced
    calls, compactions, largest stored budget_max_compactions) of each conversation with a call meeting
    `conditions`, over all its calls; with no budgets file, only of those that stored a budget."""
    from compactobs import rules  # on use: the other reports' start-up loads no rules

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


def budget_crossings_statement(conversation_ids: Sequence[str]) -> Select[Any]:
    """(conversation_id, call_id, start_ms, cost, billed tokens, compactions) of every call of the
    conversations (at most ID_CHUNK), in conversation order. Summed in Python (`first_crossings`): on
    SQLite about twice as fast as running sums in window functions with the budgets joined in."""
    from compactobs import rules  # on use: the other reports' start-up loads no rules

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


def first_crossings(records: Iterable[Sequence[Any]], over: OverBudget) -> dict[str, tuple[int, str]]:
    """(start_ms, call_id) of the first call at which each conversation's running spend went over its
    budget, from `budget_crossings_statement`'s records."""
    from compactobs.rules import Budget, over_limits  # on use: the other reports' start-up loads no rules

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


# -- error_burst ---------------------------------------------------------------------------------------------


HOUR_MS: Final = 3_600_000
ERROR_STATUSES: Final = (429, 529)
"""With every other 5xx, the statuses of a failed call."""


def server_error() -> ColumnElement[bool]:
    status = calls.c.http_status
    return or_(status.in_(ERROR_STATUSES), and_(status >= 500, status <= 599))


def error_hours_statement(conditions: Sequence[ColumnElement[bool]], thresholds: Thresholds) -> Select[Any]:
    """The rule as one query over the calls meeting `conditions`: per UTC clock hour (`hour`: epoch
    hours) with >= `error_min_calls` calls of which more than `error_share` failed with 429/529/5xx:
    `calls`, `error_calls`, `http_429`, `http_529`, `retries`. The report and the dashboards both run
    it."""
    c = calls.c
    hour = (c.start_ms // HOUR_MS).label("hour")
    errors = func.sum(case((server_error(), 1), else_=0))
    return (
        select(
            hour,
            func.count().label("calls"),
            errors.label("error_calls"),
            func.sum(case((c.http_status == 429, 1), else_=0)).label("http_429"),
            func.sum(case((c.http_status == 529, 1), else_=0)).label("http_529"),
            func.sum(func.coalesce(c.attempts, 1) - 1).label("retries"),
        )
        .where(*conditions)
        .group_by(hour)
        .having(
            and_(
                func.count() >= thresholds.error_min_calls,
                errors > literal_column(repr(float(thresholds.error_share))) * func.count(),
            )
        )
        .order_by(hour)
    )


def error_sample_statement(conditions: Sequence[ColumnElement[bool]], start_ms: int) -> Select[Any]:
    """The first MAX_CALL_IDS calls of the hour from `start_ms` that failed with 429/529/5xx."""
    c = calls.c
    return (
        select(c.call_id)
        .where(c.start_ms >= start_ms, c.start_ms < start_ms + HOUR_MS, server_error(), *conditions)
        .order_by(c.start_ms, c.call_id)
        .limit(MAX_CALL_IDS)
    )


# -- unpriced_model ------------------------------------------------------------------------------------------


def unpriced_model() -> ColumnElement[Any]:
    """The model an unpriced iteration is reported under."""
    c, i = calls.c, iterations.c
    return func.coalesce(i.model, c.response_model, c.request_model, literal_column("'(unknown)'"))


def unpriced_statement(conditions: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """The rule as one query over the calls meeting `conditions`: per model with no price, `model`,
    `calls`, `iterations`, `conversations`, `tokens` and the first and last call's start (epoch ms). The
    report and the dashboards both run it."""
    c, i = calls.c, iterations.c
    model = unpriced_model()
    return (
        select(
            model.label("model"),
            func.count(func.distinct(c.call_id)).label("calls"),
            func.count().label("iterations"),
            func.count(func.distinct(c.conversation_id)).label("conversations"),
            func.sum(
                func.coalesce(i.input_tokens, 0)
                + func.coalesce(i.output_tokens, 0)
                + func.coalesce(i.cache_read_tokens, 0)
                + func.coalesce(i.cache_write_5m_tokens, 0)
                + func.coalesce(i.cache_write_1h_tokens, 0)
            ).label("tokens"),
            func.min(c.start_ms).label("first_ms"),
            func.max(c.start_ms).label("last_ms"),
        )
        .select_from(iterations.join(calls, calls.c.call_id == i.call_id))
        .where(i.priced.is_(False), *conditions)
        .group_by(model)
        .order_by(model)
    )


def unpriced_sample_statement(conditions: Sequence[ColumnElement[bool]], model: str) -> Select[Any]:
    """The first MAX_CALL_IDS calls (by start) with an unpriced iteration of the model."""
    c, i = calls.c, iterations.c
    return (
        select(c.call_id)
        .select_from(iterations.join(calls, calls.c.call_id == i.call_id))
        .where(i.priced.is_(False), unpriced_model() == model, *conditions)
        .group_by(c.call_id)
        .order_by(func.min(c.start_ms), c.call_id)
        .limit(MAX_CALL_IDS)
    )
