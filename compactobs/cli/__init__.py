"""The `compactobs` command: the root group, its options, user-error handling, and the command groups.

Each command group is a module of this package (report, store, spool, pricing, ...), thin over the
library; this module registers them. A problem the user can fix is a `compactobs.errors.UserError`
(StoreError, PricingError...): it is printed as one line, `Error: ...`, with exit code 2 (click's own code
for usage errors), never as a traceback.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click

from compactobs._version import __version__
from compactobs.cli import (
    alert,
    budgets,
    clickhouse,
    collect,
    demo,
    export,
    importers,
    pricing,
    reconcile,
    report,
    serve,
    spool,
    store,
    tune,
)
from compactobs.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, CliState
from compactobs.errors import UserError
from compactobs.store import ENV_DATABASE_URL, default_database_url

__all__ = ["CliState", "main"]


def _usage_error(err: click.UsageError) -> NoReturn:
    """click's usage errors (a wrong flag, a missing argument, a bad choice) as one line, exit code 2.
    A group called with nothing to do shows its help, as click does."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError):
        raise err
    where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
    click.echo(f"Error: {err.format_message()}{where}", err=True)
    raise click.exceptions.Exit(EXIT_USER_ERROR)


class _Group(click.Group):
    """Turns a user error (`UserError`, or click's usage errors) raised anywhere under it into a one-line
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
        except UserError as err:  # one line by contract; anything else is a bug, and shows as one
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


# The command groups, each from its module. `spool` is also under `db`, where `db status` points to it.
for command in (
    store.db,
    report.report,
    demo.demo,
    pricing.pricing_group,
    pricing.reprice_command,
    export.export_group,
    reconcile.reconcile_command,
    clickhouse.clickhouse_group,
    budgets.budgets_group,
    spool.spool,
    alert.alert_command,
    tune.tune,
    collect.collect,
    importers.import_group,
    serve.serve_command,
):
    main.add_command(command)
store.db.add_command(spool.spool)
