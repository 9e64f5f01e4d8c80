"""A report as a terminal table (rich's look, laid out line by line): right-aligned numbers, a totals row,
never a truncated digit; fitted to a terminal's width with fewer columns and bars when it asks."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Union, cast

from compactobs.reports.model import NUMERIC_KINDS, Report
from compactobs.reports.render.cells import (
    cell_text,
    format_cell,
    last_key_index,
    money_columns,
    unpriced_row,
)
from compactobs.reports.render.safe import shown

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


__all__ = ["bar", "printable_texts", "render_table"]


_RULE: Final = frozenset(" ─")
"""The characters of the line under a table's labels, one cell each (rich's box drawing)."""


def _cell_len(text: str) -> int:
    """`text`'s width in terminal cells, as rich measures it; printable ASCII (most reports, all of a piped
    one's digits and words) and the rule under the labels without importing rich: one cell a character."""
    if (text.isascii() and text.isprintable()) or _RULE.issuperset(text):
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


@dataclass(frozen=True, slots=True)
class _Line:
    """A line of a table without colour: all that the layout and the printing read of rich's Text (its
    text, its width), without rich."""

    plain: str

    @property
    def cell_len(self) -> int:
        return _cell_len(self.plain)


_TableLine = Union["_Line", "Text"]
"""A line of a table: plain (no colour, laid out without rich) or rich Text (coloured)."""


def _table_lines(report: Report, color: bool, titled: bool = False) -> list[_TableLine]:
    """The report's table as lines of rich Text, laid out as rich's Table lays out a `box.SIMPLE_HEAD` table
    of no-wrap columns as wide as their widest cell (tests hold the two to the same output). Laid out here
    because Table measures and renders every cell through its renderable protocol, about 0.1 ms a cell:
    15 s for a 10,000-call conversation, against well under a second line by line. Without colour, the
    lines are `_Line`s: no styles to carry, and no rich to import."""
    cell_len = _cell_len

    columns = report.shown_columns()
    kinds = [report.kind(c) for c in columns]
    labels = [shown(report.label(c)) for c in columns]
    # Control characters made visible first, so that widths are measured on what is shown.
    last_key = last_key_index(kinds)
    money = money_columns(report)
    rows = [
        [
            shown(cell_text(row, column, kind, i == last_key, unpriced))
            for i, (column, kind) in enumerate(zip(columns, kinds, strict=True))
        ]
        for row in report.rows
        for unpriced in (unpriced_row(row, money),)
    ]
    footers: list[str] | None = None
    if report.totals is not None:
        totals = report.totals
        footers = [
            ("Total" if index == 0 else "")
            if kind == "key" or column not in totals
            else shown(format_cell(totals[column], kind))
            for index, (column, kind) in enumerate(zip(columns, kinds, strict=True))
        ]
    widths = [
        max([cell_len(labels[i]), cell_len(footers[i]) if footers else 0] + [cell_len(r[i]) for r in rows])
        for i in range(len(columns))
    ]
    right = [kind in NUMERIC_KINDS for kind in kinds]
    bold = "bold" if color else ""
    unpriced = "yellow" if color else ""
    usd = [kind == "usd" for kind in kinds]

    def _justified(cell: str, i: int) -> str:
        pad = " " * (widths[i] - cell_len(cell))
        return pad + cell if right[i] else cell + pad

    def line(cells: list[str], style: str, body: bool) -> _TableLine:
        if not color:
            return _Line(" " + " ".join(f" {_justified(cell, i)} " for i, cell in enumerate(cells)) + " ")
        from rich.text import Span, Text

        # One string and its style spans, made into one Text: Text.append per piece cost 5 us each.
        parts = [" "]
        spans: list[Span] = []
        at = 1
        for i, cell in enumerate(cells):
            if i:
                parts.append(" ")
                at += 1
            shown = _justified(cell, i)
            end = at + 1 + len(shown)
            # The cell's own style covers its justification; the padding around it takes the row's.
            cell_style = unpriced if body and usd[i] and cell == "unpriced" else style
            if style:
                spans.append(Span(at, at + 1, style))
            if cell_style:
                spans.append(Span(at + 1, end, cell_style))
            if style:
                spans.append(Span(end, end + 1, style))
            parts += (" ", shown, " ")
            at = end + 1
        parts.append(" ")
        return Text("".join(parts), spans=spans)

    inner = sum(widths) + 3 * len(widths) - 1
    plain = _Line if not color else _text
    lines: list[_TableLine] = []
    if titled:
        # As Table puts it: its style over the table's whole width, wrapped within it when longer.
        title = report.title or report.name
        if not color and _cell_len(title) <= inner + 2:
            lines.append(_Line(title))  # one line; the padding rich adds is stripped when printed
        else:
            lines.extend(_wrap(title, bold, inner + 2))
    lines.append(plain(""))
    lines.append(line(labels, bold, False))
    lines.append(plain(" " + "─" * inner + " "))
    lines.extend(line(cells, "", True) for cells in rows)
    if footers is not None:
        lines.append(plain(""))
        lines.append(line(footers, bold, False))
    lines.append(plain(""))
    return lines


def _text(text: str) -> Text:
    from rich.text import Text

    return Text(text)


def _wrap(text: str, style: str, width: int) -> list[Text]:
    """`text` in `style`, wrapped and justified within `width` cells, one rich Text per line."""
    from rich.console import Console
    from rich.text import Text

    console = Console(width=width, color_system=None, file=io.StringIO())
    return list(Text(text, style=style, justify="left").wrap(console, width, justify="left"))


def _shown_width(lines: list[_TableLine]) -> int:
    """The widest of `lines` as printed (trailing spaces are stripped)."""
    return max((_cell_len(line.plain.rstrip()) for line in lines), default=0)


def _fitted(report: Report, fit_width: int | None, color: bool) -> tuple[Report, list[_TableLine]]:
    """The report with the widest of its column sets whose table fits `fit_width` (the narrowest when none
    does; all of them without a width), a hint to the columns left out among its notes, and its bars in the
    room left; and its lines."""
    lines = _table_lines(report, color)
    if fit_width is None:
        return report, lines
    full = report.shown_columns()
    full_width = _shown_width(lines)
    for columns in report.narrow_columns:
        if _shown_width(lines) <= fit_width:
            break
        report = replace(report, table_columns=list(columns))
        lines = _table_lines(report, color)
    shown = report.shown_columns()
    if len(shown) < len(full):
        left_out = [report.label(c) for c in full if c not in shown]
        hint = (
            f"{len(left_out)} more column(s) ({', '.join(left_out)}) on a wider terminal "
            f"(COLUMNS={full_width}) "
            "or with --format json|csv|md."
        )
        report = replace(report, notes=[*report.notes, hint])
    if report.bar_column is not None and report.bar_column in shown:
        return _with_bars(report, report.bar_column, fit_width - _shown_width(lines) - 3, lines, color)
    return report, lines


_BAR_LABEL: Final = "_bar"
_EIGHTHS: Final = " ▏▎▍▌▋▊▉"


def bar(value: float, largest: float, width: int) -> str:
    """`value` as a bar of eighth blocks, `width` cells at `largest`."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = round(value / largest * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _with_bars(
    report: Report, column: str, room: int, lines: list[_TableLine], color: bool
) -> tuple[Report, list[_TableLine]]:
    """The report with a bar column after `column`, as wide as `room` allows (at most 24 cells; none
    under 6)."""
    width = min(24, room)
    if width < 6:
        return report, lines
    values = [float(row[column]) if row.get(column) is not None else 0.0 for row in report.rows]
    largest = max(values, default=0.0)
    rows = [
        {**row, _BAR_LABEL: bar(value, largest, width)}
        for row, value in zip(report.rows, values, strict=True)
    ]
    shown = report.shown_columns()
    at = shown.index(column) + 1
    report = replace(
        report,
        rows=rows,
        table_columns=[*shown[:at], _BAR_LABEL, *shown[at:]],
        kinds={**report.kinds, _BAR_LABEL: "text"},
        labels={**report.labels, _BAR_LABEL: ""},
    )
    return report, _table_lines(report, color)


def _listed(section: Report, width: int, color: bool) -> list[_TableLine]:
    """A section too wide for a terminal as a list: its title, then each row's cells on lines wrapped
    within `width`, the continuation indented (long messages read better wrapped than cut)."""
    import textwrap

    text = _Line if not color else _text
    columns = section.shown_columns()
    lines: list[_TableLine] = [text(section.title or section.name), text("")]
    for row in section.rows:
        cells = [shown(cell_text(row, column, section.kind(column))) for column in columns]
        joined = "  ".join(cell for cell in cells if cell and cell != "-")
        wrapped = textwrap.wrap(joined, width - 2, subsequent_indent="    ", break_on_hyphens=False)
        lines += [text("  " + line) for line in wrapped]
    lines.append(text(""))
    return lines


def render_table(report: Report, console_width: int | None, color: bool, fit_width: int | None = None) -> str:
    tables: list[list[_TableLine]] = []
    if report.rows:
        report, lines = _fitted(report, fit_width, color)
        tables.append(lines)
    for section in report.sections:
        if section.rows:
            lines = _table_lines(section, color, titled=True)
            if fit_width is not None and _shown_width(lines) > fit_width:
                lines = _listed(section, fit_width, color)
            tables.append(lines)
    # Never truncate a digit: the console is as wide as the widest table needs, at least.
    needed = max([line.cell_len for lines in tables for line in lines] + [fit_width or console_width or 80])
    # Fitted to a terminal, the lines above and below the table wrap at its width too (else soft_wrap: the
    # console leaves them whole).
    wrap = fit_width is None or max(_shown_width(lines) for lines in tables or [[]]) > fit_width
    title = report.title or report.name
    if not color:
        texts = [title, *report.header, *report.notes, *(f"Warning: {w}" for w in report.warnings)]
        if wrap or all(_cell_len(text) <= needed for text in texts):
            return _plain(report, tables)
    from rich.console import Console

    out = io.StringIO()
    console = Console(
        file=out,
        width=needed,
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )
    console.print(f"[bold]{title}[/bold]" if color else title, markup=color, highlight=False, soft_wrap=wrap)
    for line in report.header:
        console.print(line, markup=False, highlight=False, style="dim" if color else None, soft_wrap=wrap)
    if report.rows:
        _print_lines(console, out, tables[0], color)
    else:
        console.print()
        console.print(report.empty_message, markup=False, soft_wrap=True)
    for lines in tables[1 if report.rows else 0 :]:
        _print_lines(console, out, lines, color)
    for note in report.notes:
        console.print(note, markup=False, highlight=False, soft_wrap=wrap)
    for warning in report.warnings:
        style = "yellow" if color else None
        console.print(f"Warning: {warning}", markup=False, highlight=False, style=style, soft_wrap=wrap)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def _plain(report: Report, tables: list[list[_TableLine]]) -> str:
    """What `render_table`'s console prints without colour when it wraps no line, without rich: each
    text as it is (printable already: `printable_texts`), a line each, trailing spaces stripped."""
    texts = [report.title or report.name, *report.header]
    if not report.rows:
        texts += ["", report.empty_message]
    texts += [line.plain for lines in tables for line in lines]
    texts += [*report.notes, *(f"Warning: {warning}" for warning in report.warnings)]
    return "".join(text.rstrip() + "\n" for text in texts)


def _print_lines(console: Console, out: io.StringIO, lines: list[_TableLine], color: bool) -> None:
    """Table lines: through the console for their colours, else as they are (the console adds nothing)."""
    if not color:
        out.write("".join(line.plain + "\n" for line in lines))
        return
    from rich.text import Text

    coloured = cast("list[Text]", lines)  # with colour every line is rich Text (`line` made them)
    console.print(Text("\n").join(coloured), no_wrap=True, crop=False)


def printable_texts(report: Report) -> Report:
    """The report with its free texts (title, header, notes, warnings, empty message; its sections' too) as
    a terminal shows them safely: they may quote ids and models."""
    return replace(
        report,
        title=None if report.title is None else shown(report.title),
        header=[shown(line) for line in report.header],
        notes=[shown(line) for line in report.notes],
        warnings=[shown(line) for line in report.warnings],
        empty_message=shown(report.empty_message),
        sections=[printable_texts(section) for section in report.sections],
    )
