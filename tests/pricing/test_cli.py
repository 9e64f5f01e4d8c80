"""`compactobs pricing show | pricing check` and `compactobs reprice`, as a user types them.

Rates are Anthropic's published prices for claude-opus-4-8, per million tokens: $5 input, $25 output,
$0.50 cache read, $6.25 5-minute cache write, $10 1-hour cache write; fast mode $10 / $50 (cache classes at
the same multipliers of the fast input: 0.1x, 1.25x, 2x); batch half of standard; web search $10 per 1,000.
Stored rows come from real calls: the real SDK, with compactobs' middleware, against the simulator.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import genai_prices
import pytest
from sqlalchemy import select

import compactobs
from compactobs import store
from compactobs.store import calls, iterations
from compactobs.testing import Reply, Simulator, message
from tests.cli import one_line_error, run

GENAI = f"genai-prices {genai_prices.__version__}"
KNOWN = "claude-opus-4-8"
UNKNOWN = "acme-llm-1"
DAY = "2026-11-20"  # batch prices are in force (from 2026-10-14), fast mode is still offered on Opus 4.8


@pytest.fixture(autouse=True)
def no_pricing_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPACTOBS_PRICING_FILE", raising=False)


def show_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    code, out, err = run("pricing", "show", *args, "--format", "json", env=env)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def rate_columns(data: dict[str, Any]) -> tuple[float, ...]:
    return tuple(data[k] for k in ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h"))


# --- pricing show ---------------------------------------------------------------------------------------


def test_show_prints_the_published_rates() -> None:
    code, out, err = run("pricing", "show", KNOWN, "--date", DAY)
    assert code == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert f"{KNOWN} on {DAY}" in lines
    assert f"source: {GENAI}" in lines
    for row in (
        "input $5.00",
        "output $25.00",
        "cache read $0.50",
        "cache write 5m $6.25",
        "cache write 1h $10.00",
        "web search: $10.00 per 1,000 searches",
    ):
        assert row in lines, out


@pytest.mark.parametrize(
    ("variant", "expected", "price_list"),
    [
        ((), (5.0, 25.0, 0.5, 6.25, 10.0), "standard"),
        # fast: $10 / $50; cache read 0.1 x 10 = 1, 5m write 1.25 x 10 = 12.5, 1h write 2 x 10 = 20
        (("--speed", "fast"), (10.0, 50.0, 1.0, 12.5, 20.0), "fast"),
        # batch: half of every standard rate
        (("--service-tier", "batch"), (2.5, 12.5, 0.25, 3.125, 5.0), "batch"),
        # US-only inference on Claude 4.6 and later: 1.1 x every token rate
        (("--inference-geo", "us"), (5.5, 27.5, 0.55, 6.875, 11.0), "standard"),
    ],
)
def test_show_variants(variant: tuple[str, ...], expected: tuple[float, ...], price_list: str) -> None:
    data = show_json(KNOWN, "--date", DAY, *variant)
    assert rate_columns(data) == expected
    assert data["variant"] == price_list
    assert data["date"] == DAY and data["model"] == KNOWN
    assert data["web_search_per_1k"] == 10.0  # never discounted or multiplied
    assert data["source"]["kind"] == "genai-prices" and data["source"]["name"] == GENAI
    assert data["unit"] == "USD per million tokens"


def test_show_tiers_and_the_date_they_change() -> None:
    # Sonnet 4.6 had a tier above 200K input tokens ($6 / $22.50) until 2026-03-13.
    data = show_json("claude-sonnet-4-6", "--date", "2026-03-01")
    assert rate_columns(data) == (3.0, 15.0, 0.3, 3.75, 6.0)
    (tier,) = data["tiers"]
    assert tier["above_input_tokens"] == 200_000
    assert (tier["input"], tier["output"], tier["cache_read"]) == (6.0, 22.5, 0.6)
    code, out, _ = run("pricing", "show", "claude-sonnet-4-6", "--date", "2026-03-01")
    assert code == 0 and "input > 200,000" in out
    assert show_json("claude-sonnet-4-6", "--date", "2026-03-20")["tiers"] == []


def test_show_unknown_model_is_one_line_saying_how_to_add_a_price() -> None:
    code, out, err = run("pricing", "show", UNKNOWN)
    one_line_error(code, err)
    assert f"no price for model '{UNKNOWN}' in {GENAI}" in err
    assert "COMPACTOBS_PRICING_FILE" in err and f'[models."{UNKNOWN}"]' in err
    assert out == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[models."x"\ninput = 1\n', "not valid TOML"),
        ('[models."claude-opus-4-8"]\ninput = "five"\noutput = 25\n', "input: must be a number"),
        ('[models."claude-opus-4-8"]\ninput = -5\noutput = 25\n', "must not be negative"),
        ('[models."claude-opus-4-8"]\ninput = 5\n', "missing required key 'output'"),
    ],
)
def test_malformed_pricing_file_is_one_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(content)
    env = {"COMPACTOBS_PRICING_FILE": str(path)}
    for command in (("pricing", "show", KNOWN), ("pricing", "check", KNOWN), ("reprice",)):
        code, _, err = run(*command, env=env)
        assert expected in one_line_error(code, err), command
        assert str(path) in err


def test_missing_pricing_file_is_one_line(tmp_path: Path) -> None:
    code, _, err = run("pricing", "show", KNOWN, env={"COMPACTOBS_PRICING_FILE": str(tmp_path / "no.toml")})
    assert "file not found" in one_line_error(code, err)


def test_overrides_file_changes_rates_and_source(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(f'[models."{KNOWN}"]\ninput = 4\noutput = 20\n')
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    env = {"COMPACTOBS_PRICING_FILE": str(path)}
    data = show_json(KNOWN, "--date", DAY, env=env)
    # Cache rates the file leaves out are the standard multipliers of its input: 0.4, 5, 8.
    assert rate_columns(data) == (4.0, 20.0, 0.4, 5.0, 8.0)
    assert data["source"] == {
        "kind": "overrides",
        "name": f"overrides {sha256[:8]}",
        "genai_prices_version": genai_prices.__version__,
        "path": str(path),
        "sha256": sha256,
    }
    # An override has no batch table here: 50% of its standard rates.
    assert rate_columns(show_json(KNOWN, "--date", DAY, "--service-tier", "batch", env=env)) == (
        2.0,
        10.0,
        0.2,
        2.5,
        4.0,
    )
    code, out, _ = run("pricing", "show", KNOWN, "--date", DAY, env=env)
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert code == 0
    assert f"source: overrides file {path} (sha256 {sha256})" in lines
    assert "input $4.00" in lines and "cache read $0.40" in lines
    # Other models still come from genai-prices.
    assert show_json("claude-sonnet-4-5", "--date", DAY, env=env)["source"]["kind"] == "genai-prices"


def test_show_rejects_a_bad_date() -> None:
    code, _, err = run("pricing", "show", KNOWN, "--date", "20-11-2026")
    assert code == 2 and "Invalid value for '--date'" in err and "Traceback" not in err


# --- recording real calls -------------------------------------------------------------------------------

# Call A, claude-opus-4-8: a compaction iteration, then the message iteration, and 2 web searches.
#   compaction: 100,000 in x $5/M = $0.50    + 3,000 out x $25/M = $0.075                          = $0.575
#   message:      2,000 in x $5/M = $0.01    +   100 out x $25/M = $0.0025
#                10,000 cache read x $0.50/M = $0.005
#                 1,000 cache write 5m x $6.25/M = $0.00625 + 3,000 cache write 1h x $10/M = $0.03 = $0.05375
#   web search: 2 x $10 / 1,000 = $0.02;   call: $0.575 + $0.05375 + $0.02 = $0.64875
USAGE_A = {
    "input_tokens": 2000,
    "output_tokens": 100,
    "cache_read_input_tokens": 10000,
    "cache_creation_input_tokens": 4000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000},
    "server_tool_use": {"web_search_requests": 2},
    "service_tier": "standard",
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 100000,
            "output_tokens": 3000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 2000,
            "output_tokens": 100,
            "cache_read_input_tokens": 10000,
            "cache_creation_input_tokens": 4000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000},
        },
    ],
}
COST_A = Decimal("0.64875")
# Call B, a model no source prices: 1,000 in, 500 out, stored unpriced.
USAGE_B = {"input_tokens": 1000, "output_tokens": 500, "service_tier": "standard"}

# The overrides file of the reprice tests, and call A and B under it:
#   A compaction: 100,000 x $4/M = $0.40 + 3,000 x $20/M = $0.06                                    = $0.46
#   A message: 2,000 x $4/M = $0.008 + 100 x $20/M = $0.002 + 10,000 x $0.40/M = $0.004
#              + 1,000 x $5/M = $0.005 + 3,000 x $8/M = $0.024                                      = $0.043
#   A: $0.46 + $0.043 + web search $0.02 = $0.523;   B: 1,000 x $1/M + 500 x $2/M = $0.002
NEW_PRICES = f"""
[models."{KNOWN}"]
input = 4
output = 20
cache_read = 0.4
cache_write_5m = 5
cache_write_1h = 8

[models."{UNKNOWN}"]
input = 1
output = 2
"""
NEW_COST_A = Decimal("0.523")
NEW_COST_A_ITERATIONS = (Decimal("0.46"), Decimal("0.043"))
NEW_COST_B = Decimal("0.002")


def record(database_url: str, *replies: tuple[str, dict[str, Any]]) -> None:
    """Make real calls through the SDK with compactobs' middleware, recorded into the store."""
    store.upgrade_database(database_url)  # PostgreSQL is never migrated unasked
    compactobs.configure(database_url=database_url)
    try:
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url,
                api_key="k",
                max_retries=0,
                open_telemetry=False,
                middleware=[compactobs.Middleware()],
            )
            for model, usage in replies:
                sim.enqueue(Reply(message(model=model, usage=usage)))
                client.beta.messages.create(
                    model=model,
                    max_tokens=64,
                    messages=[{"role": "user", "content": "hello"}],
                    betas=["compact-2026-01-12"],
                )
    finally:
        compactobs.shutdown()  # flushes the rows into the store


def stored(database_url: str) -> tuple[dict[str, Any], dict[tuple[str, int], Any]]:
    """Calls by request model, and iterations by (request model, index)."""
    engine = store.make_engine(database_url, create=False)
    try:
        with engine.connect() as connection:
            call_rows = {row.request_model: row for row in connection.execute(select(calls))}
            models = {row.call_id: row.request_model for row in call_rows.values()}
            iteration_rows = {
                (models[row.call_id], row.idx): row for row in connection.execute(select(iterations))
            }
    finally:
        engine.dispose()
    return call_rows, iteration_rows


def usd(value: Any) -> Decimal:
    """Money read back, to the store's 10 places (SQLite returns it through a float)."""
    return Decimal(value).quantize(Decimal("1e-10"))


@pytest.fixture
def recorded(database_url: str, data_home: Path) -> str:
    record(database_url, (KNOWN, USAGE_A), (UNKNOWN, USAGE_B))
    call_rows, _ = stored(database_url)
    assert usd(call_rows[KNOWN].cost_usd) == COST_A and call_rows[KNOWN].priced is True
    assert call_rows[UNKNOWN].cost_usd is None and call_rows[UNKNOWN].priced is False
    return database_url


# --- pricing check --------------------------------------------------------------------------------------


def test_check_finds_the_unpriced_model_in_the_store(recorded: str) -> None:
    code, out, err = run("--db", recorded, "pricing", "check")
    assert code == 1, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert rows[KNOWN] == [*GENAI.split(), "1", "0"]
    assert rows[UNKNOWN] == ["NONE", "1", "1"]
    assert "1 of 2 models has no price" in out and "COMPACTOBS_PRICING_FILE" in out

    code, out, _ = run("--db", recorded, "pricing", "check", "--format", "json", "claude-haiku-4-5")
    data = json.loads(out)
    assert code == 1 and data["unpriced_models"] == [UNKNOWN] and data["database_exists"] is True
    by_model = {m["model"]: m for m in data["models"]}
    assert by_model["claude-haiku-4-5"] == {
        "model": "claude-haiku-4-5",
        "priced": True,
        "source": GENAI,
        "in_store": False,
        "named": True,
        "calls": 0,
        "unpriced_calls": 0,
    }
    assert by_model[UNKNOWN]["calls"] == 1 and by_model[UNKNOWN]["unpriced_calls"] == 1


def test_check_passes_once_the_model_has_a_price(recorded: str, tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(f'[models."{UNKNOWN}"]\ninput = 1\noutput = 2\n')
    code, out, err = run("--db", recorded, "pricing", "check", env={"COMPACTOBS_PRICING_FILE": str(path)})
    assert code == 0, out + err
    assert "no price" not in out
    assert "run `compactobs reprice`" in out  # the stored unpriced call can now be priced


def test_check_without_a_database(data_home: Path) -> None:
    code, _, err = run("pricing", "check")
    assert "no database at" in one_line_error(code, err) and "compactobs pricing check MODEL" in err
    assert not data_home.exists()  # nothing created
    code, out, _ = run("pricing", "check", KNOWN)
    assert code == 0 and "(no database yet)" in out
    code, out, _ = run("pricing", "check", KNOWN, UNKNOWN)
    assert code == 1 and UNKNOWN in out
    assert not data_home.exists()


def test_check_on_an_empty_postgres_database(postgres_url: str) -> None:
    code, _, err = run("--db", postgres_url, "pricing", "check")
    assert "no database at" in one_line_error(code, err)


def test_check_bad_db_url_is_one_line() -> None:
    code, _, err = run("--db", "mysql://u@h/db", "pricing", "check", KNOWN)
    assert "unsupported database 'mysql'" in one_line_error(code, err)


def test_check_help_states_the_exit_codes() -> None:
    code, out, _ = run("pricing", "check", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "0 when every model has a price, 1 when some have none, 2 for a usage error" in text


# --- reprice --------------------------------------------------------------------------------------------


def test_reprice_with_unchanged_prices_changes_nothing(recorded: str) -> None:
    before = stored(recorded)
    code, out, err = run("--db", recorded, "reprice")
    assert code == 0, err
    assert "repriced 2 calls" in out and ": 0 changed" in out
    assert "cost: $0.648750 before, $0.648750 after (+$0.000000)" in out
    assert "unpriced calls: 1 before, 1 after" in out
    assert stored(recorded) == before


def test_reprice_applies_new_prices_and_is_idempotent(recorded: str, tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(NEW_PRICES)
    short_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    env = {"COMPACTOBS_PRICING_FILE": str(path)}

    def report_totals() -> tuple[str, int]:
        # `report cost` by model reads the rollups; it must follow a reprice (the triggers mark its calls).
        code, out, err = run("--db", recorded, "report", "cost", "--by", "model", "--format", "json")
        assert code == 0, err
        totals = json.loads(out)["totals"]
        return str(Decimal(str(totals["cost_usd"]))), totals["unpriced_calls"]

    assert report_totals() == ("0.64875", 1)
    code, out, err = run("--db", recorded, "reprice", env=env)
    assert code == 0, err
    assert "repriced 2 calls" in out and ": 2 changed" in out
    assert report_totals() == ("0.525", 0)
    # before: $0.64875 (B unpriced); after: $0.523 + $0.002
    assert "cost: $0.648750 before, $0.525000 after (-$0.123750)" in out
    assert "unpriced calls: 1 before, 0 after" in out

    call_rows, iteration_rows = stored(recorded)
    a, b = call_rows[KNOWN], call_rows[UNKNOWN]
    assert usd(a.cost_usd) == NEW_COST_A
    assert usd(a.cost_input_usd) == Decimal("0.408")  # 102,000 x $4/M
    assert usd(a.cost_output_usd) == Decimal("0.062")  # 3,100 x $20/M
    assert usd(a.cost_cache_read_usd) == Decimal("0.004")
    assert usd(a.cost_cache_write_5m_usd) == Decimal("0.005")
    assert usd(a.cost_cache_write_1h_usd) == Decimal("0.024")
    assert usd(a.cost_server_tools_usd) == Decimal("0.02")
    assert a.pricing_version == f"genai-prices=={genai_prices.__version__}+overrides:{short_hash}"
    assert (usd(iteration_rows[KNOWN, 0].cost_usd), usd(iteration_rows[KNOWN, 1].cost_usd)) == (
        NEW_COST_A_ITERATIONS
    )
    assert usd(b.cost_usd) == NEW_COST_B and b.priced is True
    (b_only,) = [row for key, row in iteration_rows.items() if key[0] == UNKNOWN]
    assert b_only.priced is True and usd(b_only.cost_usd) == NEW_COST_B

    again = stored(recorded)
    code, out, _ = run("--db", recorded, "reprice", env=env)
    assert code == 0 and ": 0 changed" in out
    assert "cost: $0.525000 before, $0.525000 after (+$0.000000)" in out
    assert stored(recorded) == again

    # Back to genai-prices: the original figures, and B unpriced again (never $0).
    code, out, _ = run("--db", recorded, "reprice")
    assert code == 0 and "cost: $0.525000 before, $0.648750 after (+$0.123750)" in out
    call_rows, _ = stored(recorded)
    assert usd(call_rows[KNOWN].cost_usd) == COST_A
    assert call_rows[UNKNOWN].cost_usd is None and call_rows[UNKNOWN].priced is False


def test_reprice_only_touches_the_time_range(recorded: str, tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(NEW_PRICES)
    env = {"COMPACTOBS_PRICING_FILE": str(path)}
    code, out, _ = run("--db", recorded, "reprice", "--until", "2020-01-01", env=env)
    assert code == 0 and "no recorded calls to reprice" in out
    code, out, _ = run("--db", recorded, "reprice", "--since", "1d", env=env)
    assert code == 0 and "repriced 2 calls" in out
    assert usd(stored(recorded)[0][KNOWN].cost_usd) == NEW_COST_A


def test_reprice_in_batches(database_url: str, data_home: Path, tmp_path: Path) -> None:
    from compactobs.pricing import Pricer
    from compactobs.store.reprice import reprice_database

    record(database_url, *[(KNOWN, USAGE_A)] * 5)
    path = tmp_path / "prices.toml"
    path.write_text(NEW_PRICES)
    result = reprice_database(database_url, Pricer(path), batch_size=2)
    assert (result.calls, result.changed, result.skipped) == (5, 5, 0)
    assert result.cost_before == 5 * COST_A and result.cost_after == 5 * NEW_COST_A
    assert all(usd(row.cost_usd) == NEW_COST_A for row in stored_all(database_url))


def stored_all(database_url: str) -> list[Any]:
    engine = store.make_engine(database_url, create=False)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(calls)))
    finally:
        engine.dispose()


def test_reprice_user_errors_are_one_line(data_home: Path) -> None:
    code, _, err = run("--db", "postgresql+psycopg://postgres@127.0.0.1:1/test", "reprice")
    assert "cannot connect to PostgreSQL at 127.0.0.1:1" in one_line_error(code, err)
    code, _, err = run("reprice", "--since", "someday")
    assert "invalid date or time 'someday'" in one_line_error(code, err)
    code, out, _ = run("reprice")  # no database yet: nothing to do, and nothing created
    assert code == 0 and "no recorded calls to reprice" in out
    assert not data_home.exists()


def test_the_billed_variant_is_stored_and_reprice_agrees(database_url: str, data_home: Path) -> None:
    """A request for fast mode whose response does not report it ran, and is billed, at standard speed."""
    store.upgrade_database(database_url)
    compactobs.configure(database_url=database_url)
    try:
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
            )
            sim.enqueue(Reply(message(model=KNOWN, usage={"input_tokens": 1000, "output_tokens": 100})))
            client.beta.messages.create(
                model=KNOWN,
                max_tokens=64,
                messages=[{"role": "user", "content": "hello"}],
                extra_body={"speed": "fast"},
            )
    finally:
        compactobs.shutdown()
    # standard: 1,000 x $5/M + 100 x $25/M = $0.005 + $0.0025 = $0.0075 (fast would be $0.015)
    call = stored(database_url)[0][KNOWN]
    assert call.speed is None and usd(call.cost_usd) == Decimal("0.0075")
    code, out, err = run("--db", database_url, "reprice")
    assert code == 0 and ": 0 changed" in out, err
    assert usd(stored(database_url)[0][KNOWN].cost_usd) == Decimal("0.0075")
