"""Grafana's PostgreSQL data source macros, expanded as Grafana documents and does, for a fixed range: what
a dashboard's SQL becomes before it reaches the database.

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

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{([_a-zA-Z0-9]+)\}|\$([_a-zA-Z][_a-zA-Z0-9]*)")
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

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.startswith("__"):
            return match.group(0)  # a macro, below
        if variables is None or name not in variables:
            raise ValueError(f"unknown template variable {name!r}")
        return variables[name]

    text = _VARIABLE.sub(variable, text)

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
