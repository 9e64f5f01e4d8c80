"""`reconcile`: the store's figures beside Anthropic's own usage and cost reports, and every difference
explained where it can be.

```python
fetched = anthropic_reports.fetch(client, start, stop, "1d", ("model",))
report = reconcile_report(engine, fetched, Window(start, stop, "day"), groups=("model",))
```

Per UTC bucket (day or hour, the reports' own edges) and group (model, service tier, speed, inference geo,
workspace, API key), for requests, uncached input, cache read, cache write 5m and 1h, output and web
search requests, and for the cost: Anthropic's list amount and its amount after discounts, against
compactobs' list price. The store's side is `report cost`'s own measures
(`sources.sql.cost.aggregate_calls`), over the calls that carried usage (a call that failed before any
usage is no request Anthropic bills).

A difference is a figure that differs by more than the tolerance (a percentage of the larger side; money
below $0.000001 is rounding). Each is set against what can explain it, in this order:

1. `other_scope`: Anthropic's traffic outside the workspaces / API keys compactobs records (--workspace,
   --api-key);
2. `spool`: calls compactobs recorded that still wait in the spool (the database was unreachable);
3. `bucket_edge`: a bucket short by as many requests as the next (or previous) one has too many, with
   the window's figures agreeing: the two sides dated the same calls either side of a bucket edge;
4. `uninstrumented`: Anthropic counted more requests than compactobs recorded: calls from clients
   compactobs does not instrument, collect or import (from Claude Code): their tokens, and their cost at
   the report's rates;
   `not_in_report`: the reverse, compactobs recorded requests that Anthropic's report does not have (yet);
5. `price_drift`: for a token class, the rate Anthropic's list amount implies (list amount / tokens) is not
   compactobs' rate; the effect is the difference in rate times compactobs' tokens;
6. `discount`: Anthropic's amount after discounts is below its list amount (priority tier commitments,
   negotiated discounts); above it is a surcharge;
7. `unpriced`: calls compactobs could not price (no list price for the model);
8. `unexplained`: whatever is left above the tolerance.

Differences are worked per model whatever the rows show (the model is always one of the reports' groups):
a rate is one model's rate, never a blend, so an uninstrumented call is valued at its own model's rates and
a mix of models is no drift. Rows without the model sum their models; each explanation names its model.

Where server-side telemetry is on (a telemetry destination pointed at `compactobs collect`), the report
also names the requests that reached the API and no client recorded (`reconciling/coverage.py`): measured,
up to 20 listed, the rest counted.

The list cost difference splits exactly: Anthropic's list - compactobs' = other scope + spool +
uninstrumented (extra tokens at the report's rates) + drift (rate difference x compactobs' tokens) +
whatever the report lists beyond tokens and web search (code execution...).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Final

from sqlalchemy import Engine

from compactobs._types import JSONObject, SQLRecord
from compactobs._words import counted
from compactobs.anthropic_reports import CLASSES, ApiFigures, Fetched
from compactobs.reports.model import Report
from compactobs.reports.reconciling.coverage import coverage, sources
from compactobs.reports.reconciling.explain import Explanation, Row, bucket_edges, explain
from compactobs.reports.reconciling.figures import (
    BY_WIDTH,
    GROUPS,
    MONEY_FLOOR,
    ZERO,
    Key,
    Scope,
    Side,
    Window,
    api_dimensions,
    api_side,
    minus,
    parse_groups,
    spool_side,
    store_side,
    worked,
)

__all__ = [
    "BY_WIDTH",
    "GROUPS",
    "Explanation",
    "Scope",
    "Window",
    "api_dimensions",
    "parse_groups",
    "reconcile_report",
    "worst_gap",
]


def worst_gap(report: Report) -> Decimal:
    """The largest difference over the window, in percent of Anthropic's figure (in scope): requests, each
    class, list cost. What --fail-over compares."""
    return Decimal(str(report.extra["gap_pct"]))


def reconcile_report(
    engine: Engine,
    fetched: Fetched,
    window: Window,
    groups: Sequence[str] = (),
    *,
    scope: Scope | None = None,
    spooled: Iterable[SQLRecord] = (),
    tolerance_pct: Decimal = ZERO,
) -> Report:
    """The store's figures beside Anthropic's (`fetched` over `window`), row by bucket and group, each
    difference explained (see the module docstring). `spooled`: call rows still waiting in the spool.

    Raises ReportInputError for a grouping the store cannot follow."""
    scope = scope or Scope()
    tolerance = Decimal(tolerance_pct) / 100
    groups = tuple(groups)
    worked_groups = worked(groups)
    store = store_side(engine, window, worked_groups, scope)
    spool = spool_side(spooled, window, worked_groups, scope)
    api, outside = api_side(fetched, worked_groups, scope)
    rows: dict[Key, Row] = {}
    for key in sorted(
        {*store, *spool, *api}, key=lambda k: (k[0], tuple("" if v is None else str(v) for v in k[1]))
    ):
        if not window.start <= key[0] < window.stop:
            continue
        rows[key] = Row(
            key[0],
            key[1],
            api.get(key, ApiFigures()),
            outside.get(key, ApiFigures()),
            store.get(key, Side()),
            spool.get(key, Side()),
        )
    bucket_edges(rows, window)
    for row in rows.values():
        explain(row, tolerance, fetched.refreshed_at, window)

    # Shown rows sum the worked ones over the models the grouping does not show.
    shown: dict[Key, list[Row]] = {}
    for (bucket, values), row in rows.items():
        shown.setdefault((bucket, values[: len(groups)]), []).append(row)
    model_hidden = "model" not in groups
    out_rows: list[JSONObject] = []
    explanations: list[JSONObject] = []
    totals_api, totals_out, totals_store = ApiFigures(), ApiFigures(), Side()
    for (bucket, values), parts in shown.items():
        keys = {"bucket": window.label(bucket), **dict(zip(groups, values, strict=True))}
        api_sum, store_sum = ApiFigures(), Side()
        found: list[str] = []
        for row in parts:
            api_sum.add(row.api)
            store_sum.add(row.store)
            totals_out.add(row.outside)
            for e in row.explanations:
                found += [] if e.kind in found else [e.kind]
                if model_hidden:
                    model = row.group[-1]
                    explanations.append(
                        {
                            **keys,
                            "model": model,
                            "kind": e.kind,
                            "message": f"{model}: {e.message}",
                            "figures": e.figures,
                        }
                    )
                else:
                    explanations.append({**keys, "kind": e.kind, "message": e.message, "figures": e.figures})
        totals_api.add(api_sum)
        totals_store.add(store_sum)
        status = "unexplained" if "unexplained" in found else "explained" if found else "match"
        out_rows.append(
            {**keys, **_figures(api_sum, store_sum), "status": status, "explained": ";".join(found)}
        )
    totals = {**_figures(totals_api, totals_store), "status": None, "explained": None}
    gap = _gap(minus(totals_api, totals_out), totals_store)

    total_calls, claude_code_calls = sources(engine, window)
    cover = coverage(engine, window)

    columns = ["bucket", *groups, *_FIGURE_COLUMNS, "status", "explained"]
    header = [
        f"{window.label(window.start)} to {window.label(window.stop)} (exclusive), UTC {window.unit}s: "
        "Anthropic's buckets",
        "Anthropic's figures beside compactobs' (Δ = Anthropic - compactobs); cost: Anthropic's list and "
        "after-discount amounts against compactobs' list price.",
    ]
    if scope.workspaces or scope.api_keys:
        named = [*scope.workspaces, *scope.api_keys]
        header.append(f"compactobs records: {', '.join(named)}; the rest of the organisation is other_scope")
    if fetched.refreshed_at is not None:
        header.append(f"Anthropic's data refreshed at {fetched.refreshed_at:%Y-%m-%d %H:%M:%S} UTC")
    header.append(
        f"compactobs recorded {counted(total_calls, 'call')} with usage: {claude_code_calls:,} from Claude "
        "Code (collected or imported), the rest instrumented (in process, or collected from other processes)"
    )
    notes = [f"Largest gap over the window (in scope): {gap:.2f}% of Anthropic's figure."]
    sections: list[Report] = []
    if cover is None:
        notes.append(
            "No server-side telemetry in the store for this window: which requests no client recorded is "
            "not measured (a telemetry destination pointed at `compactobs collect` measures it)."
        )
    else:
        notes.append(
            f"Server-side telemetry: {counted(cover.reached, 'request')} reached the API; "
            f"{cover.recorded:,} recorded by a client, {cover.not_recorded:,} not"
            + (
                f" (the first {len(cover.unrecorded)} listed)"
                if cover.not_recorded > len(cover.unrecorded)
                else ""
            )
            + "."
        )
        if cover.unrecorded:
            sections.append(
                Report(
                    name="unrecorded",
                    title="Requests that reached the API and no client recorded",
                    columns=["at", "request_id", "response_id", "model"],
                    rows=[{**row, "at": f"{row['at']:%Y-%m-%d %H:%M:%S}"} for row in cover.unrecorded],
                    kinds={"at": "key", "request_id": "text", "response_id": "text", "model": "text"},
                )
            )
    unexplained = sum(1 for r in out_rows if r["status"] == "unexplained")
    warnings = [f"{unexplained:,} bucket(s) with a difference not explained"] if unexplained else []
    explained_section = Report(
        name="explanations",
        title="Differences and what explains them",
        columns=["bucket", *groups, "kind", "message"],
        rows=[{k: v for k, v in e.items() if k != "figures"} for e in explanations],
        kinds={"bucket": "key", **{g: "key" for g in groups}, "kind": "text", "message": "text"},
    )
    kinds: JSONObject = {
        "bucket": "key",
        **{g: "key" for g in groups},
        "status": "text",
        "explained": "text",
    }
    for column in _FIGURE_COLUMNS:
        kinds[column] = "usd" if column.endswith("_usd") else "int"
    return Report(
        name="reconcile",
        title="Reconcile with Anthropic's usage and cost reports",
        columns=columns,
        rows=out_rows,
        totals=totals,
        header=header,
        warnings=warnings,
        extra={
            "by": window.unit,
            "groups": list(groups),
            "since": window.start,
            "until": window.stop,
            "scope": {"workspaces": list(scope.workspaces), "api_keys": list(scope.api_keys)},
            "data_refreshed_at": fetched.refreshed_at,
            "tolerance_pct": Decimal(tolerance_pct),
            "gap_pct": gap,
            "explanations": explanations,
            "sources": {"calls": total_calls, "claude_code": claude_code_calls},
            "coverage": None
            if cover is None
            else {
                "requests": cover.reached,
                "recorded": cover.recorded,
                "not_recorded": cover.not_recorded,
                "listed": cover.unrecorded,
            },
        },
        kinds=kinds,
        labels=dict(_LABELS),
        table_columns=["bucket", *groups, *_TABLE_COLUMNS, "status"],
        narrow_columns=[["bucket", *groups, *narrow, "status"] for narrow in _NARROW_COLUMNS],
        sections=([explained_section] if explanations else []) + sections,
        empty_message="Neither Anthropic nor compactobs has a request in this window.",
        notes=notes,
    )


_FIGURE_COLUMNS: Final[tuple[str, ...]] = (
    "requests",
    "compactobs_requests",
    "delta_requests",
    *(
        f"{side}{name}"
        for name in ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "web_search")
        for side in ("", "compactobs_", "delta_")
    ),
    "list_usd",
    "amount_usd",
    "compactobs_cost_usd",
    "delta_list_usd",
    "delta_amount_usd",
)
"""Per class: Anthropic's figure (the class's name), compactobs' and the difference."""
_TABLE_COLUMNS: Final[tuple[str, ...]] = (
    "requests",
    "delta_requests",
    "delta_input",
    "delta_cache_read",
    "delta_cache_write_5m",
    "delta_cache_write_1h",
    "delta_output",
    "delta_web_search",
    "list_usd",
    "amount_usd",
    "compactobs_cost_usd",
    "delta_list_usd",
)
_NARROW_COLUMNS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "requests",
        "delta_requests",
        "delta_input",
        "delta_output",
        "list_usd",
        "compactobs_cost_usd",
        "delta_list_usd",
    ),
    ("delta_requests", "list_usd", "delta_list_usd"),
    ("delta_list_usd",),
)
"""Smaller sets of _TABLE_COLUMNS for terminals of 120 and 80 columns (each after the bucket and groups)."""
_LABELS: Final[dict[str, str]] = {
    "requests": "requests",
    "delta_requests": "Δ req",
    "delta_input": "Δ input",
    "delta_cache_read": "Δ read",
    "delta_cache_write_5m": "Δ write 5m",
    "delta_cache_write_1h": "Δ write 1h",
    "delta_output": "Δ output",
    "delta_web_search": "Δ search",
    "list_usd": "list",
    "amount_usd": "amount",
    "compactobs_cost_usd": "compactobs",
    "delta_list_usd": "Δ list",
}


def _figures(api: ApiFigures, store: Side) -> JSONObject:
    result: JSONObject = {
        "requests": api.requests,
        "compactobs_requests": store.requests,
        "delta_requests": api.requests - store.requests,
    }
    for name in CLASSES:
        result[name] = api.amounts[name]
        result[f"compactobs_{name}"] = store.amounts[name]
        result[f"delta_{name}"] = api.amounts[name] - store.amounts[name]
    result.update(
        {
            "list_usd": api.list_usd,
            "amount_usd": api.amount_usd,
            "compactobs_cost_usd": store.cost_usd,
            "delta_list_usd": api.list_usd - store.cost_usd,
            "delta_amount_usd": api.amount_usd - store.cost_usd,
        }
    )
    return result


def _gap(api: ApiFigures, store: Side) -> Decimal:
    pairs = [(Decimal(api.requests), Decimal(store.requests))]
    pairs += [(Decimal(api.amounts[n]), Decimal(store.amounts[n])) for n in CLASSES]
    pairs.append((api.list_usd, store.cost_usd))
    worst = ZERO
    for theirs, ours in pairs:
        if abs(theirs - ours) < MONEY_FLOOR:
            continue
        base = abs(theirs) if theirs else abs(ours)
        worst = max(worst, abs(theirs - ours) / base * 100)
    return worst
