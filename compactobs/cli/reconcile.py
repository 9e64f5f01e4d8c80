"""`compactobs reconcile`: the store's figures beside Anthropic's usage and cost reports, explained."""

from __future__ import annotations

from decimal import Decimal

import click

from compactobs.cli.common import CliState, emit_report, refuse_on_clickhouse, report_engine, working
from compactobs.cli.options import dataclass_options, group_options
from compactobs.reports.reconcile import Scope
from compactobs.reports.times import build_filters

__all__ = ["reconcile_command"]


@click.command("reconcile")
@click.option(
    "--since", required=True, metavar="WHEN", help="From: YYYY-MM-DD (UTC), ISO date-time, 7d, 24h."
)
@click.option("--until", metavar="WHEN", help="To (a date is inclusive; default: now).")
@click.option("--by", "by", type=click.Choice(["day", "hour"]), default="day", show_default=True)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="KEY",
    help="model, service_tier, speed, inference_geo, workspace, api_key (repeatable; a,b).",
)
@dataclass_options(Scope, into="scope")
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="PCT",
    help="Differences up to this percentage are not differences.",
)
@click.option(
    "--fail-over",
    type=click.FloatRange(min=0),
    metavar="PCT",
    help="Exit 3 when a figure differs by more than PCT% over the window (for CI and cron).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@group_options
@click.pass_context
def reconcile_command(
    ctx: click.Context,
    limit: int | None,
    sort: str | None,
    since: str,
    until: str | None,
    by: str,
    groups: tuple[str, ...],
    scope: Scope,
    tolerance: float,
    fail_over: float | None,
    fmt: str,
) -> None:
    """Set the store's figures beside Anthropic's usage and cost reports (admin key: ANTHROPIC_ADMIN_KEY),
    by UTC day or hour, and explain every difference: uninstrumented calls, other workspaces, price drift,
    discounts, bucket edges, the spool."""
    from compactobs import anthropic_reports
    from compactobs.reports import reconcile
    from compactobs.store import spool_for

    state: CliState = ctx.obj
    chosen = reconcile.parse_groups(groups)
    refuse_on_clickhouse(state, "reconcile")
    filters = build_filters(since, until or "now", "UTC")
    assert filters.since is not None and filters.until is not None
    width = reconcile.BY_WIDTH[by]
    start, stop = anthropic_reports.bucket_edges(filters.since, filters.until, width)
    window = reconcile.Window(start, stop, by)
    client = anthropic_reports.admin_client()
    with working("reading Anthropic's usage and cost reports ..."):
        fetched = anthropic_reports.fetch(client, start, stop, width, reconcile.api_dimensions(chosen, scope))
    with report_engine(state) as engine, working("setting the store's figures beside them ..."):
        result = reconcile.reconcile_report(
            engine,
            fetched,
            window,
            chosen,
            scope=scope,
            spooled=spool_for(state.database_url).waiting_calls(),
            tolerance_pct=Decimal(str(tolerance)),
        )
    emit_report(result, fmt, sort, limit)
    if fail_over is not None and reconcile.worst_gap(result) > Decimal(str(fail_over)):
        click.echo(
            f"Error: figures differ by {reconcile.worst_gap(result):.2f}% over the window, more than "
            f"--fail-over {fail_over:g}%",
            err=True,
        )
        ctx.exit(3)
