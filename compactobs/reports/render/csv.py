"""A report as CSV: a header of its columns, then its rows (every column), numbers as JSON writes them."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

from compactobs.pricing.records import to_json_number
from compactobs.reports.model import Report
from compactobs.reports.render.safe import shown

__all__ = ["render_csv"]


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return json.dumps(to_json_number(value))
    return shown(str(value), "csv")


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([shown(column, "csv") for column in report.columns])
    for row in report.rows:
        writer.writerow([_csv_value(row.get(c)) for c in report.columns])
    return out.getvalue()
