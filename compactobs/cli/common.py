"""What every command module shares: the state `ctx.obj` carries, the source a report reads, and output.

Commands share `ctx.obj`, a `CliState` carrying the database URL (`--db`, else the library's default).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy import Engine

from compactobs.progress import stdout_fit_width
from compactobs.reports.model import Report, sort_and_limit
from compactobs.reports.render import render
from compactobs.reports.render.safe import shown
from compactobs.store import StoreError, default_database_url, display_url, open_database

if TYPE_CHECKING:
    from compactobs.reports.sources import Source

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "CliState",
    "echo_warnings",
    "emit_report",
    "pass_state",
    "refresh_rollups",
    "refuse_on_clickhouse",
    "report_engine",
    "terminal_width",
    "use_color",
    "working",
]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C: 128 + SIGINT, as shells report a process that SIGINT ended (click's own "Aborted!" exits 1)."""


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


pass_state = click.make_pass_decorator(CliState)


def refuse_on_clickhouse(state: CliState, command: str) -> None:
    """A command that writes to (or migrates) the SQL store, run on a ClickHouse source: one line, exit 2."""
    from compactobs.reports.sources.clickhouse import is_clickhouse_url

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
    from compactobs.reports.sources.clickhouse import is_clickhouse_url, open_source

    if is_clickhouse_url(state.database_url):
        with open_source(state.database_url, state.clickhouse_table) as source:
            yield source
        return
    engine = open_database(state.database_url, create=state.database_url == default_database_url())
    try:
        yield engine
    finally:
        engine.dispose()


def refresh_rollups(engine: Engine | Source) -> None:
    """Bring the rollups the cost and cache reports read up to date, with a progress bar when there is
    more than a day of slots to recompute (the first report after an upgrade, or after a bulk load)."""
    from compactobs.progress import progress_bar
    from compactobs.reports.sources.sql import rollup

    if not isinstance(engine, Engine):
        return  # another source (ClickHouse) keeps its own sums

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


def terminal_width() -> int:
    """The terminal's width for tables; 100 when stdout is not a terminal."""
    return shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100


def echo_warnings(report: Report, fmt: str) -> None:
    """CSV carries no warnings, so they go to stderr."""
    if fmt == "csv":
        for warning in report.warnings:
            click.echo(f"Warning: {shown(warning)}", err=True)


def emit_report(report: Report, fmt: str, sort: str | None = None, limit: int | None = None) -> None:
    """Print a report in `fmt`, its rows ordered by `sort` and cut to `limit` (`group_options`)."""
    if sort is not None or limit is not None:
        report = sort_and_limit(report, sort, limit)
    color = fmt == "table" and use_color()
    text = render(report, fmt, console_width=terminal_width(), color=color, fit_width=stdout_fit_width())
    click.echo(text, nl=False, color=color)
    echo_warnings(report, fmt)
