"""The rules a conversation is judged by, shared by `report anomalies` (after the fact, over the store) and
the runtime guard (`compactobs.guard`, live, as calls return): one implementation, so a rule changed here
changes both.

- **Budgets**: a conversation is over a limit when its billed spend is *above* it: USD (the sum of its
  priced calls), billed tokens (uncached input + output + cache reads + cache writes, summed over every
  iteration) or compactions. `over_limits` says which.
- **Budgets file** (TOML, `COMPACTOBS_BUDGETS_FILE`): budgets by conversation id or glob, read by
  `load_budgets`; exact ids win, else the most specific glob (most literal characters), then file order.
- **Monthly budgets** (the `[monthly]` table of the budgets file): USD a month for all spend and per service;
  a scope is over when its month-to-date spend is above its budget (`over_limits`), and a forecast alert
  fires when its projected month-end spend is.
- **Spend spike** (`SpikeRule`): the last hour's spend above `factor` times the mean hourly spend of the
  trailing week before it, and at least `min_usd`.
- **Compaction loop**: a compaction is *ineffective* when the context it left is >= `ineffective_ratio` of
  its trigger; a loop is >= `loop_min` ineffective compactions within `loop_window` consecutive calls of one
  conversation (`LoopWindow`, fed the conversation's compacting calls in order).

Pure: no database, no SDK (the `*_sql` twins build SQLAlchemy expressions, run by their callers). Raises
`RulesInputError` (one line) on a bad budgets file.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeVar

from compactobs.configfile import ConfigError, line_of, parse_toml
from compactobs.usage import TokenCounts

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

    from compactobs._types import JSON, JSONObject, SQLExpr


__all__ = [
    "BILLED_TOKEN_COLUMNS",
    "ENV_BUDGETS_FILE",
    "ON_BREACH",
    "ON_UNKNOWN",
    "Budget",
    "Budgets",
    "LimitKind",
    "LoopRule",
    "LoopWindow",
    "MonthlyBudgets",
    "OnBreach",
    "OnUnknown",
    "RulesInputError",
    "SpikeRule",
    "billed_tokens",
    "billed_tokens_sql",
    "effective_budget",
    "load_budgets",
    "over_limits",
    "over_limits_sql",
]

ENV_BUDGETS_FILE: Final = "COMPACTOBS_BUDGETS_FILE"

OnBreach = Literal["warn", "pause", "raise"]
ON_BREACH: Final[tuple[OnBreach, ...]] = ("warn", "pause", "raise")
OnUnknown = Literal["warn", "raise"]
"""What the guard does when a conversation's spend in other processes is unknown (the store does not
answer): go on with what it knows and log once, or refuse the request (fail closed)."""
ON_UNKNOWN: Final[tuple[OnUnknown, ...]] = ("warn", "raise")

LimitKind = Literal["budget_usd", "budget_tokens", "max_compactions"]


class RulesInputError(ConfigError):
    """A bad budgets file or rule setting the user can fix: the message is one line. `at`: the TOML key
    (dotted) at fault, which `load_budgets` turns into the file's line."""

    def __init__(self, message: str, *, at: str | None = None) -> None:
        super().__init__(message)
        self.at = at


# --- budgets ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A conversation's limits, and where they came from. `loop` and `on_breach` are the guard's: how it
    watches and acts (the report always looks for loops and only reports)."""

    usd: Decimal | None = None
    tokens: int | None = None
    source: str = "stored"
    """`stored` (from compactobs.conversation(..., budget_usd=..., budget_tokens=..., max_compactions=...)),
    or the file entry: `FILE [budgets."KEY"]`."""
    max_compactions: int | None = None
    loop: bool | None = None
    on_breach: OnBreach | None = None
    unknown: OnUnknown | None = None

    @property
    def has_limits(self) -> bool:
        return self.usd is not None or self.tokens is not None or self.max_compactions is not None


def effective_budget(from_file: Budget | None, own: Budget | None) -> Budget | None:
    """The limits a conversation is held to: a budgets-file entry that sets limits wins (where it speaks,
    it replaces the limits the application gave, so operators can change them without a deploy), else the
    application's own (`compactobs.conversation(..., budget_usd=...)`, stored with the calls)."""
    if from_file is not None and from_file.has_limits:
        return from_file
    if own is not None and own.has_limits:
        return own
    return None


def billed_tokens(tokens: TokenCounts) -> int:
    """What a token budget counts: uncached input + output + cache reads + cache writes."""
    return tokens.input + tokens.output + tokens.cache_read + tokens.cache_write


BILLED_TOKEN_COLUMNS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
)
"""`billed_tokens` over the store: the `calls` columns a token budget sums."""


def over_limits(
    budget: Budget, spent_usd: Decimal | None, tokens: int, compactions: int = 0
) -> tuple[LimitKind, ...]:
    """The limits the spend is above (strictly: spending exactly the budget is within it)."""
    over: list[LimitKind] = []
    if budget.usd is not None and spent_usd is not None and spent_usd > budget.usd:
        over.append("budget_usd")
    if budget.tokens is not None and tokens > budget.tokens:
        over.append("budget_tokens")
    if budget.max_compactions is not None and compactions > budget.max_compactions:
        over.append("max_compactions")
    return tuple(over)


def billed_tokens_sql() -> SQLExpr:
    """`billed_tokens` of a `calls` row, in SQL (NULLs as 0)."""
    from sqlalchemy import func

    from compactobs.store.models import calls

    columns: list[SQLExpr] = [func.coalesce(calls.c[name], 0) for name in BILLED_TOKEN_COLUMNS]
    total = columns[0]
    for column in columns[1:]:
        total = total + column
    return total


def over_limits_sql(
    budget_usd: SQLExpr,
    budget_tokens: SQLExpr,
    max_compactions: SQLExpr,
    spent_usd: SQLExpr,
    tokens: SQLExpr,
    compactions: SQLExpr,
) -> ColumnElement[bool]:
    """`over_limits` in SQL over columns (a NULL limit is no limit): true when any is strictly exceeded."""
    from sqlalchemy import and_, or_

    return or_(
        and_(budget_usd.is_not(None), spent_usd > budget_usd),
        and_(budget_tokens.is_not(None), tokens > budget_tokens),
        and_(max_compactions.is_not(None), compactions > max_compactions),
    )


@dataclass(frozen=True)
class MonthlyBudgets:
    """USD a calendar month may cost (the budgets file's `[monthly]` table): `usd` for all the spend the
    filters select, `services` per service name. The month is the local month of the report's zone."""

    usd: Decimal | None = None
    services: Mapping[str, Decimal] = field(default_factory=dict)
    tags: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    """(tag key, value) -> USD a month for the calls with that tag (`[monthly.tag.KEY."VALUE"] usd`)."""
    source: str = ""
    """Where they came from: `FILE [monthly]`."""

    def scopes(self) -> list[tuple[str | None, Decimal]]:
        """(service, or None for all spend; its budget), all spend first, then services by name."""
        found: list[tuple[str | None, Decimal]] = [] if self.usd is None else [(None, self.usd)]
        return found + sorted(self.services.items())


@dataclass(frozen=True)
class Budgets:
    """Budgets by conversation id or glob, from a budgets file. Exact ids win; else the most specific glob
    (most literal characters), then file order. `monthly`: the file's `[monthly]` table, if any (it limits
    no conversation: truthiness speaks of conversation budgets only)."""

    exact: Mapping[str, Budget] = field(default_factory=dict)
    globs: Sequence[tuple[str, Budget]] = ()
    monthly: MonthlyBudgets | None = None

    def for_conversation(self, conversation_id: str) -> Budget | None:
        found = self.exact.get(conversation_id)
        if found is not None:
            return found
        for pattern, budget in self.globs:
            if fnmatchcase(conversation_id, pattern):
                return budget
        return None

    def __bool__(self) -> bool:
        return bool(self.exact) or bool(self.globs)


_GLOB_CHARS: Final = frozenset("*?[")
_BUDGET_KEYS: Final = ("usd", "tokens", "max_compactions", "loop", "on_breach", "unknown")
_LIMIT_KEYS: Final = frozenset({"usd", "tokens", "max_compactions", "loop"})
_BUDGETS_EXAMPLE: Final = '[budgets."ticket-42"] usd = 5.0, tokens = 2000000'
_MONTHLY_EXAMPLE: Final = '[monthly] usd = 1000 and [monthly.service."search"] usd = 200'


def _whole(where: str, value: JSON, at: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise RulesInputError(f"{where} must be a whole number >= 0, not {value!r}", at=at)
    return value


def load_budgets(path: str | os.PathLike[str]) -> Budgets:
    """Read a budgets file (TOML). Raises RulesInputError with a one-line message on any problem.

    ```toml
    [monthly]                  # USD a calendar month may cost, for `compactobs alert` (optional)
    usd = 1000                 # all spend
    [monthly.service."search"] # one service
    usd = 200
    [monthly.tag.customer."acme"]  # the calls tagged customer=acme (`compactobs.conversation(tags=...)`)
    usd = 100

    [budgets."ticket-42"]      # an exact conversation id
    usd = 5.0                  # USD (optional)
    tokens = 2_000_000         # billed tokens: input + output + cache reads + cache writes (optional)
    max_compactions = 10       # compactions (optional)
    on_breach = "pause"        # what the runtime guard does: warn (default), pause or raise (optional)
    loop = true                # the guard stops compaction loops too (default true)
    unknown = "raise"          # other processes' spend unknown (store down): warn (default) or raise

    [budgets."batch-*"]        # a glob (fnmatch: * ? [...]) over conversation ids
    usd = 0.50
    ```
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesInputError(f"budgets file {name} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RulesInputError(f"cannot read budgets file {name}: {err}") from None
    data = parse_toml(text, RulesInputError, f"budgets file {name} is not valid TOML")
    try:
        return _budgets_from(data, name)
    except RulesInputError as err:
        line = line_of(text, err.at) if err.at else None
        if line is None:
            raise
        message = str(err).replace(f"budgets file {name}:", f"budgets file {name}, line {line}:", 1)
        raise RulesInputError(message, at=err.at) from None


def _budgets_from(data: JSONObject, name: str) -> Budgets:
    """The budgets in a parsed budgets file (`name` for messages). Raises RulesInputError, `at` its key."""
    unknown = sorted(set(data) - {"budgets", "monthly"})
    if unknown:
        raise RulesInputError(
            f'budgets file {name}: unknown top-level key {unknown[0]!r}; expected only [budgets."ID"] '
            f"and [monthly] tables, e.g. {_BUDGETS_EXAMPLE}",
            at=f'"{unknown[0]}"',
        )
    monthly = _monthly_from(data["monthly"], name) if "monthly" in data else None
    table = data.get("budgets", {})
    if not isinstance(table, dict):
        raise RulesInputError(
            f"budgets file {name}: 'budgets' must be a table, e.g. {_BUDGETS_EXAMPLE}", at="budgets"
        )
    exact: dict[str, Budget] = {}
    globs: list[tuple[int, int, str, Budget]] = []
    for position, (key, entry) in enumerate(table.items()):
        where = f'budgets file {name}: [budgets."{key}"]'
        at = f'budgets."{key}"'
        if not isinstance(entry, dict):
            raise RulesInputError(
                f"{where} must be a table with usd and/or tokens, e.g. {_BUDGETS_EXAMPLE}", at=at
            )
        bad = sorted(set(entry) - set(_BUDGET_KEYS))
        if bad:
            raise RulesInputError(
                f"{where}: unknown key {bad[0]!r} (allowed: {', '.join(_BUDGET_KEYS)})", at=f'{at}."{bad[0]}"'
            )
        if not _LIMIT_KEYS & set(entry):
            raise RulesInputError(f"{where} sets no budget: give usd and/or tokens", at=at)
        usd = entry.get("usd")
        if usd is not None:
            if isinstance(usd, bool) or not isinstance(usd, (int, Decimal)):
                raise RulesInputError(f"{where}.usd must be a number, not {usd!r}", at=f"{at}.usd")
            usd = Decimal(usd)
            if not usd.is_finite() or usd < 0:
                raise RulesInputError(f"{where}.usd must be a finite number >= 0, not {usd}", at=f"{at}.usd")
        tokens = _whole(f"{where}.tokens", entry.get("tokens"), f"{at}.tokens")
        max_compactions = _whole(
            f"{where}.max_compactions", entry.get("max_compactions"), f"{at}.max_compactions"
        )
        loop = entry.get("loop")
        if loop is not None and not isinstance(loop, bool):
            raise RulesInputError(f"{where}.loop must be true or false, not {loop!r}", at=f"{at}.loop")
        on_breach = entry.get("on_breach")
        if on_breach is not None and on_breach not in ON_BREACH:
            choices = "must be one of warn, pause, raise"
            raise RulesInputError(f"{where}.on_breach {choices}, not {on_breach!r}", at=f"{at}.on_breach")
        on_unknown = entry.get("unknown")
        if on_unknown is not None and on_unknown not in ON_UNKNOWN:
            choices = "must be one of warn, raise"
            raise RulesInputError(f"{where}.unknown {choices}, not {on_unknown!r}", at=f"{at}.unknown")
        budget = Budget(
            usd=usd,
            tokens=tokens,
            source=f'{name} [budgets."{key}"]',
            max_compactions=max_compactions,
            loop=loop,
            on_breach=on_breach,
            unknown=on_unknown,
        )
        if _GLOB_CHARS & set(key):
            literal_chars = sum(1 for char in key if char not in _GLOB_CHARS)
            globs.append((-literal_chars, position, key, budget))
        else:
            exact[key] = budget
    globs.sort(key=lambda item: (item[0], item[1]))
    return Budgets(
        exact=exact, globs=tuple((pattern, budget) for _, _, pattern, budget in globs), monthly=monthly
    )


def _usd_limit(where: str, value: JSON, at: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise RulesInputError(f"{where}.usd must be a number, not {value!r}", at=at)
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise RulesInputError(f"{where}.usd must be a finite number >= 0, not {amount}", at=at)
    return amount


def _first_key(at: str, table: JSON) -> str:
    """`at`, or its first entry's key when it is a table of them (their headers are what a file shows)."""
    if isinstance(table, dict) and table:
        return f'{at}."{next(iter(table))}"'
    return at


def _monthly_from(table: JSON, name: str) -> MonthlyBudgets:
    """The `[monthly]` table: `usd` (all spend) and `[monthly.service."NAME"] usd` (per service)."""
    where = f"budgets file {name}: [monthly]"
    if not isinstance(table, dict):
        raise RulesInputError(f"{where} must be a table, e.g. {_MONTHLY_EXAMPLE}", at="monthly")
    bad = sorted(set(table) - {"usd", "service", "tag"})
    if bad:
        raise RulesInputError(
            f"{where}: unknown key {bad[0]!r} (allowed: usd, service, tag)", at=f"monthly.{bad[0]}"
        )
    tags = _monthly_tags(table.get("tag", {}), name)
    usd = _usd_limit(where, table["usd"], "monthly.usd") if "usd" in table else None
    services_table = table.get("service", {})
    if not isinstance(services_table, dict):
        raise RulesInputError(
            f"{where}.service must be a table, e.g. {_MONTHLY_EXAMPLE}", at="monthly.service"
        )
    services: dict[str, Decimal] = {}
    for service, entry in services_table.items():
        at = f'monthly.service."{service}"'
        here = f'budgets file {name}: [monthly.service."{service}"]'
        if not isinstance(entry, dict) or set(entry) != {"usd"}:
            raise RulesInputError(f"{here} must be a table with usd only, e.g. {_MONTHLY_EXAMPLE}", at=at)
        services[service] = _usd_limit(here, entry["usd"], f"{at}.usd")
    if usd is None and not services and not tags:
        raise RulesInputError(f"{where} sets no budget: give usd, e.g. {_MONTHLY_EXAMPLE}", at="monthly")
    return MonthlyBudgets(usd=usd, services=services, tags=tags, source=f"{name} [monthly]")


_TAG_EXAMPLE: Final = '[monthly.tag.customer."acme"] usd = 100'


def _monthly_tags(table: JSON, name: str) -> dict[tuple[str, str], Decimal]:
    """`[monthly.tag.KEY."VALUE"] usd`: (tag key, value) -> the month's USD for the calls with that tag."""
    from compactobs.untrusted import escape, tag_key_ok

    where = f"budgets file {name}: [monthly.tag]"
    if not isinstance(table, dict):
        raise RulesInputError(f"{where} must be a table, e.g. {_TAG_EXAMPLE}", at="monthly.tag")
    found: dict[tuple[str, str], Decimal] = {}
    for key, values in table.items():
        at = f'monthly.tag."{key}"'
        if not tag_key_ok(key):
            raise RulesInputError(
                f"{where}: {escape(key)!r} is no tag key (1 to 64 letters, digits, '_', '.' or '-')", at=at
            )
        if not isinstance(values, dict) or not values:
            raise RulesInputError(f"{where}.{key} must be a table of values, e.g. {_TAG_EXAMPLE}", at=at)
        for value, entry in values.items():
            here = f'budgets file {name}: [monthly.tag.{key}."{escape(value)}"]'
            if not isinstance(entry, dict) or set(entry) != {"usd"}:
                raise RulesInputError(f"{here} must be a table with usd only, e.g. {_TAG_EXAMPLE}", at=at)
            found[(key, value)] = _usd_limit(here, entry["usd"], f'{at}."{value}".usd')
    return found


# --- spend spikes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpikeRule:
    """A spend spike: the last `window_hours` cost more than `factor` times the mean spend of that many
    hours over the `baseline_hours` before them, and at least `min_usd`. No spend in the baseline is no
    baseline (a new service is not a spike). The Prometheus alerting rules use the same numbers."""

    factor: float = 3.0
    min_usd: Decimal = Decimal("1")
    window_hours: int = 1
    baseline_hours: int = 168

    def __post_init__(self) -> None:
        if not self.factor > 1:
            raise RulesInputError(f"the spike factor must be above 1, not {self.factor}")
        if not (self.min_usd.is_finite() and self.min_usd >= 0):
            raise RulesInputError(f"the spike's minimum spend must be >= 0, not {self.min_usd}")

    def baseline(self, baseline_usd: Decimal) -> Decimal:
        """The mean spend of one window over the baseline."""
        return baseline_usd * self.window_hours / self.baseline_hours

    def spike(self, window_usd: Decimal, baseline_usd: Decimal) -> bool:
        """Whether `window_usd` (the last window's spend) is a spike over `baseline_usd` (the baseline's)."""
        if baseline_usd <= 0 or window_usd < self.min_usd:
            return False
        return window_usd > Decimal(repr(self.factor)) * self.baseline(baseline_usd)


# --- compaction loops ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopRule:
    """What counts as a compaction loop (the defaults are `report anomalies`' and the guard's)."""

    loop_min: int = 3
    """At least this many ineffective compactions..."""
    loop_window: int = 5
    """...within this many consecutive calls of one conversation."""
    ineffective_ratio: float = 0.8
    """A compaction is ineffective when the context it left is >= this share of the trigger."""

    def ineffective(self, context_after: int | None, trigger: int | None) -> bool:
        """Whether a compaction that left `context_after` tokens under `trigger` freed too little room."""
        return (
            trigger is not None
            and trigger > 0
            and context_after is not None
            and context_after >= self.ineffective_ratio * trigger
        )

    def ineffective_sql(self, context_after: SQLExpr, trigger: SQLExpr) -> ColumnElement[bool]:
        """`ineffective` as a SQLAlchemy condition over two columns, for the database to select the
        compactions the rule can hold (the same comparison in IEEE doubles, as Python makes it)."""
        from sqlalchemy import and_, literal

        return and_(
            trigger > 0,
            context_after.is_not(None),
            context_after >= literal(self.ineffective_ratio) * trigger,
        )


T = TypeVar("T")


class LoopWindow(Generic[T]):
    """The sliding window of one conversation's ineffective compactions. Feed it, in conversation order,
    each ineffective compacting call: its position among the conversation's calls (1, 2, ...), its
    compactions and any payload. Not thread-safe (the guard holds its lock)."""

    __slots__ = ("_calls", "_rule", "_total")

    def __init__(self, rule: LoopRule) -> None:
        self._rule = rule
        self._calls: deque[tuple[int, int, T]] = deque()
        self._total = 0

    def add(self, position: int, compactions: int, payload: T) -> tuple[T, ...] | None:
        """The window's calls (payloads, oldest first) when they now hold a loop, else None."""
        calls = self._calls
        calls.append((position, compactions, payload))
        self._total += compactions
        while position - calls[0][0] >= self._rule.loop_window:
            self._total -= calls.popleft()[1]
        if self._total >= self._rule.loop_min:
            return tuple(payload for _, _, payload in calls)
        return None
