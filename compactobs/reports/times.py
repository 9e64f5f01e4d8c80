"""Times for reports: --since/--until/--tz parsing into Filters, and local-time buckets (hours, days, weeks,
months in the report's zone), as SQL expressions and as lists of bounds.

```python
filters = build_filters("7d", None, "Europe/Paris", models=("claude-sonnet-*",))
```

Times: the store keeps UTC epoch milliseconds (`calls.start_ms`, indexed). A window is `since <= start <
until` in UTC. Local buckets (hour, day, week, month in the report's zone) are computed in SQL as
`(start_ms + offset) / unit`, where the offset is a CASE over the zone's UTC-offset changes (DST) inside
the data's range, found here in Python: exact across DST changes, the same SQL on SQLite and PostgreSQL,
and totals are conserved whatever the zone.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import BigInteger, ColumnElement, case, literal_column

from compactobs.reports.model import Filters, ReportInputError
from compactobs.store.models import epoch_ms

__all__ = [
    "MS_PER_DAY",
    "MS_PER_HOUR",
    "TIME_UNITS",
    "Buckets",
    "bucket_label",
    "build_filters",
    "from_epoch_ms",
    "local_bucket",
    "local_buckets",
    "local_zone",
    "parse_tz",
    "parse_when",
    "utc_offsets",
]

TIME_UNITS: Final[tuple[str, ...]] = ("hour", "day", "week", "month")

MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000
_EPOCH_DATE: Final = date(1970, 1, 1)


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
    try:
        return _parse_when(text, tz, now, end=end)
    except OverflowError:  # a date or span past what datetime holds, in any of the forms below
        raise ReportInputError(f"{text!r} is out of the range of dates compactobs reads") from None


def _parse_when(text: str, tz: tzinfo, now: datetime, *, end: bool) -> datetime:
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
    offset: ColumnElement[int]
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
