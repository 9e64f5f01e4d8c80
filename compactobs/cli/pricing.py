"""`compactobs pricing show | check` and `compactobs reprice`: prices, and the stored calls priced again."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from compactobs.cli.common import CliState, pass_state, refuse_on_clickhouse, working
from compactobs.cli.options import window_options
from compactobs.reports.model import Filters
from compactobs.store import StoreError

__all__ = ["pricing_group", "reprice_command"]


@click.group("pricing")
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
        click.echo(json.dumps(card.to_json(), indent=2))
        return
    for line in card.lines():
        click.echo(line)


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
    from compactobs.pricing import default_pricer
    from compactobs.store.reprice import check_prices

    result = check_prices(default_pricer(), state.database_url, models)
    if not result.database_exists and not models:
        raise StoreError(
            f"no database at {result.database} yet, so no recorded models to check: record calls first, "
            "or name models: compactobs pricing check MODEL..."
        )
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for line in result.lines():
            click.echo(line)
    if result.unpriced:
        ctx.exit(1)


@click.command("reprice")
@window_options
@pass_state
def reprice_command(state: CliState, filters: Filters) -> None:
    """Price stored calls again with the current prices (genai-prices under COMPACTOBS_PRICING_FILE).

    Each call is priced from its stored iteration token counts, at the prices in force on its date, and
    keeps the new pricing version. Running it again with the same prices changes nothing.
    """
    from compactobs.pricing import default_pricer
    from compactobs.store.reprice import reprice_database

    refuse_on_clickhouse(state, "reprice")
    pricer = default_pricer()
    with working("repricing ..."):
        result = reprice_database(state.database_url, pricer, since=filters.since, until=filters.until)
    click.echo(f"database: {state.shown_url} ({filters.describe()})")
    for line in result.lines():
        click.echo(line)
    if result.skipped:
        click.echo(
            f"Warning: {result.skipped:,} calls left as they were: their iteration rows are missing",
            err=True,
        )
