"""What the CLI and the docs say around the figures is true (issue 27's "small untruths"): each test here
failed on the code the issue was filed against. (The demo's 429, "1 compactions" and a checkpoint's repr are
tested where those live: tests/test_demo.py, tests/guard/test_guard.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from compactobs.store.schema import head_revision
from tests.cli import one_line_error, run
from tests.reports.test_cost import scenario, store_rows

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = {2: "Two", 3: "Three", 4: "Four", 5: "Five"}


def test_the_readme_names_the_schema_revision_the_package_ships() -> None:
    named = set(re.findall(r"revision (\d{4})\b", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert named == {head_revision()}


def test_the_dashboards_readme_counts_the_dashboards_that_ship() -> None:
    shipped = sorted((ROOT / "dashboards").glob("*.json"))
    text = (ROOT / "dashboards" / "README.md").read_text(encoding="utf-8")
    assert text.splitlines()[2].startswith(f"{NUMBERS[len(shipped)]} dashboards, generated")
    assert all(f"`{path.name}`" in text for path in shipped)
    assert not re.search(r"\b(two|both) (dashboards|JSON files)\b", text, re.IGNORECASE)


def test_cost_by_iteration_type_counts_a_rows_own_iterations(database_url: str) -> None:
    """tests/reports/test_cost.py's store: B's compaction iteration is not its last (its message is), so
    a "calls" column read 0 beside the compaction row's 1 compaction. By hand, that row holds 1 iteration,
    1 compaction, 20,000 in and 1,000 out; the priced message row holds A, B's message and C: 3 iterations,
    and D's is a row of its own, unpriced."""
    store_rows(database_url, *scenario())
    code, out, err = run(
        "--db", database_url, "report", "cost", "--by", "iteration-type", "--tz", "UTC", "--format", "table"
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    (header,) = [line for line in lines if "iteration type" in line]
    assert header.split()[2:5] == ["iterations", "errors", "compactions"]
    (compaction,) = [line.split() for line in lines if line.strip().startswith("compaction ")]
    assert compaction[1:6] == ["1", "0", "1", "20,000", "1,000"]
    message, unpriced = [line.split() for line in lines if line.strip().startswith("message ")]
    assert message[1:4] == ["3", "0", "0"] and unpriced[1:5] == ["(unpriced)", "1", "0", "0"]  # D


def test_pricing_show_refuses_a_day_before_the_model_existed() -> None:
    code, _, err = run("pricing", "show", "claude-opus-4-8", "--date", "2020-01-01")
    assert "served no Claude model before 2023-03-14" in one_line_error(code, err)
    code, _, err = run("pricing", "show", "claude-sonnet-4-5-20250929", "--date", "2025-09-28")
    assert "the snapshot of 2025-09-29" in one_line_error(code, err)
    code, out, err = run("pricing", "show", "claude-sonnet-4-5-20250929", "--date", "2025-09-29")
    assert code == 0 and out.startswith(
        "claude-sonnet-4-5-20250929 (priced as claude-sonnet-4-5) on 2025-09-29"
    )


def test_reprice_names_the_error_call_it_leaves_out(database_url: str) -> None:
    """5 calls: A, B, C priced, D unpriced (4 with usage), E failed before any usage."""
    store_rows(database_url, *scenario())
    code, out, err = run("--db", database_url, "reprice")
    assert code == 0, err
    assert "repriced 4 calls" in out
    assert "not repriced: 1 error call that failed before any usage, with no cost to price: e\n" in out
