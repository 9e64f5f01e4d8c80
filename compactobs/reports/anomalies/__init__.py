"""`report anomalies`: rules over the stored calls that say where money or reliability is leaking.

Each finding has a kind, a severity (`warning` or `critical`), the conversation (None for the rules that
look at models or hours), the calls involved, a one-line message, the evidence in numbers and a one-line
remedy. The rules and their defaults (all configurable through `Thresholds`):

- `compaction_loop` (critical): >= `loop_min` (3) compactions within `loop_window` (5) consecutive calls
  of one conversation, each leaving the context >= `ineffective_ratio` (80%) of the trigger;
- `ineffective_compaction` (warning): a compaction leaving the context >= `ineffective_ratio` of the
  trigger (not reported again for a call that is part of a loop);
- `failed_compaction` (warning): compaction blocks with null content (billed, no summary), one finding per
  conversation;
- `compaction_cost_share` (warning): compaction iterations cost > `cost_share` (50%) of the conversation's
  priced cost;
- `budget_exceeded` (critical): the conversation's billed tokens, USD or compactions exceed its budget: a
  budgets file entry when one matches (`load_budgets`), else the budget stored with its calls by
  `compactobs.conversation(..., budget_usd=..., budget_tokens=..., max_compactions=...)` (the largest
  each carries); the finding names the call at which the spend went over;
- `cache_miss_after_compaction` (warning): the call after a compaction reads <= `cache_drop_ratio` (5%) of
  what the call before it read from the cache, while its cache writes jump (above the call before's, and
  >= `cache_min_tokens`, 1024);
- `unpriced_model` (warning): iterations of a model compactobs has no price for (cost NULL, never $0);
- `error_burst` (warning): in one clock hour (UTC hours), >= `error_min_calls` (20) calls and more than
  `error_share` (10%) of them ended in HTTP 429, 529 or another 5xx.

The compaction-loop and budget rules are `compactobs.rules`, which the runtime guard (`compactobs.guard`)
applies to conversations as they run: one implementation for both.

Definitions:
- a conversation's calls are taken in order of start time (then call id), counting only calls that returned
  usage (a call that failed with an HTTP error is not a turn of the conversation);
- "the context a compaction left" is the call's `context_tokens` (total input of its last `message`
  iteration); for a paused call (`pause_after_compaction`), which has no message iteration, the next call's;
- the trigger is the call's own `compaction_trigger`;
- every rule looks at the calls the filters select (`--since/--until`...), except `budget_exceeded`, which
  sums the whole of each conversation that has a selected call (a budget is for the conversation);
- billed tokens (for token budgets) are uncached input + output + cache reads + cache writes.

Scale: each rule is one SQL query (`compaction`, `budget`, `unpriced`, `error_burst`: one class per kind, its
findings; its SQL is in `reports.measures.anomalies`, which the sources run; `report` runs the kinds over a
source). The compaction rules visit only the calls that
compacted: a call's position in its conversation and its neighbours are index range lookups on
(conversation_id, start_ms), linear in the conversation's calls even when it compacts at every turn (on 1M
calls and 10,000 conversations on SQLite: ~2 s, the whole report ~4 s; with a budget on every conversation
~6.5 s). Rows are streamed, and only the compacting calls a rule may hold come back (`compaction_candidates`:
ineffective, failed, a cache drop, a conversation over the cost share), so memory follows the findings, not
the calls. `call_ids` lists at most `MAX_CALL_IDS` ids; `evidence` always carries the full count.
"""

from compactobs.reports.anomalies.budget import BudgetExceeded
from compactobs.reports.anomalies.compaction import (
    COMPACTION_RECORD,
    CacheMissAfterCompaction,
    CompactionCostShare,
    CompactionLoop,
    FailedCompaction,
    IneffectiveCompaction,
    compaction_candidates,
    compaction_findings,
    compaction_records,
)
from compactobs.reports.anomalies.error_burst import ErrorBurst, error_burst_statement
from compactobs.reports.anomalies.finding import (
    EXIT_FINDINGS,
    KINDS,
    MAX_CALL_IDS,
    SEVERITIES,
    Finding,
    Severity,
    exit_code_for,
)
from compactobs.reports.anomalies.report import COLUMNS, anomalies_report, find_anomalies, findings_of
from compactobs.reports.anomalies.unpriced import UnpricedModel, unpriced_models_statement
from compactobs.reports.thresholds import Thresholds, load_budgets
from compactobs.rules import ENV_BUDGETS_FILE, Budget, Budgets

__all__ = [
    "COLUMNS",
    "COMPACTION_RECORD",
    "ENV_BUDGETS_FILE",
    "EXIT_FINDINGS",
    "KINDS",
    "MAX_CALL_IDS",
    "SEVERITIES",
    "Budget",
    "BudgetExceeded",
    "Budgets",
    "CacheMissAfterCompaction",
    "CompactionCostShare",
    "CompactionLoop",
    "ErrorBurst",
    "FailedCompaction",
    "Finding",
    "IneffectiveCompaction",
    "Severity",
    "Thresholds",
    "UnpricedModel",
    "anomalies_report",
    "compaction_candidates",
    "compaction_findings",
    "compaction_records",
    "error_burst_statement",
    "exit_code_for",
    "find_anomalies",
    "findings_of",
    "load_budgets",
    "unpriced_models_statement",
]
