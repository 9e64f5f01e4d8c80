"""Anthropic's own usage and cost figures, fetched through the installed SDK for `compactobs reconcile`.

```python
client = admin_client()                                   # ANTHROPIC_ADMIN_KEY; ANTHROPIC_BASE_URL honoured
figures = fetch(client, since, until, "1h", ("model",))   # {(bucket start, group): ApiFigures}
```

Endpoints: `client.beta.organization.analytics.usage.list` and `.cost.list` (`GET
/v1/organizations/analytics/usage` and `/cost`, beta `analytics-usage-cost-2026-08-24`), the Usage and Cost
Analytics API. The SDK's `analytics.usage_report` / `cost_report` are the legacy Claude Enterprise reports:
they cannot break figures out by workspace, API key or service tier, so they are not used.

The endpoints' limits, from the SDK's docstrings: `time_bucket_width` `1m`/`1h`/`1d`, buckets on UTC edges;
`ending_at` required with a bucket width; a request spans at most 31 days (24 hours at `1m`); at most 5
`group_by[]` dimensions, not counting `cost_type`/`token_type`; `limit` is rows per page, 1-1000 (the
fan-out rows of `cost_type`/`token_type` do not count). So a window is asked for in chunks of whole buckets,
each read page by page through `next_page`.

Money: `amount` (after discounts, before credits) and `list_amount` (list price) are strings of cents, made
into Decimal dollars here. Cost rows are asked for by `cost_type` and `token_type`, so each token class
carries its own list amount and a report's implied rate can be set beside compactobs' price.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from compactobs.reports.model import ReportInputError

if TYPE_CHECKING:
    import anthropic

__all__ = [
    "ADMIN_KEY_ENV",
    "API_GROUPS",
    "BUCKET_WIDTHS",
    "CLASSES",
    "ApiFigures",
    "Fetched",
    "ReportFetchError",
    "admin_client",
    "bucket_edges",
    "fetch",
]

ADMIN_KEY_ENV: Final = "ANTHROPIC_ADMIN_KEY"
BASE_URL_ENV: Final = "ANTHROPIC_BASE_URL"

BUCKET_WIDTHS: Final[dict[str, timedelta]] = {
    "1m": timedelta(minutes=1),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
MAX_SPAN: Final[dict[str, timedelta]] = {
    "1m": timedelta(hours=24),
    "1h": timedelta(days=31),
    "1d": timedelta(days=31),
}
"""The longest range one request may ask for, per bucket width."""
PAGE_ROWS: Final = 1000
"""The endpoints' largest page (rows)."""
MAX_RETRIES: Final = 5
"""The SDK retries 429 and 5xx with exponential backoff (honouring retry-after); then the error is ours."""

API_GROUPS: Final[dict[str, str]] = {
    "model": "model",
    "service_tier": "service_tier",
    "speed": "speed",
    "inference_geo": "inference_geo",
    "workspace": "workspace_id",
    "api_key": "api_key_id",
}
"""reconcile's --group names -> the endpoints' `group_by[]` dimensions."""

CLASSES: Final[tuple[str, ...]] = (
    "input",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
    "output",
    "web_search",
)
"""The billed classes compared: uncached input, cache read, cache writes (5 minutes, 1 hour), output
(tokens), and web search (requests)."""
_TOKEN_TYPE_CLASS: Final[dict[str, str]] = {
    "uncached_input_tokens": "input",
    "cache_read_input_tokens": "cache_read",
    "cache_creation.ephemeral_5m_input_tokens": "cache_write_5m",
    "cache_creation.ephemeral_1h_input_tokens": "cache_write_1h",
    "output_tokens": "output",
}
_CENTS: Final = Decimal(100)


class ReportFetchError(ReportInputError):
    """Anthropic's reports could not be read, for a reason the user can act on (one line, with the fix)."""


@dataclass
class ApiFigures:
    """Anthropic's figures for one bucket and group: requests, each class's amount (tokens; web search:
    requests), the list amount of each class (`list_by_class`, `other` for code execution and the like),
    the list total and the amount after discounts, in dollars."""

    requests: int = 0
    amounts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    list_by_class: dict[str, Decimal] = field(default_factory=dict)
    list_usd: Decimal = Decimal(0)
    amount_usd: Decimal = Decimal(0)

    def add(self, other: ApiFigures) -> None:
        self.requests += other.requests
        for name in CLASSES:
            self.amounts[name] += other.amounts[name]
        for name, value in other.list_by_class.items():
            self.list_by_class[name] = self.list_by_class.get(name, Decimal(0)) + value
        self.list_usd += other.list_usd
        self.amount_usd += other.amount_usd


GroupKey = tuple[tuple[str, Any], ...]
"""A row's dimension values, as ((API dimension, value), ...) in the order asked."""


@dataclass
class Fetched:
    """What the reports said over a window: figures by (bucket start, group), and when Anthropic last
    refreshed its data (None when it did not say)."""

    figures: dict[tuple[datetime, GroupKey], ApiFigures]
    refreshed_at: datetime | None
    requests_made: int


def admin_client(environ: Mapping[str, str] | None = None) -> anthropic.Anthropic:
    """An SDK client on the admin key in ANTHROPIC_ADMIN_KEY (ANTHROPIC_BASE_URL, which the SDK reads
    itself, points it elsewhere, e.g. at compactobs.testing's simulator). Raises ReportFetchError when the
    key is missing."""
    env = os.environ if environ is None else environ
    key = (env.get(ADMIN_KEY_ENV) or "").strip()
    if not key:
        raise ReportFetchError(
            f"no admin key: set {ADMIN_KEY_ENV} to an Admin API key (Console > Settings > Admin keys); "
            "reconcile reads your organisation's usage and cost reports with it"
        )
    import anthropic

    return anthropic.Anthropic(api_key=key, base_url=env.get(BASE_URL_ENV) or None, max_retries=MAX_RETRIES)


def bucket_edges(since: datetime, until: datetime, width: str) -> tuple[datetime, datetime]:
    """The window widened to whole UTC buckets of `width`: since rounded down, until rounded up."""
    step = BUCKET_WIDTHS[width]
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    start = epoch + ((since.astimezone(timezone.utc) - epoch) // step) * step
    stop = epoch + -((epoch - until.astimezone(timezone.utc)) // step) * step
    return start, max(stop, start + step)


def _chunks(start: datetime, stop: datetime, width: str) -> Iterable[tuple[datetime, datetime]]:
    span = MAX_SPAN[width]
    while start < stop:
        end = min(start + span, stop)
        yield start, end
        start = end


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _dollars(cents: str | None) -> Decimal:
    return Decimal(cents or "0") / _CENTS


def _api_error(err: Exception) -> ReportFetchError:
    """The SDK's error as one line that says what to do."""
    import anthropic

    message = getattr(err, "message", None) or str(err)
    body = getattr(err, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    message = " ".join(message.split())
    if isinstance(err, anthropic.AuthenticationError):
        return ReportFetchError(
            f"Anthropic refused the key in {ADMIN_KEY_ENV} (401: {message}): use an Admin API key "
            "(sk-ant-admin...), not a regular API key"
        )
    if isinstance(err, anthropic.PermissionDeniedError):
        return ReportFetchError(
            f"the key in {ADMIN_KEY_ENV} may not read usage and cost reports (403: {message}): use an Admin "
            "API key, or a key with the read:analytics scope"
        )
    if isinstance(err, anthropic.RateLimitError):
        return ReportFetchError(
            f"Anthropic's rate limit held after {MAX_RETRIES} retries with backoff (429: {message}): wait a "
            "minute and run reconcile again, or ask for fewer buckets (--by day, a shorter window)"
        )
    if isinstance(err, anthropic.BadRequestError):
        return ReportFetchError(
            f"Anthropic refused the request (400: {message}): the reports cover at most the last 365 days "
            "and nothing before 2026-01-01; narrow --since/--until"
        )
    if isinstance(err, anthropic.NotFoundError):
        return ReportFetchError(
            f"no usage report at this address (404: {message}): unset {BASE_URL_ENV} or point it at the "
            "Anthropic API"
        )
    if isinstance(err, anthropic.APIStatusError):
        return ReportFetchError(
            f"Anthropic's reports answered {err.status_code} ({message}): run reconcile again later"
        )
    if isinstance(err, anthropic.APIConnectionError):
        return ReportFetchError(
            f"could not reach Anthropic's API ({message}): check the network, or {BASE_URL_ENV}"
        )
    return ReportFetchError(f"reading Anthropic's reports failed: {message}")


def _key(group: Any, dimensions: Sequence[str]) -> GroupKey:
    return tuple((name, getattr(group, name, None)) for name in dimensions)


def fetch(
    client: anthropic.Anthropic,
    since: datetime,
    until: datetime,
    width: str,
    dimensions: Sequence[str],
    *,
    workspace_ids: Sequence[str] = (),
    api_key_ids: Sequence[str] = (),
    page_rows: int = PAGE_ROWS,
) -> Fetched:
    """Anthropic's usage and cost over `[since, until)` (whole UTC buckets of `width`: see `bucket_edges`),
    by bucket and by `dimensions` (the endpoints' `group_by[]` names, at most 5), every page of every chunk
    (`page_rows` rows a page, at most 1000).

    Raises ReportFetchError for anything the API refuses (after the SDK's retries).
    """
    import anthropic

    if width not in BUCKET_WIDTHS:
        raise ReportFetchError(f"unknown bucket width {width!r}: use one of {', '.join(BUCKET_WIDTHS)}")
    if len(dimensions) > 5:
        raise ReportFetchError(
            "Anthropic's reports break figures out by at most 5 dimensions: group by fewer"
        )
    start, stop = bucket_edges(since, until, width)
    figures: dict[tuple[datetime, GroupKey], ApiFigures] = {}
    refreshed: datetime | None = None
    requests = 0
    filters: dict[str, Any] = {}
    if workspace_ids:
        filters["workspace_ids"] = list(workspace_ids)
    if api_key_ids:
        filters["api_key_ids"] = list(api_key_ids)
    analytics = client.beta.organization.analytics

    def cell(moment: datetime, key: GroupKey) -> ApiFigures:
        bucket = moment.astimezone(timezone.utc)
        found = figures.get((bucket, key))
        if found is None:
            found = figures[(bucket, key)] = ApiFigures()
        return found

    try:
        for lo, hi in _chunks(start, stop, width):
            common: dict[str, Any] = {
                "starting_at": _iso(lo),
                "ending_at": _iso(hi),
                "time_bucket_width": width,
                "limit": page_rows,
                "order_by": "time",
                "order": "asc",
                **filters,
            }
            # The SDK types group_by as Literal names; `dimensions` were checked against them by the caller.
            group_by: Any = list(dimensions)
            usage = analytics.usage.list(group_by=group_by or anthropic.omit, **common)
            for page in usage.iter_pages():
                requests += 1
                if page.data_refreshed_at is not None:
                    refreshed = page.data_refreshed_at
                for item in page.data:
                    figure = cell(item.starting_at, _key(item.group, dimensions))
                    metrics = item.usage
                    figure.requests += metrics.requests or 0
                    figure.amounts["input"] += metrics.uncached_input_tokens
                    figure.amounts["cache_read"] += metrics.cache_read_input_tokens
                    figure.amounts["cache_write_5m"] += metrics.cache_creation.ephemeral_5m_input_tokens
                    figure.amounts["cache_write_1h"] += metrics.cache_creation.ephemeral_1h_input_tokens
                    figure.amounts["output"] += metrics.output_tokens
                    figure.amounts["web_search"] += metrics.server_tool_use.web_search_requests
            cost = analytics.cost.list(group_by=[*group_by, "cost_type", "token_type"], **common)
            for cost_page in cost.iter_pages():
                requests += 1
                for cost_item in cost_page.data:
                    figure = cell(cost_item.starting_at, _key(cost_item.group, dimensions))
                    currency = cost_item.cost.currency
                    if currency != "USD":
                        raise ReportFetchError(
                            f"Anthropic reported a cost in {currency}; reconcile compares USD only"
                        )
                    kind = cost_item.group.cost_type
                    name = (
                        _TOKEN_TYPE_CLASS.get(cost_item.group.token_type or "", "other")
                        if kind == "tokens"
                        else "web_search"
                        if kind == "web_search"
                        else "other"
                    )
                    listed = _dollars(cost_item.cost.list_amount)
                    figure.list_by_class[name] = figure.list_by_class.get(name, Decimal(0)) + listed
                    figure.list_usd += listed
                    figure.amount_usd += _dollars(cost_item.cost.amount)
    except anthropic.APIError as err:
        raise _api_error(err) from None
    return Fetched(figures, refreshed, requests)
