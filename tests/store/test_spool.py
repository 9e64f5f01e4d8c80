"""The spool keeps everything: damaged lines are moved, bytes intact, to its rejected area; its directory is
settable; an unwritable spool says what is wrong and how to fix it; the directories compactobs creates are
private. On SQLite and PostgreSQL, each made unavailable for real (another process holds SQLite's write
lock; PostgreSQL's connections are cut and refused by a proxy), so rows go to the spool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from sqlalchemy import make_url

import compactobs
from compactobs import store
from compactobs.store import SqlSpanExporter
from compactobs.testing import Reply, Simulator, message
from tests.cli import one_line_error, run
from tests.faults import sqlite_locked_by_another_process
from tests.store.test_exporter import Proxy, collected_spans, count


class Outage:
    """A store that can be made unavailable: `url` to record to, `down()` for the outage's duration."""

    def __init__(self, url: str, down: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        self.url = url
        self.down = down


@pytest.fixture
def outage(database_url: str) -> Iterator[Outage]:
    store.upgrade_database(database_url)
    if database_url.startswith("sqlite"):
        yield Outage(database_url, lambda: sqlite_locked_by_another_process(database_url))
        return
    parsed = make_url(database_url)
    proxy = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    proxy.start()

    @contextlib.contextmanager
    def down() -> Iterator[None]:
        proxy.stop()  # open connections cut, new ones refused
        try:
            yield
        finally:
            proxy.start()

    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield Outage(proxied, down)
    finally:
        proxy.stop()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


def call(sim: Simulator, calls: int = 1) -> None:
    """`calls` calls through the real SDK, each answered by the simulator."""
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    for _ in range(calls):
        sim.enqueue(Reply(message()))
        client.messages.create(
            model="claude-opus-4-8", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- damaged lines -------------------------------------------------------------------------------------

# Bytes that are not a batch: an ESC sequence, bytes that are not UTF-8, a carriage return.
DAMAGED = b'{"v": 1, "calls": \x1b[2J\xff\xfe\rnot json'
# A kill mid-write: the segment's last line cut short, without its newline.
CUT = b'{"v":1,"calls":{"columns":["call_id"'


def test_a_damaged_line_is_moved_bytes_intact_and_shown(
    outage: Outage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="compactobs.store")
    spool_dir = tmp_path / "spool"
    exporter = SqlSpanExporter(outage.url, spool_dir=spool_dir, write_timeout_s=0.2)
    with outage.down():
        exporter.export(collected_spans(emit=1, conversation="before"))
        exporter.export(collected_spans(emit=2, conversation="after"))
    assert exporter.stats.spooled == 3
    exporter.spool.seal()
    [segment] = exporter.spool.segments()
    first, second = segment.read_bytes().splitlines()
    segment.write_bytes(first + b"\n" + DAMAGED + b"\n" + second + b"\n" + CUT)

    assert exporter.force_flush()
    assert count(outage.url) == (3, 6)  # both good lines: 1 + 2 calls, each with 2 iterations
    assert exporter.spool.segments() == []
    kept = spool_dir / segment.parent.name / "rejected" / f"{segment.stem}-damaged.jsonl"
    lines = kept.read_bytes().split(b"\n")
    assert lines[:2] == [DAMAGED, CUT]  # lines 2 and 4 of the segment, as they were
    assert json.loads(lines[2]) == {
        "reason": "damaged spool lines, kept as they were",
        "segment": segment.name,
        "lines": [2, 4],
    }
    assert lines[3:] == [b""]
    moved = [r.getMessage() for r in caplog.records if "damaged line(s)" in r.getMessage()]
    assert len(moved) == 1 and "2 damaged line(s)" in moved[0] and "spool show --rejected" in moved[0]
    exporter.shutdown()

    env = {"COMPACTOBS_SPOOL_DIR": str(spool_dir)}
    code, out, _ = run("--db", outage.url, "spool", "status", env=env)
    assert code == 0, out
    assert "spool:    empty" in out
    assert "damaged:  2 line(s) that are not readable rows, kept as they were" in out
    code, out, _ = run("--db", outage.url, "spool", "show", "--rejected", env=env)
    assert code == 0, out
    assert f"rejected/{kept.name}  0 calls, 0 iterations" in out
    assert "2 damaged line(s): damaged spool lines, kept as they were" in out
    # Escaped: the ESC, the bytes that are not UTF-8 and the CR are shown, none of them sent raw.
    assert f'  line 1 ({len(DAMAGED)} bytes): {{"v": 1, "calls": \\x1b[2J\\\\xff\\\\xfe\\rnot json' in out
    assert f'  line 2 ({len(CUT)} bytes): {{"v":1,"calls":{{"columns":["call_id"' in out
    assert not any(char in out for char in "\x1b\r")

    # Replaying the set-aside files keeps them: the damaged lines come back to rejected/, bytes intact.
    code, out, _ = run("--db", outage.url, "spool", "replay", "--rejected", env=env)
    assert code == 0 and "0 call(s) written" in out, out
    [again] = (spool_dir / segment.parent.name / "rejected").iterdir()
    assert again.read_bytes().split(b"\n")[:2] == [DAMAGED, CUT]
    code, out, _ = run("--db", outage.url, "spool", "status", env=env)
    assert code == 0 and "damaged:  2 line(s)" in out, out


# --- where the spool is, and its modes ----------------------------------------------------------------


def test_spool_dir_from_configure_and_from_the_environment(
    outage: Outage, tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "given" / "spools"  # neither exists: compactobs creates both, private
    from_env = tmp_path / "from-env"
    monkeypatch.setenv("COMPACTOBS_SPOOL_DIR", str(from_env))
    for spool_dir, calls in ((given, 2), (None, 1)):
        compactobs.configure(outage.url, spool_dir=spool_dir)
        compactobs.instrument()
        try:
            with outage.down():
                call(sim, calls)
                compactobs.flush()
        finally:
            compactobs.uninstrument()
            compactobs.shutdown()  # the database is back: the shutdown flush writes the spool out
    assert count(outage.url) == (3, 3)
    for root in (given, from_env):
        [directory] = root.iterdir()  # the database's spool, emptied
        assert list(directory.glob("*.jsonl")) == []
        assert mode(root) == 0o700 and mode(directory) == 0o700
    assert mode(given.parent) == 0o700


def test_directories_compactobs_creates_are_private(data_home: Path) -> None:
    assert not data_home.parent.exists()  # $XDG_DATA_HOME itself is missing too
    exporter = SqlSpanExporter(busy_timeout_s=0.1)  # the default store, in the data directory
    exporter.check()
    assert mode(data_home.parent) == 0o700 and mode(data_home) == 0o700
    assert mode(data_home / "compactobs.db") == 0o600
    exporter.shutdown()


# --- a spool that cannot be written -------------------------------------------------------------------


@contextlib.contextmanager
def under_a_file(tmp_path: Path) -> Iterator[Path]:
    """A spool path whose parent is a regular file: no user, root included, can create it."""
    (tmp_path / "a-file").write_text("")
    yield tmp_path / "a-file" / "spool"


@contextlib.contextmanager
def immutable(tmp_path: Path) -> Iterator[Path]:
    """An existing spool directory marked immutable (chattr +i): root is refused too."""
    directory = tmp_path / "immutable"
    directory.mkdir()
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.parametrize(
    ("place", "what"),
    [
        (under_a_file, "a part of that path is a file, not a directory"),
        (immutable, "the operation is not permitted (an immutable directory?)"),
    ],
    ids=["under-a-file", "immutable"],
)
def test_an_unwritable_spool_says_what_is_wrong_and_how_to_fix_it(
    outage: Outage,
    tmp_path: Path,
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
    place: Callable[[Path], contextlib.AbstractContextManager[Path]],
    what: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="compactobs.store")
    fix = "make it a directory this user can write, or move the spool with COMPACTOBS_SPOOL_DIR"
    with place(tmp_path) as spool_dir:
        compactobs.instrument(outage.url, spool_dir=spool_dir)
        try:
            with outage.down():
                call(sim, 3)
                compactobs.flush()
        finally:
            compactobs.uninstrument()
            compactobs.shutdown()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        said = [m for m in errors if "cannot be written" in m]
        # Once when it happens, and the total at shutdown; each says what is wrong and the fix, on one line.
        assert len(said) == 2, errors
        assert all(what in m and fix in m and "\n" not in m for m in said), said
        assert "3 call(s)" in said[1] and "were lost" in said[1]

        env = {"COMPACTOBS_SPOOL_DIR": str(spool_dir)}
        code, out, err = run("--db", outage.url, "spool", "status", env=env)
        one_line_error(code, err)
        assert what in err and fix in err
        assert "spool:    NOT WRITABLE: " in out and "empty" not in out
        code, out, err = run("--db", outage.url, "db", "status", env=env)
        one_line_error(code, err)
        assert what in err and "NOT WRITABLE" in out
        with outage.down():  # the database away too: its error first, the spool's state still shown
            code, out, err = run("--db", outage.url, "db", "status", env=env)
        one_line_error(code, err)
        assert "NOT WRITABLE" in out
    assert count(outage.url) == (0, 0)
