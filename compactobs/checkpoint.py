"""The pause checkpoint: what to do with a response that stopped at a compaction (`stop_reason:
"compaction"`, from `pause_after_compaction` or the guard's `on_breach="pause"`).

```python
point = compactobs.checkpoint(response, messages, keep=["src/app.py", "TICKET-42"])
messages = point.next_messages(wrap_up=compactobs.guard.spend(conversation_id).breaches != ())
response = client.beta.messages.create(**params, messages=messages)
```

`checkpoint` says what the summary kept: its length (characters, and tokens as billed: the compaction
iteration's output) and, for each string the application names (file paths, error messages, ticket ids),
whether it survived. `next_messages` is the history with the compaction block appended (every block before
it is ignored by the API from then on) and, when something was lost or a wrap-up is asked for, one user
message that carries the lost strings again and the wrap-up request (`compactobs.wrap_up_message`).
Reads SDK models and plain dicts alike; the caller's list is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from compactobs._words import counted
from compactobs.usage import field_of

if TYPE_CHECKING:
    from compactobs._types import JSON, JSONObject, SDKObject
    from compactobs.guard import Breach, GuardError

__all__ = ["Checkpoint", "checkpoint"]


def _as_dict(block: SDKObject) -> JSON:
    """A content block as the API takes it back: SDK models through `to_dict()` (never `model_dump()`,
    whose null fields the API rejects)."""
    to_dict = getattr(block, "to_dict", None)
    return to_dict() if callable(to_dict) else block


@dataclass(frozen=True, repr=False)
class Checkpoint:
    """A paused response's summary, what it kept, and how to go on. Its repr gives sizes, not the history
    (which runs to megabytes)."""

    messages: tuple[SDKObject, ...]
    """The history the paused request sent."""
    blocks: tuple[JSON, ...]
    """The response's content blocks, as dicts to send back."""
    summary: str | None
    """The compaction block's summary (None: the compaction failed, or the summary is encrypted only)."""
    summary_tokens: int | None
    """The summary's length in tokens, as billed (the compaction iteration's output tokens)."""
    kept: dict[str, bool] = field(default_factory=dict)
    """For each string the application named: whether the summary still contains it."""

    def __repr__(self) -> str:
        return (
            f"Checkpoint({counted(len(self.messages), 'message')}, {counted(len(self.blocks), 'block')}, "
            f"summary of {counted(self.summary_chars, 'character')} and {self.summary_tokens} tokens, "
            f"kept {sum(self.kept.values())} of {len(self.kept)} named, missing {list(self.missing)!r})"
        )

    @property
    def summary_chars(self) -> int:
        return len(self.summary or "")

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(text for text, found in self.kept.items() if not found)

    def next_messages(
        self, *, wrap_up: bool | Breach | GuardError = False, note: str | None = None
    ) -> list[SDKObject]:
        """The next request's messages: the history, the compaction block, and a user message carrying what
        the summary lost (`missing`), the application's `note`, and the wrap-up request when `wrap_up` is
        true (or a Breach / GuardError, whose kind picks the wording)."""
        following: list[SDKObject] = [*self.messages, {"role": "assistant", "content": list(self.blocks)}]
        parts: list[JSONObject] = []
        if self.missing:
            lines = "\n".join(f"- {text}" for text in self.missing)
            parts.append(
                {
                    "type": "text",
                    "text": f"Context from before the summary that it left out, still relevant:\n{lines}",
                }
            )
        if note:
            parts.append({"type": "text", "text": note})
        if wrap_up:
            # The guard (asyncio, the rules) is imported by a wrap-up, not with the package.
            from compactobs.guard import Breach, GuardError, wrap_up_message

            breach = wrap_up if isinstance(wrap_up, (Breach, GuardError)) else None
            parts.extend(wrap_up_message(breach)["content"])
        if parts:
            following.append({"role": "user", "content": parts})
        return following


def checkpoint(response: SDKObject, messages: Sequence[SDKObject], *, keep: Sequence[str] = ()) -> Checkpoint:
    """Look at a response that stopped at a compaction: the summary, which of `keep` survived in it, and
    (`next_messages`) the next request's history. `messages` is what the paused request sent."""
    blocks = tuple(_as_dict(block) for block in field_of(response, "content") or ())
    summary = None
    for block in blocks:
        if field_of(block, "type") == "compaction":
            text = field_of(block, "content")
            summary = text if isinstance(text, str) else None
    summary_tokens = None
    for entry in field_of(field_of(response, "usage"), "iterations") or ():
        if field_of(entry, "type") == "compaction":
            output = field_of(entry, "output_tokens")
            if isinstance(output, int):
                summary_tokens = (summary_tokens or 0) + output
    kept = {text: summary is not None and text in summary for text in keep}
    return Checkpoint(tuple(messages), blocks, summary, summary_tokens, kept)
