"""A report as a JSON document: `{"report": name, ...extra, "rows": [...], "totals": {...}, "warnings":
[...]}`, money as numbers rounded to 6 places."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compactobs.reports.model import Report, to_json_value
from compactobs.reports.render.safe import json_text

if TYPE_CHECKING:
    from compactobs._types import JSONObject

__all__ = ["render_json", "to_json_value"]


def render_json(report: Report) -> str:
    document: JSONObject = {"report": report.name}
    document.update({k: to_json_value(v) for k, v in report.extra.items()})
    document["rows"] = [{c: to_json_value(row.get(c)) for c in report.columns} for row in report.rows]
    document["totals"] = (
        None if report.totals is None else {k: to_json_value(v) for k, v in report.totals.items()}
    )
    document["warnings"] = list(report.warnings)
    return json_text(document)
