"""`compactobs budgets check`: a budgets file validated before it is deployed."""

from __future__ import annotations

import click

from compactobs.cli.common import EXIT_USER_ERROR
from compactobs.errors import UserError

__all__ = ["budgets_group"]


@click.group("budgets")
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
    except UserError as err:  # RulesInputError: what is wrong, in one line
        text = " ".join(str(err).split()) or type(err).__name__
        click.echo(f"Error: {escape(text)}", err=True)
        raise click.exceptions.Exit(EXIT_USER_ERROR) from None
    exact, globs = len(budgets.exact), len(budgets.globs)
    ids = f"{exact} exact conversation id{'' if exact == 1 else 's'}"
    monthly = budgets.monthly
    count = len(monthly.scopes()) + len(monthly.tags) if monthly is not None else 0
    scopes = f", monthly budgets for {count} scope(s)" if monthly is not None else ""
    click.echo(f"{escape(path)}: valid, {ids} and {globs} glob{'' if globs == 1 else 's'}{scopes}")
