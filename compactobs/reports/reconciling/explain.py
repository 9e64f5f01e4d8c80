"""`reconcile`'s matching: each difference between Anthropic's figures and compactobs' set against what
can explain it, in the order compactobs.reports.reconcile's docstring gives.

A helper of the `reconcile` report, not a report of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final

from compactobs._types import JSONObject, SQLValue
from compactobs._words import counted
from compactobs.anthropic_reports import CLASSES, ApiFigures
from compactobs.reports.reconciling.figures import MONEY_FLOOR, ZERO, Key, Side, Window, minus

__all__ = ["Explanation", "Row", "bucket_edges", "explain", "usd"]

_CLASS_LABEL: Final[dict[str, str]] = {
    "input": "uncached input",
    "cache_read": "cache read",
    "cache_write_5m": "cache write 5m",
    "cache_write_1h": "cache write 1h",
    "output": "output",
    "web_search": "web search requests",
}
_MTOK: Final = Decimal(1_000_000)


@dataclass
class Explanation:
    """One explained (or unexplained) part of a row's difference: `kind` (see the module docstring), a
    one-line `message`, and its `figures` (requests, tokens by class, dollars)."""

    kind: str
    message: str
    figures: JSONObject = field(default_factory=dict)


def _significant(
    delta: Decimal | int, a: Decimal | int, b: Decimal | int, tolerance: Decimal, money: bool
) -> bool:
    size = abs(Decimal(delta))
    if money and size < MONEY_FLOOR:
        return False
    return size > tolerance * max(abs(Decimal(a)), abs(Decimal(b)))


def usd(value: Decimal) -> str:
    sign = "-" if value < 0 else ""
    return (
        f"{sign}${abs(value):,.6f}".rstrip("0").rstrip(".")
        if abs(value) < Decimal("0.01")
        else f"{sign}${abs(value):,.4f}"
    )


def _tokens_text(amounts: Mapping[str, int]) -> str:
    parts = [f"{_CLASS_LABEL[name]} {amounts[name]:+,}" for name in CLASSES if amounts.get(name)]
    return ", ".join(parts) if parts else "no tokens"


@dataclass
class Row:
    bucket: datetime
    group: tuple[SQLValue, ...]
    api: ApiFigures
    outside: ApiFigures
    store: Side
    spool: Side
    explanations: list[Explanation] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)
    """Requests and amounts explained by a bucket edge: taken out before the later steps."""
    moved_list: Decimal = ZERO
    """The list price of what `moved` holds."""

    @property
    def inside(self) -> ApiFigures:
        return minus(self.api, self.outside)


def _rate(money: Decimal, amount: int) -> Decimal | None:
    return money / amount if amount else None


def explain(row: Row, tolerance: Decimal, refreshed_at: datetime | None, window: Window) -> None:
    """Set the row's explanations (after the bucket-edge pass), in the module docstring's order."""
    inside, store, spool = row.inside, row.store, row.spool
    out = row.outside
    if out.requests or any(out.amounts.values()) or abs(out.list_usd) >= MONEY_FLOOR:
        row.explanations.append(
            Explanation(
                "other_scope",
                f"{counted(out.requests, 'request')} in other workspaces or API keys than compactobs records "
                f"({_tokens_text(out.amounts)}; list {usd(out.list_usd)})",
                {"requests": out.requests, "amounts": dict(out.amounts), "list_usd": out.list_usd},
            )
        )
    if spool.requests:
        row.explanations.append(
            Explanation(
                "spool",
                f"{counted(spool.requests, 'call')} recorded by compactobs still wait in the spool (the "
                f"database was unreachable; they are written when it is back, or at the next flush): "
                f"{_tokens_text(spool.amounts)}; list {usd(spool.cost_usd)}",
                {"requests": spool.requests, "amounts": dict(spool.amounts), "list_usd": spool.cost_usd},
            )
        )
    moved = row.moved
    extra_requests = inside.requests - store.requests - spool.requests - moved.get("requests", 0)
    extra = {
        name: inside.amounts[name] - store.amounts[name] - spool.amounts[name] - moved.get(name, 0)
        for name in CLASSES
    }
    # The report's own rate of each class: what its list amount implies for its tokens.
    api_rates = {name: _rate(inside.list_by_class.get(name, ZERO), inside.amounts[name]) for name in CLASSES}
    store_rates = {name: _rate(store.cost_by_class[name], store.amounts[name]) for name in CLASSES}
    explained_list = spool.cost_usd
    explained_amounts = dict.fromkeys(CLASSES, 0)
    if extra_requests > 0:
        money = ZERO
        for name in CLASSES:
            api_rate = api_rates[name]
            money += (api_rate if api_rate is not None else store_rates[name] or ZERO) * extra[name]
        explained_list += money
        explained_amounts = dict(extra)
        row.explanations.append(
            Explanation(
                "uninstrumented",
                f"Anthropic counted {counted(extra_requests, 'request')} more than compactobs recorded: "
                "calls from clients compactobs does not instrument, collect or import "
                f"({_tokens_text(extra)}; list {usd(money)} at the report's rates)",
                {"requests": extra_requests, "amounts": extra, "list_usd": money},
            )
        )
    elif extra_requests < 0:
        late = refreshed_at is not None and row.bucket + window.step > refreshed_at
        money = ZERO
        for name in CLASSES:
            money += (store_rates[name] or ZERO) * extra[name]
        explained_list += money
        explained_amounts = dict(extra)
        why = (
            f"Anthropic's data was refreshed at {refreshed_at:%Y-%m-%d %H:%M} UTC, within this bucket"
            if late
            else "calls Anthropic did not bill, or billed elsewhere"
        )
        row.explanations.append(
            Explanation(
                "not_in_report",
                f"compactobs recorded {counted(-extra_requests, 'request')} that Anthropic's report does "
                f"not have ({why}; {_tokens_text(extra)}; list {usd(money)})",
                {"requests": extra_requests, "amounts": extra, "list_usd": money},
            )
        )
    for name in CLASSES:
        api_rate, store_rate = api_rates[name], store_rates[name]
        if api_rate is None or store_rate is None:
            continue
        effect = (api_rate - store_rate) * store.amounts[name]
        if _significant(
            effect, inside.list_by_class.get(name, ZERO), store.cost_by_class[name], tolerance, True
        ):
            explained_list += effect
            scale = Decimal(1000) if name == "web_search" else _MTOK
            noun = "requests" if name == "web_search" else "tokens"
            unit = "/1K requests" if name == "web_search" else "/MTok"
            row.explanations.append(
                Explanation(
                    "price_drift",
                    f"{_CLASS_LABEL[name]}: the report implies ${(api_rate * scale).normalize():f}{unit}, "
                    f"compactobs priced ${(store_rate * scale).normalize():f}{unit}: "
                    f"{usd(effect)} on {store.amounts[name]:,} {noun}"
                    " (check the price table: genai-prices, COMPACTOBS_PRICING_FILE)",
                    {
                        "class": name,
                        "report_rate": api_rate * scale,
                        "compactobs_rate": store_rate * scale,
                        "per": "1K requests" if name == "web_search" else "MTok",
                        "usd": effect,
                    },
                )
            )
    other = inside.list_by_class.get("other", ZERO)
    if abs(other) >= MONEY_FLOOR:
        explained_list += other
        row.explanations.append(
            Explanation(
                "other_cost",
                f"Anthropic lists {usd(other)} for what compactobs does not price (code execution, sessions)",
                {"list_usd": other},
            )
        )
    discount = row.api.list_usd - row.api.amount_usd
    if _significant(discount, row.api.list_usd, row.api.amount_usd, tolerance, True):
        share = discount / row.api.list_usd if row.api.list_usd else None
        what = "discount" if discount > 0 else "surcharge"
        row.explanations.append(
            Explanation(
                "discount",
                f"Anthropic's amount is {usd(abs(discount))} {'below' if discount > 0 else 'above'} "
                f"its list amount ({what}"
                + (f" of {abs(share) * 100:.2f}%" if share is not None else "")
                + "; priority tier commitments, negotiated discounts): compactobs shows list prices",
                {"usd": discount, "share": share},
            )
        )
    if store.unpriced:
        row.explanations.append(
            Explanation(
                "unpriced",
                f"{counted(store.unpriced, 'call')} compactobs could not price: their list cost is missing "
                "on its side (add the model to COMPACTOBS_PRICING_FILE, then run `compactobs reprice`)",
                {"calls": store.unpriced},
            )
        )
    # What is left once the above are taken out (a difference in requests always has its explanation).
    residual = {name: extra[name] - explained_amounts[name] for name in CLASSES}
    residual_list = inside.list_usd - store.cost_usd - explained_list - row.moved_list
    problems = [
        f"{_CLASS_LABEL[name]} {residual[name]:+,}"
        for name in CLASSES
        if _significant(residual[name], inside.amounts[name], store.amounts[name], tolerance, False)
    ]
    if not store.unpriced and _significant(residual_list, inside.list_usd, store.cost_usd, tolerance, True):
        problems.append(f"list {usd(residual_list)}")
    if problems:
        row.explanations.append(
            Explanation(
                "unexplained",
                "not explained: " + ", ".join(problems) + " (e.g. usage compactobs did not count, such as "
                "compaction iterations, or a change of model name)",
                {"amounts": residual, "list_usd": residual_list},
            )
        )


def bucket_edges(rows: dict[Key, Row], window: Window) -> None:
    """Pair a bucket's shortfall of requests with the same excess in the next bucket of the same group:
    the same calls, dated either side of an edge. Both rows say so; their moved figures are set aside."""
    for (bucket, group), row in sorted(rows.items(), key=lambda item: item[0][0]):
        following = rows.get((bucket + window.step, group))
        if following is None:
            continue

        def gap(r: Row) -> tuple[int, dict[str, int], Decimal]:
            inside = r.inside
            requests = inside.requests - r.store.requests - r.spool.requests - r.moved.get("requests", 0)
            amounts = {
                n: inside.amounts[n] - r.store.amounts[n] - r.spool.amounts[n] - r.moved.get(n, 0)
                for n in CLASSES
            }
            return requests, amounts, inside.list_usd - r.store.cost_usd

        here, here_amounts, here_list = gap(row)
        there, there_amounts, there_list = gap(following)
        if not here or here != -there:
            continue
        shifted = {n: here_amounts[n] if here_amounts[n] == -there_amounts[n] else 0 for n in CLASSES}
        money = here_list if (here_list + there_list).copy_abs() < MONEY_FLOOR else ZERO
        count = abs(here)
        earlier = here > 0  # Anthropic has them in this bucket, compactobs in the next one
        edge = window.label(bucket + window.step)
        for target, sign in ((row, 1), (following, -1)):
            target.moved["requests"] = target.moved.get("requests", 0) + sign * here
            for n in CLASSES:
                target.moved[n] = target.moved.get(n, 0) + sign * shifted[n]
            target.moved_list += sign * money
            target.explanations.append(
                Explanation(
                    "bucket_edge",
                    f"{counted(count, 'request')} dated {'earlier' if earlier else 'later'} by Anthropic "
                    f"than by compactobs, across the edge {edge} UTC (the two buckets together agree; "
                    "compactobs dates a call by its start)",
                    {
                        "requests": sign * here,
                        "amounts": {n: sign * shifted[n] for n in CLASSES},
                        "list_usd": sign * money,
                        "edge": bucket + window.step,
                    },
                )
            )
