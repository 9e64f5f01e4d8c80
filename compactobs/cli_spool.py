"""`compactobs spool status | show | replay`: the rows waiting for a database, and those set aside.

Thin over compactobs.store.spool_admin; registered on the main group (and under `db`) by compactobs.cli.
"""

from __future__ import annotations

import textwrap

import click

__all__ = ["spool", "spool_lines"]


def spool_lines(database_url: str) -> list[str]:
    """`db status`'s spool lines: rows waiting, rows set aside and why."""
    from compactobs.store import spool_admin  # the exporter and the OTel SDK: only when a spool is read

    found = spool_admin.summary(database_url)
    lines = []
    if found.waiting:
        lines.append(
            f"spool:    {found.waiting_calls:,} call(s) waiting in {len(found.waiting)} segment(s), "
            f"{sum(f.bytes for f in found.waiting):,} bytes in {found.directory} "
            "(written when the database is reachable, or by `compactobs spool replay`)"
        )
    else:
        lines.append("spool:    empty")
    if found.set_aside:
        lines.append(
            f"set aside: {found.set_aside_calls:,} call(s) the database refused, in "
            f"{found.directory / 'rejected'} (fix the cause, then `compactobs spool replay --rejected`):"
        )
        reasons: dict[str, int] = {}
        for file in found.set_aside:
            reason = file.reason or "no reason recorded"
            reasons[reason] = reasons.get(reason, 0) + file.calls
        lines += [f"  {calls:,} call(s): {reason}" for reason, calls in reasons.items()]
    return lines


@click.group("spool")
def spool() -> None:
    """Rows waiting for the database (it was away, slow or locked) and rows it refused."""


@spool.command("status")
@click.pass_obj
def spool_status(state: object) -> None:
    """How many calls wait, how many are set aside, and why."""
    for line in spool_lines(state.database_url):  # type: ignore[attr-defined]
        click.echo(line)


@spool.command("show")
@click.pass_obj
def spool_show(state: object) -> None:
    """Every spool file: calls, iterations, bytes, and for set-aside files the database's reason."""
    from compactobs.progress import stdout_fit_width
    from compactobs.reports._safe import shown
    from compactobs.store import spool_admin

    width = stdout_fit_width()

    def echo(line: str) -> None:
        # On a terminal, a long line (a database's reason) wraps at its width, indented under its file.
        if width is None or len(line) <= width:
            click.echo(line)
            return
        click.echo("\n".join(textwrap.wrap(line, width, subsequent_indent=" " * 11, break_on_hyphens=False)))

    found = spool_admin.summary(state.database_url)  # type: ignore[attr-defined]
    echo(f"spool of {shown(found.database or state.database_url)}: {found.directory}")  # type: ignore[attr-defined]
    if not found.waiting and not found.set_aside:
        click.echo("empty")
    for file in found.waiting:
        echo(
            f"waiting    {file.path.name}  {file.calls:,} calls, {file.iterations:,} iterations, "
            f"{file.bytes:,} bytes"
        )
    for file in found.set_aside:
        # The reason is the database's message, which may quote the refused data: shown safely.
        echo(
            f"set aside  rejected/{file.path.name}  {file.calls:,} calls, {file.iterations:,} iterations: "
            f"{shown(file.reason or 'no reason recorded')}"
        )


@spool.command("replay")
@click.option("--rejected", is_flag=True, help="Also replay the rows set aside, once their cause is fixed.")
@click.pass_obj
def spool_replay(state: object, rejected: bool) -> None:
    """Write the waiting rows to the database now (exit 2, with the reason, if it cannot take them)."""
    from compactobs.store import spool_admin

    written, refused = spool_admin.replay(state.database_url, rejected=rejected)  # type: ignore[attr-defined]
    click.echo(f"{written:,} call(s) written from the spool")
    if refused:
        click.echo(f"{refused:,} call(s) refused again and set aside: see `compactobs spool status`")
