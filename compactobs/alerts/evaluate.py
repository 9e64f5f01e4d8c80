"""The findings of one `compactobs alert` pass, each with a stable key: the anomaly rules, budget burn,
spend spikes and the month-end forecast.

- the anomaly rules are `report anomalies`' own (`find_anomalies`: compaction loops, budgets exceeded per
  conversation, ...), over the calls the filters select;
- budget burn per service and for all spend: month-to-date spend over a `[monthly]` budget
  (`monthly_budget_exceeded`, critical; `rules.over_limits`);
- `forecast_over_budget` (warning): the month's projected spend (`reports.forecast`) over its budget,
  while the month-to-date spend is not yet;
- `spend_spike` (warning), per service: `rules.SpikeRule` over the last hour and the week before it.

The monthly and spike rules read their own windows (this month; the last hour and the week before), ending
now, with the filters' models, services and conversations. A finding's key names what it is about (kind,
conversation, service, the call or hour or model or month), never its figures, so a finding that grows
keeps its key: one alert, sent once, resolved when it clears.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Final

from sqlalchemy import Engine, func, select

from compactobs._types import JSON, JSONObject
from compactobs.alerts.forecast import project_month
from compactobs.reports.anomalies import SEVERITIES, Finding, Severity, Thresholds, find_anomalies
from compactobs.reports.cost import cost_report
from compactobs.reports.forecast import daily_costs
from compactobs.reports.model import Filters
from compactobs.reports.render.json import to_json_value
from compactobs.reports.sources.sql_reading import reading
from compactobs.rules import Budget, Budgets, MonthlyBudgets, SpikeRule, over_limits
from compactobs.store.models import calls
from compactobs.untrusted import escape

__all__ = ["ALERT_KINDS", "Alert", "AlertRules", "alert_key", "evaluate"]

ALERT_KINDS: Final = ("monthly_budget_exceeded", "forecast_over_budget", "spend_spike")
"""The kinds `alert` adds to `report anomalies`' KINDS."""
_ID_CHUNK: Final = 500
_SIX: Final = Decimal("0.000001")


@dataclass(frozen=True)
class Alert:
    """One finding as an alert: its stable `key` and the `finding` object the sinks send."""

    key: str
    kind: str
    severity: Severity
    conversation_id: str | None
    service: str | None
    cost_usd: Decimal | None
    """The money the finding is about: a conversation's spend over its budget, the compaction cost of a loop,
    a month's spend or projection, the spike's hour; None when it is not about money."""
    message: str
    evidence: Mapping[str, JSON] = field(default_factory=dict)
    call_ids: tuple[str, ...] = ()

    def finding(self) -> JSONObject:
        """The webhook's `finding` object (JSON values)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "conversation_id": self.conversation_id,
            "service": self.service,
            "cost_usd": to_json_value(self.cost_usd.quantize(_SIX) if self.cost_usd is not None else None),
            "message": self.message,
            "evidence": to_json_value(dict(self.evidence)),
            "call_ids": list(self.call_ids),
        }


def alert_key(kind: str, conversation_id: str | None, service: str | None, subject: str | None) -> str:
    """`kind:` and a digest of what the finding is about: stable across runs and processes, short enough
    for PagerDuty's dedup_key (255), and free of the hostile text a conversation id may hold."""
    what = json.dumps([kind, conversation_id, service, subject], ensure_ascii=True)
    return f"{kind}:{hashlib.sha256(what.encode()).hexdigest()[:24]}"


@dataclass(frozen=True)
class AlertRules:
    """What a pass evaluates: the anomaly thresholds, the budgets file (conversations and `[monthly]`), a
    monthly budget from the command line, the spike rule, and the least severity sent."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    budgets: Budgets | None = None
    monthly: MonthlyBudgets | None = None
    spike: SpikeRule = field(default_factory=SpikeRule)
    min_severity: Severity = "warning"


_SUBJECT: Final[Mapping[str, str]] = {
    "ineffective_compaction": "call",
    "cache_miss_after_compaction": "compaction_call_id",
    "error_burst": "hour_start_ms",
    "unpriced_model": "model",
}
"""For the kinds of which a conversation can hold several findings (or that have none): what tells them
apart (`call`: the first call id; else an evidence field)."""

_COST_OF: Final[Mapping[str, str]] = {
    "budget_exceeded": "spent_usd",
    "compaction_loop": "compaction_cost_usd",
    "ineffective_compaction": "compaction_cost_usd",
    "failed_compaction": "compaction_cost_usd",
    "compaction_cost_share": "compaction_cost_usd",
}


def _from_finding(finding: Finding, service: str | None) -> Alert:
    field_name = _SUBJECT.get(finding.kind)
    if field_name == "call":
        subject: str | None = finding.call_ids[0] if finding.call_ids else None
    elif field_name is not None:
        value = finding.evidence.get(field_name)
        subject = None if value is None else str(value)
    else:
        subject = None
    cost_field = _COST_OF.get(finding.kind)
    cost = finding.evidence.get(cost_field) if cost_field else None
    return Alert(
        key=alert_key(finding.kind, finding.conversation_id, None, subject),
        kind=finding.kind,
        severity=finding.severity,
        conversation_id=finding.conversation_id,
        service=service,
        cost_usd=Decimal(str(cost)) if cost is not None else None,
        message=finding.message,
        evidence=finding.evidence,
        call_ids=finding.call_ids,
    )


def _services_of(engine: Engine, conversation_ids: Sequence[str]) -> dict[str, str | None]:
    """Each conversation's service (the last one its calls named)."""
    c = calls.c
    found: dict[str, str | None] = {}
    with reading(engine) as connection:
        for start in range(0, len(conversation_ids), _ID_CHUNK):
            chunk = list(conversation_ids[start : start + _ID_CHUNK])
            query = (
                select(c.conversation_id, func.max(c.service_name))
                .where(c.conversation_id.in_(chunk))
                .group_by(c.conversation_id)
            )
            found.update((conversation_id, service) for conversation_id, service in connection.execute(query))
    return found


def _money(value: Decimal) -> str:
    return f"${value:,.2f}"


def _monthly_alerts(engine: Engine, filters: Filters, monthly: MonthlyBudgets, now: datetime) -> list[Alert]:
    """Budget burn and forecasts for each `[monthly]` scope: all spend, each service, each tag value."""
    today, series = daily_costs(engine, filters, now)
    alerts = [
        alert
        for service, usd in monthly.scopes()
        for alert in _burn(series.get(service, {}), today, usd, monthly.source, service, None)
    ]
    for key in sorted({key for key, _ in monthly.tags}):
        _, by_value = daily_costs(engine, filters, now, f"tag:{key}")
        for (tag_key, value), usd in sorted(monthly.tags.items()):
            if tag_key == key:
                alerts += _burn(by_value.get(value, {}), today, usd, monthly.source, None, (key, value))
    return alerts


def _scope_words(service: str | None, tag: tuple[str, str] | None = None) -> str:
    if tag is not None:
        return f"tag {tag[0]}={escape(tag[1])!r}"
    return "all spend" if service is None else f"service {service!r}"


def _burn(
    daily: Mapping[date, Decimal],
    today: date,
    usd: Decimal,
    source: str,
    service: str | None,
    tag: tuple[str, str] | None,
) -> list[Alert]:
    """`monthly_budget_exceeded` or `forecast_over_budget` of one scope (a service, all spend, a tag value)
    from its spend per local day, or nothing."""
    month_start = today.replace(day=1)
    month = f"{today:%Y-%m}"
    words = _scope_words(service, tag)
    # The key's scope: the service, or `tag:KEY=VALUE` (a digest: the value's text never shows in it).
    scope = service if tag is None else f"tag:{tag[0]}={tag[1]}"
    spent = sum((v for d, v in daily.items() if d >= month_start), Decimal(0))
    budget = Budget(usd=usd, source=source)
    evidence: JSONObject = {
        "month": month,
        "budget_usd": usd,
        "spent_usd": spent.quantize(_SIX),
        "budget_source": source,
    }
    if tag is not None:
        evidence["tag"] = {"key": tag[0], "value": tag[1]}
    if over_limits(budget, spent, 0):
        return [
            Alert(
                key=alert_key("monthly_budget_exceeded", None, scope, month),
                kind="monthly_budget_exceeded",
                severity="critical",
                conversation_id=None,
                service=service,
                cost_usd=spent,
                message=(
                    f"{words} spent {_money(spent)} in {month}, over its {_money(usd)} monthly budget "
                    f"({spent / usd:.0%})"
                    if usd
                    else f"{words} spent {_money(spent)} in {month}, over a $0 budget"
                ),
                evidence=evidence,
            )
        ]
    forecast = project_month(dict(daily), today)
    if not over_limits(budget, forecast.projected_cost_usd, 0):
        return []
    projection = forecast.as_json()
    projected, low, high = (
        _money(forecast.projected_cost_usd),
        _money(forecast.low_usd),
        _money(forecast.high_usd),
    )
    return [
        Alert(
            key=alert_key("forecast_over_budget", None, scope, month),
            kind="forecast_over_budget",
            severity="warning",
            conversation_id=None,
            service=service,
            cost_usd=forecast.projected_cost_usd,
            message=(
                f"{words} is on course to spend {projected} in {month} (95% interval {low} to {high}), "
                f"over its {_money(usd)} monthly budget; {_money(spent)} spent so far"
            ),
            evidence={**evidence, "forecast": projection},
        )
    ]


def _spike_alerts(engine: Engine, filters: Filters, rule: SpikeRule, now: datetime) -> list[Alert]:
    """`spend_spike` per service: the last window's spend against the baseline before it."""
    window_start = now - timedelta(hours=rule.window_hours)
    baseline_start = window_start - timedelta(hours=rule.baseline_hours)

    def by_service(since: datetime, until: datetime) -> dict[str | None, Decimal]:
        report = cost_report(engine, filters.with_window(since, until), by=("service",))
        spend: dict[str | None, Decimal] = {}
        for row in report.rows:
            if row["cost_usd"] is not None:
                spend[row["service"]] = spend.get(row["service"], Decimal(0)) + row["cost_usd"]
        return spend

    current = by_service(window_start, now)
    if not any(value >= rule.min_usd for value in current.values()):
        return []
    baseline = by_service(baseline_start, window_start)
    alerts: list[Alert] = []
    for service in sorted(current, key=lambda name: name or ""):
        spent, before = current[service], baseline.get(service, Decimal(0))
        if not rule.spike(spent, before):
            continue
        usual = rule.baseline(before)
        alerts.append(
            Alert(
                key=alert_key("spend_spike", None, service, None),
                kind="spend_spike",
                severity="warning",
                conversation_id=None,
                service=service,
                cost_usd=spent,
                message=(
                    f"{_scope_words(service)} spent {_money(spent)} in the last {rule.window_hours}h, "
                    f"{spent / usual:.1f}x its usual {_money(usual)} (the mean over the "
                    f"{rule.baseline_hours}h before; threshold {rule.factor:g}x)"
                ),
                evidence={
                    "window_hours": rule.window_hours,
                    "window_usd": spent.quantize(_SIX),
                    "baseline_hours": rule.baseline_hours,
                    "baseline_usd": before.quantize(_SIX),
                    "usual_usd": usual.quantize(_SIX),
                    "factor": float(spent / usual),
                    "threshold_factor": rule.factor,
                    "window_start": window_start.isoformat(timespec="seconds"),
                },
            )
        )
    return alerts


def evaluate(engine: Engine, filters: Filters, rules: AlertRules, now: datetime | None = None) -> list[Alert]:
    """Every alert of one pass at `rules.min_severity` or above, most severe first (as `find_anomalies`
    orders its findings, then the monthly, spike and forecast alerts)."""
    now = now or datetime.now(timezone.utc)
    findings = find_anomalies(engine, filters, rules.thresholds, rules.budgets)
    ids = sorted({f.conversation_id for f in findings if f.conversation_id is not None})
    services = _services_of(engine, ids) if ids else {}
    alerts = [_from_finding(f, services.get(f.conversation_id or "")) for f in findings]
    monthly = rules.monthly or (rules.budgets.monthly if rules.budgets is not None else None)
    if monthly is not None:
        alerts += _monthly_alerts(engine, filters, monthly, now)
    alerts += _spike_alerts(engine, filters, rules.spike, now)
    floor = SEVERITIES.index(rules.min_severity)
    alerts = [a for a in alerts if SEVERITIES.index(a.severity) >= floor]
    alerts.sort(key=lambda a: -SEVERITIES.index(a.severity))
    seen: set[str] = set()
    unique = []
    for alert in alerts:  # one alert per key (two findings about one thing: the first, most severe)
        if alert.key not in seen:
            seen.add(alert.key)
            unique.append(alert)
    return unique
