"""Reports as text: `render(report, fmt)` for table, json, csv and md. Every string from outside goes
through `render.safe` for its format."""

from __future__ import annotations

from typing import Final, Literal

from compactobs.reports.model import Report, ReportInputError
from compactobs.reports.render.csv import render_csv
from compactobs.reports.render.json import render_json
from compactobs.reports.render.md import render_md
from compactobs.reports.render.table import printable_texts, render_table

__all__ = ["FORMATS", "Format", "render"]

Format = Literal["table", "json", "csv", "md"]
FORMATS: Final[tuple[str, ...]] = ("table", "json", "csv", "md")


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
    `safe.shown` for its format (no control sequence, bidi override or line break acts; no formula in
    csv; no Markdown or HTML in md); JSON keeps it exact, those characters escaped (`safe.json_text`)."""
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "md":
        return render_md(report)
    if fmt == "table":
        return render_table(printable_texts(report), console_width, color, fit_width)
    raise ReportInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
