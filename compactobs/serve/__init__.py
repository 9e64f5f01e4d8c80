"""`compactobs serve`: a read-only web view and JSON API over the reports (see `serve.app`).

`serve(url, host, port, token)` opens the store read-only (or the ClickHouse source) and runs the
application under uvicorn until interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from compactobs.errors import UserError
from compactobs.serve.defaults import ANOMALIES_EVERY

__all__ = ["ANOMALIES_EVERY", "ENV_TOKEN", "LOOPBACK", "ServeError", "resolve_token", "serve"]

ENV_TOKEN: Final = "COMPACTOBS_SERVE_TOKEN"
LOOPBACK: Final = "127.0.0.1"


class ServeError(UserError):
    """`serve` cannot start as asked (a bind without a token, an unreadable token file)."""


def resolve_token(host: str, token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from `--token-file` (first line), else $COMPACTOBS_SERVE_TOKEN, else None; a bind other
    than 127.0.0.1 without one raises ServeError: the ledger says what a team spends, and on whom."""
    env = os.environ if environ is None else environ
    token: str | None = None
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ServeError(f"--token-file {token_file}: cannot read a token from it ({err})") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ServeError(f"--token-file {token_file}: the file's first line is empty")
    elif env.get(ENV_TOKEN, "").strip():
        token = env[ENV_TOKEN].strip()
    if token is None and host != LOOPBACK:
        raise ServeError(
            f"--host {host} opens the ledger beyond this machine: give a token (--token-file F, or "
            f"${ENV_TOKEN})"
        )
    return token


def serve(
    database_url: str,
    host: str = LOOPBACK,
    port: int = 8000,
    token: str | None = None,
    *,
    clickhouse_table: str = "otel_traces",
    budgets_file: str | None = None,
    anomalies_every: float = ANOMALIES_EVERY,
) -> None:
    """Run the application over the store at `database_url` until interrupted (`anomalies_every`: seconds
    between the overview's anomalies worker's checks of the store). Raises StoreError when the store
    cannot be opened."""
    import uvicorn

    from compactobs.reports.sources.clickhouse import is_clickhouse_url, open_source
    from compactobs.serve.app import create_app, read_only
    from compactobs.store import open_database

    def run(source: object) -> None:
        app = create_app(source, token=token, budgets_file=budgets_file, anomalies_every=anomalies_every)
        uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)

    if is_clickhouse_url(database_url):
        with open_source(database_url, clickhouse_table) as source:
            run(source)
        return
    engine = open_database(database_url, create=False)
    try:
        read_only(engine)
        run(engine)
    finally:
        engine.dispose()
