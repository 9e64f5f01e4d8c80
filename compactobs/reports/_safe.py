"""Report text that is safe to print and to open: conversation ids, services and models are data anyone
can set, so they may carry terminal escape sequences or spreadsheet formulas.

- `printable`: ESC sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ST`, DCS/PM/APC/SOS strings and
  two-byte escapes), their 8-bit C1 forms, and every other control character are removed; a tab, line
  feed or carriage return becomes a space, so a value stays on its row.
- `csv_cell`: OWASP's CSV-injection advice: a cell that starts with `=`, `+`, `-`, `@`, tab or carriage
  return is prefixed with a single quote, so a spreadsheet shows it as text instead of evaluating it.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["csv_cell", "printable"]

_SEQUENCES: Final = re.compile(
    r"""
    (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]                       # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?   # OSC, DCS, SOS, PM, APC
    | \x1b[ -/]*[0-~]                                      # other escapes (nF and two-byte Fp/Fe/Fs)
    """,
    re.VERBOSE,
)
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES: Final = str.maketrans({"\t": " ", "\n": " ", "\r": " "})
_FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """`text` without terminal control sequences or control characters."""
    if text.isprintable():
        return text
    return _CONTROLS.sub("", _SEQUENCES.sub("", text)).translate(_SPACES)


def csv_cell(text: str) -> str:
    """A text cell for CSV: printable, and never read as a formula by a spreadsheet."""
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + printable(text)
    return printable(text)
