"""`compactobs import claude-code`: Claude Code's transcripts (`projects/**/*.jsonl`) as priced calls.

One call per assistant message that carries usage, priced by compactobs' own recorder with the response's
`usage` as the API returned it, `usage.iterations` included (a compaction iteration is billed, which
tools reading only the top-level usage miss). The spans go through the store's processor and spool, like
every other way in.

- **Snapshots**: streaming writes a message several times; within one read, the snapshot kept for
  (message id, request id) is the most complete one (the most output tokens, then the last). A later run
  that reads a more complete snapshot of a call stored before (more output tokens) replaces the stored one,
  in the store's own write (`compactobs.store.writer.supersede`: one transaction, or the spool); never a
  call with as many or more (`collect`'s copy, from Claude Code's final `api_request`, is complete).
- **Subagents**: a sidechain message (`isSidechain`, from a subagent's `agent-<id>.jsonl`) is tagged with
  its agent: `agent` (the agent type from `agent-<id>.meta.json` beside it, when it says one) and `agent_id`.
- **Compactions**: a `compact_boundary` marker (trigger, `preTokens`, `postTokens`) is a compaction of the
  session, keyed as `collect` keys a `compaction` event it cannot pair with a call
  (`collect.claude_code.compaction_key`), so `report anomalies` judges it by the same loop rule. A marker
  right after a call that billed a compaction iteration is that call's compaction, not counted again; so
  is one `collect` already put on its compact call (same session, trigger and context after): the store's
  write leaves it out (`compactobs.store.writer.supersede`), so an unreachable store only delays it.
- **Once**: a call's ids derive from its request id, as `collect` derives them from Claude Code's
  `api_request` event, so a call both paths see is stored once (the store is keyed by span id).
- **Incremental**: each file's read offset (of its last whole line) is kept in a state file beside the
  store's spool; a second run reads only what was appended. A file that shrank is read again from the
  start (what was stored stays stored once).
- **Malformed lines** are counted and skipped, never fatal.
- No text: only ids, models, times and usage are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.trace.export import SpanExportResult

from compactobs.collect.claude_code import (
    CallRecorder,
    call_key,
    compaction_key,
    compaction_observation,
)
from compactobs.store.exporter import SqlSpanExporter, spool_root
from compactobs.store.processor import StoreSpanProcessor
from compactobs.store.spool import spool_key
from compactobs.untrusted import bounded_tags
from compactobs.usage import CallObservation, RequestFacts, normalise_usage

__all__ = ["ImportResult", "default_paths", "import_transcripts", "transcript_calls"]

SYNTHETIC_MODEL: Final = "<synthetic>"
"""Claude Code's own stand-in messages (an error shown as a reply): no API call, not imported."""


def default_paths() -> list[Path]:
    """`$CLAUDE_CONFIG_DIR/projects`, else `~/.claude/projects`."""
    config = os.environ.get("CLAUDE_CONFIG_DIR", "").strip()
    base = Path(config).expanduser() if config else Path.home() / ".claude"
    return [base / "projects"]


@dataclass
class ImportResult:
    files: int = 0
    lines: int = 0
    """Lines read (new ones only, on a later run)."""
    calls: int = 0
    """Calls handed to the store (a call stored before, by `collect` or an earlier run, is kept once)."""
    malformed: int = 0
    warnings: list[str] = field(default_factory=list)


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.jsonl"))
        elif path.exists():
            yield path


def _time_ns(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1_000_000) * 1000
    except ValueError:
        return None


def _snapshot_rank(message: dict[str, Any]) -> int:
    usage = message.get("usage")
    output = usage.get("output_tokens") if isinstance(usage, dict) else None
    return output if isinstance(output, int) else -1


def _agent_tags(entry: dict[str, Any], agents: dict[str, str | None]) -> tuple[tuple[str, str], ...]:
    """A sidechain entry's agent tags: `agent` (its type, from `agents`: agent id -> type) and `agent_id`."""
    if entry.get("isSidechain") is not True:
        return ()
    agent_id = entry.get("agentId")
    if not isinstance(agent_id, str) or not agent_id:
        return ()
    return tuple(bounded_tags([("agent", agents.get(agent_id)), ("agent_id", agent_id)]).items())


def _boundary(entry: dict[str, Any], tags: tuple[tuple[str, str], ...], model: str | None) -> Any:
    """(key, observation) of a `compact_boundary` marker, None when it carries no figures."""
    meta = entry.get("compactMetadata")
    if not isinstance(meta, dict):
        return None
    pre, post = meta.get("preTokens"), meta.get("postTokens")
    if not isinstance(pre, int) or isinstance(pre, bool) or pre < 0:
        return None
    post = post if isinstance(post, int) and not isinstance(post, bool) and post >= 0 else None
    trigger: str = meta["trigger"] if meta.get("trigger") in ("auto", "manual") else "unknown"
    session = entry.get("sessionId") if isinstance(entry.get("sessionId"), str) else None
    at = _time_ns(entry.get("timestamp")) or 0
    observation = compaction_observation(session or None, at, trigger, pre, post, True, tags, model)
    return compaction_key(session or None, trigger, pre, post), observation


def transcript_calls(
    lines: Iterable[bytes], result: ImportResult, agents: dict[str, str | None] | None = None
) -> list[tuple[str, CallObservation]]:
    """(key, observation) for every assistant message with usage in `lines`, one per (message id, request
    id), the most complete snapshot kept, and for every compaction boundary. `agents`: agent id -> type, for
    sidechain messages. Malformed lines are counted in `result`."""
    agents = agents or {}
    kept: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    boundaries: list[tuple[str, CallObservation]] = []
    last_model: str | None = None
    server_compacted = False
    for raw in lines:
        result.lines += 1
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError):
            result.malformed += 1
            continue
        if not isinstance(entry, dict):
            result.malformed += 1
            continue
        message = entry.get("message")
        if entry.get("type") == "system" and entry.get("subtype") == "compact_boundary":
            boundary = _boundary(entry, _agent_tags(entry, agents), last_model)
            # After a call that billed a compaction iteration, the marker is that compaction: counted once.
            if boundary is not None and not server_compacted:
                boundaries.append(boundary)
            server_compacted = False
            continue
        if entry.get("type") != "assistant" or not isinstance(message, dict):
            continue
        if not isinstance(message.get("usage"), dict) or message.get("model") == SYNTHETIC_MODEL:
            continue
        message_id = message.get("id")
        request_id = entry.get("requestId")
        if not isinstance(message_id, str) or not message_id:
            result.malformed += 1
            continue
        ident = (message_id, request_id if isinstance(request_id, str) else "")
        if isinstance(message.get("model"), str):
            last_model = message["model"]
        steps = message["usage"].get("iterations")
        server_compacted = isinstance(steps, list) and any(
            isinstance(step, dict) and step.get("type") == "compaction" for step in steps
        )
        rank = _snapshot_rank(message)
        if ident not in kept or rank >= kept[ident][0]:
            kept[ident] = (rank, entry)
    calls = []
    for (message_id, request_id), (_, entry) in kept.items():
        message = entry["message"]
        model = message.get("model") if isinstance(message.get("model"), str) else None
        at = _time_ns(entry.get("timestamp")) or 0
        session = entry.get("sessionId")
        stop = message.get("stop_reason")
        observation = CallObservation(
            request=RequestFacts(model=model),
            start_ns=at,
            end_ns=at,
            request_id=request_id or None,
            response_id=message_id,
            response_model=model,
            stop_reason=stop if isinstance(stop, str) else None,
            usage=normalise_usage(message["usage"], model),
            conversation_id=session if isinstance(session, str) and session else None,
            provider="anthropic",
            status_code=200,
            tags=_agent_tags(entry, agents),
        )
        key = call_key(request_id or None, None, None) if request_id else f"message\x00{message_id}"
        calls.append((key, observation))
    return calls + boundaries


class _Offsets:
    """Per-file read offsets, in a JSON file keyed by the store (a second store starts from zero)."""

    def __init__(self, database_url: str, spool_dir: str | os.PathLike[str] | None) -> None:
        self.path = spool_root(spool_dir).parent / "imports" / f"claude-code-{spool_key(database_url)}.json"
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        self.offsets: dict[str, int] = {k: v for k, v in loaded.items() if isinstance(v, int)}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.offsets, indent=0, sort_keys=True), encoding="utf-8")
        temporary.replace(self.path)


def _new_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    """Whole lines after `offset` (from 0 when the file shrank), and the offset after the last whole line."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size < offset:
            offset = 0
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next run
    return [line for line in data[:end].split(b"\n") if line.strip()], offset + end


def _agents_beside(path: Path) -> dict[str, str | None]:
    """For a subagent's transcript (`agent-<id>.jsonl`): {id: its agent type}, from `agent-<id>.meta.json`
    beside it (None when that file does not say one); {} for another file."""
    if not (path.name.startswith("agent-") and path.name.endswith(".jsonl")):
        return {}
    agent_id = path.name[len("agent-") : -len(".jsonl")]
    try:
        meta = json.loads(path.with_name(f"agent-{agent_id}.meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        meta = None
    kind = None
    if isinstance(meta, dict):
        kind = next((meta[k] for k in _AGENT_TYPE_KEYS if isinstance(meta.get(k), str) and meta[k]), None)
    return {agent_id: kind}


_AGENT_TYPE_KEYS: Final = ("agentType", "subagent_type", "agent_type")


def import_transcripts(
    database_url: str,
    paths: Iterable[Path] | None = None,
    *,
    spool_dir: str | os.PathLike[str] | None = None,
    recorder: CallRecorder | None = None,
) -> ImportResult:
    """Import what is new in the transcripts under `paths` (default `default_paths()`) into the store.
    Offsets are saved only once the calls are committed or spooled."""
    result = ImportResult()
    offsets = _Offsets(database_url, spool_dir)
    recorder = recorder or CallRecorder()
    processor = StoreSpanProcessor(SqlSpanExporter(database_url, spool_dir=spool_dir))
    try:
        for path in _files(paths if paths is not None else default_paths()):
            name = str(path.resolve())
            try:
                lines, end = _new_lines(path, offsets.offsets.get(name, 0))
            except OSError as err:
                result.warnings.append(f"cannot read {path}: {err.strerror or err}")
                continue
            result.files += 1
            calls = transcript_calls(lines, result, _agents_beside(path))
            if calls:
                # The store's own write (compactobs.store.writer.supersede) replaces a stored copy less
                # complete than this one, and leaves out a boundary `collect` already put on its call: in
                # one transaction, or when the spool is replayed. Nothing is read from the store here.
                spans = recorder.spans(calls)
                if processor.submit(spans) is not SpanExportResult.SUCCESS:
                    result.warnings.append(f"{path}: the store could not keep its calls; run again")
                    continue
                result.calls += len(calls)
            offsets.offsets[name] = end
    finally:
        processor.shutdown()
    offsets.save()
    if result.malformed:
        result.warnings.append(f"{result.malformed} malformed line(s) skipped")

    return result
