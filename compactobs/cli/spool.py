"""`compactobs spool status | show | replay`: the rows waiting for a database, and those set aside.

Thin over compactobs.store.spool_admin; registered on the main group (and under `db`) by compactobs.cli.
`spool_lines` also serves `db status`.
"""

from __future__ import annotations

import textwrap

import click

from compactobs.cli.common import CliState

__all__ = ["spool", "spool_lines"]

_SHOWN_BYTES = 300
"""How much of a damaged line `spool show --rejected` prints."""


def spool_lines(database_url: str) -> tuple[list[str], str | None]:
    """`db status`'s and `spool status`'s lines: rows waiting, rows set aside and why, damaged lines kept;
    and what is wrong with the spool (it cannot be written), with the fix, or None."""
    from compactobs.store import spool_admin  # the exporter and the OTel SDK: only when a spool is read
    from compactobs.untrusted import escape

    found = spool_admin.summary(database_url)
    lines = []
    if found.problem is not None:
        lines.append(f"spool:    NOT WRITABLE: {found.problem}")
    if found.waiting:
        lines.append(
            f"spool:    {found.waiting_calls:,} call(s) waiting in {len(found.waiting)} segment(s), "
            f"{sum(f.bytes for f in found.waiting):,} bytes in {found.directory} "
            "(written when the database is reachable, or by `compactobs spool replay`)"
        )
    elif found.problem is None:
        # Where it looked: an application may keep its spool elsewhere (spool_dir=, COMPACTOBS_SPOOL_DIR).
        lines.append(f"spool:    empty ({found.directory})")
    refused = [f for f in found.set_aside if f.calls or not f.damaged]
    if refused:
        lines.append(
            f"set aside: {found.set_aside_calls:,} call(s) the database refused, in "
            f"{found.directory / 'rejected'} (fix the cause, then `compactobs spool replay --rejected`):"
        )
        reasons: dict[str, int] = {}
        for file in refused:
            reason = escape(file.reason or "no reason recorded")
            reasons[reason] = reasons.get(reason, 0) + file.calls
        lines += [f"  {calls:,} call(s): {reason}" for reason, calls in reasons.items()]
    if found.damaged_lines:
        lines.append(
            f"damaged:  {found.damaged_lines:,} line(s) that are not readable rows, kept as they were in "
            f"{found.directory / 'rejected'} (see `compactobs spool show --rejected`)"
        )
    return lines, found.problem


@click.group("spool")
def spool() -> None:
    """Rows waiting for the database (it was away, slow or locked) and rows it refused."""


@spool.command("status")
@click.pass_obj
def spool_status(state: CliState) -> None:
    """How many calls wait, how many are set aside and why, how many lines are damaged. Exits 2 when the
    spool cannot be written, saying why and how to fix it."""
    from compactobs.store import StoreError

    lines, problem = spool_lines(state.database_url)
    for line in lines:
        click.echo(line)
    if problem is not None:
        raise StoreError(problem)


@spool.command("show")
@click.option("--rejected", is_flag=True, help="Show the set-aside files, with every damaged line (escaped).")
@click.pass_obj
def spool_show(state: CliState, rejected: bool) -> None:
    """Every spool file: calls, iterations, bytes, and for set-aside files the database's reason."""
    from compactobs.progress import stdout_fit_width
    from compactobs.reports.render.safe import shown
    from compactobs.store import spool_admin
    from compactobs.untrusted import escape

    width = stdout_fit_width()

    def echo(line: str) -> None:
        # On a terminal, a long line (a database's reason) wraps at its width, indented under its file.
        if width is None or len(line) <= width:
            click.echo(line)
            return
        click.echo("\n".join(textwrap.wrap(line, width, subsequent_indent=" " * 11, break_on_hyphens=False)))

    found = spool_admin.summary(state.database_url)
    echo(f"spool of {shown(found.database or state.database_url)}: {found.directory}")
    files = found.set_aside if rejected else [*found.waiting, *found.set_aside]
    if not files:
        click.echo("nothing set aside" if rejected else "empty")
    for file in files:
        waiting = file.path.parent == found.directory
        name = file.path.name if waiting else f"rejected/{file.path.name}"
        about = f"{file.calls:,} calls, {file.iterations:,} iterations"
        if waiting:
            about += f", {file.bytes:,} bytes"
        if file.damaged:
            about += f", {len(file.damaged):,} damaged line(s)"
        reason = "" if waiting else f": {escape(file.reason or 'no reason recorded')}"
        echo(f"{'waiting' if waiting else 'set aside':<9}  {name}  {about}{reason}")
        if rejected:
            for line in file.damaged:
                content = escape(line.content.decode("utf-8", "backslashreplace"), limit=_SHOWN_BYTES)
                echo(f"  line {line.number} ({len(line.content):,} bytes): {content}")


@spool.command("replay")
@click.option("--rejected", is_flag=True, help="Also replay the rows set aside, once their cause is fixed.")
@click.pass_obj
def spool_replay(state: CliState, rejected: bool) -> None:
    """Write the waiting rows to the database now (exit 2, with the reason, if it cannot take them)."""
    from compactobs.store import spool_admin

    written, refused = spool_admin.replay(state.database_url, rejected=rejected)
    click.echo(f"{written:,} call(s) written from the spool")
    if refused:
        click.echo(f"{refused:,} call(s) refused again and set aside: see `compactobs spool status`")
