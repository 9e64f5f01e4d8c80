"""`compactobs import claude-code [PATH...]`: Claude Code's transcripts into the store given by --db.

Thin over compactobs.importers.
"""

from __future__ import annotations

from pathlib import Path

import click

from compactobs.cli.common import CliState, pass_state

__all__ = ["import_group"]


@click.group("import")
def import_group() -> None:
    """Spend recorded elsewhere, stored as compactobs calls."""


@import_group.command("claude-code")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_state
def import_claude_code(state: CliState, paths: tuple[Path, ...]) -> None:
    """Claude Code's transcripts (default: $CLAUDE_CONFIG_DIR/projects, else ~/.claude/projects): one call
    per assistant message, priced by compactobs, usage.iterations included. Reads only what is new since
    the last run; a call `collect` already stored is not stored again."""
    from compactobs.importers.claude_code import default_paths, import_transcripts
    from compactobs.store import display_url

    database_url = state.database_url
    chosen = list(paths) or default_paths()
    missing = [str(p) for p in chosen if not p.exists()]
    if missing:
        raise click.UsageError(f"no such file or directory: {', '.join(missing)}")
    result = import_transcripts(database_url, chosen)
    click.echo(
        f"{result.calls:,} call(s) from {result.lines:,} new line(s) in {result.files:,} file(s) into "
        f"{display_url(database_url)}"
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
