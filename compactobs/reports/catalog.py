"""Run a report by its name from its options given as strings: what `serve`'s JSON API answers.

`run_report(source, "cost", {"by": ["model"], "since": ["7d"]})` is the report `compactobs report cost
--by model --since 7d` prints, and `report_json` renders it as `--format json` does, byte for byte. The
option names are the CLI's, without the dashes (`loop-min`, `model`, `by`); repeatable where the CLI's are.
A bad option raises ReportInputError, one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine

from compactobs.reports.model import Filters, Report, ReportInputError, sort_and_limit, usd_amount
from compactobs.reports.render import render
from compactobs.reports.sources import Source
from compactobs.reports.times import build_filters

if TYPE_CHECKING:
    from compactobs.reports.anomalies import Thresholds
    from compactobs.rules import Budgets

__all__ = [
    "REPORTS",
    "SUBJECT_REPORTS",
    "make_report",
    "report_json",
    "report_options",
    "run_report",
    "split_by",
]

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
    _check_name(name)
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
    _check_subject(name, subject)
    filters = None
    if name != "call":
        filters = build_filters(
            _one(checked, "since"),
            _one(checked, "until"),
            _one(checked, "tz"),
            checked.get("model", ()),
            checked.get("conversation", ()),
            checked.get("service", ()),
            now=now,
        )
    if name == "tune":
        assert filters is not None
        return _tune(source, filters, checked)
    thresholds = None
    budgets = None
    if name == "anomalies":
        from compactobs.reports.anomalies import Thresholds, load_budgets

        fields = _threshold_options()
        values = {
            f.name: _number(checked, key, int if f.type in (int, "int") else float)
            for key, f in fields.items()
            if key in checked
        }
        thresholds = Thresholds(**values)
        budgets = load_budgets(budgets_file) if budgets_file else None
    return make_report(
        source,
        name,
        filters,
        subject,
        by=split_by(checked.get("by", ())),
        compare=_one(checked, "compare"),
        forecast=_flag(checked, "forecast"),
        thresholds=thresholds,
        budgets=budgets,
        budgets_file=budgets_file,
        sort=_one(checked, "sort"),
        limit=_number(checked, "limit", int),
        now=now,
        refresh=_refresh if refresh else None,
    )


def split_by(values: Iterable[str]) -> list[str]:
    """Repeated and comma-separated `by` values as one list (`--by a,b --by c`)."""
    return [part for value in values for part in value.split(",") if part.strip()]


def _refresh(source: Engine | Source) -> None:
    """Bring the SQL store's rollups up to date before a cost or cache report (another source keeps its own
    sums); a failure only means the report reads the calls."""
    if isinstance(source, Engine):
        from compactobs.reports.sources.sql import rollup

        rollup.try_refresh(source)


def _check_name(name: str) -> None:
    if name not in REPORTS:
        raise ReportInputError(f"no report {name!r}: use one of {', '.join(REPORTS)}")


def _check_subject(name: str, subject: str | None) -> None:
    _check_name(name)
    if (name in SUBJECT_REPORTS) != (subject is not None):
        raise ReportInputError(
            f"report {name} needs an id" if subject is None else f"report {name} takes no id"
        )


def make_report(
    source: Engine | Source,
    name: str,
    filters: Filters | None,
    subject: str | None = None,
    *,
    by: Sequence[str] = (),
    compare: str | None = None,
    forecast: bool = False,
    thresholds: Thresholds | None = None,
    budgets: Budgets | None = None,
    budgets_file: str | None = None,
    sort: str | None = None,
    limit: int | None = None,
    now: datetime | None = None,
    refresh: Callable[[Engine | Source], None] | None = _refresh,
) -> Report:
    """Report `name` over `source` from its options, parsed: the one path from options to a Report, for
    `run_report` (options as strings) and the CLI (click's). `filters` is None for the call report only;
    `by` empty is the report's default (cost by day, cache by model); `refresh` brings the rollups up to
    date before a cost or cache report (None: writes nothing). Raises ReportInputError."""
    _check_subject(name, subject)
    assert name != "tune", "tune's options are its own: run_report parses them"
    if name == "call":
        from compactobs.reports.call import call_report

        assert subject is not None
        return call_report(source, subject)
    assert filters is not None
    if refresh is not None and name in ("cost", "cache"):
        refresh(source)
    result: Report
    if name == "cost":
        from compactobs.reports.cost import cost_report, parse_by

        result = cost_report(source, filters, parse_by(list(by) or ["day"]), compare=compare, now=now)
        if forecast:
            from compactobs.reports.forecast import with_forecast

            result = with_forecast(result, source, filters, now)
    elif name == "cache":
        from compactobs.reports.cache import cache_report

        result = cache_report(source, filters, list(by) or ["model"], now=now)
    elif name == "ops":
        from compactobs.reports.ops import ops_report

        result = ops_report(source, filters)
    elif name == "conversation":
        from compactobs.reports.conversation import conversation_report

        assert subject is not None
        return conversation_report(source, filters, subject)
    else:
        from compactobs.reports.anomalies import Thresholds, anomalies_report

        return anomalies_report(source, filters, thresholds or Thresholds(), budgets, budgets_file)
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
