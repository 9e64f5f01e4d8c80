"""The `compactobs` command: a thin shell over the library (all logic lives in compactobs.*).

Commands share `ctx.obj`, a `CliState` carrying the database URL (`--db`, else the library's default).
A problem the user can fix is one of `USER_ERRORS` (StoreError, PricingError...): it is printed as one
line, `Error: ...`, with exit code 2 (click's own code for usage errors), never as a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, NoReturn

import click
from sqlalchemy import Engine

from compactobs import cli_collect, cli_import
from compactobs._version import __version__
from compactobs._words import counted
from compactobs.configfile import ConfigError
from compactobs.pricing import PricingError
from compactobs.progress import stdout_fit_width
from compactobs.reports._common import (
    FORMATS,
    Filters,
    Report,
    ReportInputError,
    build_filters,
    render,
    sort_and_limit,
)
from compactobs.reports._safe import shown
from compactobs.reports.anomalies import Thresholds
from compactobs.store import (
    ENV_DATABASE_URL,
    StoreError,
    database_status,
    default_database_url,
    display_url,
    make_engine,
    open_database,
    upgrade_database,
)
from compactobs.untrusted import escape

__all__ = ["CliState", "main"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C: 128 + SIGINT, as shells report a process that SIGINT ended (click's own "Aborted!" exits 1)."""
USER_ERRORS: tuple[type[Exception], ...] = (StoreError, ReportInputError, PricingError, ConfigError)
"""What a user can fix (a bad --db URL, date, pricing or budgets file): one line, `Error: ...`, exit 2."""


@dataclass(frozen=True)
class CliState:
    """What every command gets as `ctx.obj`."""

    database_url: str
    """The URL to use: `--db`, else `COMPACTOBS_DATABASE_URL`, else the embedded SQLite file."""
    clickhouse_table: str = "otel_traces"
    """The spans table a clickhouse:// or chdb:// --db reads (`--clickhouse-table`)."""

    @property
    def shown_url(self) -> str:
        return display_url(self.database_url)


def _usage_error(err: click.UsageError) -> NoReturn:
    """click's usage errors (a wrong flag, a missing argument, a bad choice) as one line, exit code 2.
    A group called with nothing to do shows its help, as click does."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError):
        raise err
    where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
    click.echo(f"Error: {err.format_message()}{where}", err=True)
    raise click.exceptions.Exit(EXIT_USER_ERROR)


class _Group(click.Group):
    """Turns a user error (`USER_ERRORS`, or click's usage errors) raised anywhere under it into a one-line
    error and exit code 2."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            _usage_error(err)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except click.UsageError as err:
            _usage_error(err)
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group("compactobs", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "database_url",
    metavar="URL",
    default=None,
    help=f"Database URL (default: ${ENV_DATABASE_URL}, else SQLite in the user data directory).",
)
@click.option(
    "--clickhouse-table",
    metavar="NAME",
    default="otel_traces",
    show_default=True,
    envvar="COMPACTOBS_CLICKHOUSE_TABLE",
    help="With --db clickhouse://... or chdb://...: the Collector's spans table.",
)
@click.version_option(__version__, prog_name="compactobs")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, clickhouse_table: str) -> None:
    """compactobs: what your Claude traffic really costs, where the cache pays, when compaction runs away."""
    ctx.obj = CliState(database_url or default_database_url(), clickhouse_table)


pass_state = click.make_pass_decorator(CliState)


@main.group()
def db() -> None:
    """The SQL store's schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_state
def db_upgrade(state: CliState, revision: str) -> None:
    """Create or migrate the store's tables to this version's schema."""
    refuse_on_clickhouse(state, "db upgrade")
    before, after = upgrade_database(state.database_url, revision)
    if before == after:
        click.echo(f"{state.shown_url}: already at revision {after}")
    else:
        click.echo(f"{state.shown_url}: upgraded from {before or 'an empty database'} to revision {after}")


@db.command("status")
@pass_state
def db_status(state: CliState) -> None:
    """Where the database's schema stands, and rows waiting in the spool.

    Exits 0 when the schema is this version's, else 2 with the fix on one line.
    """
    refuse_on_clickhouse(state, "db status")
    from compactobs.cli_spool import spool_lines

    click.echo(f"database: {state.shown_url}")
    try:
        status = database_status(state.database_url)
    except StoreError:
        # The database is away: what waits for it in the spool is what the user needs to see now.
        for line in spool_lines(state.database_url)[0]:
            click.echo(line)
        raise
    if status is None:
        click.echo("schema:   no database file yet")
    else:
        click.echo(f"schema:   {status.current or 'none'} (this compactobs: {status.head}) - {status.state}")
    lines, spool_problem = spool_lines(state.database_url)
    for line in lines:
        click.echo(line)
    if status is not None and status.ok:
        click.echo(f"rollups:  {_rollup_status(state.database_url)}")
    if status is None:
        raise StoreError(
            "the SQLite file does not exist yet: it is created on first use, or run `compactobs db upgrade`"
            if state.database_url == default_database_url()
            else f"the SQLite file does not exist yet: run `compactobs --db '{state.shown_url}' db upgrade`"
        )
    if not status.ok:
        raise StoreError(status.fix or status.state)
    if spool_problem is not None:
        raise StoreError(spool_problem)


def _register_spool() -> None:
    from compactobs.cli_spool import spool

    main.add_command(spool)
    db.add_command(spool)


_register_spool()
main.add_command(cli_collect.collect)
main.add_command(cli_import.import_group)


def _rollup_status(database_url: str) -> str:
    from compactobs.reports import rollup

    engine = make_engine(database_url, create=False)
    try:
        pending = rollup.pending(engine)
    finally:
        engine.dispose()
    if not pending:
        return "current"
    return (
        f"{pending:,} slot(s) of 15 minutes to recompute (the next `report cost` or `report cache` does it)"
    )


# -- reports ---------------------------------------------------------------------------------------------
# Every `report` command takes the same options (`report_options`), builds `Filters` with `filters_from`,
# calls a pure report function over `open_database(...)` (`report_engine`), and prints with `emit_report`.


@main.group("report")
def report() -> None:
    """Reports over the store: cost, cache, anomalies, ops, conversation.

    Every report takes --since/--until (YYYY-MM-DD, ISO date-time, 7d, 24h, 30m, today, yesterday; an
    --until date is inclusive), --tz (IANA zone, default local), --model/--conversation/--service filters
    (repeatable, * globs) and --format table|json|csv|md.
    """


def report_options(func: Any) -> Any:
    """The options every report command shares; the command receives `since`, `until`, `tz`, `models`,
    `conversations`, `services` and `fmt` (build Filters with `filters_from`)."""
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)
    return filter_options(func)


def group_options(func: Any) -> Any:
    """--limit and --sort, for a report that lists groups: the command receives `limit` and `sort` (pass
    them to `emit_report`)."""
    func = click.option(
        "--sort",
        metavar="COLUMN",
        help="Order rows by this column (its JSON name or table label): numbers largest first.",
    )(func)
    return click.option(
        "--limit", type=int, metavar="N", help="Show the first N rows (the totals still cover every call)."
    )(func)


def filter_options(func: Any) -> Any:
    """The window and filters of `report_options`, without --format (also for `export otlp`): the command
    receives `since`, `until`, `tz`, `models`, `conversations` and `services`."""
    options = [
        click.option(
            "--since",
            metavar="WHEN",
            help="Calls started at or after: YYYY-MM-DD, ISO date-time, 7d, 24h, 30m, today, yesterday.",
        ),
        click.option("--until", metavar="WHEN", help="Calls started before (a date is inclusive)."),
        click.option("--tz", metavar="ZONE", help="IANA time zone for dates and buckets (default: local)."),
        click.option(
            "--model", "models", multiple=True, metavar="MODEL", help="Only these models (repeatable, globs)."
        ),
        click.option(
            "--conversation", "conversations", multiple=True, metavar="ID", help="Only these conversations."
        ),
        click.option("--service", "services", multiple=True, metavar="NAME", help="Only these services."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def filters_from(
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...] = (),
    conversations: tuple[str, ...] = (),
    services: tuple[str, ...] = (),
) -> Filters:
    """Filters from `report_options`' values; a bad value raises ReportInputError (exit 2)."""
    return build_filters(since, until, tz, models, conversations, services)


def refuse_on_clickhouse(state: CliState, command: str) -> None:
    """A command that writes to (or migrates) the SQL store, run on a ClickHouse source: one line, exit 2."""
    from compactobs.reports.clickhouse import is_clickhouse_url

    if is_clickhouse_url(state.database_url):
        raise StoreError(
            f"`{command}` works on the SQL store, and {state.shown_url} is a ClickHouse source, read-only to "
            "compactobs (the Collector writes its spans): run it with a sqlite:// or postgresql:// --db"
        )


@contextmanager
def report_engine(state: CliState) -> Iterator[Any]:
    """The store opened for reading (checked against the schema; StoreError otherwise), disposed after;
    for a clickhouse:// or chdb:// --db, the ClickHouse source over its spans table, closed after.

    Only the embedded default store is created when missing: a --db path that does not exist is an error.
    """
    from compactobs.reports.clickhouse import is_clickhouse_url, open_source

    if is_clickhouse_url(state.database_url):
        with open_source(state.database_url, state.clickhouse_table) as source:
            yield source
        return
    engine = open_database(state.database_url, create=state.database_url == default_database_url())
    try:
        yield engine
    finally:
        engine.dispose()


def refresh_rollups(engine: Engine) -> None:
    """Bring the rollups the cost and cache reports read up to date, with a progress bar when there is
    more than a day of slots to recompute (the first report after an upgrade, or after a bulk load)."""
    from compactobs.progress import progress_bar
    from compactobs.reports import rollup
    from compactobs.reports._common import ExternalSource

    if isinstance(engine, ExternalSource):
        return

    total = rollup.pending(engine)
    if not total:
        return
    with progress_bar(enabled=None if total > 96 else False, unit="slots", total=total) as progress:
        if progress is None:
            rollup.try_refresh(engine)
        else:
            rollup.try_refresh(engine, lambda done, total: progress("building rollups", done, total))


@contextmanager
def working(what: str) -> Iterator[None]:
    """A spinner on stderr while a report's queries run (one SQL statement has no progress to measure);
    nothing when stderr is not a terminal or NO_COLOR is set."""
    from compactobs.progress import stderr_is_live

    if not stderr_is_live():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(what):
        yield


def use_color() -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and sys.stdout.isatty()


def emit_report(report: Report, fmt: str, sort: str | None = None, limit: int | None = None) -> None:
    """Print a report in `fmt`, its rows ordered by `sort` and cut to `limit` (`group_options`). CSV carries
    no warnings, so they go to stderr."""
    if sort is not None or limit is not None:
        report = sort_and_limit(report, sort, limit)
    color = fmt == "table" and use_color()
    width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100
    text = render(report, fmt, console_width=width, color=color, fit_width=stdout_fit_width())
    click.echo(text, nl=False, color=color)
    if fmt == "csv":
        for warning in report.warnings:
            click.echo(f"Warning: {shown(warning)}", err=True)


# -- report anomalies | ops | conversation ----------------------------------------------------------------

_THRESHOLDS = Thresholds()
"""The defaults the threshold options show."""


def _terminal_width() -> int:
    return shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100


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
@click.option(
    "--loop-min",
    type=int,
    default=_THRESHOLDS.loop_min,
    show_default=True,
    help="compaction_loop: this many ineffective compactions...",
)
@click.option(
    "--loop-window",
    type=int,
    default=_THRESHOLDS.loop_window,
    show_default=True,
    help="...within this many consecutive calls.",
)
@click.option(
    "--ineffective-ratio",
    type=float,
    default=_THRESHOLDS.ineffective_ratio,
    show_default=True,
    help="A compaction leaving the context at this share of the trigger or more is ineffective.",
)
@click.option(
    "--cost-share",
    type=float,
    default=_THRESHOLDS.cost_share,
    show_default=True,
    help="Compaction share of a conversation's cost.",
)
@click.option(
    "--error-share",
    type=float,
    default=_THRESHOLDS.error_share,
    show_default=True,
    help="429/529/5xx share of an hour's calls.",
)
@click.option(
    "--error-min-calls",
    type=int,
    default=_THRESHOLDS.error_min_calls,
    show_default=True,
    help="Calls an hour needs to judge.",
)
@click.option(
    "--cache-drop-ratio",
    type=float,
    default=_THRESHOLDS.cache_drop_ratio,
    show_default=True,
    help="Cache reads after a compaction at or below this share of those before count as a miss.",
)
@click.option(
    "--cache-min-tokens",
    type=int,
    default=_THRESHOLDS.cache_min_tokens,
    show_default=True,
    help="Smallest cache read/write considered.",
)
@pass_state
@click.pass_context
def report_anomalies(
    ctx: click.Context,
    state: CliState,
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    fmt: str,
    fail_on: str | None,
    budgets_file: str | None,
    loop_min: int,
    loop_window: int,
    ineffective_ratio: float,
    cost_share: float,
    error_share: float,
    error_min_calls: int,
    cache_drop_ratio: float,
    cache_min_tokens: int,
) -> None:
    """Compaction loops, ineffective and failed compactions, compaction cost share, budgets exceeded,
    cache misses after compaction, unpriced models and error bursts, each with its evidence and a remedy.

    Exit codes: 0, also when findings exist, unless --fail-on is given; with --fail-on LEVEL the command
    exits 3 when a finding at LEVEL or above exists (critical: compaction_loop, budget_exceeded); 2 on bad
    input.
    """
    from compactobs.reports.anomalies import (
        anomalies_report,
        exit_code_for,
        load_budgets,
        render_anomalies,
    )

    filters = filters_from(since, until, tz, models, conversations, services)
    thresholds = Thresholds(
        loop_min=loop_min,
        loop_window=loop_window,
        ineffective_ratio=ineffective_ratio,
        cost_share=cost_share,
        error_share=error_share,
        error_min_calls=error_min_calls,
        cache_drop_ratio=cache_drop_ratio,
        cache_min_tokens=cache_min_tokens,
    )
    budgets = load_budgets(budgets_file) if budgets_file else None
    with report_engine(state) as engine, working("looking for anomalies ..."):
        result = anomalies_report(engine, filters, thresholds, budgets, budgets_file)
    color = fmt == "table" and use_color()
    click.echo(render_anomalies(result, fmt, _terminal_width(), color=color), nl=False, color=color)
    code = exit_code_for(result.extra["findings"], fail_on)
    if code:
        ctx.exit(code)


@report.command("ops")
@report_options
@group_options
@pass_state
def report_ops(
    state: CliState,
    limit: int | None,
    sort: str | None,
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    fmt: str,
) -> None:
    """Calls, error rate by type, retries, and p50/p95/p99 latency and time to first token by model.

    Percentiles interpolate linearly between the closest ranks (PostgreSQL's percentile_cont); latency
    is the duration of successful calls, retries and back-off included.
    """
    from compactobs.reports.ops import ops_report

    filters = filters_from(since, until, tz, models, conversations, services)
    with report_engine(state) as engine, working("reading the operations figures ..."):
        result = ops_report(engine, filters)
    emit_report(result, fmt, sort, limit)


@report.command("conversation")
@click.argument("conversation_id", metavar="ID")
@report_options
@pass_state
def report_conversation(
    state: CliState,
    conversation_id: str,
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    fmt: str,
) -> None:
    """One conversation call by call: time, model, stop reason, iterations, context size after the call,
    compaction marks, cost and running cost; on a terminal, then a chart of the context against the
    compaction trigger (in colour, or plain with NO_COLOR). An unknown ID exits 2."""
    from compactobs.reports.conversation import conversation_report, render_conversation

    filters = filters_from(since, until, tz, models, conversations, services)
    with report_engine(state) as engine, working("reading the conversation ..."):
        result = conversation_report(engine, filters, conversation_id)
    color = fmt == "table" and use_color()
    text = render_conversation(result, fmt, _terminal_width(), color=color, fit_width=stdout_fit_width())
    click.echo(text, nl=False, color=color)
    if fmt == "csv":
        for warning in result.warnings:
            click.echo(f"Warning: {shown(warning)}", err=True)


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
    from compactobs.reports.call import call_report

    with report_engine(state) as engine, working("reading the call ..."):
        result = call_report(engine, reference)
    emit_report(result, fmt)


# -- demo ------------------------------------------------------------------------------------------------

DEMO_REPORTS: tuple[tuple[str, ...], ...] = (
    ("cost", "--by", "model"),
    ("cache", "--by", "model"),
    ("anomalies",),
)
"""The reports `compactobs demo` prints afterwards, restricted to the run's conversations."""


@main.command("demo")
@click.option("--reports/--no-reports", default=True, show_default=True, help="Print the reports afterwards.")
@click.option(
    "--db",
    "demo_db",
    metavar="URL",
    default=None,
    help="Where to record (default: the demo's own SQLite file, demo.db in the data directory; never "
    "your default store).",
)
@click.pass_context
def demo(ctx: click.Context, reports: bool, demo_db: str | None) -> None:
    """Run a simulated compaction workload and report on it (no API key, no network).

    About 45 calls in 10 conversations (streaming, prompt caching, a compaction loop, a paused and resumed
    compaction, on-demand compaction, retries, errors, an unpriced model) go through the real anthropic SDK
    to a loopback Messages API, and are recorded under service.name compactobs-demo into a store of the
    demo's own (demo.db in the data directory), so simulated costs never mix with your real ones; --db (here
    or before the command) records elsewhere. Each run gets conversation ids of its own, so running it
    again adds a separate set. Last, the research agent's script runs again without and with the runtime
    guard (not stored), to show the money it saves.
    """
    from compactobs.demo import SERVICE_NAME, progress_bar, run_demo
    from compactobs.reports.cost import headline
    from compactobs.store import data_dir, open_database

    given = demo_db or ctx.find_root().params.get("database_url")
    state = CliState(given or f"sqlite:///{data_dir() / 'demo.db'}")
    # A store that cannot take the rows (PostgreSQL not upgraded yet...) fails here, before any call.
    open_database(state.database_url).dispose()
    click.echo(
        "compactobs demo: a simulated workload through the real anthropic SDK against a loopback Messages "
        "API (no API key, no network)."
    )
    whose = "" if given else " (the demo's own store; --db to record elsewhere)"
    click.echo(f"Recording into {state.shown_url}{whose} as service.name={SERVICE_NAME}")
    with progress_bar() as progress:
        summary = run_demo(state.database_url, progress=progress)
    pattern = f"{summary.conversation_prefix}*"
    priced = f"${summary.cost_usd:,.4f} billed" + (
        f", {summary.unpriced_calls} unpriced call(s)" if summary.unpriced_calls else ""
    )
    click.echo(
        f"Recorded {summary.stored_calls} calls in {len(summary.conversations)} conversations "
        f"({counted(summary.stored_iterations, 'iteration')}, "
        f"{counted(summary.compactions, 'compaction')}), {priced}, "
        f"in {summary.elapsed_s:.1f} s; conversations {pattern}"
    )
    words = headline(summary.top_level_cost_usd, summary.cost_usd, summary.hidden_cost_usd)
    click.echo(words[0].upper() + words[1:])
    width = max(len(c.id) for c in summary.conversations)
    for conversation in summary.conversations:
        click.echo(
            f"  {conversation.id:<{width}}  {conversation.model:<19} {conversation.calls:>3} calls  "
            f"{conversation.shows}"
        )
    if not summary.complete:
        click.echo(
            f"Warning: only {summary.stored_calls} of {summary.calls} calls reached {state.shown_url}; the "
            "rest wait in the spool (see `compactobs db status`)",
            err=True,
        )
    db = [] if state.database_url == default_database_url() else ["--db", state.database_url]
    shown_db = [] if not db else ["--db", f"'{state.shown_url}'"]
    available = getattr(main.commands.get("report"), "commands", {})
    if reports:
        for args in DEMO_REPORTS:
            if args[0] not in available:
                continue
            command = ["report", *args, "--conversation", pattern]
            click.echo(f"\n$ compactobs {' '.join([*shown_db, *command[:-1]])} '{pattern}'")
            main.main([*db, *command], prog_name="compactobs", standalone_mode=False)
    loop = next((c.id for c in summary.conversations if c.id.endswith("-research-loop")), None)
    if loop is not None and "conversation" in available:
        command_line = " ".join(["compactobs", *shown_db, "report", "conversation", loop])
        click.echo(f"\nThe compaction loop, call by call: {command_line}")
    _demo_guard()
    if not summary.complete:
        ctx.exit(1)


def _demo_guard() -> None:
    """The runtime guard's part of the demo: the research agent's script again, without and with it."""
    from compactobs.demo import run_guard_comparison

    click.echo("\nThe runtime guard on the research agent's script, run again without it and with it:")
    for line in run_guard_comparison().lines():
        click.echo(f"  {line}")


# -- pricing and reprice ---------------------------------------------------------------------------------


def _rate(value: Decimal) -> str:
    """A USD rate as printed: at least 2 decimals, never rounded (3.125 stays 3.125)."""
    whole, _, fraction = f"{value.normalize():f}".partition(".")
    return f"${int(whole):,}.{fraction.ljust(2, '0')}"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _echo_columns(rows: list[list[str]], left: int) -> None:
    """Rows as aligned columns: the first `left` columns left-aligned, the rest (numbers) right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        click.echo("  ".join(cells).rstrip())


@main.group("pricing")
def pricing_group() -> None:
    """Prices: what a model costs on a day, and which recorded models have no price.

    Prices come from genai-prices, under the TOML file named by COMPACTOBS_PRICING_FILE where it speaks.
    """


@pricing_group.command("show")
@click.argument("model")
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    metavar="YYYY-MM-DD",
    help="The day (UTC) whose prices to show [default: today].",
)
@click.option("--speed", type=click.Choice(["standard", "fast"]), default="standard", show_default=True)
@click.option(
    "--service-tier",
    type=click.Choice(["standard", "batch", "priority"]),
    default="standard",
    show_default=True,
)
@click.option("--inference-geo", type=click.Choice(["us", "global"]), default="global", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def pricing_show(
    model: str, day: datetime | None, speed: str, service_tier: str, inference_geo: str, fmt: str
) -> None:
    """The rates in force for MODEL on a day, in USD per million tokens, and where they come from."""
    from compactobs.pricing import default_pricer
    from compactobs.pricing.card import rate_card

    card = rate_card(
        default_pricer(),
        model,
        day.date() if day is not None else datetime.now(timezone.utc),
        service_tier=service_tier,
        speed=speed,
        inference_geo=inference_geo,
    )
    if fmt == "json":
        _echo_json(card.to_json())
        return
    rates = card.rates
    matched = "" if rates.model_id == rates.model else f" (priced as {rates.model_id})"
    click.echo(f"{rates.model}{matched} on {card.day:%Y-%m-%d}")
    click.echo(f"variants:       service tier {service_tier}, speed {speed}, inference geo {inference_geo}")
    multiplier = f", x{rates.multiplier} on every token rate" if rates.multiplier != 1 else ""
    click.echo(f"price list:     {rates.variant}{multiplier}")
    click.echo(f"source:         {card.source.describe()}")
    effective = f"{rates.effective_from:%Y-%m-%d}" if rates.effective_from else "not dated by the source"
    click.echo(f"in force since: {effective}")
    headers = ["USD per million tokens", "base"] + [f"input > {tier.above:,}" for tier in rates.tiers]
    rows = [
        [label, _rate(getattr(rates, name)), *(_rate(getattr(tier, name)) for tier in rates.tiers)]
        for label, name in (
            ("input", "input"),
            ("output", "output"),
            ("cache read", "cache_read"),
            ("cache write 5m", "cache_write_5m"),
            ("cache write 1h", "cache_write_1h"),
        )
    ]
    click.echo("")
    _echo_columns([headers, *rows], left=1)
    if rates.tiers:
        click.echo("A tier bills every token of a request whose total input (cache included) exceeds it.")
    click.echo(f"\nweb search:     {_rate(rates.web_search_per_1k)} per 1,000 searches")
    for note in rates.notes:
        click.echo(f"note: {note}")


@pricing_group.command("check")
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_state
@click.pass_context
def pricing_check(ctx: click.Context, state: CliState, models: tuple[str, ...], fmt: str) -> None:
    """Which models have no price: those the store (--db) has recorded calls of, and any MODEL named.

    Exit code: 0 when every model has a price, 1 when some have none, 2 for a usage error (a bad --db
    URL, a malformed pricing file, no database yet and no MODEL named).
    """
    from compactobs.pricing import PRICING_FILE_ENV, default_pricer
    from compactobs.store.reprice import check_prices

    result = check_prices(default_pricer(), state.database_url, models)
    if not result.database_exists and not models:
        raise StoreError(
            f"no database at {result.database} yet, so no recorded models to check: record calls first, "
            "or name models: compactobs pricing check MODEL..."
        )
    unpriced = result.unpriced
    if fmt == "json":
        _echo_json(
            {
                "check": "pricing",
                "database": result.database,
                "database_exists": result.database_exists,
                "models": [
                    {
                        "model": m.model,
                        "priced": m.priced,
                        "source": m.source,
                        "in_store": m.in_store,
                        "named": m.named,
                        "calls": m.calls,
                        "unpriced_calls": m.unpriced_calls,
                    }
                    for m in result.models
                ],
                "unpriced_models": [m.model for m in unpriced],
            }
        )
    else:
        store = result.database if result.database_exists else f"{result.database} (no database yet)"
        click.echo(f"database: {store}")
        if not result.models:
            click.echo("no calls recorded yet: nothing to check")
        else:
            headers = ["model", "price", "stored calls", "recorded unpriced"]
            rows = [
                # Models come from responses: escaped, so one cannot steer the terminal.
                [escape(m.model, limit=100), m.source or "NONE", f"{m.calls:,}", f"{m.unpriced_calls:,}"]
                for m in result.models
            ]
            _echo_columns([headers, *rows], left=2)
        if unpriced:
            click.echo(
                f"\n{len(unpriced)} of {len(result.models)} models {'has' if len(unpriced) == 1 else 'have'} "
                "no price: "
                f"add them to a TOML file named by {PRICING_FILE_ENV} "
                f'(e.g. [models."{escape(unpriced[0].model, limit=100)}"] input = 3.0, output = 15.0, '
                "USD per million tokens)"
            )
        if any(m.priced and m.unpriced_calls for m in result.models):
            click.echo("Calls recorded without a price now have one: run `compactobs reprice` to price them.")
    if unpriced:
        ctx.exit(1)


@main.command("reprice")
@click.option(
    "--since",
    metavar="WHEN",
    help="Calls started at or after: YYYY-MM-DD, ISO date-time, 7d, 24h, 30m, today, yesterday.",
)
@click.option("--until", metavar="WHEN", help="Calls started before (a date is inclusive).")
@click.option("--tz", metavar="ZONE", help="IANA time zone for --since/--until dates (default: local).")
@pass_state
def reprice_command(state: CliState, since: str | None, until: str | None, tz: str | None) -> None:
    """Price stored calls again with the current prices (genai-prices under COMPACTOBS_PRICING_FILE).

    Each call is priced from its stored iteration token counts, at the prices in force on its date, and
    keeps the new pricing version. Running it again with the same prices changes nothing.
    """
    from compactobs.pricing import default_pricer
    from compactobs.store.reprice import reprice_database

    refuse_on_clickhouse(state, "reprice")
    pricer = default_pricer()
    window = filters_from(since, until, tz)
    with working("repricing ..."):
        result = reprice_database(state.database_url, pricer, since=window.since, until=window.until)
    click.echo(f"database: {state.shown_url} ({window.describe()})")
    if not result.calls and not result.skipped:
        click.echo("no recorded calls to reprice")
        return
    versions = ", ".join(result.pricing_versions) or "-"
    click.echo(f"repriced {result.calls:,} calls with {versions}: {result.changed:,} changed")
    delta = result.cost_after - result.cost_before
    sign = "-" if delta < 0 else "+"
    click.echo(
        f"cost: ${result.cost_before:,.6f} before, ${result.cost_after:,.6f} after ({sign}${abs(delta):,.6f})"
    )
    if result.unpriced_before or result.unpriced_after:
        click.echo(
            f"unpriced calls: {result.unpriced_before:,} before, {result.unpriced_after:,} after "
            "(see `compactobs pricing check`)"
        )
    if result.without_usage:
        more = ", ..." if result.without_usage > len(result.without_usage_ids) else ""
        click.echo(
            f"not repriced: {counted(result.without_usage, 'error call')} that failed before any usage, "
            f"with no cost to price: {', '.join(result.without_usage_ids)}{more}"
        )
    if result.skipped:
        click.echo(
            f"Warning: {result.skipped:,} calls left as they were: their iteration rows are missing",
            err=True,
        )


_BY_HELP = (
    "Group by hour, day, week, month, model, conversation, service, provider, iteration-type "
    "(repeatable; a,b)."
)


def _split_by(values: tuple[str, ...]) -> list[str]:
    return [part for value in values for part in value.split(",") if part.strip()]


@report.command("cost")
@click.option("--by", "by", multiple=True, metavar="KEY", help=_BY_HELP + "  [default: day]")
@click.option("--compare", metavar="prev", help="Add the change against the previous period, as long.")
@report_options
@group_options
@pass_state
def report_cost(
    state: CliState,
    limit: int | None,
    sort: str | None,
    by: tuple[str, ...],
    compare: str | None,
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    fmt: str,
) -> None:
    """What the calls cost: billed tokens and USD per group, totals, the cost split by token class and the
    share spent on compaction. Unpriced calls are rows of their own (cost: unpriced), never $0."""
    from compactobs.reports.cost import cost_report, parse_by

    groups = parse_by(_split_by(by) or ["day"])
    filters = filters_from(since, until, tz, models, conversations, services)
    with report_engine(state) as engine:
        refresh_rollups(engine)
        with working("summing costs ..."):
            result = cost_report(engine, filters, groups, compare=compare)
    emit_report(result, fmt, sort, limit)


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
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    fmt: str,
) -> None:
    """Where the prompt cache pays: hit ratio, tokens read and written (5m, 1h), dollars saved by reads,
    spent on the write premium, the net, and writes never read back within their TTL (waste)."""
    from compactobs.reports.cache import cache_report

    filters = filters_from(since, until, tz, models, conversations, services)
    with report_engine(state) as engine:
        refresh_rollups(engine)
        with working("reading the cache figures ..."):
            result = cache_report(engine, filters, _split_by(by) or ["model"])
    emit_report(result, fmt, sort, limit)


# -- export ----------------------------------------------------------------------------------------------


BATCH_CALLS_DEFAULT = 128
"""`export otlp --batch`'s default (compactobs.store.replay.BATCH_CALLS, not imported at start-up)."""


@main.group("export")
def export_group() -> None:
    """Send stored calls to other systems."""


@export_group.command("otlp")
@click.option(
    "--endpoint",
    metavar="URL",
    help="OTLP base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT (http://host:4317 for gRPC, http://host:4318 for "
    "HTTP)  [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT, else localhost]",
)
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    help="grpc or http (HTTP/protobuf)  [default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else "
    "OTEL_EXPORTER_OTLP_PROTOCOL, else http]",
)
@filter_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="CALLS/S",
    help="Send at most this many calls a second (each with its iteration spans).  [default: no limit]",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=10_000),
    default=BATCH_CALLS_DEFAULT,
    show_default=True,
    metavar="CALLS",
    help="Calls per export request (each with its iteration spans).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How long each request may take, the exporter's retries included  [default: "
    "OTEL_EXPORTER_OTLP_TIMEOUT, which the Python exporters read in seconds, else 10]",
)
@pass_state
@click.pass_context
def export_otlp(
    ctx: click.Context,
    state: CliState,
    endpoint: str | None,
    protocol: str | None,
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    rate: float | None,
    batch: int,
    timeout: float | None,
) -> None:
    """Replay stored calls and their iterations as OpenTelemetry spans to an OTLP endpoint (a Collector,
    Tempo, Jaeger, ...), with their original trace and span ids, times and attributes.

    Running it again sends the same ids, so a backend that dedupes by id counts each call once. Headers,
    compression and certificates come from the standard OTEL_EXPORTER_OTLP_* variables. Refusals the OTLP
    specification calls retryable are retried by the official exporter; an endpoint that still refuses or
    never answers stops the export with exit code 2 (run it again to resend).
    """
    refuse_on_clickhouse(state, "export otlp")
    from compactobs import otlp
    from compactobs.progress import progress_bar
    from compactobs.store.replay import ReplayError, count_calls, replay

    filters = filters_from(since, until, tz, models, conversations, services)
    try:
        chosen = otlp.protocol("TRACES", {"grpc": otlp.GRPC, "http": otlp.HTTP_PROTOBUF}.get(protocol or ""))
    except otlp.OtlpConfigError as err:
        raise click.UsageError(f"{err}, or pass --protocol") from None
    with report_engine(state) as engine:
        conditions = filters.call_conditions()
        total = count_calls(engine, conditions)
        if not total:
            click.echo(f"no stored calls to export ({filters.describe()})")
            return
        exporter = otlp.span_exporter(chosen, endpoint=endpoint, timeout_s=timeout)
        where = (
            endpoint or otlp.configured_endpoint("TRACES") or "the exporter's default endpoint (localhost)"
        )
        try:
            with progress_bar(unit="calls", total=total) as progress:
                result = replay(
                    engine,
                    conditions,
                    exporter,
                    batch_calls=batch,
                    max_calls_per_s=rate,
                    progress=progress,
                    total=total,
                )
        except ReplayError as err:
            click.echo(
                f"Error: export to {where} over {chosen} failed: {err}; check --endpoint and --protocol, and "
                "that the endpoint is up (running it again resends under the same ids)",
                err=True,
            )
            ctx.exit(EXIT_USER_ERROR)
        finally:
            exporter.shutdown()
    retried = " (the exporter retried refused or failed ones)" if result.retried else ""
    click.echo(
        f"exported {result.calls:,} calls and {result.iterations:,} iteration spans over {chosen} to "
        f"{where} in {result.requests:,} requests{retried}, "
        f"{result.elapsed_s:.1f} s"
    )


# -- reconcile --------------------------------------------------------------------------------------------


@main.command("reconcile")
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
@click.option(
    "--workspace", "workspaces", multiple=True, metavar="ID", help="A workspace compactobs records."
)
@click.option("--api-key", "api_keys", multiple=True, metavar="ID", help="An API key id compactobs records.")
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
    workspaces: tuple[str, ...],
    api_keys: tuple[str, ...],
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
    scope = reconcile.Scope(tuple(workspaces), tuple(api_keys))
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


# -- clickhouse ---------------------------------------------------------------------------------------------


@main.group("clickhouse")
def clickhouse_group() -> None:
    """The ClickHouse source: --db clickhouse://user@host:8123/db or chdb:///path, the Collector's spans."""


@clickhouse_group.command("setup")
@pass_state
def clickhouse_setup(state: CliState) -> None:
    """Create typed tables of the calls and iterations, the materialised views that fill them as the
    Collector inserts spans, and fill them with the spans already there; the reports then read them."""
    from compactobs.reports.clickhouse import is_clickhouse_url, open_source

    if not is_clickhouse_url(state.database_url):
        raise StoreError(
            f"`clickhouse setup` needs a ClickHouse source, not {state.shown_url}: "
            "use --db clickhouse://user@host:8123/db or --db chdb:///path"
        )
    with open_source(state.database_url, state.clickhouse_table) as source, working("setting up ..."):
        source.setup()
        calls = source.rows("SELECT count() AS n FROM compactobs_calls FINAL")[0]["n"]
    click.echo(
        f"{state.shown_url}: compactobs_calls and compactobs_iterations filled from {state.clickhouse_table} "
        f"({calls:,} calls) and kept current by materialised views; reports read them from now on"
    )


# -- budgets --------------------------------------------------------------------------------------------


@main.group("budgets")
def budgets_group() -> None:
    """Budgets files (COMPACTOBS_BUDGETS_FILE): the limits the runtime guard and `report anomalies` apply."""


@budgets_group.command("check")
@click.argument("path", metavar="FILE")
def budgets_check(path: str) -> None:
    """Validate a budgets file before it is deployed: one line saying what it holds, or one line saying
    what is wrong and exit code 2. A running guard re-reads the file when it changes and keeps its last good
    budgets when the new file does not parse."""
    from compactobs.rules import load_budgets
    from compactobs.untrusted import escape

    try:
        budgets = load_budgets(path)
    except Exception as err:  # RulesInputError says what is wrong in one line; anything else, its first
        text = " ".join(str(err).split()) or type(err).__name__
        click.echo(f"Error: {escape(text)}", err=True)
        raise click.exceptions.Exit(EXIT_USER_ERROR) from None
    exact, globs = len(budgets.exact), len(budgets.globs)
    ids = f"{exact} exact conversation id{'' if exact == 1 else 's'}"
    click.echo(f"{escape(path)}: valid, {ids} and {globs} glob{'' if globs == 1 else 's'}")
