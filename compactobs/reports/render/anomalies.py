"""`report anomalies` as text: JSON of its findings, one block per finding on a terminal, and the generic
CSV and Markdown over its rows."""

from __future__ import annotations

import json
from typing import Final

from compactobs.reports.anomalies import findings_of
from compactobs.reports.model import Report, to_json_value
from compactobs.reports.render import render
from compactobs.reports.render.safe import json_text, shown

__all__ = ["render_anomalies"]


def render_anomalies(
    report: Report, fmt: str, console_width: int | None = None, *, color: bool = False
) -> str:
    """`json`: `{"report": "anomalies", "findings": [...], "counts", "thresholds", "warnings"}`; `table`: one
    block per finding (severity, kind, conversation, calls, message, evidence, remedy); `csv` and `md`: the
    generic renderers over the rows."""
    if fmt == "json":
        document = {
            "report": "anomalies",
            "findings": to_json_value(findings_of(report)),
            "counts": report.extra.get("counts", {}),
            "thresholds": to_json_value(report.extra.get("thresholds", {})),
            "warnings": list(report.warnings),
        }
        return json_text(document)
    if fmt != "table":
        return render(report, fmt, console_width, color=color)
    return _render_blocks(report, console_width or 100, color)


_STYLE: Final = {"critical": "bold red", "warning": "yellow"}


def _render_blocks(report: Report, width: int, color: bool) -> str:
    import io

    from rich.console import Console
    from rich.markup import escape
    from rich.padding import Padding
    from rich.text import Text

    out = io.StringIO()
    console = Console(
        file=out,
        width=max(width, 60),
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
    )

    def indent(line: str, style: str = "") -> None:
        console.print(Padding(Text(shown(line), style=style if color else ""), (0, 0, 0, 2)))

    console.print(Text(shown(report.title or report.name), style="bold" if color else ""))
    for line in report.header:
        console.print(Text(shown(line), style="dim" if color else ""))
    findings = findings_of(report)
    console.print()
    if not findings:
        console.print(report.empty_message, markup=False)
    counts = report.extra.get("counts", {})
    for finding in findings:
        severity = finding["severity"]
        title = Text()
        title.append(severity.upper(), style=_STYLE.get(severity, "") if color else "")
        title.append(f"  {shown(finding['kind'])}")
        if finding["conversation_id"] is not None:
            title.append(f"  conversation {shown(finding['conversation_id'])}")
        console.print(title)
        # Wrapped lines stay indented under their finding.
        indent(finding["message"])
        ids = finding["call_ids"]
        if ids:
            indent("calls: " + " ".join(ids), "dim")
        evidence = ", ".join(
            f"{key}={json.dumps(to_json_value(value))}"
            for key, value in finding["evidence"].items()
            if key != "steps" and value is not None
        )
        indent("evidence: " + evidence)
        indent("remedy: " + finding["remedy"], "green")
        console.print()
    if findings:
        summary = ", ".join(f"{n} {level}" for level, n in counts.items())
        console.print(f"{len(findings)} finding(s): {escape(summary)}", markup=False)
    for warning in report.warnings:
        console.print(Text(f"Warning: {shown(warning)}", style="yellow" if color else ""))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
