"""`compactobs db upgrade | status`: the SQL store's schema, and where it stands."""

from __future__ import annotations

import click

from compactobs.cli.common import CliState, pass_state, refuse_on_clickhouse
from compactobs.cli.spool import spool, spool_lines
from compactobs.store import StoreError, database_status, default_database_url, make_engine, upgrade_database

__all__ = ["db"]


@click.group()
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


def _rollup_status(database_url: str) -> str:
    from compactobs.reports.sources.sql import rollup

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


# `spool` under `db` too, where `db status` points to it (the root lists it as well).
db.add_command(spool)
