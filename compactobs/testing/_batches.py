"""Message Batches on the simulator: create, retrieve, list, cancel, delete, and results as JSON Lines.

The routes, with or without `?beta=true` (the beta namespace sends it):

- `POST /v1/messages/batches` with `{"requests": [{"custom_id": ..., "params": {...}}, ...]}` makes a
  batch `msgbatch_sim_<n>` and answers its `message_batch` object. Duplicate or missing `custom_id`s, or
  an empty `requests`, are a 400.
- `GET /v1/messages/batches` lists batches, newest first (`limit`, default 20; `after_id`; `data`,
  `has_more`, `first_id`, `last_id`).
- `GET /v1/messages/batches/{id}`; `POST .../{id}/cancel`; `DELETE .../{id}` (an ended batch only).
- `GET /v1/messages/batches/{id}/results`: one JSON line per request, in request order, sent with chunked
  transfer encoding and every line split across two chunks (so a reader that assumes whole lines per
  chunk fails as it would on the real API). A 404 while the batch is still in progress, as its
  `results_url` is null then.

Each request's result is decided when the batch is made. `sim.batches.plan(custom_id, outcome)` says it
in advance, for the next batch holding that `custom_id`:

- `Reply(body)`: `succeeded`, with `body` (see `message()`) as the result's `message`, verbatim: give it
  `"service_tier": "batch"` in its usage, as the real API reports for batch results.
- `ErrorReply(status, ...)`: `errored`, with that error (`{"type": "error", "error": {...}, "request_id"}`).
- `"expired"` or `"canceled"`.

An unplanned request is answered like `POST /v1/messages` in simulated conversation mode (the request's
`params`, the create request's `anthropic-beta` header), as `succeeded` with `usage.service_tier` =
`"batch"`; a request that mode rejects is `errored` with that `invalid_request_error`. Batches end at
once (`processing_status: "ended"`, `ended_at` = `created_at`), unless `sim.batches.hold = True`: then
they stay `in_progress` until `sim.batches.end(batch_id)`. Cancelling a batch in progress ends it at
once, with every unplanned result `canceled` (planned ones keep their plan). Queued replies
(`sim.enqueue`) never answer batch routes, and batch results are not booked in the organisation reports.

```python
with Simulator() as sim:
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key")
    sim.batches.plan("a", Reply(message(usage={"input_tokens": 10, "output_tokens": 5,
                                               "service_tier": "batch"})))
    sim.batches.plan("b", ErrorReply(400, message="bad request"))
    sim.batches.plan("c", "expired")
    batch = client.messages.batches.create(requests=[
        {"custom_id": custom_id, "params": {"model": "claude-opus-4-8", "max_tokens": 64,
                                            "messages": [{"role": "user", "content": "hi"}]}}
        for custom_id in ("a", "b", "c", "d")])                       # "d": simulated, succeeded
    for result in client.messages.batches.results(batch.id):
        print(result.custom_id, result.result.type)
```
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Final, Literal

from compactobs._types import JSON, JSONObject
from compactobs.testing._conversation import ConversationEngine, ConversationScenario, SimulationError
from compactobs.testing._replies import ErrorReply, Reply

__all__ = ["BATCHES_ROUTE", "BatchAnswer", "BatchOutcome", "Batches", "encode_answer", "is_batches_route"]

BATCHES_ROUTE: Final = "/v1/messages/batches"
_LIST_LIMIT: Final = 20
_EXPIRY: Final = timedelta(hours=24)

BatchOutcome = Reply | ErrorReply | Literal["expired", "canceled"]
"""What one request of a batch comes to (see the module docstring)."""


def is_batches_route(route: str) -> bool:
    """Whether a request path (without its query) is one of the Message Batches routes."""
    return route == BATCHES_ROUTE or route.startswith(BATCHES_ROUTE + "/")


def _timestamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@dataclass
class _Batch:
    id: str
    created_at: datetime
    results: list[JSONObject]
    """One result line (decoded) per request, in request order."""
    planned: set[str]
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None

    def body(self, base_url: str) -> JSONObject:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if self.ended_at is None:
            counts["processing"] = len(self.results)
        else:
            for line in self.results:
                counts[line["result"]["type"]] += 1
        ended = self.ended_at is not None
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": _timestamp(self.created_at),
            "ended_at": _timestamp(self.ended_at) if self.ended_at is not None else None,
            "expires_at": _timestamp(self.created_at + _EXPIRY),
            "archived_at": None,
            "cancel_initiated_at": (
                _timestamp(self.cancel_initiated_at) if self.cancel_initiated_at is not None else None
            ),
            "results_url": f"{base_url}{BATCHES_ROUTE}/{self.id}/results" if ended else None,
        }


@dataclass(frozen=True)
class _Incoming:
    """One request on a batch route, and what answering it needs from the simulator."""

    route: str
    query: str
    parsed: JSON
    headers: Mapping[str, str]
    engine: ConversationEngine
    scenario: ConversationScenario
    base_url: str


@dataclass(frozen=True)
class BatchAnswer:
    """What the simulator sends back for a batch route: JSON (`body`), or the results' `lines`."""

    status: int
    body: Mapping[str, JSON] | None = None
    lines: list[JSONObject] | None = None


@dataclass
class Batches:
    """The simulator's Message Batches (`Simulator.batches`). Thread-safe."""

    hold: bool = False
    """New batches stay `in_progress` until `end(batch_id)` (default False: they end at once)."""
    _plans: dict[str, BatchOutcome] = field(default_factory=dict)
    _batches: dict[str, _Batch] = field(default_factory=dict)
    _made: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, custom_id: str, outcome: BatchOutcome) -> None:
        """Decide the result of the request `custom_id` in the next batch that holds it."""
        if not isinstance(outcome, (Reply, ErrorReply)) and outcome not in ("expired", "canceled"):
            raise ValueError(f'plan() takes Reply, ErrorReply, "expired" or "canceled", not {outcome!r}')
        with self._lock:
            self._plans[custom_id] = outcome

    def end(self, batch_id: str) -> None:
        """End a batch held in progress (`hold`): its results become readable."""
        with self._lock:
            batch = self._batches[batch_id]
            if batch.ended_at is None:
                batch.ended_at = datetime.now(timezone.utc)

    def clear(self) -> None:
        """Forget every batch and plan (`Simulator.reset`)."""
        with self._lock:
            self._plans.clear()
            self._batches.clear()
            self._made = 0

    # -- serving (called by the simulator, under its lock) --------------------------------------------

    def answer(
        self,
        method: str,
        path: str,
        parsed: JSON,
        headers: Mapping[str, str],
        engine: ConversationEngine,
        scenario: ConversationScenario,
        base_url: str,
    ) -> BatchAnswer:
        """The answer to one request on a batch route (`path` with its query). Never raises."""
        route, _, query = path.partition("?")
        incoming = _Incoming(route.rstrip("/"), query, parsed, headers, engine, scenario, base_url)
        try:
            with self._lock:
                return self._answer(method, incoming)
        except SimulationError as err:
            return _error(err.status, err.message, err.error_type)
        except Exception as err:  # a bug here must reach the test as a response, not a hung connection
            return _error(500, f"simulator error: {err!r}", "api_error")

    def _answer(self, method: str, incoming: _Incoming) -> BatchAnswer:
        route, base_url = incoming.route, incoming.base_url
        parts = route[len(BATCHES_ROUTE) :].strip("/").split("/") if route != BATCHES_ROUTE else []
        if not parts:
            if method == "POST":
                return self._create(incoming)
            if method == "GET":
                return self._list(incoming.query, base_url)
        elif len(parts) <= 2:
            batch = self._batches.get(parts[0])
            if batch is None:
                return _error(404, f"Message batch {parts[0]!r} not found.", "not_found_error")
            action = parts[1] if len(parts) == 2 else ""
            if method == "GET" and action == "":
                return BatchAnswer(200, batch.body(base_url))
            if method == "GET" and action == "results":
                if batch.ended_at is None:
                    return _error(404, f"Results of {batch.id!r} are not ready yet.", "not_found_error")
                return BatchAnswer(200, lines=batch.results)
            if method == "POST" and action == "cancel":
                return BatchAnswer(200, self._cancel(batch).body(base_url))
            if method == "DELETE" and action == "":
                if batch.ended_at is None:
                    raise SimulationError(f"Batch {batch.id!r} is in progress: cancel it first.")
                del self._batches[batch.id]
                return BatchAnswer(200, {"id": batch.id, "type": "message_batch_deleted"})
        return _error(404, f"Not found: {method} {route}", "not_found_error")

    def _create(self, incoming: _Incoming) -> BatchAnswer:
        parsed = incoming.parsed
        requests = parsed.get("requests") if isinstance(parsed, dict) else None
        if not isinstance(requests, list) or not requests:
            raise SimulationError("requests: a non-empty list is required")
        given = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        custom_ids = [c for c in given if isinstance(c, str) and c]
        if len(custom_ids) != len(given):
            raise SimulationError("requests: every request needs a custom_id")
        if len(set(custom_ids)) != len(custom_ids):
            raise SimulationError("requests: custom_id values must be unique within a batch")
        betas = {b.strip() for b in incoming.headers.get("anthropic-beta", "").split(",") if b.strip()}
        batch_scenario = replace(incoming.scenario, service_tier="batch")
        results = []
        planned: set[str] = set()
        for request, custom_id in zip(requests, custom_ids, strict=True):
            outcome = self._plans.pop(custom_id, None)
            if outcome is not None:
                planned.add(custom_id)
                result = _result(outcome)
            else:
                result = _simulated(request.get("params"), betas, incoming.engine, batch_scenario)
            results.append({"custom_id": custom_id, "result": result})
        self._made += 1
        now = datetime.now(timezone.utc)
        batch = _Batch(f"msgbatch_sim_{self._made}", now, results, planned)
        if not self.hold:
            batch.ended_at = now
        self._batches[batch.id] = batch
        return BatchAnswer(200, batch.body(incoming.base_url))

    def _list(self, query: str, base_url: str) -> BatchAnswer:
        options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        try:
            limit = int(options.get("limit", _LIST_LIMIT))
        except ValueError as err:
            raise SimulationError("limit: an integer is required") from err
        newest_first = list(reversed(self._batches.values()))
        after = options.get("after_id")
        if after is not None:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        page = newest_first[: max(limit, 1)]
        return BatchAnswer(
            200,
            {
                "data": [b.body(base_url) for b in page],
                "has_more": len(newest_first) > len(page),
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            },
        )

    @staticmethod
    def _cancel(batch: _Batch) -> _Batch:
        if batch.ended_at is not None:
            return batch
        now = datetime.now(timezone.utc)
        batch.cancel_initiated_at = now
        for line in batch.results:
            if line["custom_id"] not in batch.planned:
                line["result"] = {"type": "canceled"}
        batch.ended_at = now
        return batch


def _error(status: int, message: str, error_type: str) -> BatchAnswer:
    return BatchAnswer(status, {"type": "error", "error": {"type": error_type, "message": message}})


def _result(outcome: BatchOutcome) -> JSONObject:
    if isinstance(outcome, Reply):
        return {"type": "succeeded", "message": copy.deepcopy(dict(outcome.body))}
    if isinstance(outcome, ErrorReply):
        return {"type": "errored", "error": {**outcome.body, "request_id": None}}
    return {"type": outcome}


def _simulated(
    params: JSON, betas: set[str], engine: ConversationEngine, scenario: ConversationScenario
) -> JSONObject:
    if not isinstance(params, dict):
        params = {}
    try:
        return {"type": "succeeded", "message": engine.respond(params, betas, scenario)}
    except SimulationError as err:
        error = {"type": err.error_type, "message": err.message}
        return {"type": "errored", "error": {"type": "error", "error": error, "request_id": None}}


def encode_answer(answer: BatchAnswer, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body bytes) of a batch route's answer: JSON, or the results as chunked JSON Lines
    with every line split across two chunks."""
    if answer.lines is None:
        body = dict(answer.body or {})
        if answer.status >= 400:
            body["request_id"] = request_id
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "content-length": str(len(data))}
        return answer.status, {**headers, "request-id": request_id}, data
    parts = []
    for line in answer.lines:
        data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        half = len(data) // 2
        for piece in (data[:half], data[half:]):
            parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    headers = {"content-type": "application/binary", "transfer-encoding": "chunked", "request-id": request_id}
    return 200, headers, b"".join(parts)
