"""Regenerate the README's screenshots of `compactobs serve`: the demo's workload recorded into a fresh store,
served on loopback, and the overview and the demo's compaction loop shot in headless chromium.

    python docs/screenshots.py      # docs/serve-overview.png, serve-conversation.png, serve-cost-per-call.png

Needs playwright (the dev extra) and a chromium on PATH (Debian's package; .ci/run installs it).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.serving: the same loopback server the browser tests use

from compactobs import store  # noqa: E402
from compactobs.demo import run_demo  # noqa: E402
from compactobs.serve.app import create_app, read_only  # noqa: E402
from tests.serving import serving  # noqa: E402


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH: install Debian's chromium package")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        summary = run_demo(url)
        loop = next(c.id for c in summary.conversations if c.id.endswith("-research-loop"))
        engine = store.open_database(url, create=False)
        read_only(engine)
        try:
            with serving(create_app(engine)) as base, sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1240, "height": 900})
                for path, name in (
                    ("/", "serve-overview.png"),
                    (f"/conversation/{quote(loop, safe='')}", "serve-conversation.png"),
                ):
                    page.goto(base + path)
                    # The overview's anomalies come from serve's worker: reload until they are computed.
                    for _ in range(300 if path == "/" else 0):
                        if page.locator(".finding").count():
                            break
                        page.wait_for_timeout(100)
                        page.reload()
                    page.screenshot(path=str(HERE / name), full_page=False)
                    print(f"wrote docs/{name}")
                # The loop's calls, each a bar stacked by iteration type, below the fold of the page.
                page.locator('svg.chart[data-chart="cost-per-call"]').screenshot(
                    path=str(HERE / "serve-cost-per-call.png")
                )
                print("wrote docs/serve-cost-per-call.png")
                browser.close()
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
