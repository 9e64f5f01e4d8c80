"""A guard's policies: the limits and actions that apply to a conversation, and where they come from.

A conversation's policy is resolved from three sources: an entry of the budgets file (globs on
conversation ids, read again when the file changes), the conversation's own (`compactobs.conversation(...,
budget_usd=...)`) and the service's (`compactobs.instrument(guard=GuardPolicy(...))`). A file entry that
sets limits replaces the conversation's own limits, as in the report (`rules.effective_budget`), and the
service's apply when neither sets any; `on_breach`, `unknown` and `loop` come from the file, then the
conversation, then the service.

A policy's `tags` are not limits: the service's go on every call of the service, a conversation's own
(`compactobs.conversation(id, tags=...)`) in their place key by key (`Policies.tags_for`). A service policy
that sets only tags guards nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from compactobs.rules import ON_BREACH, ON_UNKNOWN, Budget, Budgets, OnBreach, OnUnknown, effective_budget
from compactobs.untrusted import checked_tags, merged_tags

__all__ = ["GuardPolicy", "Policies"]

log = logging.getLogger("compactobs")

BUDGETS_CHECK_S = 1.0
"""How often, at most, a request checks whether the budgets file changed."""


def _usd(value: float | int | Decimal | None, name: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"{name} must be a number of dollars, not {value!r}")
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return amount


def _count(value: int | None, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Limits and what to do when one is crossed. A field left None is taken from the next source down
    (conversation, then budgets file, then service); `on_breach` defaults to "warn", `loop` to True."""

    budget_usd: Decimal | None = None
    budget_tokens: int | None = None
    max_compactions: int | None = None
    loop: bool | None = None
    on_breach: OnBreach | None = None
    unknown: OnUnknown | None = None
    """What to do while the conversation's spend in other processes is unknown: "warn" (default) or
    "raise"."""
    tags: tuple[tuple[str, str], ...] = ()
    """Tags (key, value), sorted by key, for every call the policy covers: a service's go on every call of
    the service, under a conversation's own for the same key. Given as a mapping (`tags={"team": "search"}`),
    checked as `conversation(tags=...)`'s are (ValueError for what would not be kept)."""

    def __post_init__(self) -> None:
        tags: object = self.tags
        if isinstance(tags, tuple):
            if not tags:
                return
            try:
                tags = dict(tags)  # (key, value) pairs, as `over` and `_resolve` pass them
            except (TypeError, ValueError):
                raise ValueError("tags must be a mapping of str to str") from None
        if tags is not None and not isinstance(tags, Mapping):
            raise ValueError("tags must be a mapping of str to str")
        object.__setattr__(self, "tags", checked_tags(tags))

    @classmethod
    def of(
        cls,
        *,
        budget_usd: float | int | Decimal | None = None,
        budget_tokens: int | None = None,
        max_compactions: int | None = None,
        loop: bool | None = None,
        on_breach: str | None = None,
        unknown: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> GuardPolicy:
        """A policy from user input; raises ValueError saying what is wrong."""
        if loop is not None and not isinstance(loop, bool):
            raise ValueError(f"loop must be True or False, not {loop!r}")
        if on_breach is not None and on_breach not in ON_BREACH:
            raise ValueError(f"on_breach must be one of {', '.join(ON_BREACH)}, not {on_breach!r}")
        if unknown is not None and unknown not in ON_UNKNOWN:
            raise ValueError(f"unknown must be one of {', '.join(ON_UNKNOWN)}, not {unknown!r}")
        return cls(
            _usd(budget_usd, "budget_usd"),
            _count(budget_tokens, "budget_tokens"),
            _count(max_compactions, "max_compactions"),
            loop,
            on_breach,
            unknown,
            checked_tags(tags),
        )

    @classmethod
    def from_budget(cls, budget: Budget) -> GuardPolicy:
        return cls(
            budget.usd, budget.tokens, budget.max_compactions, budget.loop, budget.on_breach, budget.unknown
        )

    def over(self, below: GuardPolicy | None) -> GuardPolicy:
        """This policy, its unset fields taken from `below`."""
        if below is None:
            return self
        return GuardPolicy(
            self.budget_usd if self.budget_usd is not None else below.budget_usd,
            self.budget_tokens if self.budget_tokens is not None else below.budget_tokens,
            self.max_compactions if self.max_compactions is not None else below.max_compactions,
            self.loop if self.loop is not None else below.loop,
            self.on_breach if self.on_breach is not None else below.on_breach,
            self.unknown if self.unknown is not None else below.unknown,
            merged_tags(self.tags, below.tags),
        )

    @property
    def budget(self) -> Budget:
        return Budget(usd=self.budget_usd, tokens=self.budget_tokens, max_compactions=self.max_compactions)

    @property
    def action(self) -> OnBreach:
        return self.on_breach or "warn"

    @property
    def watches_loops(self) -> bool:
        return self.loop is not False

    @property
    def only_tags(self) -> bool:
        """Whether the policy sets tags and nothing else: it tags calls, it guards none."""
        return bool(self.tags) and self == GuardPolicy(tags=self.tags)

    @property
    def needs_figures(self) -> bool:
        """Whether a request's fate depends on the figures (pause, raise, or unknown="raise")."""
        return self.on_breach in ("pause", "raise") or self.unknown == "raise"


class Policies:
    """The policy of each conversation, resolved from the budgets file, the conversation's own and the
    service's, and cached per (conversation, its own policy). Thread-safe enough for a request's path:
    the caches are replaced whole, never half-written."""

    def __init__(
        self,
        policy: GuardPolicy | None,
        budgets: Budgets | None,
        budgets_file: str | None,
        max_conversations: int,
    ) -> None:
        self.policy = policy
        self._guarding = policy if policy is not None and not policy.only_tags else None
        """The service's policy as it guards: None when it only tags."""
        self.budgets = budgets if budgets else None
        self._max = max(1, max_conversations)
        self._budgets_file = budgets_file
        self._budgets_seen: tuple[float, int, int] | None = _file_stamp(budgets_file)
        self._budgets_checked = time.monotonic()
        self._budgets_bad: tuple[float, int, int] | None = None
        self._file_policies: dict[str, GuardPolicy | None] = {}
        self._policies: dict[tuple[str, GuardPolicy | None], GuardPolicy | None] = {}
        """Resolved policies by (conversation, its own policy): the same every call of a conversation."""
        self._service_tags = policy.tags if policy is not None else ()
        self._tags: dict[int, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {}
        """Merged tags by the id of a conversation's own tags: (its tags, kept so the id stays theirs,
        the merged)."""

    @property
    def watches_all(self) -> bool:
        """Whether conversations nobody named a policy for may still be guarded (service policy, file)."""
        return self._guarding is not None or self.budgets is not None or self._budgets_file is not None

    def tags_for(self, own: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """The tags of a call whose conversation has `own` (() outside any): the service policy's, `own`'s
        in their place key by key. Merged once per conversation block (its tags are one tuple); a call
        looks them up by identity. Never raises."""
        service = self._service_tags
        if not service:
            return own
        if not own:
            return service
        cached = self._tags.get(id(own))
        if cached is not None and cached[0] is own:
            return cached[1]
        merged = merged_tags(own, service)
        if len(self._tags) >= self._max:
            self._tags.clear()
        self._tags[id(own)] = (own, merged)
        return merged

    def policy_for(self, conversation_id: str | None, own: GuardPolicy | None) -> GuardPolicy | None:
        """The policy guarding this conversation, or None when it is not guarded. Never raises."""
        if conversation_id is None:
            return None
        if self._budgets_file is not None and time.monotonic() - self._budgets_checked >= BUDGETS_CHECK_S:
            self._reload_budgets()
        key = (conversation_id, own)
        cached = self._policies.get(key, ...)
        if cached is not ...:
            return cached
        policy = self._resolve(conversation_id, own)
        if len(self._policies) >= self._max:
            self._policies.clear()
        self._policies[key] = policy
        return policy

    def _resolve(self, conversation_id: str, own: GuardPolicy | None) -> GuardPolicy | None:
        try:
            found = self._file_policy(conversation_id) if self.budgets is not None else None
            service = self._guarding
            if found is None and own is None and service is None:
                return None
            # Limits as report anomalies takes them (rules.effective_budget), then the service's; how to
            # act, on unknown spend too, and whether to watch loops: the file, the conversation, the service.
            limits = effective_budget(found.budget if found else None, own.budget if own else None)
            if limits is None and service is not None:
                limits = service.budget
            behaviour = (found or GuardPolicy()).over(own).over(service)
            policy = GuardPolicy(
                limits.usd if limits else None,
                limits.tokens if limits else None,
                limits.max_compactions if limits else None,
                behaviour.loop,
                behaviour.on_breach,
                behaviour.unknown,
                behaviour.tags,
            )
            if not policy.budget.has_limits and policy.loop is False:
                return None  # what applies watches nothing
            return policy
        except Exception:
            log.debug("compactobs guard: no policy for %r", conversation_id, exc_info=True)
            return None

    def _file_policy(self, conversation_id: str) -> GuardPolicy | None:
        cached = self._file_policies.get(conversation_id, ...)
        if cached is not ...:
            return cached
        assert self.budgets is not None
        budget = self.budgets.for_conversation(conversation_id)
        found = GuardPolicy.from_budget(budget) if budget is not None else None
        if len(self._file_policies) >= self._max:
            self._file_policies.clear()
        self._file_policies[conversation_id] = found
        return found

    def _reload_budgets(self) -> None:
        """Read the budgets file again if it changed; a file that no longer parses keeps the last good
        budgets, said in one log line. Runs at most once a second (on a request's thread: a stat, and a
        small file's parse when it changed). Never raises."""
        self._budgets_checked = time.monotonic()
        try:
            stamp = _file_stamp(self._budgets_file)
            if stamp == self._budgets_seen or stamp == self._budgets_bad:
                return
            from compactobs.rules import load_budgets

            assert self._budgets_file is not None
            try:
                budgets = load_budgets(self._budgets_file)
            except Exception as err:
                self._budgets_bad = stamp
                # repr: one line, and a hostile key in the file cannot put escape sequences in the log
                log.error("compactobs guard: %r; keeping the budgets read before", " ".join(str(err).split()))
                return
            self.budgets = budgets if budgets else None
            self._budgets_seen, self._budgets_bad = stamp, None
            self._file_policies = {}
            self._policies = {}
            log.info("compactobs guard: budgets read again from %s", self._budgets_file)
        except Exception:
            log.debug("compactobs guard: could not read the budgets file again", exc_info=True)


def _file_stamp(path: str | None) -> tuple[float, int, int] | None:
    """What tells a file changed: its modification time, size and inode (None: no such file)."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime, info.st_size, info.st_ino)
