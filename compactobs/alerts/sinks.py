"""Where alerts go: a generic webhook, Slack incoming webhooks and PagerDuty Events API v2. Each builds
its payloads from a `Group` (pure functions, tested against the documented schemas) and posts them.

A group is one kind's news for one destination in one pass: the findings to trigger (new, or due again on
the re-notify interval) and those that cleared. Each sink sends one message per group, so fifty looping
conversations make one message listing them:
- webhook: one POST, `{"source": "compactobs", "kind", "events": [{"source", "event", "key", "finding"}]}`;
- Slack: one message, `text` (a summary without any stored text) plus `blocks`: a header, each finding
  as plain text (never mrkdwn: a conversation id can hold `*`, `<!channel>` or a link), with the commands
  (or links, given a `--link-base`) to `report conversation` / `report call`;
- PagerDuty: one alert per kind, `dedup_key` `compactobs/KIND/SCOPE`: a trigger listing the open findings
  when there is news, a resolve when the kind's last finding clears.

Secrets (the URLs, the routing key) are never printed: `shown` is masked. A failed delivery raises
`DeliveryError`, one line without the secret.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol
from urllib.parse import quote, urlsplit

from compactobs._types import JSON, JSONObject
from compactobs.alerts.evaluate import Alert
from compactobs.errors import CompactobsError

__all__ = [
    "PAGERDUTY_URL",
    "DeliveryError",
    "Group",
    "PagerDutySink",
    "Sink",
    "SlackSink",
    "WebhookSink",
    "groups_of",
    "mask_key",
    "mask_url",
    "pagerduty_events",
    "post_json",
    "slack_escape",
    "slack_message",
    "webhook_body",
]

PAGERDUTY_URL: Final = "https://events.pagerduty.com/v2/enqueue"
TIMEOUT_S: Final = 10.0
SOURCE: Final = "compactobs"
SLACK_LISTED: Final = 15
"""Findings a Slack message lists one by one (2 blocks each: Slack takes 50 blocks a message)."""
SLACK_TEXT_MAX: Final = 2900
"""A section's text (Slack's limit: 3000 characters)."""
PAGERDUTY_LISTED: Final = 50
PAGERDUTY_SUMMARY_MAX: Final = 1024


class DeliveryError(CompactobsError):
    """A destination did not take a message: one line, no secret."""


@dataclass
class Group:
    """One kind's news for one destination in one pass."""

    kind: str
    triggers: list[Alert] = field(default_factory=list)
    repeats: set[str] = field(default_factory=set)
    """Keys among the triggers sent before (re-notified)."""
    resolves: list[tuple[str, JSONObject]] = field(default_factory=list)
    open: list[Alert] = field(default_factory=list)
    """Every finding of the kind open after this pass (the triggers and those already told)."""

    @property
    def severity(self) -> str:
        found: set[str] = {a.severity for a in (self.triggers or self.open)}
        found = found or {str(finding.get("severity", "warning")) for _, finding in self.resolves}
        return "critical" if "critical" in found else "warning"


def mask_url(url: str) -> str:
    """A URL with its path and query hidden (a Slack webhook's secret is its path)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/****"


def mask_key(key: str) -> str:
    """A routing key with all but its last 4 characters hidden."""
    return f"****{key[-4:]}" if len(key) > 8 else "****"


def slack_escape(text: str) -> str:
    """Text Slack shows as written: `&`, `<` and `>` as entities (Slack's control characters: links,
    mentions such as `<!channel>`)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the generic webhook -------------------------------------------------------------------------------


def webhook_body(group: Group) -> JSONObject:
    """`{"source": "compactobs", "kind", "events": [...]}`: an event per trigger, then per resolve, each
    `{"source": "compactobs", "event": "trigger" | "resolve", "key", "finding"}` (`finding`: `kind`,
    `severity`, `conversation_id`, `service`, `cost_usd`, `message`, `evidence`, `call_ids`; a resolve
    carries the finding as last seen)."""
    events = [
        {"source": SOURCE, "event": "trigger", "key": alert.key, "finding": alert.finding()}
        for alert in group.triggers
    ]
    events += [
        {"source": SOURCE, "event": "resolve", "key": key, "finding": finding}
        for key, finding in group.resolves
    ]
    return {"source": SOURCE, "kind": group.kind, "events": events}


# -- Slack ----------------------------------------------------------------------------------------------


def _plain(text: str, limit: int) -> JSONObject:
    """A plain_text object within Slack's `limit` characters. Escaping lengthens the text (`<` is four
    characters as `&lt;`), so the text is cut after it, and never inside an entity."""
    shown = slack_escape(text)
    if len(shown) > limit:
        kept = shown[: limit - 1]
        entity = kept.rfind("&")
        if entity != -1 and ";" not in kept[entity:]:
            kept = kept[:entity]
        shown = kept + "…"
    return {"type": "plain_text", "text": shown, "emoji": False}


def _about(finding: JSONObject) -> str:
    parts = []
    if finding.get("conversation_id") is not None:
        parts.append(f"conversation {finding['conversation_id']}")
    if finding.get("service") is not None:
        parts.append(f"service {finding['service']}")
    if finding.get("cost_usd") is not None:
        parts.append(f"${float(finding['cost_usd']):,.4f}")
    return " · ".join(parts)


def _shell_word(text: str) -> str:
    """A word a shell takes as written (single quotes)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _where_to_look(finding: JSONObject, link_base: str | None) -> JSONObject | None:
    """The context block pointing at `report conversation` / `report call`: links under `link_base`
    (the id percent-encoded, so it cannot end the link or start another), else the commands as plain text."""
    conversation = finding.get("conversation_id")
    call_ids = finding.get("call_ids") or []
    call = call_ids[0] if call_ids else None
    if conversation is None and call is None:
        return None
    if link_base is not None:
        base = slack_escape(link_base.rstrip("/"))
        links = []
        if conversation is not None:
            links.append(f"<{base}/conversation/{quote(conversation, safe='')}|report conversation>")
        if call is not None:
            links.append(f"<{base}/call/{quote(call, safe='')}|report call>")
        return {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(links)}]}
    commands = []
    if conversation is not None:
        commands.append(f"compactobs report conversation {_shell_word(conversation)}")
    if call is not None:
        commands.append(f"compactobs report call {_shell_word(call)}")
    return {"type": "context", "elements": [_plain("   ".join(commands), 1900)]}


def slack_message(group: Group, link_base: str | None = None) -> JSONObject:
    """The Slack incoming-webhook message for a group: `text` (counts and the kind only, for notifications)
    and `blocks` (header; per finding a plain-text section and where to look; the resolved; what is left
    out)."""
    new = [a for a in group.triggers if a.key not in group.repeats]
    again = [a for a in group.triggers if a.key in group.repeats]
    counts = []
    if new:
        counts.append(f"{len(new)} new")
    if again:
        counts.append(f"{len(again)} still open")
    if group.resolves:
        counts.append(f"{len(group.resolves)} resolved")
    label = "RESOLVED" if not group.triggers else group.severity.upper()
    title = f"{label} {group.kind}: {', '.join(counts)}"
    blocks: list[JSONObject] = [{"type": "header", "text": _plain(f"compactobs {title}", 150)}]
    listed = group.triggers[:SLACK_LISTED]
    for alert in listed:
        finding = alert.finding()
        head = ("(again) " if alert.key in group.repeats else "") + f"{alert.severity.upper()} {alert.kind}"
        about = _about(finding)
        text = f"{head}{' · ' + about if about else ''}\n{alert.message}"
        blocks.append({"type": "section", "text": _plain(text, SLACK_TEXT_MAX)})
        look = _where_to_look(finding, link_base)
        if look is not None:
            blocks.append(look)
    if group.resolves:
        lines = []
        for _, finding in group.resolves[:SLACK_LISTED]:
            about = _about(finding)
            lines.append(_cut(f"resolved: {about + ' · ' if about else ''}{finding.get('message', '')}", 190))
        blocks.append({"type": "section", "text": _plain("\n".join(lines), SLACK_TEXT_MAX)})
    left_out = len(group.triggers) - len(listed) + max(len(group.resolves) - SLACK_LISTED, 0)
    if left_out:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _plain(f"and {left_out} more: compactobs report anomalies lists all", SLACK_TEXT_MAX)
                ],
            }
        )
    return {"text": slack_escape(f"compactobs {title}"), "blocks": blocks}


# -- PagerDuty ------------------------------------------------------------------------------------------


def pagerduty_events(group: Group, routing_key: str, scope: str, now: datetime) -> list[JSONObject]:
    """The Events API v2 events for a group: a trigger listing the kind's open findings when there is
    news, a resolve when none is left open; `dedup_key` is `compactobs/KIND/SCOPE` either way."""
    dedup_key = f"{SOURCE}/{group.kind}/{scope}"
    if group.triggers:
        findings = group.open or group.triggers
        services = sorted({a.service for a in findings if a.service is not None})
        summary = f"compactobs: {len(findings)} {group.kind} finding(s)"
        if len(findings) == 1:
            summary += f": {findings[0].message}"
        payload: JSONObject = {
            "summary": _cut(summary, PAGERDUTY_SUMMARY_MAX),
            "source": SOURCE,
            "severity": group.severity,
            "timestamp": now.isoformat(timespec="seconds"),
            "class": group.kind,
            "group": SOURCE,
            "custom_details": {
                "open_findings": len(findings),
                "new": [a.key for a in group.triggers if a.key not in group.repeats],
                "findings": [{"key": a.key, **a.finding()} for a in findings[:PAGERDUTY_LISTED]],
            },
        }
        if len(services) == 1:
            payload["component"] = services[0]
        return [
            {
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "payload": payload,
                "client": SOURCE,
            }
        ]
    if group.resolves and not group.open:
        return [{"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}]
    return []


# -- delivery ---------------------------------------------------------------------------------------------


def post_json(url: str, body: JSON, shown: str) -> None:
    """POST `body` as JSON; DeliveryError (naming `shown`, never `url`) unless the answer is 2xx. The
    error's own text is never shown: urllib puts the URL, a secret, in it."""
    data = json.dumps(body, ensure_ascii=False).encode()
    try:
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": SOURCE}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as err:
        raise DeliveryError(f"{shown} answered HTTP {err.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise DeliveryError(f"{shown} could not be reached ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    """What went wrong, without the URL: the OS's words for a network error, else the error's kind."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else "no answer"


class Sink(Protocol):
    """A destination: `name` (webhook, slack, pagerduty), `shown` (masked), `identity` (a digest-able
    string naming it without printing its secret) and `deliver`, which raises DeliveryError."""

    @property
    def name(self) -> str: ...

    @property
    def shown(self) -> str: ...

    @property
    def identity(self) -> str: ...

    def deliver(self, group: Group, scope: str, now: datetime) -> int:
        """Send the group; returns the messages sent (0 when the sink has nothing to say for it)."""
        ...


@dataclass(frozen=True)
class WebhookSink:
    url: str
    name: str = "webhook"

    @property
    def shown(self) -> str:
        return f"webhook {mask_url(self.url)}"

    @property
    def identity(self) -> str:
        return f"webhook {self.url}"

    def deliver(self, group: Group, scope: str, now: datetime) -> int:
        post_json(self.url, webhook_body(group), self.shown)
        return 1


@dataclass(frozen=True)
class SlackSink:
    url: str
    link_base: str | None = None
    name: str = "slack"

    @property
    def shown(self) -> str:
        return f"slack {mask_url(self.url)}"

    @property
    def identity(self) -> str:
        return f"slack {self.url}"

    def deliver(self, group: Group, scope: str, now: datetime) -> int:
        post_json(self.url, slack_message(group, self.link_base), self.shown)
        return 1


@dataclass(frozen=True)
class PagerDutySink:
    routing_key: str
    url: str = PAGERDUTY_URL
    name: str = "pagerduty"

    @property
    def shown(self) -> str:
        return f"pagerduty {mask_key(self.routing_key)}"

    @property
    def identity(self) -> str:
        return f"pagerduty {self.routing_key} {self.url}"

    def deliver(self, group: Group, scope: str, now: datetime) -> int:
        events = pagerduty_events(group, self.routing_key, scope, now)
        for event in events:
            post_json(self.url, event, self.shown)
        return len(events)


def groups_of(
    triggers: Sequence[Alert],
    repeats: set[str],
    resolves: Sequence[tuple[str, JSONObject]],
    current: Sequence[Alert],
) -> list[Group]:
    """The claimed news, one group per kind (in the order the kinds first appear: most severe first)."""
    groups: dict[str, Group] = {}
    for alert in triggers:
        groups.setdefault(alert.kind, Group(alert.kind)).triggers.append(alert)
    for key, finding in resolves:
        kind = str(finding.get("kind") or key.split(":", 1)[0])
        groups.setdefault(kind, Group(kind)).resolves.append((key, finding))
    for group in groups.values():
        group.repeats = {a.key for a in group.triggers if a.key in repeats}
        group.open = [a for a in current if a.kind == group.kind]
    return list(groups.values())
