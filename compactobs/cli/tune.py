"""`compactobs tune`: what other compaction settings would have cost on the recorded traffic.

Thin over compactobs.reports.tune: options are parsed into `TuneOptions` and `Filters`; a value the user
can fix raises ReportInputError (one line, exit 2).
"""

from __future__ import annotations

import click

from compactobs.cli.common import CliState, emit_report, pass_state, report_engine
from compactobs.cli.options import report_options, usd_amount
from compactobs.reports.model import Filters

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
@report_options
@pass_state
def tune(
    state: CliState,
    triggers: str | None,
    cache_ttl: str | None,
    summary_tokens: int | None,
    pause_after_compaction: bool,
    budget_usd: str | None,
    by: str | None,
    filters: Filters,
    fmt: str,
) -> None:
    """Price the recorded conversations under other compaction settings: each setting's predicted cost
    with an interval beside the recorded bill, the cheapest setting per group, each compaction's all-in
    cost (the summary, the cache it made rebuild, the writes it left unread) and its quality signals.

    The model is measured from the traffic (context growth per turn, summary sizes, cache reads and
    writes, gaps between calls) and states what it assumes; where the traffic cannot support an estimate
    it says so instead of guessing.
    """
    from compactobs.reports.tune import (
        TuneOptions,
        parse_by,
        parse_triggers,
        parse_ttls,
        tune_json,
        tune_report,
    )
    from compactobs.reports.tune import tune as run_tune

    budget = None if budget_usd is None else usd_amount(budget_usd, "--budget-usd")
    options = TuneOptions(
        triggers=parse_triggers(triggers),
        cache_ttls=parse_ttls(cache_ttl),
        summary_tokens=summary_tokens,
        pause_after_compaction=pause_after_compaction,
        budget_usd=budget,
        by=parse_by(by),
    )
    with report_engine(state) as source:
        result = run_tune(source, filters, options)
    if fmt == "json":
        click.echo(tune_json(result), nl=False)
        return
    emit_report(tune_report(result), fmt)
