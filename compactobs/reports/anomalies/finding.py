"""What an anomaly is: a Finding (kind, severity, conversation, calls, message, evidence, remedy), the kinds
and their order, the exit code they set, and how evidence writes money, shares and times."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final, Literal

from compactobs.reports.measures.anomalies import MAX_CALL_IDS

__all__ = [
    "EXIT_FINDINGS",
    "KINDS",
    "MAX_CALL_IDS",
    "SEVERITIES",
    "Finding",
    "Severity",
    "exit_code_for",
    "few_ids",
    "money_text",
    "pct",
    "ratio",
    "share_span",
    "total_cost",
    "usd",
    "when",
]

Severity = Literal["warning", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("warning", "critical")
"""From least to most severe."""

KINDS: Final = (
    "compaction_loop",
    "budget_exceeded",
    "ineffective_compaction",
    "failed_compaction",
    "compaction_cost_share",
    "cache_miss_after_compaction",
    "error_burst",
    "unpriced_model",
)
"""Every kind, in the order findings are listed (after severity)."""

EXIT_FINDINGS: Final = 3
"""The exit code of `report anomalies --fail-on LEVEL` when a finding at LEVEL or above exists (2 is taken by
usage errors, 1 by crashes)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomaly. `evidence` holds plain JSON values (money as Decimal rounded to 6 places)."""

    kind: str
    severity: Severity
    conversation_id: str | None
    call_ids: tuple[str, ...]
    message: str
    evidence: Mapping[str, Any]
    remedy: str
    first_ms: int = 0
    """When the first call involved started (epoch ms): the order findings are listed in."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "conversation_id": self.conversation_id,
            "call_ids": list(self.call_ids),
            "message": self.message,
            "evidence": dict(self.evidence),
            "remedy": self.remedy,
        }


def exit_code_for(findings: Iterable[Finding | Mapping[str, Any]], fail_on: str | None) -> int:
    """EXIT_FINDINGS when a finding (a Finding or its JSON dict) is at `fail_on` or above, else 0 (always 0
    when `fail_on` is None)."""
    if fail_on is None:
        return 0
    floor = SEVERITIES.index(fail_on)
    for finding in findings:
        severity = finding["severity"] if isinstance(finding, Mapping) else finding.severity
        if SEVERITIES.index(severity) >= floor:
            return EXIT_FINDINGS
    return 0


_SIX: Final = Decimal("0.000001")


def usd(value: Any) -> Decimal | None:
    """Money for evidence: Decimal rounded to 6 places (never -0)."""
    if value is None:
        return None
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    amount = amount.quantize(_SIX)
    return amount if amount != 0 else Decimal("0.000000")


def money_text(value: Any) -> str:
    """Money in a message: $ with 4 decimals, as tables show it."""
    return f"${Decimal(str(value)):,.4f}"


def share_span(low: float, high: float) -> str:
    return pct(low) if pct(low) == pct(high) else f"{pct(low)}-{pct(high)}"


def total_cost(values: Iterable[Decimal | None]) -> Decimal | None:
    """The sum of the known amounts; None when none is known (unpriced, or no iteration rows)."""
    known = [Decimal(str(v)) for v in values if v is not None]
    return sum(known, Decimal(0)) if known else None


def ratio(value: float) -> float:
    return round(value, 4)


def pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def when(ms: int, tz: Any) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(tz).isoformat(timespec="seconds")


def few_ids(ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(ids[:MAX_CALL_IDS])
