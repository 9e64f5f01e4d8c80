"""Run a report by its name from its options given as strings: what `serve`'s JSON API answers.

`run_report(source, "cost", {"by": ["model"], "since": ["7d"]})` is the report `compactobs report cost
--by model --since 7d` prints, and `report_json` renders it as `--format json` does, byte for byte. The
option names are the CLI's, without the dashes (`loop-min`, `model`, `by`); repeatable where the CLI's are.
A bad option raises ReportInputError, one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.model import Filters, Report, ReportInputError, sort_and_limit, usd_amount
from compactobs.reports.render import render
from compactobs.reports.sources import Source
from compactobs.reports.times import build_filters

__all__ = ["REPORTS", "SUBJECT_REPORTS", "report_json", "report_options", "run_report"]

REPORTS: Final[tuple[str, ...]] = ("cost", "cache", "anomalies", "ops", "conversation", "call", "tune")
"""Every report `compactobs report` has, by its command name, and `compactobs tune`."""
SUBJECT_REPORTS: Final[frozenset[str]] = frozenset({"conversation", "call"})
"""The reports about one thing, named by an id (`report conversation ID`, `report call ID`)."""

_FILTERS: Final = ("since", "until", "tz", "model", "conversation", "service")
_REPEATABLE: Final = frozenset({"model", "conversation", "service", "by"})
_GROUPS: Final = ("sort", "limit")
_TUNE: Final = ("trigger", "cache-ttl", "summary-tokens", "pause-after-compaction", "budget-usd", "by")
_TUNE_RESULT: Final = "tune_result"
"""The key of a tune Report's `extra` that keeps its TuneResult, for `report_json` (`tune_json`)."""


def _threshold_options() -> dict[str, dataclasses.Field[Any]]:
    from compactobs.reports.anomalies import Thresholds

    return {f.name.replace("_", "-"): f for f in dataclasses.fields(Thresholds)}


def report_options(name: str) -> tuple[str, ...]:
    """The options report `name` takes, as the CLI names them without dashes."""
    if name == "call":
        return ()
    extra: tuple[str, ...] = {
        "cost": ("by", "compare", "forecast", *_GROUPS),
        "cache": ("by", *_GROUPS),
        "ops": _GROUPS,
        "anomalies": tuple(_threshold_options()),
        "conversation": (),
        "tune": _TUNE,
    }.get(name, ())
    return (*_FILTERS, *extra)


def _check(name: str, options: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if name not in REPORTS:
        raise ReportInputError(f"no report {name!r}: use one of {', '.join(REPORTS)}")
    allowed = report_options(name)
    checked: dict[str, list[str]] = {}
    for key, values in options.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise ReportInputError(f"report {name} has no option {key!r}: its options are {known}")
        values = list(values)
        if len(values) > 1 and key not in _REPEATABLE:
            raise ReportInputError(f"option {key!r} given {len(values)} times: give it once")
        checked[key] = values
    return checked


def _one(options: Mapping[str, list[str]], key: str) -> str | None:
    values = options.get(key)
    return values[-1] if values else None


def _number(options: Mapping[str, list[str]], key: str, kind: type) -> Any:
    text = _one(options, key)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ReportInputError(
            f"option {key!r}: {text!r} is not a{'n integer' if kind is int else ' number'}"
        ) from None


def _flag(options: Mapping[str, list[str]], key: str) -> bool:
    text = _one(options, key)
    if text is None:
        return False
    if text.lower() in ("", "1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ReportInputError(f"option {key!r}: {text!r} is not true or false")


def run_report(
    source: Engine | Source,
    name: str,
    options: Mapping[str, Sequence[str]],
    subject: str | None = None,
    *,
    budgets_file: str | None = None,
    now: datetime | None = None,
    refresh: bool = True,
) -> Report:
    """Report `name` over `source` (an Engine, or a ClickHouse source) with `options` as strings, as the CLI
    runs it (defaults: cost by day, cache by model); `subject` is the id of a conversation or call report;
    `budgets_file` the anomalies' budgets (the CLI's --budgets). With `refresh`, brings the rollups up to
    date first, as the CLI does; without, writes nothing (the slots not rolled up yet are read from `calls`,
    to the same figures). Raises ReportInputError."""
    checked = _check(name, options)
    if (name in SUBJECT_REPORTS) != (subject is not None):
        raise ReportInputError(
            f"report {name} needs an id" if subject is None else f"report {name} takes no id"
        )
    if name == "call":
        from compactobs.reports.call import call_report

        assert subject is not None
        return call_report(source, subject)
    filters = build_filters(
        _one(checked, "since"),
        _one(checked, "until"),
        _one(checked, "tz"),
        checked.get("model", ()),
        checked.get("conversation", ()),
        checked.get("service", ()),
        now=now,
    )
    by = [part for value in checked.get("by", ()) for part in value.split(",") if part.strip()]
    if refresh and name in ("cost", "cache") and isinstance(source, Engine):
        from compactobs.reports.sources.sql import rollup

        rollup.try_refresh(source)
    result: Report
    if name == "cost":
        from compactobs.reports.cost import cost_report, parse_by

        result = cost_report(
            source, filters, parse_by(by or ["day"]), compare=_one(checked, "compare"), now=now
        )
        if _flag(checked, "forecast"):
            from compactobs.reports.forecast import with_forecast

            result = with_forecast(result, source, filters, now)
    elif name == "cache":
        from compactobs.reports.cache import cache_report

        result = cache_report(source, filters, by or ["model"], now=now)
    elif name == "ops":
        from compactobs.reports.ops import ops_report

        result = ops_report(source, filters)
    elif name == "tune":
        return _tune(source, filters, checked)
    elif name == "conversation":
        from compactobs.reports.conversation import conversation_report

        assert subject is not None
        return conversation_report(source, filters, subject)
    else:
        from compactobs.reports.anomalies import Thresholds, anomalies_report, load_budgets

        fields = _threshold_options()
        values = {
            f.name: _number(checked, key, int if f.type in (int, "int") else float)
            for key, f in fields.items()
            if key in checked
        }
        thresholds = Thresholds(**values)
        budgets = load_budgets(budgets_file) if budgets_file else None
        return anomalies_report(source, filters, thresholds, budgets, budgets_file)
    sort, limit = _one(checked, "sort"), _number(checked, "limit", int)
    if sort is not None or limit is not None:
        result = sort_and_limit(result, sort, limit)
    return result


def _tune(source: Engine | Source, filters: Filters, checked: Mapping[str, list[str]]) -> Report:
    from compactobs.reports.tune import TuneOptions, parse_by, parse_triggers, parse_ttls, tune, tune_report

    budget = _one(checked, "budget-usd")
    options = TuneOptions(
        triggers=parse_triggers(_one(checked, "trigger")),
        cache_ttls=parse_ttls(_one(checked, "cache-ttl")),
        summary_tokens=_number(checked, "summary-tokens", int),
        pause_after_compaction=_flag(checked, "pause-after-compaction"),
        budget_usd=None if budget is None else usd_amount(budget, "--budget-usd"),
        by=parse_by(_one(checked, "by")),
    )
    result = tune(source, filters, options)
    report = tune_report(result)
    report.extra[_TUNE_RESULT] = result
    return report


def report_json(report: Report) -> str:
    """The report as `compactobs report NAME --format json` prints it (tune: as `compactobs tune`)."""
    if report.name == "tune":
        from compactobs.reports.tune import tune_json

        return tune_json(report.extra[_TUNE_RESULT])
    if report.name == "anomalies":
        from compactobs.reports.render.anomalies import render_anomalies

        return render_anomalies(report, "json")
    return render(report, "json")
