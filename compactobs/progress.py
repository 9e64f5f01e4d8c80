"""A transient progress bar on stderr, for the CLI's long steps (the demo's calls, a rollup rebuild).

Kept apart from `compactobs.demo` so that a report can show one without importing the Anthropic SDK.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator

__all__ = ["ProgressCallback", "progress_bar", "stderr_is_live", "stdout_fit_width"]

ProgressCallback = Callable[[str, int, int], None]
"""`progress(description, done, total)`."""


def stderr_is_live() -> bool:
    """Whether a transient display belongs on stderr: a terminal, and NO_COLOR unset (https://no-color.org).
    Asked of the file itself, not of rich, so that a run without a display never imports rich for one."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def stdout_fit_width() -> int | None:
    """The width output is fitted to: the terminal's (its size, or COLUMNS); piped elsewhere, None."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


@contextlib.contextmanager
def progress_bar(
    enabled: bool | None = None, unit: str = "calls", total: int = 0
) -> Iterator[ProgressCallback | None]:
    """A transient rich progress bar on stderr counting `unit`s of `total`, as a `ProgressCallback`; None
    (no bar) when `enabled` is False, or by default when stderr is not a terminal or NO_COLOR is set."""
    if enabled is None:
        enabled = stderr_is_live()
    if not enabled:  # decided before rich is imported: most runs (pipes, CI, small stores) show no bar
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=total)

        def update(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield update
