"""`serve`'s defaults the CLI shows in its help: a leaf, so that the CLI imports nothing else of serve."""

from __future__ import annotations

from typing import Final

__all__ = ["ANOMALIES_EVERY"]

ANOMALIES_EVERY: Final = 30.0
"""Seconds between two checks of the store by the overview's anomalies worker (`serve.anomalies`), and so
at most one computation of them per this many seconds."""
