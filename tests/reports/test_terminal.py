"""Reports in a real terminal (a pseudo-terminal of 80 and of 120 columns): `reconcile`, whose differences
are long sentences, and `spool show`, whose reasons are a database's messages, fit its width. The other
reports are held to their screens in tests/reports/test_screens.py."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from compactobs import store
from compactobs.testing import Reply, Simulator, message
from tests.recording import recording
from tests.store.test_exporter import collected_spans
from tests.store.test_faults import _refuse
from tests.terminal import run_in_terminal

ADMIN = "sk-ant-admin-test"


@pytest.mark.parametrize("width", [80, 120])
def test_reconcile_fits_the_terminal(sqlite_url: str, data_home: Path, width: int) -> None:
    with Simulator() as sim:
        with recording(sqlite_url, sim=sim) as (_, client):
            for model in ("claude-sonnet-4-5", "mystery-1"):
                sim.enqueue(Reply(message(model=model, usage={"input_tokens": 1000, "output_tokens": 50})))
                client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "x"}])
        # A call compactobs does not see: a difference explained at length.
        plain = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
        sim.enqueue(
            Reply(message(model="claude-haiku-4-5", usage={"input_tokens": 1000, "output_tokens": 50}))
        )
        plain.messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        env = {"ANTHROPIC_ADMIN_KEY": ADMIN, "ANTHROPIC_BASE_URL": sim.base_url}
        code, shown = run_in_terminal("--db", sqlite_url, "reconcile", "--since", "1d", width=width, env=env)
    assert code == 0, shown
    assert max(len(line) for line in shown.splitlines()) <= width, shown
    words = " ".join(shown.split())
    assert "Differences and what explains them" in words and "uninstrumented" in words
    assert "calls from clients compactobs does not instrument" in words  # the sentence, wrapped, whole


def test_spool_show_fits_the_terminal(sqlite_url: str, data_home: Path) -> None:
    store.upgrade_database(sqlite_url)
    _refuse(sqlite_url, "bad")
    exporter = store.SqlSpanExporter(sqlite_url)
    exporter.export(collected_spans(conversation="bad"))
    exporter.shutdown()
    code, wide = run_in_terminal("--db", sqlite_url, "spool", "show", width=500)
    assert code == 0, wide
    assert max(len(line) for line in wide.splitlines()) > 80, wide  # a long line to wrap
    code, shown = run_in_terminal("--db", sqlite_url, "spool", "show", width=80)
    assert code == 0, shown
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    assert "".join(shown.split()) == "".join(wide.split())  # the same text, wrapped (long paths too)


def test_the_context_chart_is_drawn_on_a_terminal_only(sqlite_url: str, data_home: Path) -> None:
    from tests.reports.test_conversation import _rows, store_rows

    store_rows(sqlite_url, _rows())
    # 80 columns: a bar of 80 - 2 - 6 - 10 = 62 cells, the trigger (100,000) in the last; 90,000 fills
    # 62 x 90,000 / 100,000 = 55.8, 56 cells.
    code, shown = run_in_terminal(
        "--db", sqlite_url, "report", "conversation", "t42", "--tz", "UTC", width=80
    )
    assert code == 0, shown
    assert "Context after each call" in shown
    assert "#2 " + "#" * 56 + " " * 5 + "| 90,000 C" in shown, shown
    assert max(len(line) for line in shown.splitlines()) <= 80
