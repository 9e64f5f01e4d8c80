"""`compactobs tune`: price the recorded conversations under other compaction settings, and advise.

```python
options = TuneOptions(triggers=(50_000, 75_000, 100_000, 150_000), cache_ttls=("5m", "1h"))
result = tune(engine, build_filters("7d", None, "UTC"), options)
result.recorded_usd, [(s.setting.label, s.predicted_usd, s.low_usd, s.high_usd) for s in result.settings]
print(render(tune_report(result), "table"))     # or tune_json(result): recorded_cost_usd, settings, ...
```

The modelling is in `compactobs.reports.replay.model` (pure), the store reads in
`compactobs.reports.replay.data`. Prices come from `compactobs.pricing` (each predicted iteration is priced
as a recorded one would be). Input a user can get
wrong raises ReportInputError (one line).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.measures.groups import parse_tag
from compactobs.reports.model import Filters, Report, ReportInputError, to_json_value
from compactobs.reports.render.safe import json_text
from compactobs.reports.replay.data import read_recorded, write_cost
from compactobs.reports.replay.model import (
    CompactionTax,
    Conversation,
    GuardOutcome,
    Prediction,
    Setting,
    SummaryModel,
    Ttl,
    UnsupportedEstimate,
    compaction_taxes,
    conversation_of,
    guard_outcome,
    replay,
    summary_model,
)
from compactobs.reports.sources import Source
from compactobs.untrusted import escape
from compactobs.usage import CallUsage

__all__ = [
    "ASSUMED",
    "DEFAULT_TRIGGERS",
    "MEASURED",
    "MIN_TRIGGER",
    "GroupAdvice",
    "SettingResult",
    "TuneOptions",
    "TuneResult",
    "parse_by",
    "parse_triggers",
    "parse_ttls",
    "tune",
    "tune_json",
    "tune_report",
]

DEFAULT_TRIGGERS: Final = (50_000, 75_000, 100_000, 150_000)
MIN_TRIGGER: Final = 50_000
"""The API's smallest trigger ("value must be at least 50,000 tokens")."""
READINGS: Final = ("point", "constant", "scaled")

MEASURED: Final = (
    "measured: per-turn context growth (new content and outputs), summary size per model and context, "
    "what a compaction keeps, output sizes, gaps between calls, cache reads, writes and their TTLs"
)
ASSUMED: Final = (
    "assumed: each turn brings the same content and output under any setting; a summary at another size "
    "is the size recorded (scaled to the context when the traffic shows it scales; the interval covers "
    "the other reading); a recorded failed compaction fails again"
)
CANNOT_JUDGE: Final = "tune cannot judge what a summary lost: the signals below are all the traffic carries"


@dataclass(frozen=True)
class TuneOptions:
    triggers: tuple[int, ...] = DEFAULT_TRIGGERS
    cache_ttls: tuple[Ttl | None, ...] = (None,)
    """None: the TTLs the traffic used."""
    summary_tokens: int | None = None
    pause_after_compaction: bool = False
    budget_usd: Decimal | None = None
    by: str | None = None
    """None, `service`, `conversation` or `tag:KEY`: the group a recommendation is made for."""


@dataclass
class SettingResult:
    setting: Setting
    predicted_usd: Decimal | None
    low_usd: Decimal | None
    high_usd: Decimal | None
    compactions: int | None
    unsupported: str | None = None
    by_group: dict[str | None, Decimal] = field(default_factory=dict)
    by_group_range: dict[str | None, tuple[Decimal, Decimal]] = field(default_factory=dict)

    @property
    def recorded(self) -> bool:
        return self.setting.trigger is None and self.setting.cache_ttl is None


@dataclass(frozen=True)
class GroupAdvice:
    group: str | None
    recorded_usd: Decimal
    best: str | None
    best_usd: Decimal | None
    saving_usd: Decimal | None
    advice: str


@dataclass
class TuneResult:
    filters: Filters
    options: TuneOptions
    recorded_usd: Decimal
    conversations: int
    settings: list[SettingResult]
    advice: list[GroupAdvice]
    taxes: list[CompactionTax]
    guard: list[GuardOutcome]
    summaries: list[SummaryModel]
    residual: Decimal
    """|re-predicted recorded setting - recorded| / recorded: the model's miss on what it can check."""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- input ---------------------------------------------------------------------------------------------------


def parse_triggers(text: str | None) -> tuple[int, ...]:
    """`50000,75000` (also `75K`): each at least the API's minimum. Raises ReportInputError."""
    if text is None:
        return DEFAULT_TRIGGERS
    values = []
    for part in text.split(","):
        word = part.strip().lower().replace("_", "")
        scale = 1_000 if word.endswith("k") else 1
        try:
            value = int(word.removesuffix("k")) * scale
        except ValueError:
            raise ReportInputError(f"--trigger {part.strip()!r} is not a whole number of tokens") from None
        if value < MIN_TRIGGER:
            raise ReportInputError(
                f"--trigger {value:,} is below the API's minimum of {MIN_TRIGGER:,} tokens"
            )
        values.append(value)
    return tuple(dict.fromkeys(values))


def parse_ttls(text: str | None) -> tuple[Ttl | None, ...]:
    if text is None:
        return (None,)
    values: list[Ttl] = []
    for part in text.split(","):
        value = part.strip()
        if value == "5m":
            values.append("5m")
        elif value == "1h":
            values.append("1h")
        else:
            raise ReportInputError(f"--cache-ttl {value!r}: use 5m or 1h (or both: 5m,1h)")
    return tuple(dict.fromkeys(values))


def parse_by(text: str | None) -> str | None:
    if text is None:
        return None
    if text in ("service", "conversation"):
        return text
    tag = parse_tag(text)
    if tag is not None:
        return tag
    raise ReportInputError(f"--by {escape(text)!r}: use service, conversation or tag:KEY")


# -- the computation -----------------------------------------------------------------------------------------


def _price_fn() -> Any:
    from compactobs.pricing import default_pricer

    pricer = default_pricer()

    def price(usage: CallUsage, when: datetime) -> Decimal | None:
        return pricer.price_call(usage, when).cost_usd

    return price


def tune(engine: Engine | Source, filters: Filters, options: TuneOptions) -> TuneResult:
    """Every setting of `options` priced on the traffic `filters` select, with advice per group."""
    if options.budget_usd is not None and not options.pause_after_compaction:
        raise ReportInputError("--budget-usd needs --pause-after-compaction: the guard stops at a compaction")
    if options.pause_after_compaction and options.budget_usd is None:
        raise ReportInputError("--pause-after-compaction needs --budget-usd X: the budget the guard holds")
    if options.summary_tokens is not None and options.summary_tokens < 1:
        raise ReportInputError("--summary-tokens must be at least 1")
    recorded = read_recorded(engine, filters, options.by)
    conversations: list[Conversation] = []
    left_out = 0
    for conversation_id, records in recorded.by_conversation.items():
        conversation = conversation_of(conversation_id, recorded.services.get(conversation_id), records)
        if conversation is None:
            left_out += 1
        else:
            conversations.append(conversation)
    price = _price_fn()
    pairs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for conversation in conversations:
        for turn in conversation.turns:
            if turn.compaction is not None and not turn.compaction.failed:
                pairs[turn.model].append((turn.compaction.context, turn.compaction.summary))
    models = sorted({t.model for c in conversations for t in c.turns})
    known: dict[str, SummaryModel] = {}
    missing: dict[str, str] = {}
    for model in models:
        try:
            known[model] = summary_model(model, pairs.get(model, []), options.summary_tokens)
        except UnsupportedEstimate as err:
            missing[model] = str(err)

    def summaries(model: str) -> SummaryModel:
        if model in known:
            return known[model]
        raise UnsupportedEstimate(missing.get(model, f"{model}: no summaries recorded"))

    recorded_usd = sum((c.recorded_usd for c in conversations), Decimal(0))
    settings = [Setting(None, None)] + [
        Setting(trigger, ttl) for ttl in options.cache_ttls for trigger in options.triggers
    ]
    results = [
        _price_setting(setting, conversations, summaries, price, recorded.group_of)
        for setting in (settings if conversations else [])
    ]
    residual = Decimal(0)
    base = results[0] if results else None
    if base is not None and base.predicted_usd is not None and recorded_usd:
        residual = abs(base.predicted_usd - recorded_usd) / recorded_usd
    for result in results:
        _widen(result, residual)
    warnings: list[str] = []
    for result in results:
        if result.unsupported:
            warnings.append(f"{result.setting.label}: not estimated: {result.unsupported}")
    notes = [MEASURED, ASSUMED, CANNOT_JUDGE]
    if left_out:
        notes.append(f"{left_out} conversation(s) without threshold compaction left out")
    if recorded.unpriced_conversations:
        warnings.append(
            f"{recorded.unpriced_conversations} conversation(s) with an unpriced call left out: their "
            "bill is unknown"
        )
    for trigger in options.triggers:
        short = sum(1 for c in conversations if c.reach < trigger)
        if short:
            notes.append(
                f"{short} of {len(conversations)} conversation(s) too short to reach trigger {trigger:,}: "
                "it changes nothing for them"
            )
    shrunk = sum(c.shrunk_turns for c in conversations)
    if shrunk:
        warnings.append(
            f"{shrunk} turn(s) sent less history than they followed (pruned): counted as no growth"
        )
    taxes = [tax for c in conversations for tax in compaction_taxes(c, write_cost(recorded.write_usd, c))]
    guard: list[GuardOutcome] = []
    if options.budget_usd is not None:
        for conversation in conversations:
            turns = conversation.turns
            compacted = [i for i, t in enumerate(turns) if t.compaction is not None]
            comp_usd = [t.compaction.cost_usd or Decimal(0) if t.compaction else Decimal(0) for t in turns]
            guard.append(
                guard_outcome(
                    conversation.conversation_id,
                    [t.recorded_usd for t in turns],
                    comp_usd,
                    compacted,
                    options.budget_usd,
                )
            )
    advice = _advise(results, conversations, recorded.group_of, options)
    return TuneResult(
        filters,
        options,
        recorded_usd,
        len(conversations),
        results,
        advice,
        taxes,
        guard,
        [known[m] for m in sorted(known)],
        residual,
        notes,
        warnings,
    )


def _price_setting(
    setting: Setting,
    conversations: Sequence[Conversation],
    summaries: Any,
    price: Any,
    group_of: Any,
) -> SettingResult:
    totals = dict.fromkeys(READINGS, Decimal(0))
    by_group: dict[str | None, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(READINGS, Decimal(0)))
    compactions = 0
    try:
        for conversation in conversations:
            for reading in READINGS:
                prediction: Prediction = replay(conversation, setting, summaries, price, reading)
                totals[reading] += prediction.cost_usd
                by_group[group_of(conversation.conversation_id)][reading] += prediction.cost_usd
                if reading == "point":
                    compactions += prediction.compactions
    except UnsupportedEstimate as err:
        return SettingResult(setting, None, None, None, None, str(err))
    point = totals["point"]
    return SettingResult(
        setting,
        point,
        min(totals.values()),
        max(totals.values()),
        compactions,
        by_group={g: v["point"] for g, v in by_group.items()},
        by_group_range={g: (min(v.values()), max(v.values())) for g, v in by_group.items()},
    )


def _widen(result: SettingResult, residual: Decimal) -> None:
    """The interval also holds the model's miss on the recorded setting (what it can check)."""
    if result.low_usd is None or result.high_usd is None:
        return
    result.low_usd = result.low_usd * (1 - residual)
    result.high_usd = result.high_usd * (1 + residual)
    result.by_group_range = {
        g: (lo * (1 - residual), hi * (1 + residual)) for g, (lo, hi) in result.by_group_range.items()
    }


def _advise(
    results: Sequence[SettingResult],
    conversations: Sequence[Conversation],
    group_of: Any,
    options: TuneOptions,
) -> list[GroupAdvice]:
    groups: dict[str | None, Decimal] = defaultdict(Decimal)
    for conversation in conversations:
        groups[group_of(conversation.conversation_id)] += conversation.recorded_usd
    advice = []
    tried = [r for r in results if not r.recorded and r.predicted_usd is not None]
    for group, recorded_usd in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        if not tried:
            advice.append(GroupAdvice(group, recorded_usd, None, None, None, "no setting could be estimated"))
            continue
        best = min(tried, key=lambda r: (r.by_group.get(group, Decimal(0)), r.setting.trigger or 0))
        best_usd = best.by_group.get(group, Decimal(0))
        ranges = [r.by_group_range.get(group, (Decimal(0), Decimal(0))) for r in tried]
        half_widths = [(hi - lo) / 2 for lo, hi in ranges]
        width = max(half_widths, default=Decimal(0))
        text = _lever(tried, group, width)
        if best_usd >= recorded_usd:
            advice.append(
                GroupAdvice(group, recorded_usd, "the recorded setting", recorded_usd, Decimal(0), text)
            )
            continue
        advice.append(
            GroupAdvice(group, recorded_usd, best.setting.label, best_usd, recorded_usd - best_usd, text)
        )
    return advice


def _lever(tried: Sequence[SettingResult], group: str | None, width: Decimal) -> str:
    """Which lever moves this group's bill: the trigger, the cache TTL, or neither."""
    by_ttl: dict[str | None, list[Decimal]] = defaultdict(list)
    by_trigger: dict[int | None, list[Decimal]] = defaultdict(list)
    for result in tried:
        value = result.by_group.get(group, Decimal(0))
        by_ttl[result.setting.cache_ttl].append(value)
        by_trigger[result.setting.trigger].append(value)
    trigger_spread = max((max(v) - min(v) for v in by_ttl.values()), default=Decimal(0))
    ttl_spread = max((max(v) - min(v) for v in by_trigger.values()), default=Decimal(0))
    if trigger_spread > 2 * width:
        return f"the trigger matters: up to ${trigger_spread:,.4f} between triggers"
    words = f"no trigger changes the bill by more than the interval (±${width:,.4f})"
    if ttl_spread > 2 * width:
        return f"{words}; the cache TTL does: ${ttl_spread:,.4f} between TTLs"
    return f"{words}; what drives it is the content each turn brings and the outputs, not compaction"


# -- output --------------------------------------------------------------------------------------------------


_COLUMNS: Final = [
    "setting",
    "trigger",
    "cache_ttl",
    "predicted_cost_usd",
    "low_usd",
    "high_usd",
    "change_usd",
    "compactions",
]


def _setting_rows(result: TuneResult) -> list[dict[str, Any]]:
    rows = []
    for item in result.settings:
        setting = item.setting
        change = None if item.predicted_usd is None else item.predicted_usd - result.recorded_usd
        rows.append(
            {
                "setting": "recorded (re-predicted)" if item.recorded else setting.label,
                "trigger": setting.trigger,
                "cache_ttl": setting.cache_ttl or "recorded",
                "predicted_cost_usd": item.predicted_usd,
                "low_usd": item.low_usd,
                "high_usd": item.high_usd,
                "change_usd": change,
                "compactions": item.compactions,
                "not_estimated": item.unsupported,
            }
        )
    return rows


def _tax_rows(result: TuneResult) -> list[dict[str, Any]]:
    return [
        {
            "conversation": tax.conversation_id,
            "turn": tax.turn,
            "call_id": tax.call_id,
            "summary_usd": tax.summary_usd,
            "rebuild_tokens": tax.rebuild_tokens,
            "rebuild_usd": tax.rebuild_usd,
            "unread_tokens": tax.unread_tokens,
            "unread_usd": tax.unread_usd,
            "total_usd": tax.total_usd,
            "pre_tokens": tax.pre_tokens,
            "post_tokens": tax.post_tokens,
            "post_pre_ratio": tax.post_pre_ratio,
            "calls_to_next": tax.calls_to_next,
            "failed": tax.failed,
        }
        for tax in result.taxes
    ]


def _guard_rows(result: TuneResult) -> list[dict[str, Any]]:
    return [
        {
            "conversation": g.conversation_id,
            "cost_usd": g.cost_usd,
            "crossed_at_turn": g.crossed_at,
            "stopped_at_turn": g.stopped_at,
            "guarded_usd": g.guarded_usd,
            "saved_usd": g.saved_usd,
        }
        for g in result.guard
    ]


def _advice_rows(result: TuneResult) -> list[dict[str, Any]]:
    return [
        {
            "group": a.group,
            "recorded_cost_usd": a.recorded_usd,
            "cheapest": a.best,
            "cheapest_usd": a.best_usd,
            "saving_usd": a.saving_usd,
            "advice": a.advice,
        }
        for a in result.advice
    ]


def tune_report(result: TuneResult) -> Report:
    """The settings table (recorded cost beside each setting's prediction and interval), with sections for
    the advice per group, each compaction's all-in cost and signals, and the budget's savings."""
    header = [
        result.filters.describe(),
        (
            f"recorded: ${result.recorded_usd:,.4f} billed over {result.conversations} conversation(s); the "
            f"model re-predicts it within {float(result.residual):.2%}"
            if result.conversations
            else "recorded: no priced conversation in this window, so nothing to re-predict"
        ),
        *result.notes,
    ]
    for summary in result.summaries:
        how = (
            "given (--summary-tokens)"
            if summary.overridden
            else f"{summary.samples} measured, "
            + {
                True: f"scaling at {summary.ratio:.2%} of the context",
                False: "constant across the contexts they closed",
                None: f"contexts too alike to tell whether they scale: halfway to {summary.ratio:.2%} of "
                "the context",
            }[summary.scales]
        )
        header.append(f"summaries of {summary.model}: {summary.constant:,} tokens ({how})")
    report = Report(
        name="tune",
        columns=[*_COLUMNS, "not_estimated"],
        rows=_setting_rows(result),
        header=header,
        warnings=list(result.warnings),
        kinds={
            "setting": "key",
            "trigger": "int",
            "cache_ttl": "text",
            "predicted_cost_usd": "usd",
            "low_usd": "usd",
            "high_usd": "usd",
            "change_usd": "usd_delta",
            "compactions": "int",
            "not_estimated": "text",
        },
        labels={
            "predicted_cost_usd": "predicted",
            "low_usd": "low",
            "high_usd": "high",
            "change_usd": "vs recorded",
        },
        table_columns=list(_COLUMNS),
        empty_message="No conversation with threshold compaction in this window.",
    )
    advice = Report(
        name="advice",
        title="Recommendation per group",
        columns=["group", "recorded_cost_usd", "cheapest", "cheapest_usd", "saving_usd", "advice"],
        labels={"recorded_cost_usd": "recorded", "cheapest_usd": "its cost", "saving_usd": "saving"},
        rows=_advice_rows(result),
        kinds={
            "group": "key",
            "recorded_cost_usd": "usd",
            "cheapest": "text",
            "cheapest_usd": "usd",
            "saving_usd": "usd_delta",
            "advice": "text",
        },
    )
    taxes = Report(
        name="compactions",
        title="Each compaction, all in (the compaction tax) and its signals",
        columns=list(_tax_rows(result)[0]) if result.taxes else ["conversation"],
        rows=_tax_rows(result),
        kinds={
            "conversation": "key",
            "summary_usd": "usd",
            "rebuild_usd": "usd",
            "unread_usd": "usd",
            "total_usd": "usd",
            "post_pre_ratio": "ratio",
            "call_id": "text",
            "failed": "text",
        },
        table_columns=[
            "conversation",
            "turn",
            "summary_usd",
            "rebuild_usd",
            "unread_usd",
            "total_usd",
            "post_pre_ratio",
            "calls_to_next",
            "failed",
        ],
        empty_message="No compaction recorded.",
    )
    report.sections = [advice, taxes]
    if result.options.budget_usd is not None:
        report.sections.append(
            Report(
                name="budget",
                title=f"pause_after_compaction, a ${result.options.budget_usd} budget (the guard's rules)",
                columns=[
                    "conversation",
                    "cost_usd",
                    "crossed_at_turn",
                    "stopped_at_turn",
                    "guarded_usd",
                    "saved_usd",
                ],
                rows=_guard_rows(result),
                kinds={
                    "conversation": "key",
                    "cost_usd": "usd",
                    "guarded_usd": "usd",
                    "saved_usd": "usd",
                    "crossed_at_turn": "int",
                    "stopped_at_turn": "int",
                },
            )
        )
    return report


def tune_json(result: TuneResult) -> str:
    """The JSON document: `recorded_cost_usd`, `settings` (trigger, cache_ttl, predicted_cost_usd, low_usd,
    high_usd, compactions), `recommendations`, `compactions`, `budget`, `summaries`, `notes`, `warnings`."""

    def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: to_json_value(v) for k, v in row.items()} for row in rows]

    document = {
        "report": "tune",
        "window": result.filters.describe(),
        "recorded_cost_usd": to_json_value(result.recorded_usd),
        "conversations": result.conversations,
        "residual_ratio": float(result.residual),
        "settings": clean(_setting_rows(result)),
        "recommendations": clean(_advice_rows(result)),
        "compactions": clean(_tax_rows(result)),
        "budget": clean(_guard_rows(result)) if result.options.budget_usd is not None else None,
        "summaries": [
            {
                "model": s.model,
                "samples": s.samples,
                "tokens": s.constant,
                "scales": s.scales,
                "ratio": round(s.ratio, 6),
                "given": s.overridden,
            }
            for s in result.summaries
        ],
        "notes": list(result.notes),
        "warnings": list(result.warnings),
    }
    return json_text(document)
