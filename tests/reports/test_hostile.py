"""Every report, in every format, shows strings from outside (conversation ids, models, services, iteration
types) through one sanitiser: no control sequence, bidi override or line break acts on the terminal; no
formula reaches a spreadsheet; no Markdown or HTML renders; JSON keeps the exact string, escaped. Through
the real SDK and the Simulator (whose admin reports `reconcile` reads), on SQLite."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator

import pytest

import compactobs
from compactobs.testing import Reply, Simulator, message
from tests.cli import run
from tests.recording import recording

CONVERSATIONS = [
    "\x1b[2J\x1b[31mred",  # clear the screen, then colour
    "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",  # a hyperlink
    "\x1b]0;owned\x07title",  # the terminal's title
    "\x9b2Jeight-bit",  # an 8-bit CSI
    "abc\u202edcba",  # right-to-left override
    "x\u2066y\u2069z",  # an isolate
    "one\ntwo",  # a forged row
    "\rcmd",
    '=HYPERLINK("https://evil.example")',
    "@SUM(A1)",
    "+1+1",
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "a|b",
]
MODEL = "evil-\x1b[31mmodel\u202e<b>"
SERVICE = "svc\x1b]0;owned\x07\n=1+1"
ITERATION_TYPE = "<img src=x>\x1b[5m\u2067"
ADMIN = "sk-ant-admin-test"

UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What must never reach a terminal raw (a line feed only ends a line)."""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Simulator]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'obs.db'}"
    plain = {"input_tokens": 10, "output_tokens": 5}
    usage = {
        **plain,
        "iterations": [
            {"type": ITERATION_TYPE, "input_tokens": 100, "output_tokens": 7},
            {"type": "message", **plain},
        ],
    }
    with Simulator() as sim:
        with recording(url, SERVICE, sim) as (_, client):
            for conversation in CONVERSATIONS:
                sim.enqueue(Reply(message(model="claude-sonnet-4-5", usage=plain)))
                with compactobs.conversation(conversation):
                    client.messages.create(
                        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                    )
            sim.enqueue(Reply(message(model=MODEL, usage=usage)))
            with compactobs.conversation(CONVERSATIONS[0]):
                client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
        yield url, sim


GROUPINGS = ["day", "model", "conversation", "service", "iteration-type"]
REPORTS = [
    *(("report", "cost", "--by", by) for by in GROUPINGS),
    *(("report", "cache", "--by", by) for by in GROUPINGS),
    ("report", "anomalies"),
    ("report", "ops"),
    *(("report", "conversation", conversation) for conversation in CONVERSATIONS[:7]),
    ("reconcile", "--since", "1d", "--group", "model"),
    ("report", "call", "HOSTILE_CALL"),
]


def _run(recorded: tuple[str, Simulator], args: tuple[str, ...], fmt: str) -> tuple[int, str, str]:
    url, sim = recorded
    env = {"ANTHROPIC_ADMIN_KEY": ADMIN, "ANTHROPIC_BASE_URL": sim.base_url}
    if args == ("report", "call", "HOSTILE_CALL"):
        # The call of the hostile model, conversation and iteration type: the conversation's last.
        code, out, err = run("--db", url, "report", "conversation", CONVERSATIONS[0], "--format", "json")
        assert code == 0, err
        args = ("report", "call", json.loads(out)["rows"][-1]["call_id"])
    return run("--db", url, *args, "--format", fmt, env=env)


@pytest.mark.parametrize("fmt", ["table", "md", "csv", "json"])
@pytest.mark.parametrize("args", REPORTS, ids=lambda args: "-".join(a for a in args if a.isalnum()))
def test_hostile_strings_are_shown_safely(
    recorded: tuple[str, Simulator], args: tuple[str, ...], fmt: str
) -> None:
    if args[0] == "reconcile" and fmt == "md":
        pytest.skip("reconcile has no md")
    code, out, err = _run(recorded, args, fmt)
    assert code == 0, err
    for text in (out, err):
        assert not UNSAFE.search(text), repr(UNSAFE.search(text))
    if fmt == "json":
        json.loads(out)  # well formed, the strings exact (see below)
    if fmt == "md":
        assert "<script" not in out and "<img" not in out and "<b>" not in out
        assert not re.search(r"(?<!\\)\]\(", out)  # no link: every ] is escaped
    if fmt == "csv":
        for row in csv.reader(io.StringIO(out)):
            for cell in row:
                if cell[:1] in ("=", "+", "-", "@"):
                    float(cell)  # only a number may start so


def test_strings_are_made_visible_not_dropped(recorded: tuple[str, Simulator]) -> None:
    code, out, _ = _run(recorded, ("report", "cost", "--by", "conversation"), "table")
    assert code == 0
    for visible in ("\\x1b[2J\\x1b[31mred", "abc\\u202edcba", "one\\ntwo", "\\x9b2Jeight-bit"):
        assert visible in out, visible
    code, out, _ = _run(recorded, ("report", "cost", "--by", "conversation"), "csv")
    cells = {row["conversation_id"] for row in csv.DictReader(io.StringIO(out))}
    assert {'\'=HYPERLINK("https://evil.example")', "'@SUM(A1)", "'+1+1", "'\\rcmd"} <= cells
    code, out, _ = _run(recorded, ("report", "cost", "--by", "conversation"), "md")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "\\[x\\](javascript:alert(1))" in out and "a\\|b" in out


def test_json_keeps_the_exact_strings(recorded: tuple[str, Simulator]) -> None:
    for by, key, expected in (
        ("conversation", "conversation_id", set(CONVERSATIONS)),
        ("model", "model", {MODEL}),
        ("service", "service", {SERVICE}),
        ("iteration-type", "iteration_type", {ITERATION_TYPE}),
    ):
        code, out, _ = _run(recorded, ("report", "cost", "--by", by), "json")
        assert code == 0
        assert expected <= {row[key] for row in json.loads(out)["rows"]}, (by, json.loads(out)["rows"])
