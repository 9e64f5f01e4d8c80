"""A report as a JSON document: `{"report": name, ...extra, "rows": [...], "totals": {...}, "warnings":
[...]}`, money as numbers rounded to 6 places."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from compactobs.pricing.records import to_json_number
from compactobs.reports.model import Report
from compactobs.reports.render.safe import json_text

__all__ = ["render_json", "to_json_value"]


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


def render_json(report: Report) -> str:
    document: dict[str, Any] = {"report": report.name}
    document.update({k: to_json_value(v) for k, v in report.extra.items()})
    document["rows"] = [{c: to_json_value(row.get(c)) for c in report.columns} for row in report.rows]
    document["totals"] = (
        None if report.totals is None else {k: to_json_value(v) for k, v in report.totals.items()}
    )
    document["warnings"] = list(report.warnings)
    return json_text(document)
