"""What a report is: the Report record and its columns, the Filters it looks at, and sorting and limiting
its rows. No engine and no rendering: the sources fill Reports, `reports.render` shows them.

Input a user can get wrong raises `ReportInputError`, whose message is one line; the CLI prints it as
`Error: ...` and exits 2, like a StoreError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import ColumnElement, or_

from compactobs.errors import UserError
from compactobs.pricing.records import to_json_number
from compactobs.store.models import calls, epoch_ms

if TYPE_CHECKING:
    from compactobs._types import JSON

__all__ = [
    "NUMERIC_KINDS",
    "ColumnKind",
    "Filters",
    "Report",
    "ReportInputError",
    "sort_and_limit",
    "to_json_value",
    "usd_amount",
    "zone_name",
]

ColumnKind = Literal["key", "int", "usd", "ratio", "text", "usd_delta", "ratio_delta"]
"""How a table shows a column: `key` (a group key: None is "(none)"), `int` (thousands separators), `usd`
($ and 4 decimals), `ratio` (a percentage), `text`, and `usd_delta`/`ratio_delta` (signed changes)."""
NUMERIC_KINDS: Final = frozenset({"int", "usd", "ratio", "usd_delta", "ratio_delta"})


class ReportInputError(UserError, ValueError):
    """A report input the user can fix (a date, a zone, a grouping...): the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


def usd_amount(text: str, option: str) -> Decimal:
    """An option's amount of dollars (`--budget-usd 5`): a finite number >= 0, exactly as typed. Raises
    ReportInputError (one line, exit 2)."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ReportInputError(f"{option} {text!r} is not a number of dollars, e.g. 500") from None
    if not amount.is_finite() or amount < 0:
        raise ReportInputError(f"{option} must be a finite number >= 0, not {text}")
    return amount


def zone_name(tz: tzinfo) -> str:
    """The zone's IANA name when it has one, else its abbreviation or offset."""
    key = getattr(tz, "key", None)
    if isinstance(key, str):
        return key
    return tz.tzname(None) or str(tz)


def _glob_condition(columns: Sequence[ColumnElement[str]], patterns: Sequence[str]) -> ColumnElement[bool]:
    """Equality (index-friendly) for plain values, LIKE for `*`/`?` globs, OR-ed over columns and values."""
    plain = [p for p in patterns if not any(ch in p for ch in "*?[")]
    globs = [p for p in patterns if p not in plain]
    conditions: list[ColumnElement[bool]] = []
    for column in columns:
        if plain:
            conditions.append(column.in_(plain))
        for pattern in globs:
            escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\"))
    return or_(*conditions)


@dataclass(frozen=True)
class Filters:
    """What a report looks at: the calls that started in `[since, until)` (UTC; None = unbounded), of the
    given models, conversations and services (empty = all), with local times in `tz`."""

    # The metadata is the CLI's: every report's --since ... --service option is generated from it.
    since: datetime | None = field(
        metadata={
            "metavar": "WHEN",
            "help": "Calls started at or after: YYYY-MM-DD, ISO date-time, 7d, 24h, 30m, today, yesterday.",
        }
    )
    until: datetime | None = field(
        metadata={"metavar": "WHEN", "help": "Calls started before (a date is inclusive)."}
    )
    tz: tzinfo = field(
        metadata={"metavar": "ZONE", "help": "IANA time zone for dates and buckets (default: local)."}
    )
    models: tuple[str, ...] = field(
        default=(),
        metadata={"option": "--model", "metavar": "MODEL", "help": "Only these models (repeatable, globs)."},
    )
    conversations: tuple[str, ...] = field(
        default=(),
        metadata={"option": "--conversation", "metavar": "ID", "help": "Only these conversations."},
    )
    services: tuple[str, ...] = field(
        default=(), metadata={"option": "--service", "metavar": "NAME", "help": "Only these services."}
    )

    @property
    def since_ms(self) -> int | None:
        return None if self.since is None else epoch_ms(self.since)

    @property
    def until_ms(self) -> int | None:
        return None if self.until is None else epoch_ms(self.until)

    @property
    def zone(self) -> str:
        return zone_name(self.tz)

    def call_conditions(self) -> list[ColumnElement[bool]]:
        """Conditions on `store.calls`: the start_ms window (indexed), then model (request or response
        model; `*` and `?` globs allowed), conversation and service."""
        conditions: list[ColumnElement[bool]] = []
        if self.since_ms is not None:
            conditions.append(calls.c.start_ms >= self.since_ms)
        if self.until_ms is not None:
            conditions.append(calls.c.start_ms < self.until_ms)
        if self.conversations:
            conditions.append(_glob_condition([calls.c.conversation_id], self.conversations))
        conditions += self.model_service_conditions(
            calls.c.request_model, calls.c.response_model, calls.c.service_name
        )
        return conditions

    def model_service_conditions(
        self,
        request_model: ColumnElement[str],
        response_model: ColumnElement[str],
        service_name: ColumnElement[str],
    ) -> list[ColumnElement[bool]]:
        """The model and service filters over the given columns (of `calls`, or of `rollups`)."""
        conditions: list[ColumnElement[bool]] = []
        if self.models:
            conditions.append(_glob_condition([request_model, response_model], self.models))
        if self.services:
            conditions.append(_glob_condition([service_name], self.services))
        return conditions

    def with_window(self, since: datetime | None, until: datetime | None) -> Filters:
        """The same filters over another window (e.g. the previous period for --compare prev)."""
        return Filters(since, until, self.tz, self.models, self.conversations, self.services)

    def describe(self) -> str:
        """The window in the report's zone, for a header line."""

        def show(moment: datetime) -> str:
            local = moment.astimezone(self.tz)
            return f"{local:%Y-%m-%d}" if local.time() == time(0) else f"{local:%Y-%m-%d %H:%M}"

        if self.since is None and self.until is None:
            window = "all time"
        elif self.until is None:
            assert self.since is not None
            window = f"since {show(self.since)}"
        elif self.since is None:
            window = f"before {show(self.until)}"
        else:
            window = f"{show(self.since)} to {show(self.until)} (exclusive)"
        parts = [window, f"tz {self.zone}"]
        for label, values in (("model", self.models), ("conversation", self.conversations)):
            if values:
                parts.append(f"{label} {', '.join(values)}")
        if self.services:
            parts.append(f"service {', '.join(self.services)}")
        return " · ".join(parts)


@dataclass
class Report:
    """What every report returns. The renderers are generic: they read `columns`, `kinds` and `labels`.

    - `rows`/`totals`: plain values (int, Decimal for money, float/Decimal for ratios, str, None);
    - `header`: lines shown above a table (the window, the zone, the grouping, definitions);
    - `warnings`: shown after a table, in JSON's `warnings`, on stderr for CSV (by the CLI);
    - `extra`: more top-level JSON keys (e.g. `by`), placed after `report`;
    - `table_columns`: the columns a table or Markdown shows (default: all); JSON and CSV carry all;
    - `sections`: more tables shown below the main one (table and Markdown only);
    - `empty_message`: shown instead of a table when there are no rows;
    - `narrow_columns`: smaller sets of `table_columns`, widest first, for a table rendered to fit a
      terminal (`render(..., fit_width=...)`): the first that fits is shown, with a hint to the rest;
    - `bar_column`: a column drawn as a bar beside itself in a table rendered to fit a terminal, in the
      room the table leaves (never in JSON, CSV, Markdown or a table piped elsewhere).
    """

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, Any] | None = None
    header: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, JSON] = field(default_factory=dict)
    kinds: dict[str, ColumnKind] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    table_columns: list[str] | None = None
    sections: list[Report] = field(default_factory=list)
    title: str | None = None
    empty_message: str = "No calls recorded in this window."
    notes: list[str] = field(default_factory=list)
    narrow_columns: list[list[str]] = field(default_factory=list)
    bar_column: str | None = None

    def kind(self, column: str) -> ColumnKind:
        if column in self.kinds:
            return self.kinds[column]
        for row in self.rows:
            value = row.get(column)
            if value is None:
                continue
            if isinstance(value, (bool, str)):
                return "text"
            if isinstance(value, int):
                return "int"
            if isinstance(value, Decimal):
                return "usd"
            return "ratio"
        return "text"

    def label(self, column: str) -> str:
        return self.labels.get(column, column)

    def shown_columns(self) -> list[str]:
        return list(self.table_columns) if self.table_columns is not None else list(self.columns)


def sort_and_limit(report: Report, sort: str | None = None, limit: int | None = None) -> Report:
    """The report with its rows ordered by `sort` (a column's JSON name or table label: numbers largest
    first, text in order, empty last) and cut to the first `limit`; totals untouched, so they still cover
    every call, and a note (and JSON's `limited`) says how many rows are shown. Raises ReportInputError for
    a column the report does not have, or a limit below 1."""
    rows = list(report.rows)
    if sort is not None:
        wanted = sort.strip()
        column = next((c for c in report.columns if wanted in (c, report.label(c))), None)
        if column is None:
            names = ", ".join(report.columns)
            raise ReportInputError(f"cannot sort {report.name} by {sort!r}: use one of {names}")
        numeric = report.kind(column) in NUMERIC_KINDS
        present = [row for row in rows if row.get(column) is not None]
        absent = [row for row in rows if row.get(column) is None]
        if numeric:
            present.sort(key=lambda row: row[column], reverse=True)
        else:
            present.sort(key=lambda row: str(row[column]))
        rows = present + absent
    notes, extra = list(report.notes), dict(report.extra)
    if limit is not None:
        if limit < 1:
            raise ReportInputError(f"--limit {limit}: give a number of rows, 1 or more")
        if len(rows) > limit:
            notes.insert(
                0, f"Showing {limit:,} of {len(rows):,} rows (--limit); the totals cover every call."
            )
            extra["limited"] = {"rows": len(rows), "shown": limit}
            rows = rows[:limit]
    return replace(report, rows=rows, notes=notes, extra=extra)


def to_json_value(value: Any) -> JSON:
    """Any report value as JSON data (recursing into dicts, lists and tuples)."""
    # The common exact types first (a report of 67k findings converts some 450k values).
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): to_json_value(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [to_json_value(v) for v in value]
    if isinstance(value, (Decimal, float)) or (isinstance(value, int) and not isinstance(value, bool)):
        return to_json_number(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value
