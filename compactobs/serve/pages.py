"""The HTML pages of `serve`, built from reports: every string from the data goes through `html.escape`
here, and every link to a conversation or call is percent-encoded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any, Final
from urllib.parse import quote, urlencode

from compactobs.reports.conversation import TYPE_COSTS
from compactobs.reports.model import NUMERIC_KINDS, Report
from compactobs.reports.render.cells import cell_text
from compactobs.serve.anomalies import Anomalies
from compactobs.serve.charts import bar_chart, context_chart, stacked_chart

__all__ = ["NAV", "call_link", "conversation_link", "page", "report_table"]

NAV: Final = (
    ("/", "Overview"),
    ("/conversations", "Conversations"),
    ("/cache", "Cache"),
    ("/ops", "Ops"),
    ("/anomalies", "Anomalies"),
    ("/tune", "Tune"),
    ("/claude-code", "Claude Code"),
)
CLAUDE_CODE: Final = "claude-code"
"""The service of the calls `collect` and `import claude-code` record from Claude Code."""


def conversation_link(conversation_id: str) -> str:
    return f'<a href="/conversation/{quote(conversation_id, safe="")}">{escape(conversation_id)}</a>'


def call_link(call_id: str) -> str:
    return f'<a href="/call/{quote(call_id, safe="")}">{escape(call_id)}</a>'


def page(title: str, body: str, here: str = "") -> str:
    """A whole page: the navigation, the title and `body` (already HTML)."""
    current = ' class="here"'
    nav = "".join(f'<a href="{href}"{current if href == here else ""}>{label}</a>' for href, label in NAV)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · compactobs</title>"
        '<link rel="stylesheet" href="/static/style.css"><link rel="icon" href="data:,"></head>'
        f"<body><header><nav>{nav}</nav></header><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def _cell(report: Report, row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if column in ("conversation_id", "conversation") and isinstance(value, str):
        return f"<td>{conversation_link(value)}</td>"
    if column == "call_id" and isinstance(value, str):
        return f"<td>{call_link(value)}</td>"
    kind = report.kind(column)
    numeric = ' class="num"' if kind in NUMERIC_KINDS else ""
    return f"<td{numeric}>{escape(cell_text(row, column, kind))}</td>"


def report_table(
    report: Report,
    rows: Sequence[Mapping[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
    sort_links: Mapping[str, str] | None = None,
) -> str:
    """A report's rows (or `rows`) as an HTML table, its totals last; `sort_links`: a column's header links
    to that URL."""
    shown = list(columns or report.shown_columns())
    links = sort_links or {}
    head = []
    for column in shown:
        label = escape(report.label(column))
        if column in links:
            label = f'<a href="{escape(links[column])}">{label}</a>'
        numeric = ' class="num"' if report.kind(column) in NUMERIC_KINDS else ""
        head.append(f"<th{numeric}>{label}</th>")
    body = [
        "<tr>" + "".join(_cell(report, row, column) for column in shown) + "</tr>"
        for row in (report.rows if rows is None else rows)
    ]
    if report.totals and rows is None:
        body.append(
            '<tr class="totals">'
            + "".join(
                (
                    f'<td class="num"><b>{escape(cell_text(report.totals, c, report.kind(c)))}</b></td>'
                    if c in report.totals
                    else "<td></td>"
                )
                for c in shown
            )
            + "</tr>"
        )
    if not body:
        return f'<p class="note">{escape(report.empty_message)}</p>'
    return f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def texts(lines: Iterable[str], css: str = "note") -> str:
    return "".join(f'<p class="{css}">{escape(line)}</p>' for line in lines)


def findings(items: Sequence[Mapping[str, Any]]) -> str:
    """Anomaly findings, each linking to the conversation it names."""
    out = []
    for finding in items:
        who = finding.get("conversation_id")
        link = f" in {conversation_link(who)}" if isinstance(who, str) and who else ""
        out.append(
            f'<div class="finding {escape(str(finding.get("severity", "")))}" data-kind="'
            f'{escape(str(finding.get("kind", "")))}"><b>{escape(str(finding.get("severity", "")))}: '
            f"{escape(str(finding.get('kind', '')))}</b>{link}<br>{escape(str(finding.get('message', '')))}"
            "</div>"
        )
    return "".join(out) or '<p class="note">No anomalies found.</p>'


def _spend_by(report: Report, key: str) -> tuple[list[str], list[float]]:
    """The priced spend per value of `key`, in the report's order: an unpriced row (a row of its own, with
    the same key as the priced one beside it) adds nothing, as in the report's totals."""
    spend: dict[str, float] = {}
    for row in report.rows:
        label = str(row.get(key))
        spend[label] = spend.get(label, 0.0) + float(row.get("cost_usd") or 0)
    return list(spend), list(spend.values())


OVERVIEW_FINDINGS: Final = 20
"""The findings the overview shows at most: the first in the report's order (the most severe first)."""


def _when(epoch_s: float, now_s: float) -> str:
    """A moment in the server's local time: HH:MM:SS and its zone, with the date when not today."""
    moment = datetime.fromtimestamp(epoch_s).astimezone()
    today = datetime.fromtimestamp(now_s).astimezone().date()
    return moment.strftime("%H:%M:%S %Z" if moment.date() == today else "%Y-%m-%d %H:%M:%S %Z")


def overview_anomalies(state: Anomalies | None, link: str, now_s: float) -> str:
    """The overview's anomalies: the worker's latest findings (`serve.anomalies`) with when they were
    computed and the calls they cover, or that they are being computed, and the worker's last error in one
    line; `state` None (the page has filters the worker does not compute) is the link alone."""
    live = f'<a id="anomalies" href="{escape(link)}">'
    if state is None:
        return (
            f'<p class="note" id="anomalies-state">{live}The anomalies of these filters</a> are on a page of '
            "their own: they read every call, which takes seconds on a large store (the overview keeps "
            "them for its unfiltered view).</p>"
        )
    failed = (
        f'<p class="warnings" id="anomalies-error">The anomalies could not be computed at '
        f"{escape(_when(state.error_at, now_s))}: {escape(state.error)}</p>"
        if state.error is not None and state.error_at is not None
        else ""
    )
    if state.findings is None or state.started is None or state.stamp is None:
        waiting = (
            ""
            if failed
            else '<p class="note" id="anomalies-state">The anomalies are being computed; refresh in a '
            "moment.</p>"
        )
        return waiting + failed + f'<p class="note">{live}The anomalies page</a> computes them live.</p>'
    calls, _first, last = state.stamp
    covered = (
        f"{calls:,} call{'' if calls == 1 else 's'}, the last started {_when(last / 1000, now_s)}"
        if calls and last is not None
        else "no call"
    )
    seconds = f" in {state.seconds:.1f} s" if state.seconds is not None else ""
    shown = state.findings[:OVERVIEW_FINDINGS]
    more = (
        f'<p class="note" id="anomalies-more">The first {len(shown)} of {len(state.findings):,} findings '
        f'(the most severe first); <a href="{escape(link)}">all of them</a> on the anomalies page.</p>'
        if len(state.findings) > len(shown)
        else ""
    )
    return (
        f'<p class="note" id="anomalies-state">As of {escape(_when(state.started, now_s))} (computed'
        f"{escape(seconds)}), over {escape(covered)}; {live}live on their own page</a>.</p>"
        + failed
        + findings(shown)
        + more
        + texts(state.warnings, "warnings")
    )


def overview(
    by_day: Report,
    by_model: Report,
    filters: Mapping[str, Sequence[str]],
    anomalies: Anomalies | None,
    now_s: float,
) -> str:
    """The anomalies first (`overview_anomalies`: computed off the request path, never waited for), then
    the spend from the rollups."""
    totals = by_day.totals or {}
    billed = totals.get("cost_usd")
    hidden = totals.get("hidden_cost_usd")
    share = f" ({float(hidden / billed) * 100:.1f}% of the bill)" if billed and hidden is not None else ""
    headline = (
        f'<p class="headline">Billed <b id="billed">{escape(cell_text(totals, "cost_usd", "usd"))}</b>; '
        f"top-level usage says {escape(cell_text(totals, 'top_level_cost_usd', 'usd'))}; "
        f"{escape(cell_text(totals, 'hidden_cost_usd', 'usd'))} hidden in compaction iterations"
        f"{escape(share)}.</p>"
        if billed is not None
        else f'<p class="note">{escape(by_day.empty_message)}</p>'
    )
    days, day_costs = _spend_by(by_day, "day")
    models, model_costs = _spend_by(by_model, "model")
    query = urlencode([(key, value) for key, values in filters.items() for value in values])
    link = "/anomalies" + (f"?{query}" if query else "")
    return (
        "<h2>Anomalies</h2>"
        + overview_anomalies(anomalies, link, now_s)
        + headline
        + "<h2>Spend by day</h2>"
        + bar_chart("spend-by-day", "Spend by day", days, day_costs)
        + "<h2>Spend by model</h2>"
        + bar_chart("spend-by-model", "Spend by model", models, model_costs)
        + report_table(by_model, columns=["model", "calls", "cost_usd", "hidden_cost_usd"])
        + texts(by_day.warnings, "warnings")
    )


def claude_code(by_day: Report, by_model: Report, prices: Report) -> str:
    """The `claude-code` service's calls: spend by day and by model, its compaction spend, and compactobs'
    price beside Claude Code's own `cost_usd`."""
    totals = by_day.totals or {}
    headline = (
        f'<p class="headline">{totals.get("calls", 0):,} Claude Code calls (collected or imported), billed '
        f'<b id="claude-code-billed">{escape(cell_text(totals, "cost_usd", "usd"))}</b>, of which '
        f'<b id="claude-code-compaction">{escape(cell_text(totals, "compaction_cost_usd", "usd"))}</b> '
        "in compaction iterations (Claude Code's own context summaries are billed as compaction).</p>"
        if totals.get("cost_usd") is not None
        else f'<p class="note">No call of service {CLAUDE_CODE} in this window: record them with compactobs '
        "collect or import claude-code.</p>"
    )
    days, day_costs = _spend_by(by_day, "day")
    models, model_costs = _spend_by(by_model, "model")
    columns = [c for c in ("model", "calls", "cost_usd", "compaction_cost_usd") if c in by_model.columns]
    return (
        headline
        + "<h2>Spend by day</h2>"
        + bar_chart("claude-code-by-day", "Claude Code spend by day", days, day_costs)
        + "<h2>Spend by model</h2>"
        + bar_chart("claude-code-by-model", "Claude Code spend by model", models, model_costs)
        + report_table(by_model, columns=columns)
        + "<h2>compactobs' price beside Claude Code's own cost_usd</h2>"
        + f'<div id="source-cost">{report_table(prices)}{texts(prices.notes)}</div>'
        + texts([*by_day.warnings, *prices.warnings], "warnings")
    )


def conversations(
    listing: Report, rows: Sequence[Mapping[str, Any]], query: str, sort: str, page_no: int, pages: int
) -> str:
    columns = [
        c
        for c in ("conversation_id", "calls", "compactions", "cost_usd", "hidden_cost_usd")
        if c in listing.columns
    ]

    def url(**changes: Any) -> str:
        params = {"q": query, "sort": sort, "page": page_no, **changes}
        return "/conversations?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

    sort_links: dict[str, str] = {c: url(sort=c, page=1) for c in columns}
    pager = []
    if page_no > 1:
        pager.append(f'<a rel="prev" href="{escape(url(page=page_no - 1))}">previous</a>')
    pager.append(f"page {page_no} of {pages}")
    if page_no < pages:
        pager.append(f'<a rel="next" href="{escape(url(page=page_no + 1))}">next</a>')
    return (
        '<form class="search" method="get" action="/conversations"><input name="q" placeholder="conversation '
        f'id (globs: *)" value="{escape(query)}"><input type="hidden" name="sort" value="{escape(sort)}">'
        "<button>Search</button></form>"
        + report_table(listing, rows, columns, sort_links)
        + f'<p class="pager">{" ".join(pager)}</p>'
    )


def conversation(
    report: Report, by_type: Report, cache: Report, breaches: Sequence[Mapping[str, Any]]
) -> str:
    rows = report.rows
    contexts = [r.get("context_tokens") for r in rows]
    triggers = [r.get("trigger_tokens") for r in rows]
    compactions = [int(r.get("compactions") or 0) for r in rows]
    extra = report.extra
    summary = (
        f'<p class="headline">{extra.get("calls", 0):,} calls, {extra.get("compactions", 0):,} compactions '
        f"({extra.get('failed_compactions', 0):,} failed), cost {escape(cell_text(extra, 'cost_usd', 'usd'))}"
        "</p>"
    )
    return (
        summary
        + texts(report.header)
        + "<h2>Guard breaches and anomalies</h2>"
        + findings(breaches)
        + "<h2>Context against the trigger</h2>"
        + context_chart(contexts, triggers, compactions)
        + "<h2>Cost per call, by iteration type</h2>"
        + cost_per_call(report, breaches)
        + "<h2>Cost by iteration type</h2>"
        + report_table(
            by_type, columns=[c for c in ("iteration_type", "iterations", "cost_usd") if c in by_type.columns]
        )
        + "<h2>Cache reads and writes</h2>"
        + report_table(cache)
        + "<h2>Calls</h2>"
        + report_table(report)
        + texts(report.warnings, "warnings")
    )


BREACH_KINDS: Final = frozenset({"budget_exceeded"})
"""The findings marked on the per-call chart: the guard's rule, broken at the call they name."""


def cost_per_call(report: Report, found: Sequence[Mapping[str, Any]]) -> str:
    """Each call's cost as a bar stacked by iteration type (the conversation report's TYPE_COSTS), and a
    mark at each call where a budget was crossed."""
    rows = report.rows
    numbers = {r.get("call_id"): i for i, r in enumerate(rows)}
    marks: dict[int, str] = {}
    for finding in found:
        if finding.get("kind") in BREACH_KINDS:
            for call_id in finding.get("call_ids") or ():
                if call_id in numbers:
                    marks[numbers[call_id]] = f"{finding.get('kind')}: {finding.get('message', '')}"
    parts = [(report.label(name), [r.get(name) for r in rows]) for name in TYPE_COSTS]
    labels = [str(r.get("n")) for r in rows]
    return stacked_chart(
        "cost-per-call", "Cost per call by iteration type", labels, parts, marks, "budget crossed"
    )


def generic(report: Report) -> str:
    """A report as its tables: header, rows, sections, notes, warnings."""
    parts = [texts(report.header), report_table(report)]
    for section in report.sections:
        parts.append(f"<h2>{escape(section.title or section.name)}</h2>" + report_table(section))
    parts.append(texts(report.notes))
    parts.append(texts(report.warnings, "warnings"))
    return "".join(parts)
