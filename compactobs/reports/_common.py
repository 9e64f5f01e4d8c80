"""What every report shares: input parsing (times, zones, filters), local-time buckets in SQL, the Report
record, and its renderers (rich table, JSON, CSV, Markdown).

```python
filters = build_filters("7d", None, "Europe/Paris", models=("claude-sonnet-*",))
report = cost.cost_report(engine, filters, by=("day",))      # any report: a pure function over the store
print(render(report, "json"))
```

Input a user can get wrong raises `ReportInputError`, whose message is one line; the CLI prints it as
`Error: ...` and exits 2, like a StoreError.

Times: the store keeps UTC epoch milliseconds (`calls.start_ms`, indexed). A window is `since <= start <
until` in UTC. Local buckets (hour, day, week, month in the report's zone) are computed in SQL as
`(start_ms + offset) / unit`, where the offset is a CASE over the zone's UTC-offset changes (DST) inside
the data's range, found here in Python: exact across DST changes, the same SQL on SQLite and PostgreSQL,
and totals are conserved whatever the zone.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Integer,
    MetaData,
    Table,
    and_,
    case,
    func,
    literal_column,
    or_,
)

from compactobs.errors import UserError
from compactobs.pricing.records import to_json_number
from compactobs.reports._safe import json_text, shown
from compactobs.store.models import calls, epoch_ms

__all__ = [
    "FORMATS",
    "TIME_UNITS",
    "Buckets",
    "ColumnKind",
    "ExternalSource",
    "Filters",
    "Format",
    "Report",
    "ReportInputError",
    "bucket_label",
    "bucket_source",
    "build_filters",
    "epoch_ms",
    "format_cell",
    "from_epoch_ms",
    "local_bucket",
    "local_buckets",
    "local_zone",
    "parse_tz",
    "parse_when",
    "render",
    "sort_and_limit",
    "to_json_number",
    "to_json_value",
    "utc_offsets",
    "zone_name",
]

Format = Literal["table", "json", "csv", "md"]
FORMATS: Final[tuple[str, ...]] = ("table", "json", "csv", "md")
ColumnKind = Literal["key", "int", "usd", "ratio", "text", "usd_delta", "ratio_delta"]
"""How a table shows a column: `key` (a group key: None is "(none)"), `int` (thousands separators), `usd`
($ and 4 decimals), `ratio` (a percentage), `text`, and `usd_delta`/`ratio_delta` (signed changes)."""
_NUMERIC_KINDS: Final = frozenset({"int", "usd", "ratio", "usd_delta", "ratio_delta"})
TIME_UNITS: Final[tuple[str, ...]] = ("hour", "day", "week", "month")

MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000
_EPOCH_DATE: Final = date(1970, 1, 1)


class ReportInputError(UserError, ValueError):
    """A report input the user can fix (a date, a zone, a grouping...): the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class ExternalSource:
    """A report source other than the SQL store (ClickHouse: `compactobs.reports.clickhouse`). A report given
    one in place of an Engine asks it for the same intermediate results its SQL queries produce, so the
    rules, options, rendering and JSON stay the report's own."""


# -- zones and times ---------------------------------------------------------------------------------------


def local_zone() -> tzinfo:
    """The machine's zone, as an IANA zone when it can be named (`TZ`, /etc/localtime, /etc/timezone),
    else the current fixed UTC offset."""
    candidates: list[str] = []
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        candidates.append(env.split("zoneinfo/", 1)[-1])
    try:
        link = os.readlink("/etc/localtime")
    except OSError:
        pass
    else:
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    try:
        with open("/etc/timezone", encoding="utf-8") as handle:
            candidates.append(handle.read().strip())
    except OSError:
        pass
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
    fixed = datetime.now().astimezone().tzinfo
    return fixed if fixed is not None else timezone.utc


@contextmanager
def reading(engine: Engine, snapshot: bool = False) -> Iterator[Connection]:
    """A connection for a report's queries. On PostgreSQL, JIT compilation is switched off for its
    transaction: these queries are index probes that run in milliseconds, but their estimated cost passes
    `jit_above_cost`, and compiling them took 95% of the time (2.7 s of 2.8 s on 200k calls).

    `snapshot`: every query of the transaction sees the same data (PostgreSQL REPEATABLE READ; an SQLite
    transaction always does). A report that adds rollups to raw rows needs it: with a snapshot per query,
    a refresh committing between two of them could move a call from one part to the other."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            if snapshot:
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            connection.exec_driver_sql("SET LOCAL jit = off")
        yield connection


def parse_tz(name: str | None) -> tzinfo:
    """An IANA zone (`Europe/Paris`, `UTC`); None, "" or "local" mean the machine's zone.

    Raises ReportInputError for a name the zone database does not know.
    """
    if name is None or not name.strip() or name.strip().lower() == "local":
        return local_zone()
    text = name.strip()
    if text.upper() in ("UTC", "Z", "GMT"):
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ReportInputError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris or America/New_York, or UTC"
        ) from None


def zone_name(tz: tzinfo) -> str:
    """The zone's IANA name when it has one, else its abbreviation or offset."""
    key = getattr(tz, "key", None)
    if isinstance(key, str):
        return key
    return tz.tzname(None) or str(tz)


_RELATIVE = re.compile(r"^(\d+)\s*(m|min|mins|h|hr|hrs|d|day|days|w|wk|weeks?)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNIT_DELTA: Final = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


def _local_midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(timezone.utc)


def parse_when(text: str, tz: tzinfo, now: datetime, *, end: bool = False) -> datetime:
    """A moment, as an aware UTC datetime, from what a user types after --since or --until.

    - `YYYY-MM-DD`: local midnight in `tz` (with `end=True`: the next day's, so an --until date is
      inclusive);
    - an ISO datetime (`2025-05-01T13:00`, `2025-05-01 13:00:00+02:00`, `...Z`): naive means in `tz`;
    - `30m`, `24h`, `7d`, `2w`: that long before `now`;
    - `today`, `yesterday` (local midnight; `end=True`: the end of that day), `now`.

    Raises ReportInputError for anything else.
    """
    raw = text.strip()
    lowered = raw.lower()
    local_today = now.astimezone(tz).date()
    if lowered in ("today", "yesterday"):
        day = local_today - timedelta(days=1 if lowered == "yesterday" else 0)
        return _local_midnight(day + timedelta(days=1) if end else day, tz)
    if lowered == "now":
        return now.astimezone(timezone.utc)
    match = _RELATIVE.match(lowered)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = timedelta(weeks=amount) if unit.startswith("w") else amount * _UNIT_DELTA[unit[0]]
        try:
            return (now - delta).astimezone(timezone.utc)
        except OverflowError:
            raise ReportInputError(f"{text!r} reaches too far back") from None
    if _DATE.match(raw):
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise ReportInputError(f"invalid date {text!r}: no such day") from None
        return _local_midnight(day + timedelta(days=1) if end else day, tz)
    iso = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ReportInputError(
            f"invalid date or time {text!r}: use YYYY-MM-DD, an ISO date-time (2025-05-01T13:00), "
            "a duration back from now (30m, 24h, 7d, 2w), today or yesterday"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(timezone.utc)


def from_epoch_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)


# -- filters -----------------------------------------------------------------------------------------------


def _glob_condition(columns: Sequence[ColumnElement[Any]], patterns: Sequence[str]) -> ColumnElement[bool]:
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

    since: datetime | None
    until: datetime | None
    tz: tzinfo
    models: tuple[str, ...] = ()
    conversations: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

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
        request_model: ColumnElement[Any],
        response_model: ColumnElement[Any],
        service_name: ColumnElement[Any],
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


def build_filters(
    since: str | None,
    until: str | None,
    tz: str | None,
    models: Iterable[str] = (),
    conversations: Iterable[str] = (),
    services: Iterable[str] = (),
    now: datetime | None = None,
) -> Filters:
    """Filters from the CLI's strings. Raises ReportInputError (bad date or zone, an empty window)."""
    zone = parse_tz(tz)
    current = now if now is not None else datetime.now(timezone.utc)
    if current.tzinfo is None:
        current = current.replace(tzinfo=timezone.utc)
    start = parse_when(since, zone, current) if since else None
    stop = parse_when(until, zone, current, end=True) if until else None
    if start is not None and stop is not None and start >= stop:
        raise ReportInputError(f"--since {since!r} is not before --until {until!r}: the window is empty")

    def clean(values: Iterable[str], what: str) -> tuple[str, ...]:
        out = tuple(v.strip() for v in values)
        if any(not v for v in out):
            raise ReportInputError(f"empty {what} filter")
        return out

    return Filters(
        start,
        stop,
        zone,
        clean(models, "--model"),
        clean(conversations, "--conversation"),
        clean(services, "--service"),
    )


# -- local time buckets in SQL ------------------------------------------------------------------------------


def utc_offsets(tz: tzinfo, lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """The zone's UTC offsets over `[lo_ms, hi_ms]`: `[(from_ms, offset_ms), ...]`, the first from lo_ms.

    Found by probing every 24 hours and bisecting each change to the millisecond (zones never change
    offset twice within a day).
    """

    def offset(ms: int) -> int:
        moment = from_epoch_ms(ms).astimezone(tz)
        delta = moment.utcoffset() or timedelta(0)
        return int(delta // timedelta(milliseconds=1))

    result = [(lo_ms, offset(lo_ms))]
    if hi_ms <= lo_ms or getattr(tz, "key", "UTC") in ("UTC", "Etc/UTC") or isinstance(tz, timezone):
        return result
    step = MS_PER_DAY
    probe, current = lo_ms, result[0][1]
    while probe < hi_ms:
        nxt = min(probe + step, hi_ms)
        value = offset(nxt)
        if value != current:
            low, high = probe, nxt  # offset(low) == current, offset(high) != current
            while high - low > 1:
                mid = (low + high) // 2
                if offset(mid) == current:
                    low = mid
                else:
                    high = mid
            result.append((high, offset(high)))
            current = result[-1][1]
        probe = nxt
    return result


def local_bucket(
    column: ColumnElement[int], unit: Literal["hour", "day", "week"], tz: tzinfo, lo_ms: int, hi_ms: int
) -> ColumnElement[int]:
    """SQL for the local bucket number of an epoch-ms column: hours or days since 1970-01-01 local time,
    or weeks (Monday-based) numbered so that `bucket_label` can name them. Correct across DST changes
    between lo_ms and hi_ms (the data's range); the same SQL on SQLite and PostgreSQL (integer division).
    """
    offsets = utc_offsets(tz, lo_ms, hi_ms)
    offset: ColumnElement[Any]
    if len(offsets) == 1:
        offset = literal_column(str(offsets[0][1]), BigInteger)
    else:
        whens = [
            (column < literal_column(str(start), BigInteger), literal_column(str(previous), BigInteger))
            for (start, _), (_, previous) in zip(offsets[1:], offsets[:-1], strict=True)
        ]
        offset = case(*whens, else_=literal_column(str(offsets[-1][1]), BigInteger))
    local_ms = column + offset
    if unit == "hour":
        return local_ms // literal_column(str(MS_PER_HOUR), BigInteger)
    day = local_ms // literal_column(str(MS_PER_DAY), BigInteger)
    if unit == "day":
        return day
    # Day 0 (1970-01-01) is a Thursday: (day + 3) // 7 counts Mondays, week w starts on day 7w - 3.
    return (day + literal_column("3", BigInteger)) // literal_column("7", BigInteger)


def bucket_label(unit: str, number: int) -> str:
    """The label of a local bucket number from `local_bucket` (for `month`: a day number, rolled up):
    hour `2025-05-01 13:00`, day `2025-05-01`, week `2025-04-28` (its Monday), month `2025-05`."""
    if unit == "hour":
        moment = datetime(1970, 1, 1) + timedelta(hours=number)
        return f"{moment:%Y-%m-%d %H:00}"
    if unit == "week":
        return (_EPOCH_DATE + timedelta(days=7 * number - 3)).isoformat()
    day = _EPOCH_DATE + timedelta(days=number)
    if unit == "month":
        return f"{day:%Y-%m}"
    return day.isoformat()


@dataclass(frozen=True)
class Buckets:
    """Contiguous local time buckets: bucket i is `[starts[i], starts[i + 1])` (the last ends at `end`), in
    UTC epoch ms, named `labels[i]` in the report's zone. Two buckets may share a label (the hour repeated
    when clocks go back): group rows by label to merge them."""

    unit: str
    starts: tuple[int, ...]
    end: int
    labels: tuple[str, ...]


def _label_day(unit: str, day: date) -> str:
    return f"{day:%Y-%m}" if unit == "month" else day.isoformat()


def local_buckets(unit: str, tz: tzinfo, lo_ms: int, hi_ms: int) -> Buckets:
    """The local hours, days, weeks (from Monday) or months in `tz` that cover `[lo_ms, hi_ms]`.

    Boundaries come from the zone database, so a DST day has 23 or 25 hours and a local hour is a wall
    clock hour (a 30-minute DST shift makes one short bucket). Labels: hour `2025-05-01 13:00`, day
    `2025-05-01`, week `2025-04-28` (its Monday), month `2025-05`.
    """
    if unit not in TIME_UNITS:
        raise ReportInputError(f"unknown time unit {unit!r}: use one of {', '.join(TIME_UNITS)}")
    if hi_ms < lo_ms:
        hi_ms = lo_ms
    if unit == "hour":
        segments = utc_offsets(tz, lo_ms - 2 * MS_PER_HOUR, hi_ms + 2 * MS_PER_HOUR)
        bounds: set[int] = set()
        for index, (start, offset) in enumerate(segments):
            stop = segments[index + 1][0] if index + 1 < len(segments) else hi_ms + 2 * MS_PER_HOUR
            if index:
                bounds.add(start)  # a change of offset starts a bucket, even mid-hour
            moment = start + (-(start + offset)) % MS_PER_HOUR
            while moment < stop:
                bounds.add(moment)
                moment += MS_PER_HOUR
        ordered = sorted(bounds)
        first = bisect.bisect_right(ordered, lo_ms) - 1
        last = bisect.bisect_right(ordered, hi_ms)
        starts = ordered[first:last]
        labels = [f"{from_epoch_ms(t).astimezone(tz):%Y-%m-%d %H:00}" for t in starts]
        return Buckets(unit, tuple(starts), ordered[last], tuple(labels))
    day = from_epoch_ms(lo_ms).astimezone(tz).date()
    if unit == "week":
        day -= timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    starts, labels = [], []
    while True:
        start = epoch_ms(_local_midnight(day, tz))
        if start > hi_ms:
            return Buckets(unit, tuple(starts), start, tuple(labels))
        starts.append(start)
        labels.append(_label_day(unit, day))
        if unit == "day":
            day += timedelta(days=1)
        elif unit == "week":
            day += timedelta(days=7)
        else:
            day = date(day.year + day.month // 12, day.month % 12 + 1, 1)


_BUCKET_TABLE: Final = "compactobs_report_buckets"


@contextmanager
def bucket_source(
    connection: Connection, buckets: Buckets, column: ColumnElement[int], base: FromClause
) -> Iterator[tuple[FromClause, ColumnElement[int]]]:
    """(from clause, key): select from the returned clause (join more tables onto it) and group by `key`,
    the 1-based index of the bucket of `column` (epoch ms) in `buckets`.

    SQLite: a temporary table of the buckets, range-joined to `base` (`column` must be indexed): SQLite
    then reads the rows in bucket order and aggregates without sorting them (a GROUP BY over an
    expression would sort every row). PostgreSQL: `width_bucket(column, ARRAY[starts])`, hash-aggregated.
    Rows of `base` outside the buckets are left out on SQLite and get key 0 on PostgreSQL: filter first.
    """
    if connection.dialect.name != "sqlite":
        array = "ARRAY[" + ",".join(str(int(s)) for s in buckets.starts) + "]::bigint[]"
        yield base, func.width_bucket(column, literal_column(array))
        return
    table = Table(
        _BUCKET_TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True),  # INTEGER PRIMARY KEY: the rowid, the scan order
        Column("lo", BigInteger, nullable=False),
        Column("hi", BigInteger, nullable=False),
        prefixes=["TEMPORARY"],
    )
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{_BUCKET_TABLE}")
    # An automatic index on a filter column would replace the start_ms range scan: keep the plan.
    connection.exec_driver_sql("PRAGMA automatic_index = OFF")
    try:
        table.create(connection)
        ends = (*buckets.starts[1:], buckets.end)
        connection.execute(
            table.insert(),
            [
                {"id": i + 1, "lo": lo, "hi": hi}
                for i, (lo, hi) in enumerate(zip(buckets.starts, ends, strict=True))
            ],
        )
        source = table.join(base, and_(column >= table.c.lo, column < table.c.hi))
        yield source, table.c.id
    finally:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{_BUCKET_TABLE}")
        connection.exec_driver_sql("PRAGMA automatic_index = ON")


# -- the report record and its renderers -----------------------------------------------------------------


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
    extra: dict[str, Any] = field(default_factory=dict)
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
        numeric = report.kind(column) in _NUMERIC_KINDS
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


def to_json_value(value: Any) -> Any:
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


def format_cell(value: Any, kind: ColumnKind, signed: bool = False) -> str:
    """A value as a table or Markdown shows it: thousands separators, $ with 4 decimals, ratios as %;
    `signed`: a + before a positive amount or ratio (a change)."""
    if value is None:
        return "-" if kind != "key" else "(none)"
    if kind in ("usd_delta", "ratio_delta"):
        return format_cell(value, "usd" if kind == "usd_delta" else "ratio", signed=True)
    if kind == "int" and isinstance(value, (int, Decimal)):
        return f"{int(value):,}"
    if kind == "usd" and isinstance(value, (int, float, Decimal)):
        amount = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
        text = f"{abs(amount).quantize(Decimal('0.0001'), rounding=ROUND_HALF_EVEN):,}"
        if amount < 0 and text.strip("0.,"):
            return f"-${text}"
        return f"+${text}" if signed and text.strip("0.,") else f"${text}"
    if kind == "ratio" and isinstance(value, (int, float, Decimal)):
        return f"{float(value) * 100:+,.1f}%" if signed else f"{float(value) * 100:,.1f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)  # as it is: each renderer shows it safely (`_safe.shown`)


def unpriced_row(row: Mapping[str, Any], money: Sequence[str]) -> bool:
    """Whether a row's figures are unpriced: it has unpriced calls and none of its `money` columns is known
    (its other calls, if any, have no usage to price)."""
    return bool(row.get("unpriced_calls")) and all(row.get(column) is None for column in money)


def _cell(
    row: Mapping[str, Any], column: str, kind: ColumnKind, last_key: bool = False, unpriced: bool = False
) -> str:
    """A row's cell as text: money left unpriced says so, never $0 or a blank; and the last group key of an
    `unpriced` row says so too, so that it never reads as a repeat of the priced row beside it (two
    `2026-12-02` rows)."""
    value = row.get(column)
    if kind in ("usd", "usd_delta") and value is None and row.get("unpriced_calls"):
        return "unpriced"
    if last_key and unpriced:
        return f"{format_cell(value, kind)} (unpriced)"
    return format_cell(value, kind)


def _money_columns(report: Report) -> list[str]:
    return [column for column in report.columns if report.kind(column) == "usd"]


def _last_key(kinds: Sequence[ColumnKind]) -> int:
    """The index of the last group-key column, -1 when there is none."""
    return max((i for i, kind in enumerate(kinds) if kind == "key"), default=-1)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return json.dumps(to_json_number(value))
    return shown(str(value), "csv")


def _render_json(report: Report) -> str:
    document: dict[str, Any] = {"report": report.name}
    document.update({k: to_json_value(v) for k, v in report.extra.items()})
    document["rows"] = [{c: to_json_value(row.get(c)) for c in report.columns} for row in report.rows]
    document["totals"] = (
        None if report.totals is None else {k: to_json_value(v) for k, v in report.totals.items()}
    )
    document["warnings"] = list(report.warnings)
    return json_text(document)


def _render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([shown(column, "csv") for column in report.columns])
    for row in report.rows:
        writer.writerow([_csv_value(row.get(c)) for c in report.columns])
    return out.getvalue()


def _md_escape(text: str) -> str:
    return shown(text, "md")


def _render_md_table(report: Report) -> list[str]:
    columns = report.shown_columns()
    kinds = [report.kind(c) for c in columns]
    lines = [
        # Column labels are the report's own words (JSON keys among them): only a pipe would break the row.
        "| " + " | ".join(report.label(c).replace("|", "\\|") for c in columns) + " |",
        "|" + "|".join("---:" if k in _NUMERIC_KINDS else "---" for k in kinds) + "|",
    ]
    last_key = _last_key(kinds)
    money = _money_columns(report)
    for row in report.rows:
        unpriced = unpriced_row(row, money)
        cells = [
            _md_escape(_cell(row, c, k, i == last_key, unpriced))
            for i, (c, k) in enumerate(zip(columns, kinds, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if report.totals is not None:
        cells = []
        for index, (column, kind) in enumerate(zip(columns, kinds, strict=True)):
            if kind == "key" or column not in report.totals:
                cells.append("**Total**" if index == 0 else "")
            else:
                cells.append(f"**{_md_escape(format_cell(report.totals[column], kind))}**")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _render_md(report: Report) -> str:
    lines = [f"## {_md_escape(report.title or report.name)}", ""]
    if report.header:
        lines += [_md_escape(h) + "  " for h in report.header]
        lines.append("")
    if report.rows:
        lines += _render_md_table(report)
    else:
        lines.append(_md_escape(report.empty_message))
    for section in report.sections:
        lines += ["", f"### {_md_escape(section.title or section.name)}", ""]
        lines += _render_md_table(section) if section.rows else [_md_escape(section.empty_message)]
    if report.notes:
        lines.append("")
        lines += [f"{_md_escape(note)}  " for note in report.notes]
    if report.warnings:
        lines.append("")
        lines += [f"> **Warning:** {_md_escape(w)}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _table_lines(report: Report, color: bool, titled: bool = False) -> list[Any]:
    """The report's table as lines of rich Text, laid out as rich's Table lays out a `box.SIMPLE_HEAD` table
    of no-wrap columns as wide as their widest cell (tests hold the two to the same output). Laid out here
    because Table measures and renders every cell through its renderable protocol, about 0.1 ms a cell:
    15 s for a 10,000-call conversation, against well under a second line by line."""
    from rich.cells import cell_len
    from rich.text import Span, Text

    columns = report.shown_columns()
    kinds = [report.kind(c) for c in columns]
    labels = [shown(report.label(c)) for c in columns]
    # Control characters made visible first, so that widths are measured on what is shown.
    last_key = _last_key(kinds)
    money = _money_columns(report)
    rows = [
        [
            shown(_cell(row, column, kind, i == last_key, unpriced))
            for i, (column, kind) in enumerate(zip(columns, kinds, strict=True))
        ]
        for row in report.rows
        for unpriced in (unpriced_row(row, money),)
    ]
    footers: list[str] | None = None
    if report.totals is not None:
        totals = report.totals
        footers = [
            ("Total" if index == 0 else "")
            if kind == "key" or column not in totals
            else shown(format_cell(totals[column], kind))
            for index, (column, kind) in enumerate(zip(columns, kinds, strict=True))
        ]
    widths = [
        max([cell_len(labels[i]), cell_len(footers[i]) if footers else 0] + [cell_len(r[i]) for r in rows])
        for i in range(len(columns))
    ]
    right = [kind in _NUMERIC_KINDS for kind in kinds]
    bold = "bold" if color else ""
    unpriced = "yellow" if color else ""
    usd = [kind == "usd" for kind in kinds]

    def line(cells: list[str], style: str, body: bool) -> Any:
        # One string and its style spans, made into one Text: Text.append per piece cost 5 us each.
        parts = [" "]
        spans: list[Span] = []
        at = 1
        for i, cell in enumerate(cells):
            if i:
                parts.append(" ")
                at += 1
            pad = " " * (widths[i] - cell_len(cell))
            shown = pad + cell if right[i] else cell + pad
            end = at + 1 + len(shown)
            # The cell's own style covers its justification; the padding around it takes the row's.
            cell_style = unpriced if body and usd[i] and cell == "unpriced" else style
            if style:
                spans.append(Span(at, at + 1, style))
            if cell_style:
                spans.append(Span(at + 1, end, cell_style))
            if style:
                spans.append(Span(end, end + 1, style))
            parts += (" ", shown, " ")
            at = end + 1
        parts.append(" ")
        return Text("".join(parts), spans=spans)

    inner = sum(widths) + 3 * len(widths) - 1
    lines: list[Any] = []
    if titled:
        # As Table puts it: its style over the table's whole width, wrapped within it when longer.
        title = Text(report.title or report.name, style=bold, justify="left")
        lines.extend(_wrap(title, inner + 2))
    lines.append(Text(""))
    lines.append(line(labels, bold, False))
    lines.append(Text(" " + "─" * inner + " "))
    lines.extend(line(cells, "", True) for cells in rows)
    if footers is not None:
        lines.append(Text(""))
        lines.append(line(footers, bold, False))
    lines.append(Text(""))
    return lines


def _wrap(text: Any, width: int) -> list[Any]:
    """`text` wrapped and justified within `width` cells, one Text per line."""
    from rich.console import Console

    console = Console(width=width, color_system=None, file=io.StringIO())
    return list(text.wrap(console, width, justify="left"))


def _shown_width(lines: list[Any]) -> int:
    """The widest of `lines` as printed (trailing spaces are stripped)."""
    from rich.cells import cell_len

    return max((cell_len(line.plain.rstrip()) for line in lines), default=0)


def _fitted(report: Report, fit_width: int | None, color: bool) -> tuple[Report, list[Any]]:
    """The report with the widest of its column sets whose table fits `fit_width` (the narrowest when none
    does; all of them without a width), a hint to the columns left out among its notes, and its bars in the
    room left; and its lines."""
    lines = _table_lines(report, color)
    if fit_width is None:
        return report, lines
    full = report.shown_columns()
    full_width = _shown_width(lines)
    for columns in report.narrow_columns:
        if _shown_width(lines) <= fit_width:
            break
        report = replace(report, table_columns=list(columns))
        lines = _table_lines(report, color)
    shown = report.shown_columns()
    if len(shown) < len(full):
        left_out = [report.label(c) for c in full if c not in shown]
        hint = (
            f"{len(left_out)} more column(s) ({', '.join(left_out)}) on a wider terminal "
            f"(COLUMNS={full_width}) "
            "or with --format json|csv|md."
        )
        report = replace(report, notes=[*report.notes, hint])
    if report.bar_column is not None and report.bar_column in shown:
        return _with_bars(report, report.bar_column, fit_width - _shown_width(lines) - 3, lines, color)
    return report, lines


_BAR_LABEL: Final = "_bar"
_EIGHTHS: Final = " ▏▎▍▌▋▊▉"


def bar(value: float, largest: float, width: int) -> str:
    """`value` as a bar of eighth blocks, `width` cells at `largest`."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = round(value / largest * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _with_bars(
    report: Report, column: str, room: int, lines: list[Any], color: bool
) -> tuple[Report, list[Any]]:
    """The report with a bar column after `column`, as wide as `room` allows (at most 24 cells; none
    under 6)."""
    width = min(24, room)
    if width < 6:
        return report, lines
    values = [float(row[column]) if row.get(column) is not None else 0.0 for row in report.rows]
    largest = max(values, default=0.0)
    rows = [
        {**row, _BAR_LABEL: bar(value, largest, width)}
        for row, value in zip(report.rows, values, strict=True)
    ]
    shown = report.shown_columns()
    at = shown.index(column) + 1
    report = replace(
        report,
        rows=rows,
        table_columns=[*shown[:at], _BAR_LABEL, *shown[at:]],
        kinds={**report.kinds, _BAR_LABEL: "text"},
        labels={**report.labels, _BAR_LABEL: ""},
    )
    return report, _table_lines(report, color)


def _listed(section: Report, width: int) -> list[Any]:
    """A section too wide for a terminal as a list: its title, then each row's cells on lines wrapped
    within `width`, the continuation indented (long messages read better wrapped than cut)."""
    import textwrap

    from rich.text import Text

    columns = section.shown_columns()
    lines: list[Any] = [Text(section.title or section.name), Text("")]
    for row in section.rows:
        cells = [shown(_cell(row, column, section.kind(column))) for column in columns]
        text = "  ".join(cell for cell in cells if cell and cell != "-")
        wrapped = textwrap.wrap(text, width - 2, subsequent_indent="    ", break_on_hyphens=False)
        lines += [Text("  " + line) for line in wrapped]
    lines.append(Text(""))
    return lines


def _render_table(
    report: Report, console_width: int | None, color: bool, fit_width: int | None = None
) -> str:
    from rich.console import Console

    tables: list[list[Any]] = []
    if report.rows:
        report, lines = _fitted(report, fit_width, color)
        tables.append(lines)
    for section in report.sections:
        if section.rows:
            lines = _table_lines(section, color, titled=True)
            if fit_width is not None and _shown_width(lines) > fit_width:
                lines = _listed(section, fit_width)
            tables.append(lines)
    # Never truncate a digit: the console is as wide as the widest table needs, at least.
    needed = max([line.cell_len for lines in tables for line in lines] + [fit_width or console_width or 80])
    out = io.StringIO()
    console = Console(
        file=out,
        width=needed,
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )
    # Fitted to a terminal, the lines above and below the table wrap at its width too.
    wrap = fit_width is None or max(_shown_width(lines) for lines in tables or [[]]) > fit_width
    title = report.title or report.name
    console.print(f"[bold]{title}[/bold]" if color else title, markup=color, highlight=False, soft_wrap=wrap)
    for line in report.header:
        console.print(line, markup=False, highlight=False, style="dim" if color else None, soft_wrap=wrap)
    if report.rows:
        _print_lines(console, out, tables[0], color)
    else:
        console.print()
        console.print(report.empty_message, markup=False, soft_wrap=True)
    for lines in tables[1 if report.rows else 0 :]:
        _print_lines(console, out, lines, color)
    for note in report.notes:
        console.print(note, markup=False, highlight=False, soft_wrap=wrap)
    for warning in report.warnings:
        style = "yellow" if color else None
        console.print(f"Warning: {warning}", markup=False, highlight=False, style=style, soft_wrap=wrap)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def _print_lines(console: Any, out: io.StringIO, lines: list[Any], color: bool) -> None:
    """Table lines: through the console for their colours, else as they are (the console adds nothing)."""
    if not color:
        out.write("".join(line.plain + "\n" for line in lines))
        return
    from rich.text import Text

    console.print(Text("\n").join(lines), no_wrap=True, crop=False)


def _printable_texts(report: Report) -> Report:
    """The report with its free texts (title, header, notes, warnings, empty message; its sections' too) as
    a terminal shows them safely: they may quote ids and models."""
    return replace(
        report,
        title=None if report.title is None else shown(report.title),
        header=[shown(line) for line in report.header],
        notes=[shown(line) for line in report.notes],
        warnings=[shown(line) for line in report.warnings],
        empty_message=shown(report.empty_message),
        sections=[_printable_texts(section) for section in report.sections],
    )


def render(
    report: Report,
    fmt: Format | str,
    console_width: int | None = None,
    *,
    color: bool = False,
    fit_width: int | None = None,
) -> str:
    """The report as text: `table` (rich: right-aligned numbers, thousands separators, a totals row,
    never a truncated digit; ANSI colours only when `color`; `fit_width`: a terminal's width, to which a
    report with `narrow_columns` fits its table), `json`, `csv` (the rows, all columns) or `md` (a
    Markdown document). Raises ReportInputError for another format. Every string from outside goes through
    `_safe.shown` for its format (no control sequence, bidi override or line break acts; no formula in
    csv; no Markdown or HTML in md); JSON keeps it exact, those characters escaped (`_safe.json_text`)."""
    if fmt == "json":
        return _render_json(report)
    if fmt == "csv":
        return _render_csv(report)
    if fmt == "md":
        return _render_md(report)
    if fmt == "table":
        return _render_table(_printable_texts(report), console_width, color, fit_width)
    raise ReportInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
