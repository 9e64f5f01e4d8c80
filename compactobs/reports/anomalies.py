"""`report anomalies`: rules over the stored calls that say where money or reliability is leaking.

Each finding has a kind, a severity (`warning` or `critical`), the conversation (None for the rules that
look at models or hours), the calls involved, a one-line message, the evidence in numbers and a one-line
remedy. The rules and their defaults (all configurable through `Thresholds`):

- `compaction_loop` (critical): >= `loop_min` (3) compactions within `loop_window` (5) consecutive calls
  of one conversation, each leaving the context >= `ineffective_ratio` (80%) of the trigger;
- `ineffective_compaction` (warning): a compaction leaving the context >= `ineffective_ratio` of the
  trigger (not reported again for a call that is part of a loop);
- `failed_compaction` (warning): compaction blocks with null content (billed, no summary), one finding per
  conversation;
- `compaction_cost_share` (warning): compaction iterations cost > `cost_share` (50%) of the conversation's
  priced cost;
- `budget_exceeded` (critical): the conversation's billed tokens, USD or compactions exceed its budget: a
  budgets file entry when one matches (`load_budgets`), else the budget stored with its calls by
  `compactobs.conversation(..., budget_usd=..., budget_tokens=..., max_compactions=...)` (the largest
  each carries); the finding names the call at which the spend went over;
- `cache_miss_after_compaction` (warning): the call after a compaction reads <= `cache_drop_ratio` (5%) of
  what the call before it read from the cache, while its cache writes jump (above the call before's, and
  >= `cache_min_tokens`, 1024);
- `unpriced_model` (warning): iterations of a model compactobs has no price for (cost NULL, never $0);
- `error_burst` (warning): in one clock hour (UTC hours), >= `error_min_calls` (20) calls and more than
  `error_share` (10%) of them ended in HTTP 429, 529 or another 5xx.

The compaction-loop and budget rules are `compactobs.rules`, which the runtime guard (`compactobs.guard`)
applies to conversations as they run: one implementation for both.

Definitions:
- a conversation's calls are taken in order of start time (then call id), counting only calls that returned
  usage (a call that failed with an HTTP error is not a turn of the conversation);
- "the context a compaction left" is the call's `context_tokens` (total input of its last `message`
  iteration); for a paused call (`pause_after_compaction`), which has no message iteration, the next call's;
- the trigger is the call's own `compaction_trigger`;
- every rule looks at the calls the filters select (`--since/--until`...), except `budget_exceeded`, which
  sums the whole of each conversation that has a selected call (a budget is for the conversation);
- billed tokens (for token budgets) are uncached input + output + cache reads + cache writes.

Scale: each rule is one SQL query. The compaction rules visit only the calls that compacted: a call's position
in its conversation and its neighbours are index range lookups on (conversation_id, start_ms), linear in the
conversation's calls even when it compacts at every turn (on 1M calls and 10,000 conversations on SQLite: ~2
s, the whole report ~4 s; with a budget on every conversation ~6.5 s). Rows are streamed, and only the
compacting calls a rule may hold come back (`compaction_candidates`: ineffective, failed, a cache drop, a
conversation over the cost share), so memory follows the findings, not the calls. `call_ids` lists at most
`MAX_CALL_IDS` ids; `evidence` always carries the full count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from sqlalchemy import Engine, and_, case, func, literal, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

from compactobs import rules
from compactobs._words import counted
from compactobs.reports.model import ExternalSource, Filters, Report, ReportInputError
from compactobs.reports.render import render
from compactobs.reports.render.json import to_json_value
from compactobs.reports.render.safe import json_text, shown
from compactobs.reports.sources.sql_reading import reading
from compactobs.rules import (
    ENV_BUDGETS_FILE,
    Budget,
    Budgets,
    LoopRule,
    LoopWindow,
    effective_budget,
    over_limits,
)
from compactobs.store.models import calls, iterations

__all__ = [
    "COLUMNS",
    "ENV_BUDGETS_FILE",
    "EXIT_FINDINGS",
    "KINDS",
    "MAX_CALL_IDS",
    "Budget",
    "Budgets",
    "Finding",
    "Severity",
    "Thresholds",
    "anomalies_report",
    "error_burst_statement",
    "exit_code_for",
    "find_anomalies",
    "findings_of",
    "load_budgets",
    "reading",
    "render_anomalies",
    "unpriced_models_statement",
]

Severity = Literal["warning", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("warning", "critical")
"""From least to most severe."""

KINDS: Final = (
    "compaction_loop",
    "budget_exceeded",
    "ineffective_compaction",
    "failed_compaction",
    "compaction_cost_share",
    "cache_miss_after_compaction",
    "error_burst",
    "unpriced_model",
)
"""Every kind, in the order findings are listed (after severity)."""

EXIT_FINDINGS: Final = 3
"""The exit code of `report anomalies --fail-on LEVEL` when a finding at LEVEL or above exists (2 is taken by
usage errors, 1 by crashes)."""
MAX_CALL_IDS: Final = 50
"""A finding lists at most this many call ids (the evidence has the full count)."""

_HOUR_MS: Final = 3_600_000
_ERROR_STATUSES: Final = (429, 529)
_ID_CHUNK: Final = 500
"""Conversation ids per `IN (...)` list (SQLite allows 32766 parameters; PostgreSQL more)."""


# --- thresholds ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The rules' thresholds. `report anomalies` has an option per field (`--loop-min`...), its help from
    the field's metadata: a field added here is an option there."""

    loop_min: int = field(
        default=3, metadata={"help": "compaction_loop: this many ineffective compactions..."}
    )
    """compaction_loop: at least this many ineffective compactions..."""
    loop_window: int = field(default=5, metadata={"help": "...within this many consecutive calls."})
    """...within this many consecutive calls of one conversation."""
    ineffective_ratio: float = field(
        default=0.8,
        metadata={
            "help": "A compaction leaving the context at this share of the trigger or more is ineffective."
        },
    )
    """A compaction is ineffective when the context it left is >= this share of the trigger."""
    cost_share: float = field(default=0.5, metadata={"help": "Compaction share of a conversation's cost."})
    """compaction_cost_share: compaction iterations cost more than this share of the conversation."""
    error_share: float = field(default=0.1, metadata={"help": "429/529/5xx share of an hour's calls."})
    """error_burst: more than this share of an hour's calls ended in 429, 529 or another 5xx..."""
    error_min_calls: int = field(default=20, metadata={"help": "Calls an hour needs to judge."})
    """...in an hour with at least this many calls."""
    cache_drop_ratio: float = field(
        default=0.05,
        metadata={
            "help": "Cache reads after a compaction at or below this share of those before count as a miss."
        },
    )
    """cache_miss_after_compaction: reads after <= this share of the reads before ("about zero")..."""
    cache_min_tokens: int = field(default=1024, metadata={"help": "Smallest cache read/write considered."})
    """...where the call before read >= this many tokens and the call after wrote >= this many."""

    def __post_init__(self) -> None:
        if self.loop_min < 2:
            raise ReportInputError(f"--loop-min must be at least 2, not {self.loop_min}")
        if self.loop_window < 1:
            raise ReportInputError(f"--loop-window must be at least 1, not {self.loop_window}")
        for name, value in (
            ("ineffective-ratio", self.ineffective_ratio),
            ("cost-share", self.cost_share),
            ("error-share", self.error_share),
            ("cache-drop-ratio", self.cache_drop_ratio),
        ):
            if not (0.0 <= value <= 1.0):
                raise ReportInputError(f"--{name} must be between 0 and 1, not {value}")
        if self.error_min_calls < 1:
            raise ReportInputError(f"--error-min-calls must be at least 1, not {self.error_min_calls}")
        if self.cache_min_tokens < 0:
            raise ReportInputError(f"--cache-min-tokens must be >= 0, not {self.cache_min_tokens}")

    @property
    def loop_rule(self) -> LoopRule:
        """The compaction-loop rule these thresholds set (the runtime guard applies the same rule)."""
        return LoopRule(self.loop_min, self.loop_window, self.ineffective_ratio)


# --- budgets ---------------------------------------------------------------------------------------------


def load_budgets(path: str | os.PathLike[str]) -> Budgets:
    """Read a budgets file (TOML; see `compactobs.rules.load_budgets`, which the runtime guard reads it with
    too). Raises ReportInputError with a one-line message on any problem."""
    try:
        return rules.load_budgets(path)
    except rules.RulesInputError as err:
        raise ReportInputError(str(err)) from None


# --- findings --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomaly. `evidence` holds plain JSON values (money as Decimal rounded to 6 places)."""

    kind: str
    severity: Severity
    conversation_id: str | None
    call_ids: tuple[str, ...]
    message: str
    evidence: Mapping[str, Any]
    remedy: str
    first_ms: int = 0
    """When the first call involved started (epoch ms): the order findings are listed in."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "conversation_id": self.conversation_id,
            "call_ids": list(self.call_ids),
            "message": self.message,
            "evidence": dict(self.evidence),
            "remedy": self.remedy,
        }


def exit_code_for(findings: Iterable[Finding | Mapping[str, Any]], fail_on: str | None) -> int:
    """EXIT_FINDINGS when a finding (a Finding or its JSON dict) is at `fail_on` or above, else 0 (always 0
    when `fail_on` is None)."""
    if fail_on is None:
        return 0
    floor = SEVERITIES.index(fail_on)
    for finding in findings:
        severity = finding["severity"] if isinstance(finding, Mapping) else finding.severity
        if SEVERITIES.index(severity) >= floor:
            return EXIT_FINDINGS
    return 0


_SIX: Final = Decimal("0.000001")


def _usd(value: Any) -> Decimal | None:
    """Money for evidence: Decimal rounded to 6 places (never -0)."""
    if value is None:
        return None
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    amount = amount.quantize(_SIX)
    return amount if amount != 0 else Decimal("0.000000")


def _money(value: Any) -> str:
    """Money in a message: $ with 4 decimals, as tables show it."""
    return f"${Decimal(str(value)):,.4f}"


def _span(low: float, high: float) -> str:
    return _pct(low) if _pct(low) == _pct(high) else f"{_pct(low)}-{_pct(high)}"


def _total_cost(values: Iterable[Decimal | None]) -> Decimal | None:
    """The sum of the known amounts; None when none is known (unpriced, or no iteration rows)."""
    known = [Decimal(str(v)) for v in values if v is not None]
    return sum(known, Decimal(0)) if known else None


def _ratio(value: float) -> float:
    return round(value, 4)


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _when(ms: int, tz: Any) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(tz).isoformat(timespec="seconds")


def _ids(ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(ids[:MAX_CALL_IDS])


# --- the per-conversation compaction rules (one query) ------------------------------------------------


_REMEDY_LOOP: Final = (
    "raise the trigger or shrink what survives a compaction (instructions asking for a shorter summary, "
    "fewer/lighter tool results), and use pause_after_compaction with a compaction counter as a breaker"
)
_REMEDY_INEFFECTIVE: Final = (
    "the summary plus what follows it nearly fills the trigger: raise the trigger or ask for a shorter "
    "summary in the compaction instructions"
)
_REMEDY_FAILED: Final = (
    "a null summary is billed and changes nothing: avoid tool calls at the compaction point and check the "
    "compaction instructions; retry the compaction on demand"
)
_REMEDY_SHARE: Final = (
    "compaction dominates the bill: raise the trigger so it fires less often, keep the context cached so "
    "the summarisation reads from cache, or end long conversations sooner"
)
_REMEDY_CACHE: Final = (
    'put cache_control {"type": "ephemeral"} on the compaction block (and keep one on the system prompt) so '
    "the calls after a compaction read the summary from the cache instead of writing it again"
)
_REMEDY_BUDGET: Final = (
    "stop or cap the conversation (compactobs.conversation budgets, pause_after_compaction with a "
    "compaction counter), or raise its budget"
)
_REMEDY_UNPRICED: Final = (
    "add the model to a pricing overrides file (COMPACTOBS_PRICING_FILE) and run `compactobs reprice`"
)
_REMEDY_ERRORS: Final = (
    "throttle or queue requests (rate limits: 429), retry 529/5xx with backoff, or spread load across hours "
    "or the batch API"
)


@dataclass(slots=True)
class _CompactionCall:
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
`_CompactionCall` fields (`position`: its place among the conversation's turns, 1, 2, ...)."""


def compaction_candidates(row: Callable[[str], Any], thresholds: Thresholds) -> ColumnElement[bool]:
    """The compacting calls in which a compaction rule may find something, as a condition over the columns
    `row(name)` gives (`COMPACTION_RECORD`'s, and `priced_compaction_cost`: the conversation's compaction
    cost over its priced calls): an ineffective compaction (`compaction_loop`, `ineffective_compaction`), a
    failed one, a cache drop around it, or any compacting call of a conversation whose compaction share is
    over the threshold. A superset: the rules (`_conversation_findings`) decide on the rows it selects, so
    the database sends back those only (at 1M calls, about 1 in 12 compacting calls)."""
    before, after, written = row("prev_reads"), row("next_reads"), row("next_writes")
    least = thresholds.cache_min_tokens
    cache_drop = and_(
        row("next_id").is_not(None),
        before >= least,
        before > 0,
        after <= literal(thresholds.cache_drop_ratio) * before,
        written >= least,
        written > func.coalesce(row("prev_writes"), 0),
    )
    # The share is compared in Decimal by the rule; here with a hair of slack for float sums (SQLite).
    share = and_(
        row("conversation_cost") > 0,
        row("priced_compaction_cost")
        > row("conversation_cost") * literal(thresholds.cost_share * (1 - 1e-9)),
    )
    return or_(
        thresholds.loop_rule.ineffective_sql(row("context_after"), row("trigger")),
        row("failed") > 0,
        cache_drop,
        share,
    )


def _compaction_rows(
    engine: Engine, conditions: Sequence[ColumnElement[bool]], thresholds: Thresholds
) -> Iterator[tuple[Any, ...]]:
    """The compacting calls of the conversations that compacted that `compaction_candidates` selects, with
    their neighbours, in conversation order, as `COMPACTION_RECORD`s.

    Only compacting calls are visited: the turns between two compacting calls are counted with an index
    range on (conversation_id, start_ms), and the previous and next turns are index lookups. The work is
    linear in the calls of the conversations that compact, even for a conversation that compacts at every
    turn, and on SQLite much cheaper than window functions over all those calls (about 5x on 1M calls).
    """
    c, x = calls.alias("c"), calls.alias("x")
    on_c = [ClauseAdapter(c).traverse(condition) for condition in conditions]
    on_x = [ClauseAdapter(x).traverse(condition) for condition in conditions]
    order = (c.c.start_ms, c.c.call_id)
    i = iterations.c
    compacting = (
        select(
            c.c.conversation_id,
            c.c.call_id,
            c.c.start_ms,
            c.c.compactions_count,
            c.c.compactions_failed,
            c.c.compaction_trigger,
            c.c.context_tokens,
            c.c.cost_usd,
            func.lag(c.c.start_ms).over(partition_by=c.c.conversation_id, order_by=order).label("last_ms"),
            func.lag(c.c.call_id).over(partition_by=c.c.conversation_id, order_by=order).label("last_id"),
        )
        .where(
            c.c.compactions_count > 0,
            c.c.conversation_id.is_not(None),
            c.c.input_tokens.is_not(None),
            *on_c,
        )
        .subquery("compacting")
    )
    k = compacting.c
    # The turns of k's conversation: calls that returned usage, in (start_ms, call_id) order.
    turn = [x.c.conversation_id == k.conversation_id, x.c.input_tokens.is_not(None), *on_x]
    before = and_(x.c.start_ms <= k.start_ms, or_(x.c.start_ms < k.start_ms, x.c.call_id < k.call_id))
    after = and_(x.c.start_ms >= k.start_ms, or_(x.c.start_ms > k.start_ms, x.c.call_id > k.call_id))
    since_last = and_(
        x.c.start_ms >= func.coalesce(k.last_ms, -1),
        or_(k.last_ms.is_(None), x.c.start_ms > k.last_ms, x.c.call_id > k.last_id),
    )
    # The bounds set by k come first: SQLite takes the first range terms it meets on start_ms for the index
    # search, and with the report window's terms first it scanned the conversation's whole window for each
    # lookup (quadratic in a long conversation: 38 s instead of 0.5 s for 10,000 calls in one).
    gap = select(func.count()).select_from(x).where(before, since_last, *turn).scalar_subquery() + 1

    def previous(column: Any) -> Any:
        ordered = select(column).where(before, *turn).order_by(x.c.start_ms.desc(), x.c.call_id.desc())
        return ordered.limit(1).scalar_subquery()

    def following(column: Any) -> Any:
        return (
            select(column).where(after, *turn).order_by(x.c.start_ms, x.c.call_id).limit(1).scalar_subquery()
        )

    reads = func.coalesce(x.c.cache_read_tokens, 0)
    writes = func.coalesce(x.c.cache_write_5m_tokens, 0) + func.coalesce(x.c.cache_write_1h_tokens, 0)
    compaction_cost = (
        select(func.sum(i.cost_usd)).where(i.call_id == k.call_id, i.type == "compaction").scalar_subquery()
    )
    # The neighbours' values as correlated lookups (an index probe each), not joins: a join on the looked-up
    # id makes PostgreSQL hash the whole table and evaluate the lookup twice.
    located = select(
        compacting,
        gap.label("gap"),
        compaction_cost.label("compaction_cost"),
        previous(x.c.call_id).label("prev_id"),
        previous(reads).label("prev_reads"),
        previous(writes).label("prev_writes"),
        following(x.c.call_id).label("next_id"),
        following(reads).label("next_reads"),
        following(writes).label("next_writes"),
        following(x.c.context_tokens).label("next_context"),
    ).subquery("located")
    m = located.c
    t = calls.c
    totals = (
        select(t.conversation_id, func.count().label("calls"), func.sum(t.cost_usd).label("cost"))
        .where(t.conversation_id.in_(select(m.conversation_id)), t.input_tokens.is_not(None), *conditions)
        .group_by(t.conversation_id)
        .subquery("totals")
    )
    located_order = (m.start_ms, m.call_id)
    located_rows = (
        select(
            m.conversation_id,
            totals.c.calls.label("conversation_calls"),
            totals.c.cost.label("conversation_cost"),
            func.sum(m.gap)
            .over(partition_by=m.conversation_id, order_by=located_order, rows=(None, 0))
            .label("position"),
            m.call_id,
            m.start_ms,
            m.compactions_count,
            func.coalesce(m.compactions_failed, 0).label("failed"),
            m.compaction_trigger.label("trigger"),
            func.coalesce(m.context_tokens, m.next_context).label("context_after"),
            m.cost_usd,
            m.compaction_cost,
            m.prev_id,
            m.prev_reads,
            m.prev_writes,
            m.next_id,
            m.next_reads,
            m.next_writes,
            func.sum(case((m.cost_usd.is_not(None), m.compaction_cost)))
            .over(partition_by=m.conversation_id)
            .label("priced_compaction_cost"),
        )
        .select_from(located.join(totals, totals.c.conversation_id == m.conversation_id))
        .subquery("located_rows")
    )
    r = located_rows.c
    query = (
        select(*(r[name] for name in COMPACTION_RECORD))
        .where(compaction_candidates(lambda name: r[name], thresholds))
        .order_by(r.conversation_id, r.start_ms, r.call_id)
    )
    with reading(engine) as connection:
        result = connection.execution_options(stream_results=True, yield_per=2000).execute(query)
        yield from result


def _conversation_findings(
    conversation_id: str,
    conversation_calls: int,
    conversation_cost: Any,
    rows: list[_CompactionCall],
    thresholds: Thresholds,
) -> Iterator[Finding]:
    """The compaction rules for one conversation, from its compacting calls."""
    rule = thresholds.loop_rule
    ineffective = [row for row in rows if rule.ineffective(row.context_after, row.trigger)]

    # compaction_loop (compactobs.rules, as the runtime guard judges it): windows of `loop_window`
    # consecutive calls holding >= loop_min ineffective compactions; overlapping windows merge into one loop.
    in_loop: set[str] = set()
    loops: list[list[_CompactionCall]] = []
    sliding: LoopWindow[_CompactionCall] = LoopWindow(rule)
    for row in ineffective:
        window = sliding.add(row.rn, row.compactions, row)
        if window is not None:
            if loops and loops[-1][-1].rn >= window[0].rn:
                known = {r.call_id for r in loops[-1]}
                loops[-1].extend(r for r in window if r.call_id not in known)
            else:
                loops.append(list(window))
    for loop in loops:
        in_loop.update(r.call_id for r in loop)
        compactions = sum(r.compactions for r in loop)
        span = loop[-1].rn - loop[0].rn + 1
        shares = [r.context_after / r.trigger for r in loop]  # type: ignore[operator]
        cost = _total_cost(r.compaction_cost for r in loop)
        yield Finding(
            kind="compaction_loop",
            severity="critical",
            conversation_id=conversation_id,
            call_ids=_ids([r.call_id for r in loop]),
            message=(
                f"{counted(compactions, 'compaction')} within {span} consecutive calls, each leaving the "
                f"context at "
                f"{_span(min(shares), max(shares))} of the trigger: compaction keeps re-firing"
            ),
            evidence={
                "compactions": compactions,
                "calls_spanned": span,
                "calls": len(loop),
                "min_context_share": _ratio(min(shares)),
                "max_context_share": _ratio(max(shares)),
                "compaction_cost_usd": _usd(cost),
                "steps": [
                    {
                        "call_id": r.call_id,
                        "position": r.rn,
                        "compactions": r.compactions,
                        "context_tokens": r.context_after,
                        "trigger_tokens": r.trigger,
                        "context_share": _ratio(r.context_after / r.trigger),  # type: ignore[operator]
                    }
                    for r in loop[:MAX_CALL_IDS]
                ],
            },
            remedy=_REMEDY_LOOP,
            first_ms=loop[0].start_ms,
        )

    for row in ineffective:
        if row.call_id in in_loop:
            continue
        share = row.context_after / row.trigger  # type: ignore[operator]
        yield Finding(
            kind="ineffective_compaction",
            severity="warning",
            conversation_id=conversation_id,
            call_ids=(row.call_id,),
            message=(
                f"compaction left {row.context_after:,} tokens, {_pct(share)} of the {row.trigger:,}-token "
                f"trigger: it freed too little room and will fire again soon"
            ),
            evidence={
                "compactions": row.compactions,
                "context_tokens": row.context_after,
                "trigger_tokens": row.trigger,
                "context_share": _ratio(share),
                "position": row.rn,
                "compaction_cost_usd": _usd(row.compaction_cost),
            },
            remedy=_REMEDY_INEFFECTIVE,
            first_ms=row.start_ms,
        )

    failed = [row for row in rows if row.failed > 0]
    if failed:
        count = sum(row.failed for row in failed)
        cost = _total_cost(r.compaction_cost for r in failed)
        yield Finding(
            kind="failed_compaction",
            severity="warning",
            conversation_id=conversation_id,
            call_ids=_ids([row.call_id for row in failed]),
            message=(
                f"{count} compaction(s) returned no summary (content null) in {len(failed)} call(s): billed, "
                f"and the context was not reduced"
            ),
            evidence={
                "failed_compactions": count,
                "calls": len(failed),
                "compaction_cost_usd": _usd(cost),
            },
            remedy=_REMEDY_FAILED,
            first_ms=failed[0].start_ms,
        )

    # compaction_cost_share: over priced calls only (an unpriced call's compaction has no cost to share).
    total = Decimal(str(conversation_cost)) if conversation_cost is not None else None
    priced = [r for r in rows if r.cost is not None and r.compaction_cost is not None]
    if total is not None and total > 0 and priced:
        compaction_cost = sum((Decimal(str(r.compaction_cost)) for r in priced), Decimal(0))
        share = compaction_cost / total
        if share > Decimal(str(thresholds.cost_share)):
            yield Finding(
                kind="compaction_cost_share",
                severity="warning",
                conversation_id=conversation_id,
                call_ids=_ids([r.call_id for r in priced]),
                message=(
                    f"compaction cost {_money(compaction_cost)} of {_money(total)}, {float(share):.1%} of "
                    f"the conversation (threshold {thresholds.cost_share:.0%})"
                ),
                evidence={
                    "compaction_cost_usd": _usd(compaction_cost),
                    "conversation_cost_usd": _usd(total),
                    "share": _ratio(float(share)),
                    "compactions": sum(r.compactions for r in priced),
                    "conversation_calls": conversation_calls,
                },
                remedy=_REMEDY_SHARE,
                first_ms=priced[0].start_ms,
            )

    for row in rows:
        before, after, written_before, written = (
            row.prev_reads,
            row.next_reads,
            row.prev_writes,
            row.next_writes,
        )
        if before is None or after is None or written is None or row.next_call_id is None:
            continue
        if (
            before >= thresholds.cache_min_tokens
            and before > 0
            and after <= thresholds.cache_drop_ratio * before
            and written >= thresholds.cache_min_tokens
            and written > (written_before or 0)
        ):
            assert row.prev_call_id is not None
            yield Finding(
                kind="cache_miss_after_compaction",
                severity="warning",
                conversation_id=conversation_id,
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
                    "read_ratio": _ratio(after / before),
                    "compaction_call_id": row.call_id,
                },
                remedy=_REMEDY_CACHE,
                first_ms=row.start_ms,
            )


def _compaction_findings(records: Iterable[Sequence[Any]], thresholds: Thresholds) -> Iterator[Finding]:
    """The compaction rules over `_compaction_rows`' records (or a source's that match them)."""
    current: str | None = None
    head: tuple[Any, Any] = (0, None)
    rows: list[_CompactionCall] = []
    for record in records:
        conversation_id = record[0]
        if conversation_id != current:
            if current is not None:
                yield from _conversation_findings(current, head[0], head[1], rows, thresholds)
            current, head, rows = conversation_id, (record[1], record[2]), []
        rows.append(_CompactionCall(record[4], int(record[3]), *record[5:]))
    if current is not None:
        yield from _conversation_findings(current, head[0], head[1], rows, thresholds)


# --- budgets ---------------------------------------------------------------------------------------------


def _billed_tokens() -> ColumnElement[Any]:
    return rules.billed_tokens_sql()


def _budget_totals(
    engine: Engine, conditions: Sequence[ColumnElement[bool]], budgets: Budgets | None
) -> Iterator[Sequence[Any]]:
    """(conversation_id, calls, cost, billed tokens, largest stored budget_usd and budget_tokens, unpriced
    calls, compactions, largest stored budget_max_compactions) of each conversation with a selected call,
    over all its calls; with no budgets file, only of those that stored a budget."""
    c = calls.c
    selected = select(c.conversation_id).where(c.conversation_id.is_not(None), *conditions).distinct()
    query = select(
        c.conversation_id,
        func.count(),
        func.sum(c.cost_usd),
        func.sum(_billed_tokens()),
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
    with reading(engine) as connection:
        yield from connection.execution_options(stream_results=True, yield_per=2000).execute(query)


def _budget_findings(
    totals: Iterable[Sequence[Any]],
    crossings_of: Callable[[Mapping[str, tuple[Budget, int, Decimal | None, int, int, int]]], dict[str, Any]],
    budgets: Budgets | None,
) -> Iterator[Finding]:
    """The budget rule (`rules.over_limits`) over `_budget_totals`' records; `crossings_of` is
    `_budget_crossings` (or a source's)."""
    over: dict[str, tuple[Budget, int, Decimal | None, int, int, int]] = {}
    for record in totals:
        conversation_id, count, cost, tokens, stored_usd, stored_tokens, unpriced, compactions = record[:8]
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
        parts = []
        limits = over_limits(budget, spent, tokens, compactions)
        if "budget_usd" in limits:
            assert budget.usd is not None and spent is not None
            share = _pct(float(spent / budget.usd)) if budget.usd else "over"
            parts.append(f"{_money(spent)} of a {_money(budget.usd)} budget ({share})")
        if "budget_tokens" in limits:
            assert budget.tokens is not None
            share = f"{_pct(tokens / budget.tokens)}" if budget.tokens else "over"
            parts.append(f"{tokens:,} of {budget.tokens:,} budgeted tokens ({share})")
        if "max_compactions" in limits:
            parts.append(
                f"{counted(compactions, 'compaction')}, more than the {budget.max_compactions:,} allowed"
            )
        evidence: dict[str, Any] = {
            "spent_usd": _usd(spent),
            "budget_usd": _usd(budget.usd),
            "billed_tokens": tokens,
            "budget_tokens": budget.tokens,
            "compactions": compactions,
            "max_compactions": budget.max_compactions,
            "calls": count,
            "unpriced_calls": unpriced,
            "budget_source": budget.source,
            "crossed_at_call_id": crossing,
        }
        yield Finding(
            kind="budget_exceeded",
            severity="critical",
            conversation_id=conversation_id,
            call_ids=(crossing,) if crossing else (),
            message="over budget: " + "; ".join(parts),
            evidence=evidence,
            remedy=_REMEDY_BUDGET,
            first_ms=first_ms,
        )


def _budget_crossings(
    engine: Engine, over: Mapping[str, tuple[Budget, int, Decimal | None, int, int, int]]
) -> dict[str, tuple[int, str]]:
    """(start_ms, call_id) of the first call at which each conversation's spend went over its budget.

    One ordered pass over the calls of the conversations over budget (the (conversation_id, start_ms) index
    gives the order), summing in Python: on SQLite this is about twice as fast as running sums in window
    functions with the budgets joined in.
    """
    c = calls.c
    found: dict[str, tuple[int, str]] = {}
    ids = list(over)
    with reading(engine) as connection:
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            query = (
                select(
                    c.conversation_id,
                    c.call_id,
                    c.start_ms,
                    c.cost_usd,
                    _billed_tokens(),
                    func.coalesce(c.compactions_count, 0),
                )
                .where(c.conversation_id.in_(chunk))
                .order_by(c.conversation_id, c.start_ms, c.call_id)
            )
            current: str | None = None
            skip = False
            budget = Budget()
            spent = Decimal(0)
            tokens = compactions = 0
            for conversation_id, call_id, start_ms, cost, billed, compacted in connection.execute(query):
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


# --- models and hours ------------------------------------------------------------------------------------


def _unpriced_model() -> ColumnElement[Any]:
    c, i = calls.c, iterations.c
    return func.coalesce(i.model, c.response_model, c.request_model, literal_column("'(unknown)'"))


def unpriced_models_statement(conditions: Sequence[ColumnElement[bool]]) -> Any:
    """The `unpriced_model` rule as one query over the calls meeting `conditions`: per model with no price,
    `model`, `calls`, `iterations`, `conversations`, `tokens` and the first and last call's start (epoch
    ms). The report and the dashboards both run it."""
    c, i = calls.c, iterations.c
    model = _unpriced_model()
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


def _unpriced_groups(engine: Engine, conditions: Sequence[ColumnElement[bool]]) -> list[Sequence[Any]]:
    """`unpriced_models_statement`'s records, in model order."""
    with reading(engine) as connection:
        return list(connection.execute(unpriced_models_statement(conditions)).all())


def _unpriced_sample(engine: Engine, conditions: Sequence[ColumnElement[bool]], name: str) -> list[str]:
    """The first MAX_CALL_IDS calls (by start) with an unpriced iteration of the model."""
    c, i = calls.c, iterations.c
    with reading(engine) as connection:
        return list(
            connection.execute(
                select(c.call_id)
                .select_from(iterations.join(calls, calls.c.call_id == i.call_id))
                .where(i.priced.is_(False), _unpriced_model() == name, *conditions)
                .group_by(c.call_id)
                .order_by(func.min(c.start_ms), c.call_id)
                .limit(MAX_CALL_IDS)
            ).scalars()
        )


def _unpriced_findings(
    groups: Iterable[Sequence[Any]], sample_of: Callable[[str], Sequence[str]], tz: Any
) -> Iterator[Finding]:
    """The unpriced-model rule over `_unpriced_groups`' records; `sample_of(model)`: its first call ids."""
    for name, call_count, iteration_count, conversations, tokens, first_ms, last_ms in groups:
        sample = sample_of(name)
        yield Finding(
            kind="unpriced_model",
            severity="warning",
            conversation_id=None,
            call_ids=tuple(sample),
            message=(
                f"model {name!r} has no price: {call_count:,} call(s) with {int(tokens or 0):,} tokens "
                f"are stored without cost, so every cost total leaves them out"
            ),
            evidence={
                "model": name,
                "calls": call_count,
                "iterations": iteration_count,
                "conversations": conversations,
                "tokens": int(tokens or 0),
                "first_call": _when(int(first_ms), tz),
                "last_call": _when(int(last_ms), tz),
            },
            remedy=_REMEDY_UNPRICED,
            first_ms=int(first_ms),
        )


def _server_error() -> ColumnElement[bool]:
    status = calls.c.http_status
    return or_(status.in_(_ERROR_STATUSES), and_(status >= 500, status <= 599))


def error_burst_statement(conditions: Sequence[ColumnElement[bool]], thresholds: Thresholds) -> Any:
    """The `error_burst` rule as one query over the calls meeting `conditions`: per UTC clock hour
    (`hour`: epoch hours) with >= `error_min_calls` calls of which more than `error_share` failed with
    429/529/5xx: `calls`, `error_calls`, `http_429`, `http_529`, `retries`. The report and the dashboards
    both run it."""
    c = calls.c
    hour = (c.start_ms // _HOUR_MS).label("hour")
    errors = func.sum(case((_server_error(), 1), else_=0))
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


def _error_hours(
    engine: Engine, conditions: Sequence[ColumnElement[bool]], thresholds: Thresholds
) -> list[Sequence[Any]]:
    """`error_burst_statement`'s records, in hour order."""
    with reading(engine) as connection:
        return list(connection.execute(error_burst_statement(conditions, thresholds)))


def _error_sample(engine: Engine, conditions: Sequence[ColumnElement[bool]], start_ms: int) -> list[str]:
    """The first MAX_CALL_IDS calls of the hour from `start_ms` that failed with 429/529/5xx."""
    c = calls.c
    with reading(engine) as connection:
        return list(
            connection.execute(
                select(c.call_id)
                .where(c.start_ms >= start_ms, c.start_ms < start_ms + _HOUR_MS, _server_error(), *conditions)
                .order_by(c.start_ms, c.call_id)
                .limit(MAX_CALL_IDS)
            ).scalars()
        )


def _error_findings(
    hours: Iterable[Sequence[Any]], sample_of: Callable[[int], Sequence[str]], thresholds: Thresholds, tz: Any
) -> Iterator[Finding]:
    """The error-burst rule over `_error_hours`' records; `sample_of(hour start)`: its first failed calls."""
    bursts = [row for row in hours if row[2] and row[2] > thresholds.error_share * row[1]]
    for hour_value, total, failed, rate_limited, overloaded, retries in bursts:
        start_ms = int(hour_value) * _HOUR_MS
        sample = sample_of(start_ms)
        share = failed / total
        other = failed - rate_limited - overloaded
        yield Finding(
            kind="error_burst",
            severity="warning",
            conversation_id=None,
            call_ids=tuple(sample),
            message=(
                f"{failed} of {total} calls ({share:.1%}) failed with 429/529/5xx in the hour from "
                f"{_when(start_ms, tz)} (threshold {thresholds.error_share:.0%})"
            ),
            evidence={
                "hour_start": _when(start_ms, tz),
                "hour_start_ms": start_ms,
                "calls": total,
                "error_calls": failed,
                "share": _ratio(share),
                "http_429": rate_limited,
                "http_529": overloaded,
                "http_5xx_other": other,
                "retries": int(retries or 0),
            },
            remedy=_REMEDY_ERRORS,
            first_ms=start_ms,
        )


# --- entry point -----------------------------------------------------------------------------------------


class AnomalyData(Protocol):
    """What the rules read, as records: the store's queries here (`_StoreData`), or a source's
    (`compactobs.reports.clickhouse.anomalies`) giving the same records."""

    @property
    def concurrent(self) -> bool:
        """Whether its grouped queries may run on another thread while the compaction rows are read and
        judged, so that the engine's work and Python's overlap (taken as False when absent)."""
        ...

    def compaction_rows(self, thresholds: Thresholds) -> Iterable[Sequence[Any]]: ...
    def budget_totals(self, budgets: Budgets | None) -> Iterable[Sequence[Any]]: ...
    def budget_crossings(
        self, over: Mapping[str, tuple[Budget, int, Decimal | None, int, int, int]]
    ) -> dict[str, Any]: ...
    def unpriced_groups(self) -> Iterable[Sequence[Any]]: ...
    def unpriced_sample(self, model: str) -> Sequence[str]: ...
    def error_hours(self, thresholds: Thresholds) -> Iterable[Sequence[Any]]: ...
    def error_sample(self, start_ms: int) -> Sequence[str]: ...


@dataclass(frozen=True)
class _StoreData:
    engine: Engine
    conditions: Sequence[ColumnElement[bool]]
    concurrent: bool = False  # one thread: an in-memory SQLite database is one per thread

    def compaction_rows(self, thresholds: Thresholds) -> Iterable[Sequence[Any]]:
        return _compaction_rows(self.engine, self.conditions, thresholds)

    def budget_totals(self, budgets: Budgets | None) -> Iterable[Sequence[Any]]:
        return _budget_totals(self.engine, self.conditions, budgets)

    def budget_crossings(
        self, over: Mapping[str, tuple[Budget, int, Decimal | None, int, int, int]]
    ) -> dict[str, Any]:
        return _budget_crossings(self.engine, over)

    def unpriced_groups(self) -> Iterable[Sequence[Any]]:
        return _unpriced_groups(self.engine, self.conditions)

    def unpriced_sample(self, model: str) -> Sequence[str]:
        return _unpriced_sample(self.engine, self.conditions, model)

    def error_hours(self, thresholds: Thresholds) -> Iterable[Sequence[Any]]:
        return _error_hours(self.engine, self.conditions, thresholds)

    def error_sample(self, start_ms: int) -> Sequence[str]:
        return _error_sample(self.engine, self.conditions, start_ms)


def find_anomalies(
    engine: Engine,
    filters: Filters,
    thresholds: Thresholds | None = None,
    budgets: Budgets | None = None,
) -> list[Finding]:
    """Every finding over the calls `filters` select, most severe first, then by kind (`KINDS` order),
    then by the time of the first call involved."""
    thresholds = thresholds or Thresholds()
    data: AnomalyData = (
        engine.anomaly_data(filters)  # type: ignore[attr-defined]
        if isinstance(engine, ExternalSource)
        else _StoreData(engine, filters.call_conditions())
    )
    findings: list[Finding] = []
    concurrent = getattr(data, "concurrent", False)
    pool = ThreadPoolExecutor(1, "compactobs-anomalies") if concurrent else None

    def later(fetch: Callable[[], Iterable[Sequence[Any]]]) -> Callable[[], Iterable[Sequence[Any]]]:
        return pool.submit(fetch).result if pool is not None else fetch

    try:
        budget_totals = later(lambda: data.budget_totals(budgets))
        unpriced_groups = later(data.unpriced_groups)
        error_hours = later(lambda: data.error_hours(thresholds))
        findings.extend(_compaction_findings(data.compaction_rows(thresholds), thresholds))
        findings.extend(_budget_findings(budget_totals(), data.budget_crossings, budgets))
        findings.extend(_unpriced_findings(unpriced_groups(), data.unpriced_sample, filters.tz))
        findings.extend(_error_findings(error_hours(), data.error_sample, thresholds, filters.tz))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    findings.sort(
        key=lambda f: (
            -SEVERITIES.index(f.severity),
            KINDS.index(f.kind),
            f.first_ms,
            f.conversation_id or "",
        )
    )
    return findings


COLUMNS: Final = ["severity", "kind", "conversation_id", "call_ids", "message", "evidence", "remedy"]
_evidence_text: Final = json.JSONEncoder(ensure_ascii=False).encode
"""A finding's evidence as JSON text (one encoder for every row: `json.dumps` with options makes one a
call)."""


def anomalies_report(
    engine: Engine,
    filters: Filters,
    thresholds: Thresholds | None = None,
    budgets: Budgets | None = None,
    budgets_source: str | None = None,
) -> Report:
    """The `report anomalies` Report: one row per finding (`call_ids` space-separated and `evidence` as JSON
    text in the rows, for CSV and Markdown); `extra["findings"]` holds the findings as JSON data."""
    thresholds = thresholds or Thresholds()
    findings = find_anomalies(engine, filters, thresholds, budgets)
    rows = [
        {
            "severity": f.severity,
            "kind": f.kind,
            "conversation_id": f.conversation_id,
            "call_ids": " ".join(f.call_ids),
            "message": f.message,
            "evidence": _evidence_text(to_json_value(f.evidence)),
            "remedy": f.remedy,
        }
        for f in findings
    ]
    counts = {level: sum(1 for f in findings if f.severity == level) for level in reversed(SEVERITIES)}
    header = [
        filters.describe(),
        "thresholds: "
        + ", ".join(f"{name.replace('_', '-')} {value}" for name, value in _threshold_items(thresholds)),
        f"budgets: {budgets_source}" if budgets_source else "budgets: as stored with the calls",
    ]
    return Report(
        name="anomalies",
        columns=list(COLUMNS),
        rows=rows,
        header=header,
        extra={
            "findings": [f.as_dict() for f in findings],
            "counts": counts,
            "thresholds": dict(_threshold_items(thresholds)),
        },
        kinds={column: "text" for column in COLUMNS},
        table_columns=["severity", "kind", "conversation_id", "message", "remedy"],
        title="Anomalies",
        empty_message="No anomalies found.",
    )


def _threshold_items(thresholds: Thresholds) -> list[tuple[str, Any]]:
    return [(name, getattr(thresholds, name)) for name in Thresholds.__slots__]


def findings_of(report: Report) -> list[dict[str, Any]]:
    """The findings of an anomalies Report, as JSON data."""
    return list(report.extra.get("findings", []))


def render_anomalies(
    report: Report, fmt: str, console_width: int | None = None, *, color: bool = False
) -> str:
    """`json`: `{"report": "anomalies", "findings": [...], "counts", "thresholds", "warnings"}`; `table`: one
    block per finding (severity, kind, conversation, calls, message, evidence, remedy); `csv` and `md`: the
    generic renderers over the rows."""
    if fmt == "json":
        document = {
            "report": "anomalies",
            "findings": to_json_value(findings_of(report)),
            "counts": report.extra.get("counts", {}),
            "thresholds": to_json_value(report.extra.get("thresholds", {})),
            "warnings": list(report.warnings),
        }
        return json_text(document)
    if fmt != "table":
        return render(report, fmt, console_width, color=color)
    return _render_blocks(report, console_width or 100, color)


_STYLE: Final = {"critical": "bold red", "warning": "yellow"}


def _render_blocks(report: Report, width: int, color: bool) -> str:
    import io

    from rich.console import Console
    from rich.markup import escape
    from rich.padding import Padding
    from rich.text import Text

    out = io.StringIO()
    console = Console(
        file=out,
        width=max(width, 60),
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
    )

    def indent(line: str, style: str = "") -> None:
        console.print(Padding(Text(shown(line), style=style if color else ""), (0, 0, 0, 2)))

    console.print(Text(shown(report.title or report.name), style="bold" if color else ""))
    for line in report.header:
        console.print(Text(shown(line), style="dim" if color else ""))
    findings = findings_of(report)
    console.print()
    if not findings:
        console.print(report.empty_message, markup=False)
    counts = report.extra.get("counts", {})
    for finding in findings:
        severity = finding["severity"]
        title = Text()
        title.append(severity.upper(), style=_STYLE.get(severity, "") if color else "")
        title.append(f"  {shown(finding['kind'])}")
        if finding["conversation_id"] is not None:
            title.append(f"  conversation {shown(finding['conversation_id'])}")
        console.print(title)
        # Wrapped lines stay indented under their finding.
        indent(finding["message"])
        ids = finding["call_ids"]
        if ids:
            indent("calls: " + " ".join(ids), "dim")
        evidence = ", ".join(
            f"{key}={json.dumps(to_json_value(value))}"
            for key, value in finding["evidence"].items()
            if key != "steps" and value is not None
        )
        indent("evidence: " + evidence)
        indent("remedy: " + finding["remedy"], "green")
        console.print()
    if findings:
        summary = ", ".join(f"{n} {level}" for level, n in counts.items())
        console.print(f"{len(findings)} finding(s): {escape(summary)}", markup=False)
    for warning in report.warnings:
        console.print(Text(f"Warning: {shown(warning)}", style="yellow" if color else ""))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
