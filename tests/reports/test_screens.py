"""Every report fits a terminal of 80 and of 120 columns, and looks as a real terminal showed it.

tests/golden/screens/NAME.WIDTH.txt were captured from tmux terminals of those widths by
`python -m tests.screens` (which says how); here the same reports are rendered in-process, fitted to the
width as the CLI fits them on a terminal, and must match line for line. Below, each table is checked to fit
and to name the columns it left out; and the charts appear only on a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from compactobs import store
from compactobs.reports.anomalies import anomalies_report
from compactobs.reports.cache import cache_report
from compactobs.reports.call import call_report
from compactobs.reports.conversation import conversation_report
from compactobs.reports.cost import cost_report
from compactobs.reports.ops import ops_report
from compactobs.reports.render import render
from compactobs.reports.render.anomalies import render_anomalies
from compactobs.reports.render.conversation import render_conversation
from compactobs.reports.times import build_filters
from tests.cli import one_line_error, run
from tests.screens import GOLDEN, SCREENS, WIDTHS, build_store


@pytest.fixture(scope="module")
def screens_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('screens') / 'screens.db'}"
    build_store(url)
    yield url


def screen(url: str, args: tuple[str, ...], width: int) -> str:
    """What `compactobs --db URL *args` prints on a terminal `width` columns wide, without colour."""
    engine = store.open_database(url)
    filters = build_filters(None, None, "UTC")
    try:
        name = args[1]
        if name == "cost":
            report = cost_report(engine, filters, args[3].split(","))
        elif name == "cache":
            report = cache_report(engine, filters, args[3].split(","))
        elif name == "ops":
            report = ops_report(engine, filters)
        elif name == "anomalies":
            return render_anomalies(anomalies_report(engine, filters), "table", width)
        elif name == "conversation":
            return render_conversation(
                conversation_report(engine, filters, args[2]), "table", 100, fit_width=width
            )
        else:
            report = call_report(engine, args[2])
    finally:
        engine.dispose()
    return render(report, "table", console_width=100, fit_width=width)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(SCREENS))
def test_the_screen_is_what_the_terminal_showed(screens_url: str, name: str, width: int) -> None:
    text = screen(screens_url, SCREENS[name], width)
    assert text == (GOLDEN / f"{name}.{width}.txt").read_text()
    assert max(len(line) for line in text.splitlines()) <= width, text


@pytest.mark.parametrize("name", [name for name in SCREENS if name != "anomalies"])
def test_a_narrowed_table_names_what_it_left_out(screens_url: str, name: str) -> None:
    full = screen(screens_url, SCREENS[name], 10_000)
    narrow = " ".join(screen(screens_url, SCREENS[name], 80).split())
    if max(len(line) for line in full.splitlines()) > 80:
        assert "more column(s) (" in narrow and "--format json|csv|md" in narrow


def test_spend_bars_only_on_a_terminal(screens_url: str) -> None:
    # 2025-03-10 cost $0.0807, 2025-03-11 $0.0090: 0.009 / 0.0807 of the longest bar.
    on_terminal = screen(screens_url, ("report", "cost", "--by", "day"), 120)
    bars = [line for line in on_terminal.splitlines() if "█" in line]
    assert [line.split()[0] for line in bars] == ["2025-03-10", "2025-03-11"]
    longest, short = (line.count("█") for line in bars)
    assert short == int(longest * 0.009 / 0.0807)
    engine = store.open_database(screens_url)
    try:
        report = cost_report(engine, build_filters(None, None, "UTC"), ("day",))
    finally:
        engine.dispose()
    for fmt in ("json", "csv", "md"):
        assert "█" not in render(report, fmt, fit_width=120)
    assert "█" not in render(report, "table")  # not a terminal: nothing to fit, no bars
    code, out, err = run("--db", screens_url, "report", "cost", "--by", "week", "--tz", "UTC")
    assert code == 0 and "█" not in out, err


def _rows(url: str, *args: str) -> dict[str, Any]:
    code, out, err = run("--db", url, "report", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_limit_and_sort_keep_the_totals(screens_url: str) -> None:
    everything = _rows(screens_url, "cost", "--by", "conversation", "--tz", "UTC")
    top = _rows(screens_url, "cost", "--by", "conversation", "--tz", "UTC", "--sort", "cost", "--limit", "1")
    # c1: 0.021 + 0.0597 = 0.0807, the largest; c2 0.009; (none): the error call, $0.
    assert [row["conversation_id"] for row in top["rows"]] == ["c1"]
    assert top["totals"] == everything["totals"] and top["limited"] == {"rows": 4, "shown": 1}
    by_calls = _rows(screens_url, "cache", "--by", "conversation", "--tz", "UTC", "--sort", "input")
    inputs = [row["input_tokens"] for row in by_calls["rows"]]
    assert inputs == sorted(inputs, reverse=True)
    code, out, err = run("--db", screens_url, "report", "cost", "--limit", "1", "--tz", "UTC")
    assert "Showing 1 of 4 rows (--limit); the totals cover every call." in out
    code, _, err = run("--db", screens_url, "report", "ops", "--sort", "nope")
    assert "cannot sort ops by 'nope'" in one_line_error(code, err)
    code, _, err = run("--db", screens_url, "report", "cache", "--limit", "0")
    assert "--limit 0" in one_line_error(code, err)


def test_json_csv_and_md_keep_every_column_whatever_the_width(screens_url: str) -> None:
    engine = store.open_database(screens_url)
    try:
        report = cost_report(engine, build_filters(None, None, "UTC"), ("day",))
    finally:
        engine.dispose()
    header = render(report, "csv", fit_width=80).splitlines()[0].split(",")
    assert header == report.columns
    md = render(report, "md", fit_width=80)
    assert "top-level says" in md and "compactions" in md and "more column(s)" not in md
    assert set(json.loads(render(report, "json", fit_width=80))["rows"][0]) == set(report.columns)
