"""The `compactobs` command: the root group, its options, user-error handling, and the command groups.

Each command group is a module of this package (report, store, spool, pricing, ...), thin over the
library; this module names them, and imports a command's module only when that command runs: `--help`
lists them from `_COMMANDS` without importing any (they bring SQLAlchemy, most of a start-up). A problem
the user can fix is a `compactobs.errors.UserError` (StoreError, PricingError...): it is printed as one
line, `Error: ...`, with exit code 2 (click's own code for usage errors), never as a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any, Final, NoReturn

import click

from compactobs._version import __version__
from compactobs.errors import UserError

__all__ = ["main"]

EXIT_USER_ERROR: Final = 2
"""As `compactobs.cli.common.EXIT_USER_ERROR` (a test holds them equal), which imports SQLAlchemy."""
EXIT_INTERRUPTED: Final = 130
"""The same as `compactobs.cli.common.EXIT_INTERRUPTED`."""
ENV_DATABASE_URL: Final = "COMPACTOBS_DATABASE_URL"
"""The same as `compactobs.store.ENV_DATABASE_URL`: the store package imports SQLAlchemy."""

_COMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    # name: (module, attribute, short help for `--help`: a test holds it to the command's own)
    "alert": (
        "alert",
        "alert_command",
        "Send what needs a team's attention where it looks: the anomaly rules (compaction loops, budgets "
        "exceeded, ...), monthly budget burn and the month-end forecast, and spend spikes.",
    ),
    "budgets": (
        "budgets",
        "budgets_group",
        "Budgets files (COMPACTOBS_BUDGETS_FILE): the limits the runtime guard and `report anomalies` apply.",
    ),
    "clickhouse": (
        "clickhouse",
        "clickhouse_group",
        "The ClickHouse source: --db clickhouse://user@host:8123/db or chdb:///path, the Collector's spans.",
    ),
    "db": ("store", "db", "The SQL store's schema."),
    "demo": (
        "demo",
        "demo",
        "Run a simulated compaction workload and report on it (no API key, no network).",
    ),
    "export": ("export", "export_group", "Send stored calls to other systems."),
    "pricing": (
        "pricing",
        "pricing_group",
        "Prices: what a model costs on a day, and which recorded models have no price.",
    ),
    "reconcile": (
        "reconcile",
        "reconcile_command",
        "Set the store's figures beside Anthropic's usage and cost reports (admin key: ANTHROPIC_ADMIN_KEY), "
        "by UTC day or hour, and explain every difference: uninstrumented calls, other workspaces, price "
        "drift, discounts, bucket edges, the spool.",
    ),
    "report": ("report", "report", "Reports over the store: cost, cache, anomalies, ops, conversation."),
    "reprice": (
        "pricing",
        "reprice_command",
        "Price stored calls again with the current prices (genai-prices under COMPACTOBS_PRICING_FILE).",
    ),
    "spool": (
        "spool",
        "spool",
        "Rows waiting for the database (it was away, slow or locked) and rows it refused.",
    ),
    "collect": (
        "collect",
        "collect",
        "Receive OTLP from other processes (compactobs' spans from any language, Claude Code's events) and "
        "store it as if it had been recorded here: same rows, same spool, stored once however often it is "
        "sent.",
    ),
    "import": (
        "importers",
        "import_group",
        "Spend recorded elsewhere, stored as compactobs calls.",
    ),
    "serve": (
        "serve",
        "serve_command",
        "A read-only web view of the store, with a JSON API: /api/report/NAME (the reports' options as "
        "query parameters; what `report NAME --format json` prints), /api/report/conversation/ID, "
        "/api/call/ID.",
    ),
    "tune": (
        "tune",
        "tune",
        "Price the recorded conversations under other compaction settings: each setting's predicted cost "
        "with an interval beside the recorded bill, the cheapest setting per group, each compaction's all-"
        "in cost (the summary, the cache it made rebuild, the writes it left unread) and its quality "
        "signals.",
    ),
}
"""The command groups, each from its module. `spool` is also under `db`, where `db status` points to it."""


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

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # click suggests "Did you mean" from `self.commands`, which lazy loading leaves empty: the
        # suggestions come from the table of commands instead.
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand:
            name = click.utils.make_str(args[0])
            raise click.exceptions.NoSuchCommand(name, possibilities=list(_COMMANDS), ctx=ctx) from None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attribute, _ = entry
        command: click.Command = getattr(importlib.import_module(f"compactobs.cli.{module}"), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their short help, from `_COMMANDS`: listing them imports none."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        # Shortened as click shortens a command's own help (through its public API: a stand-in command).
        rows = [
            (name, click.Command(name, help=_COMMANDS[name][2]).get_short_help_str(limit)) for name in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
    from compactobs.cli import common
    from compactobs.store import default_database_url

    ctx.obj = common.CliState(database_url or default_database_url(), clickhouse_table)
