"""Runtime budgets and the compaction-loop breaker: stop a conversation while it runs, on its billed totals.

A conversation is *guarded* when a policy applies to it: `compactobs.conversation(id, budget_usd=...,
budget_tokens=..., max_compactions=..., loop=..., on_breach=...)`, an entry of the budgets file
(`COMPACTOBS_BUDGETS_FILE`, globs on conversation ids), or a service-wide `compactobs.instrument(guard=
GuardPolicy(...))`. The guard judges with `compactobs.rules`, the rules `report anomalies` applies
afterwards, and acts on a breach as `on_breach` says (warn, pause, raise).

This module only re-exports. The package's modules, by job:

- `policy`: `GuardPolicy` and the resolution of a conversation's policy (budgets file, conversation,
  service);
- `breaches`: a crossed limit (`Breach`), its span event, the errors `raise` raises, the wrap-up message
  and the request body that pauses;
- `figures`: spend figures (`PriorSpend`, `ConversationSpend`), what a request is told (`Verdict`), and the
  `SpendSource` Protocol processes share spend through;
- `state`: a conversation's state and its returned calls waiting to be counted;
- `sharing`: the background exchange of figures with the store;
- `core`: the `Guard` (judging requests, counting calls) and the guard in place;
- `store`: `StoreSpend`, the `SpendSource` over the SQL store (the only guard module that imports `store/`).
"""

from compactobs.guard.breaches import (
    Breach,
    BreachKind,
    BudgetExceeded,
    CompactionLoopDetected,
    GuardError,
    SpendUnknown,
    breach_event,
    with_pause,
    wrap_up_message,
)
from compactobs.guard.core import (
    MAX_CONVERSATIONS,
    SETTLE_WAIT_S,
    Guard,
    allow_wrap_up,
    install,
    installed,
    spend,
)
from compactobs.guard.figures import NOTHING, ConversationSpend, PriorSpend, SpendSource, Verdict
from compactobs.guard.policy import GuardPolicy
from compactobs.guard.sharing import (
    CLOSE_WAIT_S,
    ENV_READ_TIMEOUT_MS,
    PUBLISH_EVERY_S,
    READ_TIMEOUT_S,
    REFRESH_S,
    RETRY_S,
)
from compactobs.guard.state import ReturnedCall

__all__ = [
    "CLOSE_WAIT_S",
    "ENV_READ_TIMEOUT_MS",
    "MAX_CONVERSATIONS",
    "NOTHING",
    "PUBLISH_EVERY_S",
    "READ_TIMEOUT_S",
    "REFRESH_S",
    "RETRY_S",
    "SETTLE_WAIT_S",
    "Breach",
    "BreachKind",
    "BudgetExceeded",
    "CompactionLoopDetected",
    "ConversationSpend",
    "Guard",
    "GuardError",
    "GuardPolicy",
    "PriorSpend",
    "ReturnedCall",
    "SpendSource",
    "SpendUnknown",
    "Verdict",
    "allow_wrap_up",
    "breach_event",
    "install",
    "installed",
    "spend",
    "with_pause",
    "wrap_up_message",
]
