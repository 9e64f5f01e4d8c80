"""A report as a Markdown document: its title, header lines, table, sections, notes and warnings."""

from __future__ import annotations

from compactobs.reports.model import NUMERIC_KINDS, Report
from compactobs.reports.render.cells import (
    cell_text,
    format_cell,
    last_key_index,
    money_columns,
    unpriced_row,
)
from compactobs.reports.render.safe import shown

__all__ = ["render_md"]


def _md_escape(text: str) -> str:
    return shown(text, "md")


def _render_md_table(report: Report) -> list[str]:
    columns = report.shown_columns()
    kinds = [report.kind(c) for c in columns]
    lines = [
        # Column labels are the report's own words (JSON keys among them): only a pipe would break the row.
        "| " + " | ".join(report.label(c).replace("|", "\\|") for c in columns) + " |",
        "|" + "|".join("---:" if k in NUMERIC_KINDS else "---" for k in kinds) + "|",
    ]
    last_key = last_key_index(kinds)
    money = money_columns(report)
    for row in report.rows:
        unpriced = unpriced_row(row, money)
        cells = [
            _md_escape(cell_text(row, c, k, i == last_key, unpriced))
            for i, (c, k) in enumerate(zip(columns, kinds, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if report.totals is not None:
        cells = []
        for index, (column, kind) in enumerate(zip(columns, kinds, strict=True)):
            if kind == "key" or column not in report.totals:
                cells.append("**Total**" if index == 0 else "")
            else:
                cells.append(f"**{_md_escape(format_cell(report.totals[column], kind))}**")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_md(report: Report) -> str:
    lines = [f"## {_md_escape(report.title or report.name)}", ""]
    if report.header:
        lines += [_md_escape(h) + "  " for h in report.header]
        lines.append("")
    if report.rows:
        lines += _render_md_table(report)
    else:
        lines.append(_md_escape(report.empty_message))
    for section in report.sections:
        lines += ["", f"### {_md_escape(section.title or section.name)}", ""]
        lines += _render_md_table(section) if section.rows else [_md_escape(section.empty_message)]
    if report.notes:
        lines.append("")
        lines += [f"{_md_escape(note)}  " for note in report.notes]
    if report.warnings:
        lines.append("")
        lines += [f"> **Warning:** {_md_escape(w)}" for w in report.warnings]
    return "\n".join(lines) + "\n"
