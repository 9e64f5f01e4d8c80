"""`compactobs alert`: findings to webhooks, Slack and PagerDuty, de-duplicated through the store.

Thin over compactobs.alerts (evaluate, state, sinks, run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click

from compactobs.cli.common import CliState, pass_state
from compactobs.cli.options import dataclass_options, usd_amount
from compactobs.reports.model import Filters
from compactobs.reports.thresholds import Thresholds
from compactobs.reports.times import build_filters
from compactobs.rules import SpikeRule

__all__ = ["alert_command"]

ENV_WEBHOOK = "COMPACTOBS_ALERT_WEBHOOK"
ENV_SLACK = "COMPACTOBS_SLACK_WEBHOOK"
ENV_PAGERDUTY = "COMPACTOBS_PAGERDUTY_ROUTING_KEY"


"""The `alert` command, with the reports' --since/--until/--tz/--model/--conversation/--service."""
_SPIKE = SpikeRule()
_OPTIONS = [
    click.option(
        "--webhook",
        metavar="URL",
        envvar=ENV_WEBHOOK,
        show_envvar=True,
        help="POST each group of findings as JSON to this URL (@FILE: read it from a file).",
    ),
    click.option(
        "--slack-webhook",
        metavar="URL",
        envvar=ENV_SLACK,
        show_envvar=True,
        help="A Slack incoming webhook (@FILE: read it from a file).",
    ),
    click.option(
        "--pagerduty-routing-key",
        metavar="KEY",
        envvar=ENV_PAGERDUTY,
        show_envvar=True,
        help="A PagerDuty Events API v2 routing key (@FILE: read it from a file).",
    ),
    click.option(
        "--pagerduty-url",
        metavar="URL",
        default=None,
        help="The full Events API v2 enqueue URL  [default: https://events.pagerduty.com/v2/enqueue]",
    ),
    click.option(
        "--link-base",
        metavar="URL",
        help="Link Slack findings to `compactobs serve` at URL: URL/conversation/ID and URL/call/ID.",
    ),
    click.option(
        "--budgets",
        "budgets_file",
        metavar="FILE",
        envvar="COMPACTOBS_BUDGETS_FILE",
        show_envvar=True,
        help='TOML budgets: [budgets."ID"] per conversation, [monthly] usd (and per service).',
    ),
    click.option(
        "--monthly-budget",
        metavar="USD",
        help="USD this month may cost (all spend the filters select): alerts on burn and forecast.",
    ),
    click.option(
        "--renotify",
        metavar="DURATION",
        help="Send an open finding again after this long (e.g. 4h; default: once).",
    ),
    click.option(
        "--every",
        metavar="DURATION",
        help="Run a pass every DURATION (e.g. 5m) until interrupted; default: one pass, for cron.",
    ),
    click.option(
        "--severity",
        "min_severity",
        type=click.Choice(["warning", "critical"]),
        default="warning",
        show_default=True,
        help="Send findings of this severity or above.",
    ),
    click.option(
        "--spike-factor",
        type=float,
        default=_SPIKE.factor,
        show_default=True,
        help="spend_spike: the last hour above this many times the week's hourly mean...",
    ),
    click.option(
        "--spike-min-usd",
        default=str(_SPIKE.min_usd),
        show_default=True,
        metavar="USD",
        help="...and at least this much.",
    ),
    click.option(
        "--dry-run", is_flag=True, help="Print the findings and their keys; send nothing, record nothing."
    ),
]


def _filters_and_scope(
    since: str | None,
    until: str | None,
    tz: str | None,
    models: Sequence[str] = (),
    conversations: Sequence[str] = (),
    services: Sequence[str] = (),
) -> tuple[Filters, str]:
    """The reports' filters, and the options as typed: the alert state's scope, which must not move
    from one run to the next as `--since 24h` does once resolved."""
    typed = (since, until, tz, tuple(models), tuple(conversations), tuple(services))
    return build_filters(since, until, tz, models, conversations, services), repr(typed)


def _with_options(command: Any) -> Any:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


@pass_state
def alert(
    state: CliState,
    window: tuple[Filters, str],
    webhook: str | None,
    slack_webhook: str | None,
    pagerduty_routing_key: str | None,
    pagerduty_url: str | None,
    link_base: str | None,
    budgets_file: str | None,
    monthly_budget: str | None,
    renotify: str | None,
    every: str | None,
    min_severity: str,
    spike_factor: float,
    spike_min_usd: str,
    dry_run: bool,
) -> None:
    """Send what needs a team's attention where it looks: the anomaly rules (compaction loops, budgets
    exceeded, ...), monthly budget burn and the month-end forecast, and spend spikes.

    Each finding is sent once per destination, again only with --renotify, and resolved when it clears;
    the findings of a pass go out one message per kind. State lives in the store (alert_state), so two
    runs at once send a finding once. Secrets come from the environment or @FILE, and are shown masked.

    Exit codes: 0; 4 when a destination did not take what it was sent (it is sent on the next run); 2 on
    bad input.
    """
    from compactobs.alerts.evaluate import AlertRules
    from compactobs.alerts.run import EXIT_DELIVERY, AlertInputError, parse_duration, read_secret
    from compactobs.alerts.sinks import PAGERDUTY_URL, PagerDutySink, Sink, SlackSink, WebhookSink
    from compactobs.reports.anomalies import load_budgets
    from compactobs.rules import MonthlyBudgets, RulesInputError

    filters, filter_scope = window
    sinks: list[Sink] = []
    if webhook:
        sinks.append(WebhookSink(read_secret(webhook, "--webhook")))
    if slack_webhook:
        sinks.append(SlackSink(read_secret(slack_webhook, "--slack-webhook"), link_base))
    if pagerduty_routing_key:
        key = read_secret(pagerduty_routing_key, "--pagerduty-routing-key")
        sinks.append(PagerDutySink(key, pagerduty_url or PAGERDUTY_URL))
    if not sinks and not dry_run:
        raise AlertInputError(
            "no destination: give --webhook, --slack-webhook or --pagerduty-routing-key (or their "
            f"variables {ENV_WEBHOOK}, {ENV_SLACK}, {ENV_PAGERDUTY}), or --dry-run"
        )
    for value, option in ((webhook, "--webhook"), (slack_webhook, "--slack-webhook")):
        if value and not value.startswith("@") and not value.startswith(("http://", "https://")):
            raise AlertInputError(f"{option}: give an http:// or https:// URL (or @FILE)")
    budgets = load_budgets(budgets_file) if budgets_file else None
    monthly = None
    if monthly_budget is not None:
        monthly = MonthlyBudgets(
            usd=usd_amount(monthly_budget, "--monthly-budget"), source="--monthly-budget"
        )
    try:
        spike_rule = SpikeRule(factor=spike_factor, min_usd=usd_amount(spike_min_usd, "--spike-min-usd"))
    except RulesInputError as err:
        raise AlertInputError(str(err)) from None
    rules = AlertRules(
        Thresholds(), budgets, monthly, spike_rule, "critical" if min_severity == "critical" else "warning"
    )
    renotify_after = parse_duration(renotify, "--renotify") if renotify else None
    interval = parse_duration(every, "--every") if every else None
    scope = repr((filter_scope, min_severity))
    code = 0
    while True:
        code = _one_pass(state, filters, rules, sinks, scope, renotify_after, dry_run)
        if interval is None:
            break
        time.sleep(interval.total_seconds())
    if code:
        raise click.exceptions.Exit(EXIT_DELIVERY)


alert_command = click.command("alert")(
    dataclass_options(Filters, into="window", build=_filters_and_scope)(_with_options(alert))
)


def _one_pass(
    state: Any,
    filters: Any,
    rules: Any,
    sinks: list[Any],
    scope: str,
    renotify: timedelta | None,
    dry_run: bool,
) -> int:
    """One pass: print what was found and sent; 1 when a destination failed (its one line on stderr)."""
    from compactobs.alerts.evaluate import evaluate
    from compactobs.alerts.run import run_pass
    from compactobs.reports.sources.clickhouse import is_clickhouse_url
    from compactobs.store import StoreError, default_database_url, make_engine, open_database
    from compactobs.untrusted import escape

    if is_clickhouse_url(state.database_url):
        raise StoreError(
            f"`alert` keeps its state in the SQL store, and {state.shown_url} is a ClickHouse source: run it "
            "with a sqlite:// or postgresql:// --db"
        )
    engine = open_database(state.database_url, create=state.database_url == default_database_url())
    try:
        if dry_run:
            alerts = evaluate(engine, filters, rules)
            click.echo(_counted(alerts))
            for alert in alerts:
                about = f" conversation {escape(alert.conversation_id)}" if alert.conversation_id else ""
                about += f" service {escape(alert.service)}" if alert.service else ""
                click.echo(f"{alert.severity} {alert.kind} {alert.key}{about}: {escape(alert.message)}")
            return 0
        writer = make_engine(state.database_url, writer=True, busy_timeout_s=30.0, statement_timeout_s=30.0)
        try:
            result = run_pass(engine, writer, filters, rules, sinks, scope, renotify)
        finally:
            writer.dispose()
    finally:
        engine.dispose()
    click.echo(_counted(result.alerts))
    for sink in result.sinks:
        if sink.error is None:
            click.echo(sink.line())
    if result.failed:
        failed = "; ".join(sink.line() for sink in result.failed)
        click.echo(
            f"Error: {len(result.failed)} of {len(result.sinks)} destination(s) failed: {failed}", err=True
        )
        return 1
    return 0


def _counted(alerts: list[Any]) -> str:
    critical = sum(1 for a in alerts if a.severity == "critical")
    return f"{len(alerts)} finding(s): {critical} critical, {len(alerts) - critical} warning"
