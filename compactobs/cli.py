"""The `compactobs` command: a thin shell over the library (all logic lives in compactobs.*).

Commands share `ctx.obj`, a `CliState` carrying the database URL (`--db`, else the library's default).
A problem the user can fix is a `StoreError`: it is printed as one line, `Error: ...`, with exit code 2
(click's own code for usage errors), never as a traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
from sqlalchemy import Engine

from compactobs._version import __version__
from compactobs.reports._common import FORMATS, Filters, Report, ReportInputError, build_filters, render
from compactobs.store import (
    ENV_DATABASE_URL,
    StoreError,
    database_status,
    default_database_url,
    display_url,
    open_database,
    spool_status,
    upgrade_database,
)

__all__ = ["CliState", "main"]

EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class CliState:
    """What every command gets as `ctx.obj`."""

    database_url: str
    """The URL to use: `--db`, else `COMPACTOBS_DATABASE_URL`, else the embedded SQLite file."""

    @property
    def shown_url(self) -> str:
        return display_url(self.database_url)


class _Group(click.Group):
    """Turns a StoreError raised anywhere under it into a one-line error and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StoreError, ReportInputError) as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(EXIT_USER_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "database_url",
    metavar="URL",
    default=None,
    help=f"Database URL (default: ${ENV_DATABASE_URL}, else SQLite in the user data directory).",
)
@click.version_option(__version__, prog_name="compactobs")
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """compactobs: what your Claude traffic really costs, where the cache pays, when compaction runs away."""
    ctx.obj = CliState(database_url or default_database_url())


pass_state = click.make_pass_decorator(CliState)


@main.group()
def db() -> None:
    """The SQL store's schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_state
def db_upgrade(state: CliState, revision: str) -> None:
    """Create or migrate the store's tables to this version's schema."""
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
    status = database_status(state.database_url)
    directory, segments, size = spool_status(state.database_url)
    click.echo(f"database: {state.shown_url}")
    if status is None:
        click.echo("schema:   no database file yet")
    else:
        click.echo(f"schema:   {status.current or 'none'} (this compactobs: {status.head}) - {status.state}")
    if segments:
        click.echo(f"spool:    {segments} segment(s), {size} bytes waiting in {directory}")
    else:
        click.echo("spool:    empty")
    if status is None:
        raise StoreError(
            "the SQLite file does not exist yet: it is created on first use, or run `compactobs db upgrade`"
            if state.database_url == default_database_url()
            else f"the SQLite file does not exist yet: run `compactobs --db '{state.shown_url}' db upgrade`"
        )
    if not status.ok:
        raise StoreError(status.fix or status.state)


# -- reports ---------------------------------------------------------------------------------------------
# Every `report` command takes the same options (`report_options`), builds `Filters` with `filters_from`,
# calls a pure report function over `open_database(...)` (`report_engine`), and prints with `emit_report`.


class _ReportGroup(_Group):
    """Under `report`, click's own usage errors (a bad --format or --by value, an option missing its value)
    are one line too: `Error: ...`, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            ctx.exit(EXIT_USER_ERROR)


@main.group("report", cls=_ReportGroup)
def report() -> None:
    """Reports over the store: cost, cache, anomalies, ops, conversation.

    Every report takes --since/--until (YYYY-MM-DD, ISO date-time, 7d, 24h, 30m, today, yesterday; an
    --until date is inclusive), --tz (IANA zone, default local), --model/--conversation/--service filters
    (repeatable, * globs) and --format table|json|csv|md.
    """


def report_options(func: Any) -> Any:
    """The options every report command shares; the command receives `since`, `until`, `tz`, `models`,
    `conversations`, `services` and `fmt` (build Filters with `filters_from`)."""
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
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default="table",
            show_default=True,
            help="Output format.",
        ),
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


@contextmanager
def report_engine(state: CliState) -> Iterator[Engine]:
    """The store opened for reading (checked against the schema; StoreError otherwise), disposed after."""
    engine = open_database(state.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def use_color() -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and sys.stdout.isatty()


def emit_report(report: Report, fmt: str) -> None:
    """Print a report in `fmt`. CSV carries no warnings, so they go to stderr."""
    color = fmt == "table" and use_color()
    width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100
    click.echo(render(report, fmt, console_width=width, color=color), nl=False, color=color)
    if fmt == "csv":
        for warning in report.warnings:
            click.echo(f"Warning: {warning}", err=True)


# -- demo ------------------------------------------------------------------------------------------------

DEMO_REPORTS: tuple[tuple[str, ...], ...] = (
    ("cost", "--by", "model"),
    ("cache", "--by", "model"),
    ("anomalies",),
)
"""The reports `compactobs demo` prints afterwards, restricted to the run's conversations."""


@main.command("demo")
@click.option("--reports/--no-reports", default=True, show_default=True, help="Print the reports afterwards.")
@click.pass_context
def demo(ctx: click.Context, reports: bool) -> None:
    """Run a simulated compaction workload and report on it (no API key, no network).

    About 45 calls in 10 conversations (streaming, prompt caching, a compaction loop, a paused and resumed
    compaction, on-demand compaction, retries, errors, an unpriced model) go through the real anthropic SDK
    to a loopback Messages API, and are recorded into the store under service.name compactobs-demo. Each
    run gets conversation ids of its own, so running it again adds a separate set.
    """
    from compactobs.demo import SERVICE_NAME, progress_bar, run_demo
    from compactobs.store import open_database

    state = ctx.ensure_object(CliState)
    # A store that cannot take the rows (PostgreSQL not upgraded yet...) fails here, before any call.
    open_database(state.database_url).dispose()
    click.echo(
        "compactobs demo: a simulated workload through the real anthropic SDK against a loopback Messages "
        "API (no API key, no network)."
    )
    click.echo(f"Recording into {state.shown_url} as service.name={SERVICE_NAME}")
    with progress_bar() as progress:
        summary = run_demo(state.database_url, progress=progress)
    pattern = f"{summary.conversation_prefix}*"
    priced = f"${summary.cost_usd:,.4f} billed" + (
        f", {summary.unpriced_calls} unpriced call(s)" if summary.unpriced_calls else ""
    )
    click.echo(
        f"Recorded {summary.stored_calls} calls in {len(summary.conversations)} conversations "
        f"({summary.stored_iterations} iterations, {summary.compactions} compactions), {priced}, "
        f"in {summary.elapsed_s:.1f} s; conversations {pattern}"
    )
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
    if reports:
        db = [] if state.database_url == default_database_url() else ["--db", state.database_url]
        shown_db = [] if not db else ["--db", f"'{state.shown_url}'"]
        available = getattr(main.commands.get("report"), "commands", {})
        for args in DEMO_REPORTS:
            if args[0] not in available:
                continue
            command = ["report", *args, "--conversation", pattern]
            click.echo(f"\n$ compactobs {' '.join([*shown_db, *command[:-1]])} '{pattern}'")
            main.main([*db, *command], prog_name="compactobs", standalone_mode=False)
    if not summary.complete:
        ctx.exit(1)
