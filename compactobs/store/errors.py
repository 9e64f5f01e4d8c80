"""The store's one user-facing error."""

from __future__ import annotations

from compactobs.errors import UserError

__all__ = ["StoreError"]


class StoreError(UserError):
    """A store problem the user can fix: the message is one line that says what is wrong and what to do.

    Raised for a malformed URL, a missing driver, a refused connection or credentials, and a schema older
    or newer than the code. The CLI prints it and exits 2; inside an instrumented application the
    exporter logs it and keeps the rows in the spool.
    """

    def __init__(self, message: str) -> None:
        # One line, whatever the driver put in its message.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])
