"""Replay recorded conversations under another compaction setting and price them: pure, no I/O.

What is measured from the traffic (per conversation, call by call):
- the context each turn starts with (a compaction's input, else the reply's total input), each reply's
  output, and so the new content each turn adds (`Turn.new`);
- each summary's size (the compaction iteration's output) at the context it closed;
- what stays after a compaction besides the summary and the newest turn (`Conversation.kept`);
- the cache: the tail after the last breakpoint (`input_tokens`, per the API's definition), the prefix that
  survives a compaction (what the compacting call's reply read), the TTL each write used, the calls' gaps.

What is assumed (stated in the README and in every tune output):
- each turn brings the same new content and the same output under any setting;
- a summary at another context size is the size the traffic's summaries had (per model), scaled to the
  context when the traffic shows they scale; the interval also covers the other reading;
- the documented API behaviour: compaction fires when the context reaches the trigger; the content before
  the compaction block is ignored on later requests (so the turn that compacted is dropped from the next
  request); a cache read takes the longest live prefix and refreshes it; writes cost the TTL's rate;
- a compaction that failed in the recorded traffic fails again if the turn compacts.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Final, Literal

from compactobs.errors import CompactobsError
from compactobs.rules import Budget, over_limits
from compactobs.usage import CallUsage, IterationUsage, TokenCounts

__all__ = [
    "MIN_SUMMARIES",
    "TTL_MS",
    "CallRecord",
    "Compaction",
    "CompactionTax",
    "Conversation",
    "GuardOutcome",
    "Prediction",
    "PriceFn",
    "Setting",
    "Step",
    "SummaryModel",
    "Ttl",
    "Turn",
    "UnsupportedEstimate",
    "compaction_taxes",
    "conversation_of",
    "failed_compaction",
    "guard_outcome",
    "replay",
    "summary_model",
]

Ttl = Literal["5m", "1h"]
TTL_MS: Final[dict[str, int]] = {"5m": 300_000, "1h": 3_600_000}
MIN_SUMMARIES: Final = 2
"""Summaries a model needs in the traffic before tune estimates its summary size (else --summary-tokens)."""
_SCALE_SPREAD: Final = 1.2
"""The traffic shows whether summaries scale only when its compactions' contexts span this factor."""
_ZERO: Final = Decimal(0)

PriceFn = Callable[[CallUsage, datetime], Decimal | None]
"""Prices one call's usage at a time (compactobs.pricing's `Pricer.price_call(...).cost_usd`)."""


class UnsupportedEstimate(CompactobsError, ValueError):
    """The recorded traffic cannot support an estimate (too few summaries...): the message says which."""


# -- what the store holds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One recorded billed iteration."""

    type: str
    model: str | None
    tokens: TokenCounts
    cost_usd: Decimal | None


@dataclass(frozen=True)
class CallRecord:
    """One recorded call with its iterations, in order."""

    call_id: str
    at_ms: int
    model: str
    steps: tuple[Step, ...]
    cost_usd: Decimal | None
    trigger: int | None = None
    paused: bool = False
    failed_compactions: int = 0
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None


# -- turns: the recorded calls read as the model sees them ---------------------------------------------------


@dataclass(frozen=True)
class Compaction:
    """A recorded compaction: its input (the context it closed), summary size and cost."""

    context: int
    summary: int
    failed: bool
    cost_usd: Decimal | None


@dataclass(frozen=True)
class Turn:
    """One turn: a call, or a paused compaction and the call that continued it."""

    at_ms: int
    call_ids: tuple[str, ...]
    model: str
    start: int
    """The context the turn's request carried (before any compaction)."""
    message: TokenCounts
    """The reply's iteration (its total input is the context the reply was sampled on)."""
    new: int
    """The new content the turn added (user message, tool results), measured."""
    compaction: Compaction | None
    recorded_usd: Decimal
    other_usd: Decimal
    """Recorded cost of iterations the model does not replay (advisor, extra tool-loop steps)."""
    paused: bool
    variants: tuple[str | None, str | None, str | None]

    @property
    def context(self) -> int:
        return self.message.total_input

    @property
    def output(self) -> int:
        return self.message.output

    @property
    def tail(self) -> int:
        """Tokens after the last cache breakpoint: the API's uncached `input_tokens`."""
        return self.message.input

    @property
    def cacheable(self) -> int:
        return self.message.cache_read + self.message.cache_write


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    service: str | None
    trigger: int
    turns: tuple[Turn, ...]
    recorded_usd: Decimal
    kept: int
    """Tokens that stay after a compaction besides the summary and the newest turn (tools, system)."""
    stable: int
    """The cached prefix that survives a compaction (a breakpoint on tools/system), in tokens."""
    stable_ttl: Ttl
    rolling_ttl: Ttl
    shrunk_turns: int = 0
    """Turns whose request was smaller than the history they followed (a client that prunes): new = 0."""

    @property
    def reach(self) -> int:
        """The context the conversation would have reached with no compaction at all."""
        turns = self.turns
        return turns[0].start + sum(t.new + p.output for p, t in itertools.pairwise(turns))


def _message_step(steps: Sequence[Step]) -> int | None:
    for index in range(len(steps) - 1, -1, -1):
        if steps[index].type in ("message", "fallback_message"):
            return index
    return None


def conversation_of(
    conversation_id: str, service: str | None, calls: Sequence[CallRecord]
) -> Conversation | None:
    """The recorded calls of one conversation (in time order) read as turns; None when it did not run
    threshold compaction (no trigger recorded) or has no reply to model."""
    triggers = [c.trigger for c in calls if c.trigger is not None]
    if not triggers:
        return None
    raw: list[Turn] = []
    pending: CallRecord | None = None  # a paused compaction waiting for its continuation
    for call in calls:
        index = _message_step(call.steps)
        compactions = [s for s in call.steps if s.type == "compaction"]
        if index is None:
            if compactions:
                pending = call
            continue
        message = call.steps[index]
        others = [s for i, s in enumerate(call.steps) if i != index and s.type != "compaction"]
        comp_steps = list(compactions)
        failed = call.failed_compactions
        call_ids = [call.call_id]
        recorded = call.cost_usd or _ZERO
        at_ms = call.at_ms
        paused = False
        if pending is not None:
            comp_steps = [s for s in pending.steps if s.type == "compaction"] + comp_steps
            failed += pending.failed_compactions
            call_ids.insert(0, pending.call_id)
            recorded += pending.cost_usd or _ZERO
            at_ms = pending.at_ms
            paused = True
            pending = None
        compaction = None
        if comp_steps:
            first = comp_steps[0]
            cost = sum((s.cost_usd or _ZERO for s in comp_steps), _ZERO)
            compaction = Compaction(
                first.tokens.total_input, comp_steps[-1].tokens.output, failed >= len(comp_steps), cost
            )
            others += comp_steps[1:]  # a second compaction in one request: kept at its recorded cost
        raw.append(
            Turn(
                at_ms=at_ms,
                call_ids=tuple(call_ids),
                model=message.model or call.model,
                start=compaction.context if compaction else message.tokens.total_input,
                message=message.tokens,
                new=0,
                compaction=compaction,
                recorded_usd=recorded,
                other_usd=sum((s.cost_usd or _ZERO for s in others), _ZERO),
                paused=paused,
                variants=(call.service_tier, call.speed, call.inference_geo),
            )
        )
    if not raw:
        return None
    # What stays after a compaction besides summary and newest turn, and the prefix that survives it.
    news, shrunk = _news(raw)
    kept_values = [
        t.context - t.compaction.summary - (0 if t.paused else new)
        for t, new in zip(raw, news, strict=True)
        if t.compaction is not None and not t.compaction.failed
    ]
    # The prefix that survives a compaction: what the compacting reply, or the call after it, read.
    stable_reads = [
        turn.message.cache_read
        for index, t in enumerate(raw)
        if t.compaction is not None and not t.compaction.failed
        for turn in raw[index : index + 2]
    ]
    stable = max(stable_reads) if stable_reads else _stable_without_compactions(raw)
    kept = max(0, round(statistics.median(kept_values))) if kept_values else stable
    # news[0] needs `kept`: the first request is the fixed prefix plus the first turn.
    news[0] = max(0, raw[0].start - kept)
    turns = tuple(replace(t, new=n) for t, n in zip(raw, news, strict=True))
    writes_1h = sum(t.message.cache_write_1h for t in turns)
    writes_5m = sum(t.message.cache_write_5m for t in turns)
    rolling_ttl: Ttl = "1h" if writes_1h and not writes_5m else "5m"
    stable_ttl: Ttl = "1h" if writes_1h else "5m"
    return Conversation(
        conversation_id,
        service,
        triggers[-1],
        turns,
        sum((c.cost_usd or _ZERO for c in calls), _ZERO),
        kept,
        stable,
        stable_ttl,
        rolling_ttl,
        shrunk,
    )


def _news(turns: Sequence[Turn]) -> tuple[list[int], int]:
    """The new content of each turn: its request less the history it followed and the previous reply.
    After a compaction the history is what the reply was sampled on less the turn that compacted (content
    before the compaction block is ignored), unless that turn was paused (its turn came before the block)."""
    news = [0] * len(turns)
    shrunk = 0
    history = 0
    for index, turn in enumerate(turns):
        if index:
            value = turn.start - history - turns[index - 1].output
            if value < 0:
                shrunk += 1
            news[index] = max(0, value)
        compacted = turn.compaction is not None and not turn.compaction.failed
        history = turn.context - (news[index] if compacted and not turn.paused else 0)
    # The first turn's new content is settled once `kept` is known (conversation_of).
    return news, shrunk


def _stable_without_compactions(turns: Sequence[Turn]) -> int:
    """The surviving cached prefix when no compaction shows it: a cached prefix that never grows (only a
    breakpoint on tools/system), else the first call's 1-hour writes when it also wrote 5-minute ones (a
    separate longer-lived breakpoint), else none."""
    cached = [t.cacheable for t in turns if t.cacheable]
    if cached and len(set(cached)) == 1 and len(cached) > 1:
        return cached[0]
    first = turns[0].message
    if first.cache_write_1h and first.cache_write_5m:
        return first.cache_read + first.cache_write_1h
    return 0


# -- the summary-size model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryModel:
    """A model's summary size: `constant` tokens, or `ratio` of the closed context. `scales`: True when the
    traffic shows summaries follow the context, False when it shows they do not, None when its compactions
    closed contexts too alike to tell (then the point estimate is halfway between the two readings, and
    the interval spans both)."""

    model: str
    samples: int
    constant: int
    ratio: float
    scales: bool | None
    overridden: bool = False

    def size(self, context: int, reading: str = "point") -> int:
        """Tokens of a summary closing `context`: the point estimate, or the `constant`/`scaled` reading."""
        if self.overridden:
            return self.constant
        scaled = max(1, round(self.ratio * context))
        if reading == "constant":
            return self.constant
        if reading == "scaled":
            return scaled
        if self.scales is None:
            return round((scaled + self.constant) / 2)
        return scaled if self.scales else self.constant


def summary_model(model: str, pairs: Sequence[tuple[int, int]], override: int | None = None) -> SummaryModel:
    """From (closed context, summary size) pairs of one model's successful compactions. Raises
    UnsupportedEstimate with fewer than MIN_SUMMARIES and no override."""
    if override is not None:
        return SummaryModel(model, len(pairs), override, 0.0, False, overridden=True)
    if len(pairs) < MIN_SUMMARIES:
        raise UnsupportedEstimate(
            f"{model}: {len(pairs)} successful compaction(s) recorded, too few to measure its summaries "
            f"(tune needs {MIN_SUMMARIES}): give --summary-tokens N"
        )
    contexts = [c for c, _ in pairs]
    sizes = [s for _, s in pairs]
    constant = round(statistics.median(sizes))
    ratio = statistics.median(s / c for c, s in pairs if c > 0)
    scales: bool | None = None
    if max(contexts) >= _SCALE_SPREAD * min(contexts):
        # Contexts far enough apart to tell: they scale when size follows the context.
        scales = len(set(sizes)) > 1 and statistics.correlation(contexts, sizes) > 0.5
    return SummaryModel(model, len(pairs), constant, ratio, scales)


# -- replay --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A compaction setting to price: trigger (None: each conversation's recorded one) and TTL (None: the
    recorded TTLs)."""

    trigger: int | None
    cache_ttl: Ttl | None

    @property
    def label(self) -> str:
        trigger = "recorded trigger" if self.trigger is None else f"trigger {self.trigger:,}"
        ttl = "recorded TTL" if self.cache_ttl is None else f"TTL {self.cache_ttl}"
        return f"{trigger}, {ttl}"


@dataclass
class Prediction:
    """One conversation (or a sum of them) priced under a setting."""

    cost_usd: Decimal = _ZERO
    compactions: int = 0
    compaction_usd: Decimal = _ZERO
    turn_usd: list[Decimal] = field(default_factory=list)
    turn_compaction_usd: list[Decimal] = field(default_factory=list)
    compacted_turns: list[int] = field(default_factory=list)
    unpriced: bool = False


@dataclass
class _Cache:
    """A conversation's cache entries: the stable prefix and the rolling one (history up to the newest
    breakpoint), each with its size and expiry (epoch ms). `rolling_valid`: the next request extends it."""

    stable_until: int = -1
    rolling: int = 0
    rolling_until: int = -1
    rolling_valid: bool = False

    def read(self, at: int, stable: int, wanted: int, extends: bool, ttls: tuple[int, int]) -> int:
        """Read the longest live prefix of a request whose cacheable prefix is `wanted` tokens. A read
        refreshes the entry it used, not the shorter entries inside it (assumed: the docs say a use
        refreshes the cache, not which breakpoints; the simulator refreshes the entry hit)."""
        if extends and self.rolling_valid and at < self.rolling_until and 0 < self.rolling <= wanted:
            self.rolling_until = at + ttls[1]
            return self.rolling
        if stable and at < self.stable_until and stable <= wanted:
            self.stable_until = at + ttls[0]
            return stable
        return 0


def _cacheable(turn: Turn, context: int, stable: int) -> int:
    """The prefix up to the last breakpoint of a request of `context` tokens, from the recorded turn: a
    breakpoint near the end keeps the recorded tail uncached; one on tools/system only keeps that prefix."""
    if turn.cacheable == 0:
        return 0
    if turn.cacheable <= stable:
        return min(turn.cacheable, context)
    return max(0, min(context, context - turn.tail))


def replay(
    conversation: Conversation,
    setting: Setting,
    summaries: Callable[[str], SummaryModel],
    price: PriceFn,
    reading: str = "point",
) -> Prediction:
    """The conversation as it would have run under `setting`, priced iteration by iteration."""
    trigger = setting.trigger if setting.trigger is not None else conversation.trigger
    stable = conversation.stable
    stable_ttl = setting.cache_ttl or conversation.stable_ttl
    rolling_ttl = setting.cache_ttl or conversation.rolling_ttl
    ttls = (TTL_MS[stable_ttl], TTL_MS[rolling_ttl])
    cache = _Cache()
    result = Prediction()
    history = 0
    for index, turn in enumerate(conversation.turns):
        at = turn.at_ms
        if index == 0 and stable and turn.message.cache_read:
            # The first call found its prefix cached by other traffic (a shared system prompt): measured.
            cache.stable_until = at + 1
        start = turn.start if index == 0 else history + conversation.turns[index - 1].output + turn.new
        iterations: list[IterationUsage] = []
        compacted = start >= trigger
        context = start
        if compacted:
            failed = turn.compaction is not None and turn.compaction.failed
            summary = summaries(turn.model).size(start, reading)
            read = cache.read(at, stable, _cacheable(turn, start, stable), True, ttls)
            tokens = TokenCounts(input=start - read, output=summary, cache_read=read)
            iterations.append(IterationUsage(0, "compaction", turn.model, tokens))
            if not failed:
                context = conversation.kept + summary + (0 if turn.paused else turn.new)
                cache.rolling_valid = False
        wanted = _cacheable(turn, context, stable)
        read = cache.read(at, stable, wanted, not compacted or failed_compaction(turn), ttls)
        writes = max(0, wanted - read)
        stable_part = max(0, min(stable, wanted) - read) if stable else 0
        rest = writes - stable_part
        w5 = (stable_part if stable_ttl == "5m" else 0) + (rest if rolling_ttl == "5m" else 0)
        w1 = writes - w5
        if stable_part:
            cache.stable_until = at + ttls[0]
        if wanted > stable:
            cache.rolling, cache.rolling_until, cache.rolling_valid = wanted, at + ttls[1], True
        elif wanted:
            cache.rolling_valid = False
        message = TokenCounts(context - wanted, turn.output, read, w5, w1)
        iterations.append(IterationUsage(len(iterations), "message", turn.model, message))
        tier, speed, geo = turn.variants
        usage = CallUsage(tuple(iterations), True, turn.model, tier, speed, geo)
        when = datetime.fromtimestamp(at / 1000, timezone.utc)
        cost = price(usage, when)
        compaction_cost = _ZERO
        if compacted:
            only = CallUsage((iterations[0],), True, turn.model, tier, speed, geo)
            compaction_cost = price(only, when) or _ZERO
            result.compactions += 1
            result.compaction_usd += compaction_cost
            result.compacted_turns.append(index)
        if cost is None:
            result.unpriced = True
            cost = _ZERO
        cost += turn.other_usd
        result.turn_usd.append(cost)
        result.turn_compaction_usd.append(compaction_cost)
        result.cost_usd += cost
        compacted_ok = compacted and not failed_compaction(turn)
        history = context - (turn.new if compacted_ok and not turn.paused else 0)
        if compacted_ok and not turn.paused:
            # The next request drops this turn (it came before the compaction block): the entry this reply
            # wrote is not its prefix.
            cache.rolling_valid = False
    return result


def failed_compaction(turn: Turn) -> bool:
    return turn.compaction is not None and turn.compaction.failed


# -- the all-in price of a compaction, and quality signals ---------------------------------------------------


@dataclass(frozen=True)
class CompactionTax:
    """One recorded compaction, all in: the summarising iteration, the cache it made rebuild, the writes it
    left unread; and the signals the traffic carries about it."""

    conversation_id: str
    turn: int
    """1-based position of the turn in the conversation."""
    call_id: str
    summary_usd: Decimal | None
    rebuild_tokens: int
    rebuild_usd: Decimal
    unread_tokens: int
    unread_usd: Decimal
    pre_tokens: int
    post_tokens: int
    calls_to_next: int | None
    failed: bool

    @property
    def total_usd(self) -> Decimal:
        return (self.summary_usd or _ZERO) + self.rebuild_usd + self.unread_usd

    @property
    def post_pre_ratio(self) -> float | None:
        return self.post_tokens / self.pre_tokens if self.pre_tokens else None


def _write_rate(tokens: TokenCounts, write_usd: Decimal | None) -> Decimal:
    return (write_usd or _ZERO) / tokens.cache_write if tokens.cache_write else _ZERO


def compaction_taxes(
    conversation: Conversation, write_usd: Callable[[Turn], Decimal | None]
) -> list[CompactionTax]:
    """Each recorded compaction's all-in cost. `write_usd(turn)`: the recorded cost of the cache writes of
    the turn's reply iteration (a per-token rate is taken from it).

    Rebuild: what the compacting reply and the next call wrote, less their new content (the summary, the
    next turn and the reply before it), up to the prefix that was cached before: the history that was
    cached and had to be written again. Unread: what the compacting reply wrote that the next request did
    not read (the content before the compaction block is ignored from then on)."""
    turns = conversation.turns
    compacting = [i for i, t in enumerate(turns) if t.compaction is not None]
    result = []
    for position, index in enumerate(compacting):
        turn = turns[index]
        assert turn.compaction is not None
        following = turns[index + 1] if index + 1 < len(turns) else None
        before = turns[index - 1].cacheable if index else 0
        rate_here = _write_rate(turn.message, write_usd(turn))
        written_here = turn.message.cache_write
        written_next = following.message.cache_write if following is not None else 0
        fresh = turn.compaction.summary + turn.new
        if following is not None:
            fresh += turn.output + following.new
        rebuild = max(0, min(before, written_here + written_next - fresh)) if before else 0
        rate_next = _write_rate(following.message, write_usd(following)) if following is not None else _ZERO
        rebuild_rate = rate_next if written_next else rate_here
        read_next = following.message.cache_read if following is not None else 0
        unread = max(0, written_here - max(0, read_next - turn.message.cache_read))
        nxt = compacting[position + 1] if position + 1 < len(compacting) else None
        result.append(
            CompactionTax(
                conversation.conversation_id,
                index + 1,
                turn.call_ids[0],
                turn.compaction.cost_usd,
                rebuild,
                rebuild * rebuild_rate,
                unread,
                unread * rate_here,
                turn.compaction.context,
                turn.context,
                None if nxt is None else nxt - index,
                turn.compaction.failed,
            )
        )
    return result


# -- what a budget would have saved --------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardOutcome:
    """A conversation under `pause_after_compaction` and a USD budget: the guard pauses at the first
    compaction after the call that crossed the budget (the live guard's `on_breach="pause"`)."""

    conversation_id: str
    cost_usd: Decimal
    crossed_at: int | None
    """1-based turn whose cost took the spend above the budget."""
    stopped_at: int | None
    """1-based turn paused at its compaction (its reply never sampled), None when it ran to its end."""
    guarded_usd: Decimal

    @property
    def saved_usd(self) -> Decimal:
        return self.cost_usd - self.guarded_usd


def guard_outcome(
    conversation_id: str,
    turn_usd: Sequence[Decimal],
    turn_compaction_usd: Sequence[Decimal],
    compacted_turns: Iterable[int],
    budget_usd: Decimal,
) -> GuardOutcome:
    """Where the guard stops the conversation, by `rules.over_limits` on its running spend."""
    budget = Budget(usd=budget_usd)
    compacting = set(compacted_turns)
    total = sum(turn_usd, _ZERO)
    spent = _ZERO
    crossed: int | None = None
    for index, cost in enumerate(turn_usd):
        if crossed is not None and index in compacting:
            guarded = spent + turn_compaction_usd[index]
            return GuardOutcome(conversation_id, total, crossed + 1, index + 1, guarded)
        spent += cost
        if crossed is None and over_limits(budget, spent, 0):
            crossed = index
    return GuardOutcome(conversation_id, total, None if crossed is None else crossed + 1, None, total)
