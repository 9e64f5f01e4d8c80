"""The anomaly rules' thresholds, and the budgets file they read (`compactobs.rules`: the guard reads it
too)."""

from __future__ import annotations

import os

from compactobs import rules
from compactobs.reports.measures.anomalies import Thresholds
from compactobs.reports.model import ReportInputError
from compactobs.rules import Budgets

__all__ = ["Thresholds", "load_budgets"]


def load_budgets(path: str | os.PathLike[str]) -> Budgets:
    """Read a budgets file (TOML; see `compactobs.rules.load_budgets`, which the runtime guard reads it with
    too). Raises ReportInputError with a one-line message on any problem."""
    try:
        return rules.load_budgets(path)
    except rules.RulesInputError as err:
        raise ReportInputError(str(err)) from None
