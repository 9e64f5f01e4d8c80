"""`compactobs clickhouse setup`: the typed tables and views the reports read from the Collector's spans."""

from __future__ import annotations

import click

from compactobs.cli.common import CliState, pass_state, working
from compactobs.store import StoreError

__all__ = ["clickhouse_group"]


@click.group("clickhouse")
def clickhouse_group() -> None:
    """The ClickHouse source: --db clickhouse://user@host:8123/db or chdb:///path, the Collector's spans."""


@clickhouse_group.command("setup")
@pass_state
def clickhouse_setup(state: CliState) -> None:
    """Create typed tables of the calls and iterations, the materialised views that fill them as the
    Collector inserts spans, and fill them with the spans already there; the reports then read them."""
    from compactobs.reports.sources.clickhouse import is_clickhouse_url, open_source

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
