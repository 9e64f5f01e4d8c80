"""Platform clients (Bedrock, Bedrock Mantle, Vertex, Foundry, Claude on AWS and on Google Cloud; sync and
async) through the real SDK over real HTTP against the simulator's platform routes, into the store on
SQLite and PostgreSQL.

Costs are worked by hand from Anthropic's list prices for claude-opus-4-6: $5 input, $25 output, $0.50
cache read, $6.25 cache write (5 minutes) per MTok; Bedrock and Vertex regional and multi-region endpoints
bill Claude 4.5 and later at list x 1.1, global endpoints at list.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from genai_prices import data_snapshot
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

import compactobs
from compactobs import semconv as t
from compactobs import store
from compactobs.platforms import endpoint_of, model_of
from compactobs.pricing import Pricer
from compactobs.testing import Reply, Simulator, message
from tests.cli import run

BETAS = ["compact-2026-01-12"]
USAGE = {
    "input_tokens": 1_000,
    "output_tokens": 100,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
    "iterations": [
        {"type": "compaction", "input_tokens": 180_000, "output_tokens": 3_500},
        {"type": "message", "input_tokens": 1_000, "output_tokens": 100},
    ],
}
# Billed at list: (180,000 + 1,000) x $5/M + (3,500 + 100) x $25/M = $0.905 + $0.09 = $0.995.
LIST_COST = Decimal("0.995")
# A regional endpoint, list x 1.1: $0.995 x 1.1 = $1.0945.
REGIONAL_COST = Decimal("1.0945")

# (client kind, the model id the application sends, provider, region, cost)
PLATFORMS: dict[str, tuple[str, str, str | None, Decimal]] = {
    # a Bedrock US geographic (multi-region) inference profile: regional rates
    "bedrock": ("us.anthropic.claude-opus-4-6-v1:0", "aws.bedrock", "us-east-1", REGIONAL_COST),
    # a Bedrock global profile, requested from eu-west-1: list rates, region as the client targets it
    "bedrock-global": ("global.anthropic.claude-opus-4-6-v1:0", "aws.bedrock", "eu-west-1", LIST_COST),
    # Bedrock Mantle takes first-party ids: nothing says the endpoint, priced at list
    "mantle": ("claude-opus-4-6", "aws.bedrock", "us-west-2", LIST_COST),
    # a Vertex region: regional rates
    "vertex": ("claude-opus-4-6@20260205", "gcp.vertex_ai", "us-east5", REGIONAL_COST),
    # the Vertex global endpoint: list rates
    "vertex-global": ("claude-opus-4-6", "gcp.vertex_ai", "global", LIST_COST),
    "foundry": ("claude-opus-4-6", "azure.ai.foundry", None, LIST_COST),
    # Anthropic's own API through a cloud's gateway: first-party, list rates
    "aws": ("claude-opus-4-6", "anthropic", "us-east-2", LIST_COST),
    "google-cloud": ("claude-opus-4-6", "anthropic", "europe-west4", LIST_COST),
}


def make_client(kind: str, base_url: str, asynchronous: bool = False) -> Any:
    """A platform client of the installed SDK pointed at the simulator, with credentials that never leave
    the machine (Bedrock: static keys, signed locally with SigV4, or an API key; Vertex: an access token)."""
    a = anthropic
    if kind == "bedrock":
        cls = a.AsyncAnthropicBedrock if asynchronous else a.AnthropicBedrock
        return cls(
            base_url=base_url, aws_region="us-east-1", aws_access_key="AKIDEXAMPLE", aws_secret_key="s"
        )
    if kind == "bedrock-global":
        cls = a.AsyncAnthropicBedrock if asynchronous else a.AnthropicBedrock
        return cls(base_url=base_url, aws_region="eu-west-1", api_key="bedrock-key")
    if kind == "mantle":
        cls = a.AsyncAnthropicBedrockMantle if asynchronous else a.AnthropicBedrockMantle
        return cls(base_url=f"{base_url}/anthropic", aws_region="us-west-2", api_key="mantle-key")
    if kind in ("vertex", "vertex-global"):
        cls = a.AsyncAnthropicVertex if asynchronous else a.AnthropicVertex
        region = "us-east5" if kind == "vertex" else "global"
        return cls(base_url=base_url, region=region, project_id="proj", access_token="token")
    if kind == "foundry":
        cls = a.AsyncAnthropicFoundry if asynchronous else a.AnthropicFoundry
        return cls(base_url=f"{base_url}/anthropic", api_key="foundry-key")
    if kind == "aws":
        cls = a.AsyncAnthropicAWS if asynchronous else a.AnthropicAWS
        return cls(base_url=base_url, aws_region="us-east-2", api_key="k", workspace_id="wrkspc")
    assert kind == "google-cloud"
    cls = a.AsyncAnthropicGoogleCloud if asynchronous else a.AnthropicGoogleCloud
    return cls(base_url=base_url, location="europe-west4", token_provider=lambda: "token", workspace_id="w")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


@pytest.fixture
def metrics() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def recording(database_url: str, metrics: InMemoryMetricReader, data_home: Path) -> Iterator[str]:
    """compactobs.instrument() into the store at `database_url` (SQLite, then PostgreSQL); spools under
    the test's own data directory."""
    store.upgrade_database(database_url)
    compactobs.instrument(
        database_url, tracer_provider=TracerProvider(), meter_provider=MeterProvider(metric_readers=[metrics])
    )
    try:
        yield database_url
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()


def stored_calls(url: str) -> list[dict[str, Any]]:
    compactobs.flush()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT provider, region, request_model, response_model, stream, cost_usd, priced, "
                    "status, request_id, compactions_count FROM calls ORDER BY start_ms, call_id"
                )
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def args(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}


def queue(sim: Simulator, model: str, count: int) -> None:
    # The response names the model as the request sent it (a Bedrock id stays a Bedrock id).
    for _ in range(count):
        sim.enqueue(
            Reply(
                message(
                    model=model,
                    content=[{"type": "compaction", "content": "Summary."}, {"type": "text", "text": "Hi."}],
                    usage=USAGE,
                )
            )
        )


def call_every_style(client: Any, model: str) -> None:
    """create, messages.stream, create(stream=True), GA and beta."""
    client.messages.create(**args(model))
    with client.messages.stream(**args(model)) as stream:
        stream.get_final_message()
    for _ in client.messages.create(**args(model), stream=True):
        pass
    client.beta.messages.create(**args(model), betas=BETAS)
    with client.beta.messages.stream(**args(model), betas=BETAS) as stream:
        for _ in stream:
            pass


async def call_every_style_async(client: Any, model: str) -> None:
    await client.messages.create(**args(model))
    async with client.messages.stream(**args(model)) as stream:
        await stream.get_final_message()
    async for _ in await client.messages.create(**args(model), stream=True):
        pass
    await client.beta.messages.create(**args(model), betas=BETAS)
    async with client.beta.messages.stream(**args(model), betas=BETAS) as stream:
        async for _ in stream:
            pass


STREAMED = [False, True, True, False, True]
"""`stream` of each call of `call_every_style`, in order."""


def assert_recorded(rows: list[dict[str, Any]], kind: str) -> None:
    model, provider, region, cost = PLATFORMS[kind]
    assert len(rows) == len(STREAMED), rows
    for row, streamed in zip(rows, STREAMED, strict=True):
        assert row["provider"] == provider and row["region"] == region
        assert row["request_model"] == model  # as sent
        assert row["response_model"] == model_of(model) and row["response_model"].startswith(
            "claude-opus-4-6"
        )
        assert bool(row["stream"]) is streamed and row["status"] != "ERROR"
        assert row["priced"] and Decimal(str(row["cost_usd"])) == cost
        assert row["compactions_count"] == 1
        assert row["request_id"] is not None and row["request_id"].startswith("req_sim_")


@pytest.mark.parametrize("kind", list(PLATFORMS))
def test_every_platform_client_records_every_call_style(recording: str, sim: Simulator, kind: str) -> None:
    model = PLATFORMS[kind][0]
    queue(sim, model, len(STREAMED))
    call_every_style(make_client(kind, sim.base_url), model)
    assert_recorded(stored_calls(recording), kind)


@pytest.mark.parametrize("kind", list(PLATFORMS))
def test_every_async_platform_client_records_every_call_style(
    recording: str, sim: Simulator, kind: str
) -> None:
    model = PLATFORMS[kind][0]
    queue(sim, model, len(STREAMED))

    async def main() -> None:
        client = make_client(kind, sim.base_url, asynchronous=True)
        await call_every_style_async(client, model)
        await client.close()

    asyncio.run(main())
    assert_recorded(stored_calls(recording), kind)


def test_every_client_class_of_the_sdk_is_covered() -> None:
    """Every client class the SDK exports that serves Messages, sync and async, is in CLIENT_CLASSES."""
    from compactobs.instrument.platforms import CLIENT_CLASSES

    exported = set()
    for name in dir(anthropic):
        cls = getattr(anthropic, name)
        if not (name.startswith(("Anthropic", "AsyncAnthropic")) and isinstance(cls, type)):
            continue
        # A `messages` resource: an attribute (first-party and its subclasses) or an annotation (platforms).
        if hasattr(cls, "messages") or "messages" in getattr(cls, "__annotations__", {}):
            exported.add(cls)
    assert len(exported) == 14  # Anthropic, Bedrock, Bedrock Mantle, Vertex, Foundry, AWS, Google Cloud x 2
    assert exported == set(CLIENT_CLASSES)


def test_requests_reach_the_platform_routes(recording: str, sim: Simulator) -> None:
    """What went over the wire is the platform's own shape: the clients were not pointed at /v1/messages."""
    for kind in ("bedrock", "vertex"):
        model = PLATFORMS[kind][0]
        queue(sim, model, 2)
        client = make_client(kind, sim.base_url)
        client.messages.create(**args(model))
        for _ in client.beta.messages.create(**args(model), betas=BETAS, stream=True):
            pass
    paths = [request.path for request in sim.requests]
    assert paths == [
        "/model/us.anthropic.claude-opus-4-6-v1:0/invoke",
        "/model/us.anthropic.claude-opus-4-6-v1:0/invoke-with-response-stream",
        "/projects/proj/locations/us-east5/publishers/anthropic/models/claude-opus-4-6@20260205:rawPredict",
        "/projects/proj/locations/us-east5/publishers/anthropic/models/claude-opus-4-6@20260205"
        ":streamRawPredict",
    ]
    bedrock_stream = sim.requests[1]
    assert bedrock_stream.body["anthropic_beta"] == BETAS  # where the SDK puts the beta for Bedrock
    assert bedrock_stream.headers["authorization"].startswith("AWS4-HMAC-SHA256")  # signed locally
    rows = stored_calls(recording)
    assert [row["provider"] for row in rows] == ["aws.bedrock"] * 2 + ["gcp.vertex_ai"] * 2


def test_model_ids_are_normalised_to_the_model() -> None:
    cases = {
        "anthropic.claude-opus-4-6-v1:0": ("claude-opus-4-6", "regional"),
        "anthropic.claude-opus-4-6-v1": ("claude-opus-4-6", "regional"),
        "us.anthropic.claude-opus-4-6-v1:0": ("claude-opus-4-6", "multi-region"),
        "eu.anthropic.claude-sonnet-4-5-20250929-v1:0": ("claude-sonnet-4-5-20250929", "multi-region"),
        "apac.anthropic.claude-3-5-sonnet-20241022-v2:0": ("claude-3-5-sonnet-20241022", "multi-region"),
        "us-gov.anthropic.claude-haiku-4-5-20251001-v1:0": ("claude-haiku-4-5-20251001", "multi-region"),
        "global.anthropic.claude-opus-4-6-v1:0": ("claude-opus-4-6", "global"),
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.anthropic.claude-opus-4-8-v1:0": (
            "claude-opus-4-8",
            "global",
        ),
        # an application inference profile names no model: kept, and its endpoint is not known
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3": (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            None,
        ),
        "claude-opus-4-6": ("claude-opus-4-6", None),
    }
    for model_id, (model, endpoint) in cases.items():
        assert model_of(model_id) == model, model_id
        assert endpoint_of("aws.bedrock", "us-east-1", model_id) == endpoint, model_id
    assert model_of("claude-sonnet-4-5@20250929") == "claude-sonnet-4-5-20250929"
    assert model_of("claude-3-5-sonnet-v2@20241022") == "claude-3-5-sonnet-20241022"
    assert [endpoint_of("gcp.vertex_ai", region, "claude-opus-4-6") for region in ("global", "us", "eu")] == [
        "global",
        "multi-region",
        "multi-region",
    ]
    assert endpoint_of("gcp.vertex_ai", "us-east5", "claude-opus-4-6") == "regional"
    assert endpoint_of("azure.ai.foundry", None, "claude-opus-4-6") is None
    assert endpoint_of("anthropic", "us-east-2", "us.anthropic.claude-opus-4-6-v1:0") is None


CACHED_USAGE = {
    "input_tokens": 10_000,
    "output_tokens": 2_000,
    "cache_read_input_tokens": 50_000,
    "cache_creation_input_tokens": 4_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 4_000, "ephemeral_1h_input_tokens": 0},
}


def test_regional_premium_by_hand(recording: str, sim: Simulator) -> None:
    """The same tokens through a Bedrock `us.` profile, a `global.` profile, an in-region id, a Vertex
    multi-region, and an earlier model in-region (no premium before the 4.5 models)."""
    bedrock = make_client("bedrock", sim.base_url)
    vertex_us = anthropic.AnthropicVertex(
        base_url=sim.base_url, region="us", project_id="p", access_token="t"
    )
    sent = [
        (bedrock, "us.anthropic.claude-opus-4-6-v1:0"),
        (bedrock, "global.anthropic.claude-opus-4-6-v1:0"),
        (bedrock, "anthropic.claude-opus-4-6-v1:0"),
        (vertex_us, "claude-opus-4-6"),
        (bedrock, "anthropic.claude-opus-4-1-20250805-v1:0"),
    ]
    for client, model in sent:
        sim.enqueue(Reply(message(model=model, usage=CACHED_USAGE)))
        client.messages.create(**args(model))
    costs = [Decimal(str(row["cost_usd"])) for row in stored_calls(recording)]
    # claude-opus-4-6 at list: 10,000 x $5/M = $0.05; 2,000 x $25/M = $0.05; 50,000 x $0.50/M = $0.025;
    # 4,000 x $6.25/M = $0.025; total $0.15. Regional: $0.15 x 1.1 = $0.165.
    # claude-opus-4-1 ($15, $75, $1.50, $18.75 per MTok), no premium: $0.15 + $0.15 + $0.075 + $0.075 = $0.45.
    assert costs == [Decimal("0.165"), Decimal("0.15"), Decimal("0.165"), Decimal("0.165"), Decimal("0.45")]


def test_the_regional_rule_agrees_with_genai_prices_aws_table() -> None:
    """Every Claude model of genai-prices' AWS table with a `regional.` entry: the rule applied to the
    first-party list price gives that entry's input and output rates (where genai-prices can price the
    first-party model)."""
    from dataclasses import replace
    from datetime import datetime, timezone

    from compactobs.usage import normalise_usage

    snapshot = data_snapshot.get_snapshot()
    aws = next(provider for provider in snapshot.providers if provider.id == "aws")
    pricer = Pricer()
    now = datetime.now(timezone.utc)
    checked = 0
    for entry in aws.models:
        if not entry.id.startswith("regional.anthropic.claude-"):
            continue
        prices = entry.prices
        if not isinstance(getattr(prices, "input_mtok", None), Decimal):
            continue  # tiered or dated entries: not a single rate to compare
        bedrock_id = entry.id.removeprefix("regional.")
        # 100,000 tokens: under every long-context tier; a rate per MTok is then 10 x the cost.
        usage = normalise_usage({"input_tokens": 100_000, "output_tokens": 100_000}, bedrock_id)
        if not pricer.known_model(usage.response_model or "", now):
            continue
        regional = pricer.price_call(replace(usage, provider="aws.bedrock", endpoint="regional"), now)
        assert regional.input_usd * 10 == prices.input_mtok, entry.id
        assert regional.output_usd * 10 == prices.output_mtok, entry.id
        checked += 1
    assert checked >= 20  # 25 with genai-prices 0.2.5: Claude 3 to 5.5, with and without the premium


def test_report_cost_by_provider(recording: str, sim: Simulator) -> None:
    for kind in ("bedrock", "bedrock-global", "vertex", "foundry"):
        model = PLATFORMS[kind][0]
        queue(sim, model, 1)
        make_client(kind, sim.base_url).messages.create(**args(model))
    first_party = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    queue(sim, "claude-opus-4-6", 1)
    first_party.messages.create(**args("claude-opus-4-6"))
    compactobs.flush()
    code, out, err = run("--db", recording, "report", "cost", "--by", "provider", "--format", "json")
    assert code == 0, err
    rows = {row["provider"]: row for row in json.loads(out)["rows"]}
    # aws.bedrock: a us. profile ($1.0945) and a global. one ($0.995); the others one call at list ($0.995),
    # Vertex us-east5 at regional ($1.0945).
    assert {name: (row["calls"], Decimal(str(row["cost_usd"]))) for name, row in rows.items()} == {
        "aws.bedrock": (2, Decimal("2.0895")),
        "gcp.vertex_ai": (1, Decimal("1.0945")),
        "azure.ai.foundry": (1, Decimal("0.995")),
        "anthropic": (1, Decimal("0.995")),
    }
    code, out, err = run("--db", recording, "report", "cache", "--by", "provider", "--format", "json")
    assert code == 0, err
    assert {row["provider"]: row["calls"] for row in json.loads(out)["rows"]} == {
        "aws.bedrock": 2,
        "gcp.vertex_ai": 1,
        "azure.ai.foundry": 1,
        "anthropic": 1,
    }


def test_provider_on_spans_and_metrics(sim: Simulator) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    compactobs.instrument(
        tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader]), store=False
    )
    try:
        model = PLATFORMS["bedrock"][0]
        queue(sim, model, 1)
        make_client("bedrock", sim.base_url).messages.create(**args(model))
        compactobs.flush()
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()
    finished = spans.get_finished_spans()
    assert finished and all((s.attributes or {})[t.PROVIDER_NAME] == "aws.bedrock" for s in finished)
    call = next(s for s in finished if (s.attributes or {})[t.SPAN_KIND] == t.SPAN_KIND_CALL)
    assert (call.attributes or {})[t.CLOUD_REGION] == "us-east-1"
    data = reader.get_metrics_data()
    assert data is not None
    providers = {
        point.attributes.get(t.PROVIDER_NAME)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == t.INSTRUMENTATION_SCOPE
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    assert providers == {"aws.bedrock"}


def test_bedrock_stream_read_from_bytes_under_the_sdk_span(sim: Simulator) -> None:
    """A Bedrock client that keeps the SDK's own span: compactobs reads the AWS event stream bytes."""
    ours, sdk = InMemorySpanExporter(), InMemorySpanExporter()
    provider, sdk_provider = TracerProvider(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ours))
    sdk_provider.add_span_processor(SimpleSpanProcessor(sdk))
    compactobs.instrument(tracer_provider=provider, store=False)
    try:
        model = PLATFORMS["bedrock"][0]
        client = anthropic.AnthropicBedrock(
            base_url=sim.base_url,
            aws_region="us-east-1",
            api_key="k",
            open_telemetry={"traces": True, "tracer_provider": sdk_provider},
        )
        queue(sim, model, 1)
        for _ in client.messages.create(**args(model), stream=True):
            pass
        compactobs.flush()
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()
    assert len(sdk.get_finished_spans()) == 1
    call = next(s for s in ours.get_finished_spans() if (s.attributes or {})[t.SPAN_KIND] == t.SPAN_KIND_CALL)
    attributes = call.attributes or {}
    assert t.ERROR_TYPE not in attributes
    assert attributes[t.COST_USD] == pytest.approx(float(REGIONAL_COST), abs=1e-12)


def test_an_existing_platform_client_is_instrumented(recording: str, sim: Simulator) -> None:
    compactobs.uninstrument()
    client = make_client("vertex", sim.base_url)  # made before instrument()
    compactobs.instrument()
    model = PLATFORMS["vertex"][0]
    queue(sim, model, 1)
    client.messages.create(**args(model))
    assert [row["provider"] for row in stored_calls(recording)] == ["gcp.vertex_ai"]


def test_explicit_middleware_on_a_bedrock_client(sim: Simulator, sqlite_url: str, data_home: Path) -> None:
    compactobs.configure(sqlite_url, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    try:
        client = anthropic.AnthropicBedrock(
            base_url=sim.base_url,
            aws_region="ap-southeast-2",
            api_key="k",
            middleware=[compactobs.Middleware()],
        )
        model = "apac.anthropic.claude-opus-4-6-v1:0"
        queue(sim, model, 1)
        with client.messages.stream(**args(model)) as stream:
            stream.get_final_message()
        rows = stored_calls(sqlite_url)
    finally:
        compactobs.shutdown()
    assert [(row["provider"], row["region"], Decimal(str(row["cost_usd"]))) for row in rows] == [
        ("aws.bedrock", "ap-southeast-2", REGIONAL_COST)
    ]


def test_raw_responses_and_the_tool_runner_on_platform_clients(recording: str, sim: Simulator) -> None:
    @anthropic.beta_tool
    def noop() -> str:
        """Does nothing."""
        return "done"

    for kind in ("bedrock", "vertex"):
        model = PLATFORMS[kind][0]
        client = make_client(kind, sim.base_url)
        queue(sim, model, 3)
        client.messages.with_raw_response.create(**args(model)).parse()
        with client.messages.with_streaming_response.create(**args(model)) as response:
            response.read()
        runner = client.beta.messages.tool_runner(**args(model), tools=[noop])
        runner.until_done()  # the queued reply asks for no tool: one call
    rows = stored_calls(recording)
    assert [(row["provider"], Decimal(str(row["cost_usd"]))) for row in rows] == [
        ("aws.bedrock", REGIONAL_COST)
    ] * 3 + [("gcp.vertex_ai", REGIONAL_COST)] * 3


def test_reprice_and_pricing_check_keep_the_platform_terms(recording: str, sim: Simulator) -> None:
    """Re-pricing stored platform calls reads their provider, region and model as sent: the regional
    premium stays; `pricing check` knows the platform ids the store holds."""
    for kind in ("bedrock", "bedrock-global", "vertex"):
        model = PLATFORMS[kind][0]
        queue(sim, model, 1)
        make_client(kind, sim.base_url).messages.create(**args(model))
    compactobs.flush()
    engine = create_engine(recording)
    try:
        with engine.begin() as connection:  # as if priced by older prices: reprice must redo every call
            connection.execute(text("UPDATE calls SET cost_usd = 0, pricing_version = 'old'"))
    finally:
        engine.dispose()
    code, out, err = run("--db", recording, "reprice")
    assert code == 0, err
    # us. profile and Vertex us-east5: $1.0945 (regional); global. profile: $0.995 (list)
    costs = [Decimal(str(row["cost_usd"])) for row in stored_calls(recording)]
    assert costs == [REGIONAL_COST, LIST_COST, REGIONAL_COST]
    code, out, err = run("--db", recording, "pricing", "check")
    assert code == 0, out + err


def test_export_otlp_replays_the_platform(recording: str, sim: Simulator) -> None:
    """Calls replayed from the store (`export otlp`) carry their provider and region, iterations too."""
    from compactobs.store.replay import replay

    model = PLATFORMS["vertex"][0]
    queue(sim, model, 1)
    make_client("vertex", sim.base_url).messages.create(**args(model))
    compactobs.flush()
    exporter = InMemorySpanExporter()
    engine = create_engine(recording)
    try:
        replay(engine, [], exporter)
    finally:
        engine.dispose()
    replayed = exporter.get_finished_spans()
    assert len(replayed) == 3  # the call and its two iterations
    assert {(s.attributes or {})[t.PROVIDER_NAME] for s in replayed} == {"gcp.vertex_ai"}
    call = next(s for s in replayed if (s.attributes or {})[t.SPAN_KIND] == t.SPAN_KIND_CALL)
    assert (call.attributes or {})[t.CLOUD_REGION] == "us-east5"
