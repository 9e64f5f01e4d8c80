"""Grafana's PostgreSQL data source macros (`expand`) and its ClickHouse data source's (`expand_clickhouse`),
expanded as Grafana and the plugins document and do, for a fixed range: what a dashboard's SQL becomes
before it reaches the database.

Grafana first replaces its global variables (`$__interval`, `$__interval_ms`, `$__unixEpochFrom()`,
`$__unixEpochTo()`) and the template variables (`$name`, `${name}`), then every `$__macro(args)` (arguments
up to the first `)`, split on commas and trimmed): `$__timeFilter(col)` is `col BETWEEN 'from' AND 'to'`
(RFC 3339, UTC), `$__timeGroup(col, interval)` is `floor(extract(epoch from col)/s)*s`,
`$__unixEpochGroup(col, interval)` is `floor((col)/s)*s`, the `...Alias` forms add `AS "time"`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import quote

from compactobs.reports.dashboard import ALL_VALUE, CONVERSATION_VAR, MODEL_VAR, SERVICE_VAR

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{([_a-zA-Z0-9]+)(?::([a-z]+))?\}|\$([_a-zA-Z][_a-zA-Z0-9]*)")
SELECTION_DEFAULTS = {SERVICE_VAR: ALL_VALUE, MODEL_VAR: ALL_VALUE, CONVERSATION_VAR: ""}
"""The dashboards' selection variables as they load: All, All, empty."""
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def interval_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text.strip().strip("'"))
    if match is None:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _seconds(value: float) -> str:
    """As Go's %v prints a float64 of whole seconds."""
    return str(int(value)) if value == int(value) else repr(value)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def percentencode(value: str) -> str:
    """Grafana's `:percentencode` format (scenes' `encodeURIComponentStrict`): UTF-8 bytes, every one but
    `A-Za-z0-9-_.~` as `%XX` (upper case)."""
    return quote(value, safe="-_.~")


_FORMATS = {"raw": lambda value: value, "percentencode": percentencode}
"""The formats the dashboards use; another one is an error here, so a test cannot pass on one unmodelled."""


def substitute(text: str, variables: Mapping[str, str] | None = None) -> str:
    """`text` (a query with its global variables already replaced) with its template variables replaced as
    Grafana does, through their formats."""
    return _substitute_variables(text, variables, keep_macros=False)


def _substitute_variables(text: str, variables: Mapping[str, str] | None, keep_macros: bool) -> str:
    """Template variables replaced in one pass (a value is never read again for variables), each through
    its format (`${name:format}`; none: raw); the selection variables default to SELECTION_DEFAULTS;
    `keep_macros`: `$__name` left for the macro pass that follows."""
    values = {**SELECTION_DEFAULTS, **(variables or {})}

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if keep_macros and name.startswith("__"):
            return match.group(0)
        if name not in values:
            raise ValueError(f"unknown template variable {name!r}")
        fmt = match.group(2) or "raw"
        if fmt not in _FORMATS:
            raise ValueError(f"format {fmt!r} of ${{{name}}} is not modelled here")
        return _FORMATS[fmt](values[name])

    return _VARIABLE.sub(variable, text)


def expand(
    sql: str,
    since: datetime,
    until: datetime,
    interval: str = "1h",
    variables: Mapping[str, str] | None = None,
) -> str:
    """`sql` with every macro and variable replaced; raises ValueError for one Grafana would not know."""
    text = sql.replace("$__interval_ms", str(int(interval_seconds(interval) * 1000)))
    text = text.replace("$__interval", interval)
    text = text.replace("$__unixEpochFrom()", str(int(since.timestamp())))
    text = text.replace("$__unixEpochTo()", str(int(until.timestamp())))

    text = _substitute_variables(text, variables, keep_macros=True)

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(since)}' AND '{_rfc3339(until)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(since)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(until)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            s = _seconds(interval_seconds(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{s})*{s}"
            return group + (' AS "time"' if name.endswith("Alias") else "")
        if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
            s = _seconds(interval_seconds(args[1]))
            group = f"floor(({args[0]})/{s})*{s}"
            return group + (' AS "time"' if name.endswith("Alias") else "")
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(since.timestamp())} AND {args[0]} <= {int(until.timestamp())}"
        raise ValueError(f"unknown macro ${name}")

    text = _MACRO.sub(macro, text)
    if "$" in text:
        raise ValueError(f"left unexpanded: {text[text.index('$') :][:40]!r}")
    return text


def expand_clickhouse(
    sql: str,
    since: datetime,
    until: datetime,
    interval: str = "1h",
    variables: Mapping[str, str] | None = None,
) -> str:
    """`sql` with the macros of Grafana's ClickHouse data source (grafana-clickhouse-datasource, its README's
    "Macros" table) and Grafana's global and template variables replaced; raises ValueError for one the
    plugin would not know. The range's ends: `$__fromTime` is `toDateTime(<from, epoch s>)`,
    `$__fromTime_ms` is `fromUnixTimestamp64Milli(<from, epoch ms>)` (so `$__toTime`, `$__toTime_ms`);
    `$__timeFilter(col)` is `col >= toDateTime(from) AND col <= toDateTime(to)` (`_ms`: with the
    millisecond forms); `$__interval_s` is the interval in seconds; `$__timeInterval(col)` is
    `toStartOfInterval(toDateTime(col), INTERVAL <s> second)` and `$__timeInterval_ms(col)`
    `toStartOfInterval(toDateTime64(col, 3), INTERVAL <ms> millisecond)`."""
    seconds = interval_seconds(interval)
    from_s, to_s = int(since.timestamp()), int(until.timestamp())
    from_ms, to_ms = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    text = sql.replace("$__interval_ms", str(int(seconds * 1000)))
    text = text.replace("$__interval_s", str(max(int(seconds), 1)))
    text = text.replace("$__interval", interval)

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} >= toDateTime({from_s}) AND {args[0]} <= toDateTime({to_s})"
        if name == "__timeFilter_ms":
            return (
                f"{args[0]} >= fromUnixTimestamp64Milli({from_ms}) AND "
                f"{args[0]} <= fromUnixTimestamp64Milli({to_ms})"
            )
        if name == "__timeInterval":
            return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {max(int(seconds), 1)} second)"
        if name == "__timeInterval_ms":
            ms = int(seconds * 1000)
            return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {ms} millisecond)"
        raise ValueError(f"unknown macro ${name}")

    text = _MACRO.sub(macro, text)
    # The argument-less ones; the `_ms` forms first, `$__fromTime` being a prefix of `$__fromTime_ms`.
    text = re.sub(r"\$__fromTime_ms\b", f"fromUnixTimestamp64Milli({from_ms})", text)
    text = re.sub(r"\$__toTime_ms\b", f"fromUnixTimestamp64Milli({to_ms})", text)
    text = re.sub(r"\$__fromTime\b", f"toDateTime({from_s})", text)
    text = re.sub(r"\$__toTime\b", f"toDateTime({to_s})", text)

    text = _substitute_variables(text, variables, keep_macros=False)
    if "$" in text:
        raise ValueError(f"left unexpanded: {text[text.index('$') :][:40]!r}")
    return text
