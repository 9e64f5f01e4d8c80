"""`compactobs export otlp`: stored calls replayed as OpenTelemetry spans to an OTLP endpoint."""

from __future__ import annotations

import click

from compactobs.cli.common import EXIT_USER_ERROR, CliState, pass_state, refuse_on_clickhouse, report_engine
from compactobs.cli.options import filter_options
from compactobs.reports.model import Filters

__all__ = ["BATCH_CALLS_DEFAULT", "export_group"]

BATCH_CALLS_DEFAULT = 128
"""`export otlp --batch`'s default (compactobs.store.replay.BATCH_CALLS, not imported at start-up)."""


@click.group("export")
def export_group() -> None:
    """Send stored calls to other systems."""


@export_group.command("otlp")
@click.option(
    "--endpoint",
    metavar="URL",
    help="OTLP base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT (http://host:4317 for gRPC, http://host:4318 for "
    "HTTP)  [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT, else localhost]",
)
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    help="grpc or http (HTTP/protobuf)  [default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else "
    "OTEL_EXPORTER_OTLP_PROTOCOL, else http]",
)
@filter_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="CALLS/S",
    help="Send at most this many calls a second (each with its iteration spans).  [default: no limit]",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=10_000),
    default=BATCH_CALLS_DEFAULT,
    show_default=True,
    metavar="CALLS",
    help="Calls per export request (each with its iteration spans).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How long each request may take, the exporter's retries included  [default: "
    "OTEL_EXPORTER_OTLP_TIMEOUT, which the Python exporters read in seconds, else 10]",
)
@pass_state
@click.pass_context
def export_otlp(
    ctx: click.Context,
    state: CliState,
    endpoint: str | None,
    protocol: str | None,
    filters: Filters,
    rate: float | None,
    batch: int,
    timeout: float | None,
) -> None:
    """Replay stored calls and their iterations as OpenTelemetry spans to an OTLP endpoint (a Collector,
    Tempo, Jaeger, ...), with their original trace and span ids, times and attributes.

    Running it again sends the same ids, so a backend that dedupes by id counts each call once. Headers,
    compression and certificates come from the standard OTEL_EXPORTER_OTLP_* variables. Refusals the OTLP
    specification calls retryable are retried by the official exporter; an endpoint that still refuses or
    never answers stops the export with exit code 2 (run it again to resend).
    """
    refuse_on_clickhouse(state, "export otlp")
    from compactobs import otlp
    from compactobs.progress import progress_bar
    from compactobs.store.replay import ReplayError, count_calls, replay

    try:
        chosen = otlp.protocol("TRACES", {"grpc": otlp.GRPC, "http": otlp.HTTP_PROTOBUF}.get(protocol or ""))
    except otlp.OtlpConfigError as err:
        raise click.UsageError(f"{err}, or pass --protocol") from None
    with report_engine(state) as engine:
        conditions = filters.call_conditions()
        total = count_calls(engine, conditions)
        if not total:
            click.echo(f"no stored calls to export ({filters.describe()})")
            return
        exporter = otlp.span_exporter(chosen, endpoint=endpoint, timeout_s=timeout)
        where = (
            endpoint or otlp.configured_endpoint("TRACES") or "the exporter's default endpoint (localhost)"
        )
        try:
            with progress_bar(unit="calls", total=total) as progress:
                result = replay(
                    engine,
                    conditions,
                    exporter,
                    batch_calls=batch,
                    max_calls_per_s=rate,
                    progress=progress,
                    total=total,
                )
        except ReplayError as err:
            click.echo(
                f"Error: export to {where} over {chosen} failed: {err}; check --endpoint and --protocol, and "
                "that the endpoint is up (running it again resends under the same ids)",
                err=True,
            )
            ctx.exit(EXIT_USER_ERROR)
        finally:
            exporter.shutdown()
    retried = " (the exporter retried refused or failed ones)" if result.retried else ""
    click.echo(
        f"exported {result.calls:,} calls and {result.iterations:,} iteration spans over {chosen} to "
        f"{where} in {result.requests:,} requests{retried}, "
        f"{result.elapsed_s:.1f} s"
    )
