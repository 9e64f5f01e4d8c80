"""`compactobs collect`: run the OTLP receiver into the store given by --db until SIGINT or SIGTERM.

Thin over compactobs.collect.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from compactobs.cli.common import CliState, pass_state

__all__ = ["collect", "read_token"]


def read_token(path: Path) -> str:
    """The bearer token in a file (surrounding whitespace ignored). Raises click.UsageError."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise click.UsageError(
            f"cannot read the token file {path}: {getattr(err, 'strerror', None) or err}"
        ) from None
    if not token or any(c.isspace() for c in token):
        raise click.UsageError(f"the token file {path} must hold one token (no spaces)")
    return token


@click.command("collect")
@click.option(
    "--http",
    "http",
    default="127.0.0.1:4318",
    show_default=True,
    metavar="HOST:PORT",
    help="Where OTLP/HTTP is served (/v1/traces, /v1/logs, /v1/metrics; protobuf or JSON).",
)
@click.option("--grpc", "grpc", default=None, metavar="HOST:PORT", help="Also serve OTLP/gRPC here.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A bearer token that every request must carry (required beyond loopback).",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(min=1024),
    default=None,
    help="The size bound of one request, after decompression (default 16 MiB).",
)
@pass_state
def collect(
    state: CliState, http: str, grpc: str | None, token_file: Path | None, max_request_bytes: int | None
) -> None:
    """Receive OTLP from other processes (compactobs' spans from any language, Claude Code's events) and
    store it as if it had been recorded here: same rows, same spool, stored once however often it is sent."""
    from compactobs.collect import DEFAULT_MAX_REQUEST_BYTES, Collector
    from compactobs.store import display_url

    database_url = state.database_url
    token = read_token(token_file) if token_file is not None else None
    collector = Collector(  # a CollectError (a bad bind, no token beyond loopback) is a UserError
        database_url,
        http=http,
        grpc=grpc,
        token=token,
        max_request_bytes=max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with collector:
        click.echo(
            f"collecting OTLP/HTTP on {collector.endpoint} (/v1/traces, /v1/logs, /v1/metrics)"
            f"{f' and OTLP/gRPC on {collector.grpc_endpoint}' if grpc else ''} into "
            f"{display_url(database_url)}{' (bearer token required)' if token else ''}",
            err=False,
        )
        while not stop.wait(3600):
            pass
        click.echo("stopping: flushing the store", err=True)
    stats = collector.stats
    click.echo(
        f"{stats.requests:,} requests: {stats.spans_stored:,} spans, {stats.events_stored:,} events stored, "
        f"{stats.spans_rejected + stats.events_rejected:,} not kept, {stats.refused:,} refused for retry",
        err=True,
    )
