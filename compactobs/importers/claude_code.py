"""`compactobs import claude-code`: Claude Code's transcripts (`projects/**/*.jsonl`) as priced calls.

One call per assistant message that carries usage, priced by compactobs' own recorder with the response's
`usage` as the API returned it, `usage.iterations` included (a compaction iteration is billed, which
tools reading only the top-level usage miss). The spans go through the store's processor and spool, like
every other way in.

- **Snapshots**: streaming writes a message several times; within one read, the snapshot kept for
  (message id, request id) is the most complete one (the most output tokens, then the last).
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

from compactobs.collect.claude_code import CallRecorder, call_key
from compactobs.store.exporter import SqlSpanExporter, spool_root
from compactobs.store.processor import StoreSpanProcessor
from compactobs.store.spool import spool_key
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


def transcript_calls(lines: Iterable[bytes], result: ImportResult) -> list[tuple[str, CallObservation]]:
    """(key, observation) for every assistant message with usage in `lines`, one per (message id, request
    id), the most complete snapshot kept. Malformed lines are counted in `result`."""
    kept: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
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
        )
        key = call_key(request_id or None, None, None) if request_id else f"message\x00{message_id}"
        calls.append((key, observation))
    return calls


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
            calls = transcript_calls(lines, result)
            if calls:
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
