"""`compactobs demo`: a simulated compaction workload recorded into a store of its own, then reported."""

from __future__ import annotations

import click

from compactobs.cli.common import CliState
from compactobs.store import default_database_url

__all__ = ["DEMO_REPORTS", "demo"]

DEMO_REPORTS: tuple[tuple[str, ...], ...] = (
    ("cost", "--by", "model"),
    ("cache", "--by", "model"),
    ("anomalies",),
)
"""The reports `compactobs demo` prints afterwards, restricted to the run's conversations."""


@click.command("demo")
@click.option("--reports/--no-reports", default=True, show_default=True, help="Print the reports afterwards.")
@click.option(
    "--db",
    "demo_db",
    metavar="URL",
    default=None,
    help="Where to record (default: the demo's own SQLite file, demo.db in the data directory; never "
    "your default store).",
)
@click.pass_context
def demo(ctx: click.Context, reports: bool, demo_db: str | None) -> None:
    """Run a simulated compaction workload and report on it (no API key, no network).

    About 45 calls in 10 conversations (streaming, prompt caching, a compaction loop, a paused and resumed
    compaction, on-demand compaction, retries, errors, an unpriced model) go through the real anthropic SDK
    to a loopback Messages API, and are recorded under service.name compactobs-demo into a store of the
    demo's own (demo.db in the data directory), so simulated costs never mix with your real ones; --db (here
    or before the command) records elsewhere. Each run gets conversation ids of its own, so running it
    again adds a separate set. Last, the research agent's script runs again without and with the runtime
    guard (not stored), to show the money it saves.
    """
    from compactobs.demo import SERVICE_NAME, progress_bar, run_demo
    from compactobs.store import data_dir, open_database

    root = ctx.find_root()
    given = demo_db or root.params.get("database_url")
    state = CliState(given or f"sqlite:///{data_dir() / 'demo.db'}")
    # A store that cannot take the rows (PostgreSQL not upgraded yet...) fails here, before any call.
    open_database(state.database_url).dispose()
    click.echo(
        "compactobs demo: a simulated workload through the real anthropic SDK against a loopback Messages "
        "API (no API key, no network)."
    )
    whose = "" if given else " (the demo's own store; --db to record elsewhere)"
    click.echo(f"Recording into {state.shown_url}{whose} as service.name={SERVICE_NAME}")
    with progress_bar() as progress:
        summary = run_demo(state.database_url, progress=progress)
    pattern = f"{summary.conversation_prefix}*"
    for line in summary.lines():
        click.echo(line)
    if not summary.complete:
        click.echo(
            f"Warning: only {summary.stored_calls} of {summary.calls} calls reached {state.shown_url}; the "
            "rest wait in the spool (see `compactobs db status`)",
            err=True,
        )
    db = [] if state.database_url == default_database_url() else ["--db", state.database_url]
    shown_db = [] if not db else ["--db", f"'{state.shown_url}'"]
    # The reports run through the root command, as typed: this module does not import the root group.
    main = root.command
    # get_command, not `.commands`: the root group loads its commands' modules only when asked.
    report = main.get_command(root, "report") if isinstance(main, click.Group) else None
    available = getattr(report, "commands", {})
    if reports:
        for args in DEMO_REPORTS:
            if args[0] not in available:
                continue
            command = ["report", *args, "--conversation", pattern]
            click.echo(f"\n$ compactobs {' '.join([*shown_db, *command[:-1]])} '{pattern}'")
            main.main([*db, *command], prog_name="compactobs", standalone_mode=False)
    loop = next((c.id for c in summary.conversations if c.id.endswith("-research-loop")), None)
    if loop is not None and "conversation" in available:
        command_line = " ".join(["compactobs", *shown_db, "report", "conversation", loop])
        click.echo(f"\nThe compaction loop, call by call: {command_line}")
    _demo_guard()
    from compactobs.demo import tune_line

    click.echo(f"\nTune ({' '.join(['compactobs', *shown_db, 'tune', '--conversation', repr(pattern)])}):")
    click.echo(f"  {tune_line(state.database_url, pattern)}")
    serve_line = " ".join(["compactobs", *shown_db, "serve"])
    click.echo(f"\nTo look at this store in a browser: {serve_line}, then open http://127.0.0.1:8000/")
    if not summary.complete:
        ctx.exit(1)


def _demo_guard() -> None:
    """The runtime guard's part of the demo: the research agent's script again, without and with it."""
    from compactobs.demo import run_guard_comparison

    click.echo("\nThe runtime guard on the research agent's script, run again without it and with it:")
    for line in run_guard_comparison().lines():
        click.echo(f"  {line}")
