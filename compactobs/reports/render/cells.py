"""Table and Markdown cells: a report's values as text (thousands separators, dollars, percentages), and
money left unpriced saying so."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from compactobs.reports.model import ColumnKind, Report

__all__ = ["cell_text", "format_cell", "last_key_index", "money_columns", "unpriced_row"]


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
    return str(value)  # as it is: each renderer shows it safely (`render.safe.shown`)


def unpriced_row(row: Mapping[str, Any], money: Sequence[str]) -> bool:
    """Whether a row's figures are unpriced: it has unpriced calls and none of its `money` columns is known
    (its other calls, if any, have no usage to price)."""
    return bool(row.get("unpriced_calls")) and all(row.get(column) is None for column in money)


def cell_text(
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


def money_columns(report: Report) -> list[str]:
    return [column for column in report.columns if report.kind(column) == "usd"]


def last_key_index(kinds: Sequence[ColumnKind]) -> int:
    """The index of the last group-key column, -1 when there is none."""
    return max((i for i, kind in enumerate(kinds) if kind == "key"), default=-1)
