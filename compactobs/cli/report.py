"""`compactobs report cost | cache | anomalies | ops | conversation | call`: the reports over the store.

Every report takes the same options (`report_options`, which hand it `Filters`), makes its Report with
`reports.catalog.make_report` (the path `serve`'s API takes too) over the source `report_engine` opens, and
prints with `emit_report` (or the report's renderer).
"""

from __future__ import annotations

import click

from compactobs.cli.common import (
    CliState,
    echo_warnings,
    emit_report,
    pass_state,
    refresh_rollups,
    report_engine,
    terminal_width,
    use_color,
    working,
)
from compactobs.cli.options import dataclass_options, group_options, report_options
from compactobs.progress import stdout_fit_width
from compactobs.reports.catalog import make_report, split_by
from compactobs.reports.model import Filters
from compactobs.reports.render import FORMATS
from compactobs.reports.thresholds import Thresholds

__all__ = ["report"]


@click.group("report")
def report() -> None:
    """Reports over the store: cost, cache, anomalies, ops, conversation.

    Every report takes --since/--until (YYYY-MM-DD, ISO date-time, 7d, 24h, 30m, today, yesterday; an
    --until date is inclusive), --tz (IANA zone, default local), --model/--conversation/--service filters
    (repeatable, * globs) and --format table|json|csv|md.
    """


@report.command("anomalies")
@report_options
@click.option(
    "--fail-on",
    type=click.Choice(["warning", "critical"]),
    default=None,
    help="Exit with code 3 when a finding at this severity or above exists (for CI and cron).",
)
@click.option(
    "--budgets",
    "budgets_file",
    metavar="FILE",
    envvar="COMPACTOBS_BUDGETS_FILE",
    show_envvar=True,
    help='TOML budgets by conversation id or glob: [budgets."ticket-*"] usd = 5.0, tokens = 2000000.',
)
@dataclass_options(Thresholds, into="thresholds")
@pass_state
@click.pass_context
def report_anomalies(
    ctx: click.Context,
    state: CliState,
    filters: Filters,
    fmt: str,
    fail_on: str | None,
    budgets_file: str | None,
    thresholds: Thresholds,
) -> None:
    """Compaction loops, ineffective and failed compactions, compaction cost share, budgets exceeded,
    cache misses after compaction, unpriced models and error bursts, each with its evidence and a remedy.

    Exit codes: 0, also when findings exist, unless --fail-on is given; with --fail-on LEVEL the command
    exits 3 when a finding at LEVEL or above exists (critical: compaction_loop, budget_exceeded); 2 on bad
    input.
    """
    from compactobs.reports.anomalies import exit_code_for, load_budgets
    from compactobs.reports.render.anomalies import render_anomalies

    budgets = load_budgets(budgets_file) if budgets_file else None
    with report_engine(state) as engine, working("looking for anomalies ..."):
        result = make_report(
            engine, "anomalies", filters, thresholds=thresholds, budgets=budgets, budgets_file=budgets_file
        )
    color = fmt == "table" and use_color()
    click.echo(render_anomalies(result, fmt, terminal_width(), color=color), nl=False, color=color)
    code = exit_code_for(result.extra["findings"], fail_on)
    if code:
        ctx.exit(code)


@report.command("ops")
@report_options
@group_options
@pass_state
def report_ops(state: CliState, limit: int | None, sort: str | None, filters: Filters, fmt: str) -> None:
    """Calls, error rate by type, retries, and p50/p95/p99 latency and time to first token by model.

    Percentiles interpolate linearly between the closest ranks (PostgreSQL's percentile_cont); latency
    is the duration of successful calls, retries and back-off included.
    """
    with report_engine(state) as engine, working("reading the operations figures ..."):
        result = make_report(engine, "ops", filters, sort=sort, limit=limit)
    emit_report(result, fmt)


@report.command("conversation")
@click.argument("conversation_id", metavar="ID")
@report_options
@pass_state
def report_conversation(state: CliState, conversation_id: str, filters: Filters, fmt: str) -> None:
    """One conversation call by call: time, model, stop reason, iterations, context size after the call,
    compaction marks, cost and running cost; on a terminal, then a chart of the context against the
    compaction trigger (in colour, or plain with NO_COLOR). An unknown ID exits 2."""
    from compactobs.reports.render.conversation import render_conversation

    with report_engine(state) as engine, working("reading the conversation ..."):
        result = make_report(engine, "conversation", filters, conversation_id)
    color = fmt == "table" and use_color()
    text = render_conversation(result, fmt, terminal_width(), color=color, fit_width=stdout_fit_width())
    click.echo(text, nl=False, color=color)
    echo_warnings(result, fmt)


@report.command("call")
@click.argument("reference", metavar="ID")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
@pass_state
def report_call(state: CliState, reference: str, fmt: str) -> None:
    """One call by request id (req_...), message id (msg_...) or span id: its iterations, each with its
    type, model, tokens, the rates that priced them and its cost, summing to the call's cost, and the
    top-level usage beside the billed totals. `report conversation` shows each call's span id. An unknown
    ID exits 2."""
    with report_engine(state) as engine, working("reading the call ..."):
        result = make_report(engine, "call", None, reference)
    emit_report(result, fmt)


_BY_HELP = (
    "Group by hour, day, week, month, model, conversation, service, provider, iteration-type "
    "(repeatable; a,b)."
)


@report.command("cost")
@click.option("--by", "by", multiple=True, metavar="KEY", help=_BY_HELP + "  [default: day]")
@click.option("--compare", metavar="prev", help="Add the change against the previous period, as long.")
@click.option("--forecast", is_flag=True, help="Project this month's spend to its end, with an interval.")
@report_options
@group_options
@pass_state
def report_cost(
    state: CliState,
    limit: int | None,
    sort: str | None,
    by: tuple[str, ...],
    compare: str | None,
    forecast: bool,
    filters: Filters,
    fmt: str,
) -> None:
    """What the calls cost: billed tokens and USD per group, totals, the cost split by token class and the
    share spent on compaction. Unpriced calls are rows of their own (cost: unpriced), never $0."""
    with report_engine(state) as engine:
        refresh_rollups(engine)  # with a progress bar, before the spinner
        with working("summing costs ..."):
            result = make_report(
                engine,
                "cost",
                filters,
                by=split_by(by),
                compare=compare,
                forecast=forecast,
                sort=sort,
                limit=limit,
                refresh=None,
            )
    emit_report(result, fmt)


@report.command("cache")
@click.option("--by", "by", multiple=True, metavar="KEY", help=_BY_HELP + "  [default: model]")
@report_options
@group_options
@pass_state
def report_cache(
    state: CliState,
    limit: int | None,
    sort: str | None,
    by: tuple[str, ...],
    filters: Filters,
    fmt: str,
) -> None:
    """Where the prompt cache pays: hit ratio, tokens read and written (5m, 1h), dollars saved by reads,
    spent on the write premium, the net, and writes never read back within their TTL (waste)."""
    with report_engine(state) as engine:
        refresh_rollups(engine)  # with a progress bar, before the spinner
        with working("reading the cache figures ..."):
            result = make_report(
                engine, "cache", filters, by=split_by(by), sort=sort, limit=limit, refresh=None
            )
    emit_report(result, fmt)
