"""`compactobs serve`: the web view and JSON API over the store, read-only, on 127.0.0.1 by default."""

from __future__ import annotations

import click

from compactobs.cli.common import CliState, pass_state
from compactobs.serve.defaults import ANOMALIES_EVERY

__all__ = ["serve_command"]


@click.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; any other needs a token."
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option(
    "--token-file",
    metavar="F",
    help="A file whose first line is the token every request must carry (else $COMPACTOBS_SERVE_TOKEN).",
)
@click.option(
    "--budgets",
    "budgets_file",
    metavar="FILE",
    envvar="COMPACTOBS_BUDGETS_FILE",
    show_envvar=True,
    help="TOML budgets for the anomalies, as `report anomalies --budgets`.",
)
@click.option(
    "--anomalies-every",
    default=ANOMALIES_EVERY,
    show_default=True,
    type=click.FloatRange(min=1.0),
    metavar="SECONDS",
    help="How often the overview's anomalies worker checks the store (it recomputes when calls changed).",
)
@pass_state
def serve_command(
    state: CliState,
    host: str,
    port: int,
    token_file: str | None,
    budgets_file: str | None,
    anomalies_every: float,
) -> None:
    """A read-only web view of the store, with a JSON API: /api/report/NAME (the reports' options as query
    parameters; what `report NAME --format json` prints), /api/report/conversation/ID, /api/call/ID.

    Pages: overview, conversations, one conversation, one call, cache, ops, anomalies. Binds to 127.0.0.1;
    another --host needs a token (--token-file, or COMPACTOBS_SERVE_TOKEN): the API then takes
    `Authorization: Bearer TOKEN`, and a browser opens /?token=TOKEN once. Only GET and HEAD are served.
    """
    from compactobs.serve import resolve_token, serve

    token = resolve_token(host, token_file)
    click.echo(f"compactobs serve: {state.shown_url} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    serve(
        state.database_url,
        host,
        port,
        token,
        clickhouse_table=state.clickhouse_table,
        budgets_file=budgets_file,
        anomalies_every=anomalies_every,
    )
