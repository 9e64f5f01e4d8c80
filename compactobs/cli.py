"""The `compactobs` command: a thin shell over the library (all logic lives in compactobs.*).

Commands share `ctx.obj`, a `CliState` carrying the database URL (`--db`, else the library's default).
A problem the user can fix is a `StoreError`: it is printed as one line, `Error: ...`, with exit code 2
(click's own code for usage errors), never as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from compactobs._version import __version__
from compactobs.store import (
    ENV_DATABASE_URL,
    StoreError,
    database_status,
    default_database_url,
    display_url,
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
        except StoreError as err:
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
