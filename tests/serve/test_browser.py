"""`compactobs serve` in a real headless browser (the system's chromium, driven by playwright): every page
loads with no console error and no request to another host; the charts are drawn; the billed total, a
conversation's calls and an anomaly's link (at the top of the overview, once computed) are in the DOM; a
hostile conversation id runs no script.

The store is the demo's workload (its research loop: 6 calls, the last 5 each compacting), plus
conversations whose ids are HTML meant to run script or fetch from another host."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from compactobs import store
from compactobs.demo import run_demo
from compactobs.serve.app import create_app, read_only
from tests.cli import run
from tests.serving import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs it)")

HOSTILE = [
    "<script>document.title='pwned'</script>",
    "<img src=https://evil.example/x.png onerror=\"document.title='pwned'\">",
    '"><svg onload="document.title=\'pwned\'">',
]
PAGES = ["/", "/conversations", "/cache", "/ops", "/anomalies"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import compactobs
    from compactobs.testing import Reply, message
    from tests.recording import recording

    url = f"sqlite:///{tmp_path_factory.mktemp('serve-browser') / 'demo.db'}"
    summary = run_demo(url)
    with recording(url) as (sim, client):
        for conversation in HOSTILE:
            sim.enqueue(
                Reply(message(model="claude-sonnet-4-5", usage={"input_tokens": 10, "output_tokens": 5}))
            )
            with compactobs.conversation(conversation):
                client.messages.create(
                    model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
    loop = next(c.id for c in summary.conversations if c.id.endswith("-research-loop"))
    engine = store.open_database(url, create=False)
    read_only(engine)
    try:
        with serving(create_app(engine)) as base:
            yield {"base": base, "url": url, "loop": loop}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def browser(site: dict[str, Any]) -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Visit:
    """A page opened in the browser, with every request it made and every console error and page error."""

    def __init__(self, browser: Any, base: str, path: str) -> None:
        self.page = browser.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.response = self.page.goto(base + path)
        self.page.wait_for_load_state("load")

    def check_clean(self, base: str) -> None:
        assert self.response is not None and self.response.status == 200, self.page.url
        assert self.errors == [], (self.page.url, self.errors)
        assert self.dialogs == []
        others = [u for u in self.requests if not (u.startswith(base + "/") or u.startswith("data:"))]
        assert others == [], (self.page.url, others)


def _bars(page: Any, chart: str) -> list[float]:
    return page.eval_on_selector_all(
        f'svg.chart[data-chart="{chart}"] rect.bar', "bars => bars.map(b => b.getBBox().height)"
    )


def test_every_page_loads_clean_with_its_charts(site: dict[str, Any], browser: Any) -> None:
    base = site["base"]
    for path in [*PAGES, f"/conversation/{quote(site['loop'], safe='')}"]:
        visit = Visit(browser, base, path)
        visit.check_clean(base)
        assert visit.requests[0] == base + path and any(
            u.endswith("/static/style.css") for u in visit.requests
        )
        visit.page.close()


def test_the_overview_shows_the_billed_total_and_its_charts(site: dict[str, Any], browser: Any) -> None:
    code, out, err = run("--db", site["url"], "report", "cost", "--format", "json")
    assert code == 0, err
    billed = json.loads(out)["totals"]["cost_usd"]
    visit = Visit(browser, site["base"], "/")
    page = visit.page
    assert page.inner_text("#billed") == f"${billed:,.4f}"
    # Every call of the store was made today: one day, one bar; at least the demo's two models.
    assert [h > 0 for h in _bars(page, "spend-by-day")] == [True]
    assert len([h for h in _bars(page, "spend-by-model") if h > 0]) >= 2
    # The anomalies are computed by serve's worker, not on the request: the page is reloaded until they are
    # there (the worker's first computation on this small store takes well under a second).
    loop = page.locator(
        f'.finding[data-kind=compaction_loop] a[href="/conversation/{quote(site["loop"], safe="")}"]'
    )
    deadline = time.monotonic() + 30
    while loop.count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        page.reload()
    assert loop.count() == 1
    assert "As of " in page.inner_text("#anomalies-state")
    # At the top: the first finding comes before the billed total.
    assert page.eval_on_selector(
        ".finding", "f => !!(f.compareDocumentPosition(document.getElementById('billed')) & 4)"
    )
    loop.click()
    page.wait_for_url(f"**/conversation/{quote(site['loop'], safe='')}")
    page.go_back()
    page.click("#anomalies")
    page.wait_for_url("**/anomalies")
    assert page.locator(".finding[data-kind=compaction_loop]").count() >= 1
    page.close()


def test_a_conversation_shows_its_calls_compactions_and_links(site: dict[str, Any], browser: Any) -> None:
    visit = Visit(browser, site["base"], f"/conversation/{quote(site['loop'], safe='')}")
    page = visit.page
    # The research loop: 6 calls, the last 5 each compacting (tests/test_demo.py).
    calls = page.locator("table").last.locator("tbody tr:not(.totals)")
    assert calls.count() == 6
    marks = page.eval_on_selector_all(
        'svg.chart[data-chart="context"] line.mark', "m => m.map(x => x.dataset.call)"
    )
    assert marks == ["2", "3", "4", "5", "6"]
    assert page.locator('svg.chart[data-chart="context"] polyline.trigger').count() == 1
    assert page.locator('svg.chart[data-chart="cost-per-call"] g.stack').count() == 6
    # Each call links to its page, which prices its iterations.
    first = calls.first.locator("a[href^='/call/']")
    first.click()
    page.wait_for_load_state("load")
    assert page.url.startswith(site["base"] + "/call/") and "Call " in page.inner_text("h1")
    page.close()


def test_each_calls_bar_is_its_cost_by_iteration_type(site: dict[str, Any], browser: Any) -> None:
    """The stacked bars carry the figures `report conversation --format json` prints, part by part, each
    as tall as its share of the tallest bar; the call where the budget was crossed is marked."""
    code, out, err = run("--db", site["url"], "report", "conversation", site["loop"], "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    code, out, err = run("--db", site["url"], "report", "anomalies", "--format", "json")
    assert code == 0, err
    crossed = [f["call_ids"] for f in json.loads(out)["findings"] if f["kind"] == "budget_exceeded"]
    visit = Visit(browser, site["base"], f"/conversation/{quote(site['loop'], safe='')}")
    page = visit.page
    drawn = page.eval_on_selector_all(
        'svg.chart[data-chart="cost-per-call"] g.stack',
        """stacks => stacks.map(g => [g.dataset.bar, [...g.querySelectorAll('rect.bar')].map(
            r => [r.dataset.part, r.dataset.usd, r.getBBox().height])])""",
    )
    parts = {"message": "message_cost_usd", "compaction": "compaction_cost_usd", "other": "other_cost_usd"}
    parts.update(advisor="advisor_cost_usd", fallback="fallback_cost_usd")
    # The loop: the first call a message only; the 5 after it each a message and a compaction.
    assert [[part for part, _, _ in segments] for _, segments in drawn] == [
        ["message"],
        *[["message", "compaction"]] * 5,
    ]
    tallest = max(row["cost_usd"] for row in rows)
    for row, (label, segments) in zip(rows, drawn, strict=True):
        assert label == str(row["n"])
        shown = {part: round(float(usd), 6) for part, usd, _ in segments}
        assert shown == {part: row[key] for part, key in parts.items() if row[key]}
        assert sum(shown.values()) == pytest.approx(row["cost_usd"], abs=1e-6)
        plot_height = 240 - 20 - 40  # the chart's height less its top and bottom margins
        for part, _, height in segments:
            assert height == pytest.approx(plot_height * shown[part] / tallest, abs=0.2)
    marked = page.eval_on_selector_all(
        'svg.chart[data-chart="cost-per-call"] line.breach', "m => m.map(x => x.dataset.bar)"
    )
    assert crossed and marked == [str(n + 1) for n, r in enumerate(rows) if r["call_id"] in crossed[0]]
    page.close()


def test_an_anomaly_links_to_its_conversation(site: dict[str, Any], browser: Any) -> None:
    visit = Visit(browser, site["base"], "/anomalies")
    page = visit.page
    link = page.locator(".finding[data-kind=compaction_loop] a").first
    assert link.inner_text() == site["loop"]
    link.click()
    page.wait_for_load_state("load")
    assert page.inner_text("h1") == f"Conversation {site['loop']}"
    page.close()


def test_a_hostile_conversation_id_runs_no_script(site: dict[str, Any], browser: Any) -> None:
    base = site["base"]
    for conversation in HOSTILE:
        for path in (
            f"/conversation/{quote(conversation, safe='')}",
            f"/conversations?q={quote(conversation)}",
        ):
            visit = Visit(browser, base, path)
            visit.check_clean(base)  # evil.example was never asked for
            page = visit.page
            assert page.title() != "pwned"
            assert page.eval_on_selector_all("script", "s => s.length") == 0
            assert page.eval_on_selector_all("main img, main svg:not(.chart)", "s => s.length") == 0
            assert conversation in page.inner_text("main")  # shown as text, exactly
            page.close()
