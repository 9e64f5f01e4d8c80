"""The `report anomalies` Report: every kind's findings over a source's records, most severe first."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.anomalies.budget import BudgetExceeded
from compactobs.reports.anomalies.compaction import compaction_findings
from compactobs.reports.anomalies.error_burst import ErrorBurst
from compactobs.reports.anomalies.finding import KINDS, SEVERITIES, Finding
from compactobs.reports.anomalies.unpriced import UnpricedModel
from compactobs.reports.model import Filters, Report, to_json_value
from compactobs.reports.sources import Source, as_source
from compactobs.reports.sources.base import AnomalyData
from compactobs.reports.thresholds import Thresholds
from compactobs.rules import Budgets

__all__ = ["COLUMNS", "anomalies_report", "find_anomalies", "findings_of"]


def find_anomalies(
    source: Engine | Source,
    filters: Filters,
    thresholds: Thresholds | None = None,
    budgets: Budgets | None = None,
) -> list[Finding]:
    """Every finding over the calls `filters` select, most severe first, then by kind (`KINDS` order),
    then by the time of the first call involved."""
    thresholds = thresholds or Thresholds()
    data: AnomalyData = as_source(source).anomaly_data(filters)
    findings: list[Finding] = []
    pool = ThreadPoolExecutor(1, "compactobs-anomalies") if data.concurrent else None

    def later(fetch: Callable[[], Iterable[Sequence[Any]]]) -> Callable[[], Iterable[Sequence[Any]]]:
        return pool.submit(fetch).result if pool is not None else fetch

    try:
        budget_totals = later(lambda: data.budget_totals(budgets))
        unpriced_groups = later(data.unpriced_groups)
        error_hours = later(lambda: data.error_hours(thresholds))
        findings.extend(compaction_findings(data.compaction_rows(thresholds), thresholds))
        findings.extend(BudgetExceeded.findings(budget_totals(), data.budget_crossings, budgets))
        findings.extend(UnpricedModel.findings(unpriced_groups(), data.unpriced_sample, filters.tz))
        findings.extend(ErrorBurst.findings(error_hours(), data.error_sample, thresholds, filters.tz))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    findings.sort(
        key=lambda f: (
            -SEVERITIES.index(f.severity),
            KINDS.index(f.kind),
            f.first_ms,
            f.conversation_id or "",
        )
    )
    return findings


COLUMNS: Final = ["severity", "kind", "conversation_id", "call_ids", "message", "evidence", "remedy"]
_evidence_text: Final = json.JSONEncoder(ensure_ascii=False).encode
"""A finding's evidence as JSON text (one encoder for every row: `json.dumps` with options makes one a
call)."""


def anomalies_report(
    source: Engine | Source,
    filters: Filters,
    thresholds: Thresholds | None = None,
    budgets: Budgets | None = None,
    budgets_source: str | None = None,
) -> Report:
    """The `report anomalies` Report: one row per finding (`call_ids` space-separated and `evidence` as JSON
    text in the rows, for CSV and Markdown); `extra["findings"]` holds the findings as JSON data."""
    thresholds = thresholds or Thresholds()
    findings = find_anomalies(source, filters, thresholds, budgets)
    rows = [
        {
            "severity": f.severity,
            "kind": f.kind,
            "conversation_id": f.conversation_id,
            "call_ids": " ".join(f.call_ids),
            "message": f.message,
            "evidence": _evidence_text(to_json_value(f.evidence)),
            "remedy": f.remedy,
        }
        for f in findings
    ]
    counts = {level: sum(1 for f in findings if f.severity == level) for level in reversed(SEVERITIES)}
    header = [
        filters.describe(),
        "thresholds: "
        + ", ".join(f"{name.replace('_', '-')} {value}" for name, value in _threshold_items(thresholds)),
        f"budgets: {budgets_source}" if budgets_source else "budgets: as stored with the calls",
    ]
    return Report(
        name="anomalies",
        columns=list(COLUMNS),
        rows=rows,
        header=header,
        extra={
            "findings": [f.as_dict() for f in findings],
            "counts": counts,
            "thresholds": dict(_threshold_items(thresholds)),
        },
        kinds={column: "text" for column in COLUMNS},
        table_columns=["severity", "kind", "conversation_id", "message", "remedy"],
        title="Anomalies",
        empty_message="No anomalies found.",
    )


def _threshold_items(thresholds: Thresholds) -> list[tuple[str, Any]]:
    return [(name, getattr(thresholds, name)) for name in Thresholds.__slots__]


def findings_of(report: Report) -> list[dict[str, Any]]:
    """The findings of an anomalies Report, as JSON data."""
    return list(report.extra.get("findings", []))
