"""The error tree: every error compactobs raises derives from CompactobsError.

`UserError` is what the person running compactobs can fix (a bad file, option, URL or input): its message
is one line, and the CLI prints it and exits with status 2. Anything else is a bug or an outage, and the CLI
lets it show as such.
"""

from __future__ import annotations

__all__ = ["CompactobsError", "UserError"]


class CompactobsError(Exception):
    """The root of every error compactobs raises."""


class UserError(CompactobsError):
    """An error the user can fix; its message is one line (the CLI's exit status 2)."""
