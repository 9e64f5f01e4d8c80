"""Price a call's usage: each iteration on its own, at its own model, on the request date.

Rules (DESIGN.md section 3):
- Every iteration is priced at `IterationUsage.model` (the entry's model, else the response's), with the
  price in force on the request date. An unknown iteration type is priced the same way, with a note.
- Tiers are judged per iteration on its total input (uncached + cache read + cache write); past a
  threshold *every* token of that iteration bills at the tier rate.
- Variants come from the call's top-level usage and apply to every iteration of it: Anthropic reports
  `service_tier`, `speed` and `inference_geo` only at top level, and no source says an iteration (a
  compaction, an advisor call) escapes them, so this is an assumption that no source contradicts.
  `batch` uses genai-prices' batch price, else 50% of standard; `fast` its fast price, else standard (the
  API bills models without fast mode at standard); `inference_geo == "us"` on Claude 4.6 and later
  multiplies every token class by 1.1 (genai-prices lacks it); `priority` bills at standard list rates
  here, since Priority Tier has no public per-token price.
- Bedrock and Vertex calls through regional and multi-region endpoints bill Claude 4.5 and later at list
  x 1.1 (`compactobs.pricing.platforms`, with its sources); the platform travels on `CallUsage`.
- Web search is $10 per 1,000 requests at call level, never discounted or multiplied; web fetch is free.
- An unknown model leaves its iteration, and so the call, unpriced (`cost_usd=None`), never $0. A
  fallback attempt declined before any output is not billed: $0 and priced, whatever its model.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import replace
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Final

import genai_prices
from genai_prices import data_snapshot

from compactobs.platforms import model_of
from compactobs.pricing.catalog import genai_schedule, lookup_model
from compactobs.pricing.overrides import Overrides, load_overrides
from compactobs.pricing.platforms import REGIONAL_PREMIUM, premium_eligible, regional_terms
from compactobs.pricing.records import PricedCall, PricedIteration, Rates, RateTier
from compactobs.pricing.schedule import ClassRates, Schedule
from compactobs.untrusted import escape
from compactobs.usage import CallUsage, IterationUsage

__all__ = ["PRICING_FILE_ENV", "Pricer", "default_pricer"]

log = logging.getLogger("compactobs")

PRICING_FILE_ENV: Final = "COMPACTOBS_PRICING_FILE"

US_ONLY_MULTIPLIER: Final = Decimal("1.1")
WEB_SEARCH_PER_1K: Final = Decimal("10")
"""Anthropic's documented web search price, used when the price source gives none for the model."""

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_PER_MTOK: Final = -6
"""Rates are per million tokens: scaleb(-6) turns one into a per-token rate exactly."""
_CACHE_LIMIT: Final = 4096
"""Resolved rate cards kept; the working set is (models in use) x (days) x (variants), so tiny."""

# Claude 4.6 and later, where US-only inference costs 1.1x (earlier models reject `inference_geo`).
_US_PREMIUM_MODELS: Final = re.compile(
    r"claude-(?:(?:opus|sonnet|haiku)-4[-.][6-9](?!\d)|(?:opus|sonnet|haiku|fable|mythos)-(?:[5-9]|[1-9]\d)(?!\d)"
    r"|mythos-preview)"
)

_DECLINED_NOTE: Final = "declined fallback attempt: not billed"


def _utc_day(when: datetime) -> date:
    # Naive times are taken as UTC, as genai-prices does.
    return when.astimezone(timezone.utc).date() if when.tzinfo is not None else when.date()


def _per_token(rates: ClassRates, factor: Decimal) -> ClassRates:
    return (
        (rates[0] * factor).scaleb(_PER_MTOK),
        (rates[1] * factor).scaleb(_PER_MTOK),
        (rates[2] * factor).scaleb(_PER_MTOK),
        (rates[3] * factor).scaleb(_PER_MTOK),
        (rates[4] * factor).scaleb(_PER_MTOK),
    )


def _rate_tier(above: int, rates: ClassRates, factor: Decimal) -> RateTier:
    return RateTier(above, *(rate * factor for rate in rates))


class _Card:
    """A resolved schedule for one (model, day, variants) key, with per-token rates ready for pricing."""

    __slots__ = ("base", "defaulted", "note", "rates", "schedule", "source", "tiers_desc")

    def __init__(self, schedule: Schedule, rates: Rates, factor: Decimal) -> None:
        self.schedule = schedule
        self.rates = rates
        self.base = _per_token(schedule.base, factor)
        self.tiers_desc = tuple((above, _per_token(tier, factor)) for above, tier in reversed(schedule.tiers))
        self.source = schedule.source
        self.defaulted = schedule.defaulted
        self.note = "; ".join(rates.notes) or None


class _Unpriced:
    __slots__ = ("note",)

    def __init__(self, note: str) -> None:
        self.note = note


class Pricer:
    """Prices `CallUsage` with genai-prices, under an optional overrides file.

    Resolved rates are cached per (model, UTC day, service tier, speed, inference geo), so a warm
    `price_call` is a few dozen Decimal multiplications. Safe to share between threads.
    """

    def __init__(
        self, overrides_path: str | os.PathLike[str] | None = None, *, origin: str | None = None
    ) -> None:
        """`origin` says where the path came from, for error messages (e.g. the environment variable).

        Raises `PricingError` (one line: file, key, problem) if the overrides file is bad."""
        self.overrides: Overrides | None = (
            load_overrides(overrides_path, origin=origin) if overrides_path is not None else None
        )
        self.genai_prices_version: str = genai_prices.__version__
        self._cards: dict[tuple[str, date, str | None, str | None, str | None, bool], _Card | _Unpriced] = {}
        self._snapshot: data_snapshot.DataSnapshot | None = None
        self._versions: tuple[data_snapshot.DataSnapshot | None, dict[bool, str]] = (None, {})
        """`_version` per used-overrides flag, and the snapshot they were made for."""
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._overrides_source = f"overrides {self.overrides.short_hash}" if self.overrides else ""

    # -- public -------------------------------------------------------------------------------------------

    def price_call(self, usage: CallUsage, when: datetime) -> PricedCall:
        """The billed cost of one call; `when` is the request time (UTC-aware; naive is read as UTC).

        Never raises: a failure to price leaves the call unpriced, with a note.
        """
        try:
            return self._price_call(usage, when)
        except Exception as err:  # pricing runs inside the user's call: never break it
            kind = type(err).__name__
            if kind not in self._warned:  # once per kind of failure, not once per call
                self._warned.add(kind)
                # The message may quote the response (a model): escaped, and the traceback (which would
                # repeat it raw) only at debug level.
                log.warning("compactobs: could not price a call (%s); recorded as unpriced", escape(err))
                log.debug("compactobs: the pricing failure", exc_info=True)
            return self._failed_call(usage, f"pricing failed: {kind}: {err}")

    def rates(
        self,
        model: str,
        when: datetime,
        *,
        service_tier: str | None = None,
        speed: str | None = None,
        inference_geo: str | None = None,
        total_input_tokens: int = 0,
    ) -> Rates | None:
        """The rates that would bill `model` at `when` for these variants, or None if the model is unknown.
        A platform's id (`us.anthropic.claude-opus-4-6-v1:0`) is read as its model, at list.

        `total_input_tokens` selects the tier (the top-level fields show that tier's rates)."""
        card = self._card(model_of(model), _utc_day(when), when, service_tier, speed, inference_geo)
        if isinstance(card, _Unpriced):
            return None
        rates = card.rates
        for tier in reversed(rates.tiers):
            if total_input_tokens > tier.above:
                return replace(
                    rates,
                    input=tier.input,
                    output=tier.output,
                    cache_read=tier.cache_read,
                    cache_write_5m=tier.cache_write_5m,
                    cache_write_1h=tier.cache_write_1h,
                    tier_above=tier.above,
                )
        return rates

    def known_model(self, model: str, when: datetime) -> bool:
        """Whether `model` can be priced at `when` (by genai-prices or the overrides file)."""
        return self.rates(model, when) is not None

    # -- resolution ---------------------------------------------------------------------------------------

    def _card(
        self,
        model: str | None,
        day: date,
        when: datetime,
        service_tier: str | None,
        speed: str | None,
        inference_geo: str | None,
        snapshot: data_snapshot.DataSnapshot | None = None,
        regional: bool = False,
    ) -> _Card | _Unpriced:
        """`snapshot`: genai-prices' current data, when the caller already has it (once per call).
        `regional`: a Bedrock or Vertex regional or multi-region endpoint (`pricing.platforms`)."""
        if model is None:
            return _Unpriced("no model reported for this iteration")
        if snapshot is None:
            snapshot = self._current_snapshot()
        key = (model, day, service_tier, speed, inference_geo, regional)
        card = self._cards.get(key)
        if card is None or (isinstance(card, _Card) and card.schedule.time_dependent):
            card = self._resolve(snapshot, model, day, when, service_tier, speed, inference_geo, regional)
            with self._lock:
                if len(self._cards) >= _CACHE_LIMIT:
                    self._cards.clear()
                self._cards[key] = card
        return card

    def load(self) -> None:
        """Load genai-prices' data now (otherwise imported on the first call priced)."""
        self._current_snapshot()

    def _current_snapshot(self) -> data_snapshot.DataSnapshot:
        snapshot = data_snapshot.get_snapshot()
        if snapshot is not self._snapshot:
            # genai-prices' data was replaced (UpdatePrices or a custom snapshot): start afresh.
            with self._lock:
                self._cards = {}
                self._snapshot = snapshot
        return snapshot

    def _genai_source(self, snapshot: data_snapshot.DataSnapshot) -> str:
        source = f"genai-prices {self.genai_prices_version}"
        if snapshot.from_auto_update:
            source += f" (data {snapshot.timestamp:%Y-%m-%dT%H:%M})"
        return source

    def _resolve(
        self,
        snapshot: data_snapshot.DataSnapshot,
        model: str,
        day: date,
        when: datetime,
        service_tier: str | None,
        speed: str | None,
        inference_geo: str | None,
        regional: bool = False,
    ) -> _Card | _Unpriced:
        batch = service_tier == "batch"
        fast = speed == "fast"
        notes: list[str] = []
        if service_tier == "priority":
            notes.append("priority tier: no public per-token price; priced at standard list rates")
        elif service_tier not in (None, "standard", "batch"):
            notes.append(f"service tier {service_tier!r} not known; priced at standard rates")
        if speed not in (None, "standard", "fast"):
            notes.append(f"speed {speed!r} not known; priced at standard rates")

        entry = self.overrides.match(model) if self.overrides is not None else None
        schedule: Schedule | None
        if entry is not None:
            schedule = entry.schedule(batch=batch, fast=fast, source=self._overrides_source)
            geo_eligible = bool(_US_PREMIUM_MODELS.search(model.lower()))
            regional_eligible = premium_eligible(model)
        else:
            info = lookup_model(snapshot, model)
            if info is None:
                where = f"genai-prices {self.genai_prices_version}" + (
                    " or the overrides file" if self.overrides else ""
                )
                return _Unpriced(f"model {model!r} not in {where}")
            # Start-date prices only change by day, so any time in the day resolves the same.
            at = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
            day_start = datetime.combine(day, time(0), tzinfo=timezone.utc)
            schedule = genai_schedule(
                info, day_start, batch=batch, fast=fast, source=self._genai_source(snapshot)
            )
            if schedule is not None and schedule.time_dependent:
                schedule = genai_schedule(info, at, batch=batch, fast=fast, source=schedule.source)
            if schedule is None:
                return _Unpriced(f"model {model!r} has no input/output price in genai-prices")
            geo_eligible = bool(
                _US_PREMIUM_MODELS.search(info.id) or _US_PREMIUM_MODELS.search(model.lower())
            )
            regional_eligible = premium_eligible(info.id) or premium_eligible(model)

        factor = _ONE
        if inference_geo == "us":
            if geo_eligible:
                factor = US_ONLY_MULTIPLIER
            else:
                notes.append("inference_geo 'us' before Claude 4.6: no US-only premium (the API rejects it)")
        if regional and regional_eligible:
            factor *= REGIONAL_PREMIUM
            notes.append("regional endpoint (Bedrock, Vertex): list x 1.1")

        rates = Rates(
            model=model,
            model_id=schedule.model_id,
            input=schedule.base[0] * factor,
            output=schedule.base[1] * factor,
            cache_read=schedule.base[2] * factor,
            cache_write_5m=schedule.base[3] * factor,
            cache_write_1h=schedule.base[4] * factor,
            tier_above=None,
            tiers=tuple(_rate_tier(above, tier, factor) for above, tier in schedule.tiers),
            source=schedule.source,
            effective_from=schedule.effective_from,
            variant=schedule.variant,
            multiplier=factor,
            web_search_per_1k=schedule.web_search_per_1k
            if schedule.web_search_per_1k is not None
            else WEB_SEARCH_PER_1K,
            notes=(*schedule.notes, *notes),
            by_overrides=schedule.by_overrides,
        )
        return _Card(schedule, rates, factor)

    # -- pricing ------------------------------------------------------------------------------------------

    def _price_call(self, usage: CallUsage, when: datetime) -> PricedCall:
        day = _utc_day(when)
        tier, speed, geo = usage.service_tier, usage.speed, usage.inference_geo
        regional, platform_note = regional_terms(usage.provider, usage.endpoint)
        snapshot = self._current_snapshot()
        priced: list[PricedIteration] = []
        unpriced_models: set[str] = set()
        used_overrides = False
        # The component totals, summed as each iteration is priced (Decimal sums, in iteration order).
        input_usd = output_usd = cache_read_usd = write_5m_usd = write_1h_usd = cost_sum = _ZERO
        for iteration in usage.iterations:
            if iteration.declined:
                one = _declined_iteration(iteration)
            else:
                card = self._card(iteration.model, day, when, tier, speed, geo, snapshot, regional)
                if isinstance(card, _Unpriced):
                    unpriced_models.add(iteration.model or "<none>")
                    one = _unpriced_iteration(iteration, card.note)
                else:
                    used_overrides = used_overrides or card.schedule.by_overrides
                    one = _price_iteration(iteration, card)
            priced.append(one)
            input_usd += one.input_usd
            output_usd += one.output_usd
            cache_read_usd += one.cache_read_usd
            write_5m_usd += one.cache_write_5m_usd
            write_1h_usd += one.cache_write_1h_usd
            if one.cost_usd is not None:
                cost_sum += one.cost_usd

        web_search = _ZERO
        if usage.web_search_requests:
            web_search = usage.web_search_requests * self._web_search_per_1k(usage, day, when).scaleb(-3)

        all_priced = not unpriced_models
        cost = cost_sum + web_search if all_priced else None
        return PricedCall(
            cost_usd=cost,
            iterations=tuple(priced),
            server_tools_usd=web_search,
            input_usd=input_usd,
            output_usd=output_usd,
            cache_read_usd=cache_read_usd,
            cache_write_5m_usd=write_5m_usd,
            cache_write_1h_usd=write_1h_usd,
            priced=all_priced,
            pricing_version=self._version(used_overrides),
            unpriced_models=tuple(sorted(unpriced_models)),
            notes=(platform_note,) if platform_note else (),
        )

    def _web_search_per_1k(self, usage: CallUsage, day: date, when: datetime) -> Decimal:
        # The searching model is the one that answered; standard tier, since searches are never discounted.
        model = usage.response_model or next((i.model for i in reversed(usage.iterations) if i.model), None)
        card = self._card(model, day, when, None, None, None)
        return card.rates.web_search_per_1k if isinstance(card, _Card) else WEB_SEARCH_PER_1K

    def _version(self, used_overrides: bool) -> str:
        snapshot = self._snapshot
        made_for, versions = self._versions
        if made_for is not snapshot:
            versions = {}
            self._versions = (snapshot, versions)
        version = versions.get(used_overrides)
        if version is None:
            version = versions[used_overrides] = self._make_version(snapshot, used_overrides)
        return version

    def _make_version(self, snapshot: data_snapshot.DataSnapshot | None, used_overrides: bool) -> str:
        version = f"genai-prices=={self.genai_prices_version}"
        if snapshot is not None and snapshot.from_auto_update:
            version += f"+data:{snapshot.timestamp:%Y%m%dT%H%M%S}"
        if used_overrides and self.overrides is not None:
            version += f"+overrides:{self.overrides.short_hash}"
        return version

    def _failed_call(self, usage: CallUsage, note: str) -> PricedCall:
        try:
            iterations = tuple(_unpriced_iteration(i, note) for i in usage.iterations)
            models = tuple(sorted({i.model or "<none>" for i in usage.iterations}))
        except Exception:
            iterations, models = (), ()
        return PricedCall(
            cost_usd=None,
            iterations=iterations,
            server_tools_usd=_ZERO,
            input_usd=_ZERO,
            output_usd=_ZERO,
            cache_read_usd=_ZERO,
            cache_write_5m_usd=_ZERO,
            cache_write_1h_usd=_ZERO,
            priced=False,
            pricing_version=self._version(False),
            unpriced_models=models,
            notes=(note,),
        )


def _declined_iteration(iteration: IterationUsage) -> PricedIteration:
    # Anthropic does not bill an attempt declined before any output, whatever its model: priced, at $0.
    return PricedIteration(
        _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, True, iteration.model, "not billed", _DECLINED_NOTE
    )


def _unpriced_iteration(iteration: IterationUsage, note: str) -> PricedIteration:
    return PricedIteration(None, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, False, iteration.model, "unpriced", note)


def _price_iteration(iteration: IterationUsage, card: _Card) -> PricedIteration:
    tokens = iteration.tokens
    rates, above = card.base, None
    if card.tiers_desc:
        total_input = tokens.total_input
        for threshold, tier_rates in card.tiers_desc:
            if total_input > threshold:
                rates, above = tier_rates, threshold
                break
    # A class with no tokens is a plain 0, not a 0E-7 that carries the rate's exponent into reports.
    input_usd = tokens.input * rates[0] if tokens.input else _ZERO
    output_usd = tokens.output * rates[1] if tokens.output else _ZERO
    read_usd = tokens.cache_read * rates[2] if tokens.cache_read else _ZERO
    write_5m_usd = tokens.cache_write_5m * rates[3] if tokens.cache_write_5m else _ZERO
    write_1h_usd = tokens.cache_write_1h * rates[4] if tokens.cache_write_1h else _ZERO
    note = card.note
    if card.defaulted or not iteration.known_type:
        note = _extra_notes(iteration, card, note)
    return PricedIteration(
        input_usd + output_usd + read_usd + write_5m_usd + write_1h_usd,
        input_usd,
        output_usd,
        read_usd,
        write_5m_usd,
        write_1h_usd,
        True,
        iteration.model,
        card.source,
        note,
        above,
    )


def _extra_notes(iteration: IterationUsage, card: _Card, note: str | None) -> str | None:
    notes = [note] if note else []
    if not iteration.known_type:
        notes.append(f"unknown iteration type {iteration.type!r} priced at its model ({iteration.model})")
    tokens = iteration.tokens
    used = {
        "cache_read": tokens.cache_read,
        "cache_write_5m": tokens.cache_write_5m,
        "cache_write_1h": tokens.cache_write_1h,
    }
    multipliers = {"cache_read": "0.1x", "cache_write_5m": "1.25x", "cache_write_1h": "2x"}
    for name in sorted(card.defaulted):
        if used.get(name):
            notes.append(
                f"{card.source} has no {name} price for {card.schedule.model_id}: {multipliers[name]} input"
            )
    return "; ".join(notes) or None


def default_pricer() -> Pricer:
    """A `Pricer` with the overrides file named by `COMPACTOBS_PRICING_FILE`, if set.

    Raises `PricingError` if that file is missing or invalid: a bad price file must not pass silently."""
    path = os.environ.get(PRICING_FILE_ENV, "").strip()
    return Pricer(path or None, origin=PRICING_FILE_ENV if path else None)
