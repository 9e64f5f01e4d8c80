"""`compactobs tune`: what other compaction settings would have cost on the recorded traffic.

Thin over compactobs.reports.tune; registered on the main group by compactobs.cli. Options are parsed into
`TuneOptions` and `Filters`; a value the user can fix raises ReportInputError, which the main group prints
as one line with exit code 2.
"""

from __future__ import annotations

import shutil
import sys
from decimal import Decimal, InvalidOperation

import click

__all__ = ["tune"]


@click.command("tune")
@click.option(
    "--trigger",
    "triggers",
    metavar="N,N,...",
    help="Triggers to price, in input tokens (at least 50000; 75K also reads).  "
    "[default: 50000,75000,100000,150000]",
)
@click.option(
    "--cache-ttl",
    "cache_ttl",
    metavar="5m|1h",
    help="Price every cache write at this TTL (5m, 1h, or both: 5m,1h).  [default: the TTLs recorded]",
)
@click.option(
    "--summary-tokens",
    type=int,
    metavar="N",
    help="Assume every summary is N tokens (else: measured from the recorded compactions, per model).",
)
@click.option(
    "--pause-after-compaction",
    is_flag=True,
    help="With --budget-usd: where the guard (on_breach=pause) would have stopped each conversation.",
)
@click.option("--budget-usd", metavar="USD", help="The conversation budget the guard holds.")
@click.option("--by", "by", metavar="KEY", help="Advise per group: service, conversation or tag:KEY.")
@click.option(
    "--since", metavar="WHEN", help="Calls started at or after: YYYY-MM-DD, ISO date-time, 7d, 24h."
)
@click.option("--until", metavar="WHEN", help="Calls started before (a date is inclusive).")
@click.option("--tz", metavar="ZONE", help="IANA time zone for dates (default: local).")
@click.option("--model", "models", multiple=True, metavar="MODEL", help="Only these models (globs).")
@click.option(
    "--conversation", "conversations", multiple=True, metavar="ID", help="Only these conversations."
)
@click.option("--service", "services", multiple=True, metavar="NAME", help="Only these services.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "md"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.pass_obj
def tune(
    state: object,
    triggers: str | None,
    cache_ttl: str | None,
    summary_tokens: int | None,
    pause_after_compaction: bool,
    budget_usd: str | None,
    by: str | None,
    since: str | None,
    until: str | None,
    tz: str | None,
    models: tuple[str, ...],
    conversations: tuple[str, ...],
    services: tuple[str, ...],
    fmt: str,
) -> None:
    """Price the recorded conversations under other compaction settings: each setting's predicted cost
    with an interval beside the recorded bill, the cheapest setting per group, each compaction's all-in
    cost (the summary, the cache it made rebuild, the writes it left unread) and its quality signals.

    The model is measured from the traffic (context growth per turn, summary sizes, cache reads and
    writes, gaps between calls) and states what it assumes; where the traffic cannot support an estimate
    it says so instead of guessing.
    """
    from compactobs.reports._common import ReportInputError, build_filters, render
    from compactobs.reports.tune import (
        TuneOptions,
        parse_by,
        parse_triggers,
        parse_ttls,
        tune_json,
        tune_report,
    )
    from compactobs.store import open_database

    budget = None
    if budget_usd is not None:
        try:
            budget = Decimal(budget_usd)
        except InvalidOperation:
            raise ReportInputError(f"--budget-usd {budget_usd!r} is not a number") from None
        if not budget.is_finite() or budget < 0:
            raise ReportInputError(f"--budget-usd must be a finite number >= 0, not {budget_usd}")
    options = TuneOptions(
        triggers=parse_triggers(triggers),
        cache_ttls=parse_ttls(cache_ttl),
        summary_tokens=summary_tokens,
        pause_after_compaction=pause_after_compaction,
        budget_usd=budget,
        by=parse_by(by),
    )
    filters = build_filters(since, until, tz, models, conversations, services)
    from compactobs.reports.clickhouse import is_clickhouse_url, open_source
    from compactobs.reports.tune import tune as run_tune

    url = state.database_url  # type: ignore[attr-defined]
    if is_clickhouse_url(url):
        with open_source(url, state.clickhouse_table) as source:  # type: ignore[attr-defined]
            result = run_tune(source, filters, options)
    else:
        engine = open_database(url)
        try:
            result = run_tune(engine, filters, options)
        finally:
            engine.dispose()
    if fmt == "json":
        click.echo(tune_json(result))
        return
    report = tune_report(result)
    width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100
    click.echo(render(report, fmt, console_width=width), nl=False)
    if fmt == "csv":
        for warning in report.warnings:
            click.echo(f"Warning: {warning}", err=True)
