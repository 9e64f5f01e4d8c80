"""Report output is safe: data (conversation ids, services, models) cannot drive the terminal or a
spreadsheet. Through the CLI, over a real SQLite store written by the exporter."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactobs.store import SqlSpanExporter
from tests.cli import run
from tests.store.test_exporter import collected_spans

HOSTILE = {
    "csi": "\x1b[2J\x1b[31mred",  # clear the screen, then colour
    "osc": "\x1b]0;owned\x07title",  # set the terminal's title
    "link": "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",  # a hyperlink
    "c1": "\x9b2Jeight-bit",
    "formula": '=HYPERLINK("https://evil.example")',
    "plus": "+1+1",
    "minus": "-2+3",
    "at": "@SUM(A1)",
    "tab": "\tcmd",
    "cr": "\rcmd",
}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'obs.db'}"
    exporter = SqlSpanExporter(url, spool_dir=tmp_path / "spool")
    spans = [span for name in HOSTILE.values() for span in collected_spans(conversation=name)]
    exporter.export(spans)
    exporter.shutdown()
    return url


@pytest.mark.parametrize("fmt", ["table", "md", "csv"])
def test_no_control_sequence_reaches_the_output(store_url: str, fmt: str) -> None:
    code, out, err = run("--db", store_url, "report", "cost", "--by", "conversation", "--format", fmt)
    assert code == 0, err
    assert not any(ch in out for ch in "\x1b\x07\x9b\x9c\x9d\r"), repr(out)
    # Shown as the escapes they are, never acted on (md escapes them once more: see test_reports_hostile).
    escapes = ("\\x1b[2J\\x1b[31mred", "\\x07title", "click", "\\x9b2Jeight-bit", "\\rcmd")
    for visible in () if fmt == "md" else escapes:
        assert visible in out, visible


def test_csv_cells_are_never_formulas(store_url: str) -> None:
    code, out, err = run("--db", store_url, "report", "cost", "--by", "conversation", "--format", "csv")
    assert code == 0, err
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(out)))
    conversations = {row["conversation_id"] for row in rows}
    formulas = {'\'=HYPERLINK("https://evil.example")', "'+1+1", "'-2+3", "'@SUM(A1)", "'\\tcmd"}
    assert formulas <= conversations
    # Numbers are numbers, not text: a negative amount would still be written as -1.5, unquoted.
    assert all(row["calls"] == "1" for row in rows)
