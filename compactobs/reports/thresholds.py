"""The anomaly rules' thresholds, and the budgets file they read (`compactobs.rules`: the guard reads it
too). Outside `reports/anomalies/` and without `compactobs.rules` at import: `report` and `alert` build
their options from `Thresholds` at start-up, before any command runs (the rules load when one does)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from compactobs.reports.model import ReportInputError

if TYPE_CHECKING:
    from compactobs.rules import Budgets, LoopRule

__all__ = ["Thresholds", "load_budgets"]

_MAX_COUNT = 2**63 - 1
"""The largest whole-number threshold a database compares (a signed 64-bit integer)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The rules' thresholds. `report anomalies` has an option per field (`--loop-min`...), its help from
    the field's metadata: a field added here is an option there."""

    loop_min: int = field(
        default=3, metadata={"help": "compaction_loop: this many ineffective compactions..."}
    )
    """compaction_loop: at least this many ineffective compactions..."""
    loop_window: int = field(default=5, metadata={"help": "...within this many consecutive calls."})
    """...within this many consecutive calls of one conversation."""
    ineffective_ratio: float = field(
        default=0.8,
        metadata={
            "help": "A compaction leaving the context at this share of the trigger or more is ineffective."
        },
    )
    """A compaction is ineffective when the context it left is >= this share of the trigger."""
    cost_share: float = field(default=0.5, metadata={"help": "Compaction share of a conversation's cost."})
    """compaction_cost_share: compaction iterations cost more than this share of the conversation."""
    error_share: float = field(default=0.1, metadata={"help": "429/529/5xx share of an hour's calls."})
    """error_burst: more than this share of an hour's calls ended in 429, 529 or another 5xx..."""
    error_min_calls: int = field(default=20, metadata={"help": "Calls an hour needs to judge."})
    """...in an hour with at least this many calls."""
    cache_drop_ratio: float = field(
        default=0.05,
        metadata={
            "help": "Cache reads after a compaction at or below this share of those before count as a miss."
        },
    )
    """cache_miss_after_compaction: reads after <= this share of the reads before ("about zero")..."""
    cache_min_tokens: int = field(default=1024, metadata={"help": "Smallest cache read/write considered."})
    """...where the call before read >= this many tokens and the call after wrote >= this many."""

    def __post_init__(self) -> None:
        if self.loop_min < 2:
            raise ReportInputError(f"--loop-min must be at least 2, not {self.loop_min}")
        if self.loop_window < 1:
            raise ReportInputError(f"--loop-window must be at least 1, not {self.loop_window}")
        for name, value in (
            ("ineffective-ratio", self.ineffective_ratio),
            ("cost-share", self.cost_share),
            ("error-share", self.error_share),
            ("cache-drop-ratio", self.cache_drop_ratio),
        ):
            if not (0.0 <= value <= 1.0):
                raise ReportInputError(f"--{name} must be between 0 and 1, not {value}")
        if self.error_min_calls < 1:
            raise ReportInputError(f"--error-min-calls must be at least 1, not {self.error_min_calls}")
        if self.cache_min_tokens < 0:
            raise ReportInputError(f"--cache-min-tokens must be >= 0, not {self.cache_min_tokens}")
        for name, count in (
            ("loop-min", self.loop_min),
            ("loop-window", self.loop_window),
            ("error-min-calls", self.error_min_calls),
            ("cache-min-tokens", self.cache_min_tokens),
        ):
            if count > _MAX_COUNT:  # the databases' integers are 64-bit: a larger one fails in the query
                raise ReportInputError(f"--{name} must be at most {_MAX_COUNT}, not {count}")

    @property
    def loop_rule(self) -> LoopRule:
        """The compaction-loop rule these thresholds set (the runtime guard applies the same rule)."""
        from compactobs.rules import LoopRule

        return LoopRule(self.loop_min, self.loop_window, self.ineffective_ratio)


def load_budgets(path: str | os.PathLike[str]) -> Budgets:
    """Read a budgets file (TOML; see `compactobs.rules.load_budgets`, which the runtime guard reads it with
    too). Raises ReportInputError with a one-line message on any problem."""
    from compactobs import rules

    try:
        return rules.load_budgets(path)
    except rules.RulesInputError as err:
        raise ReportInputError(str(err)) from None
