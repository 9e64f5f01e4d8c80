"""The report screens: each report as a terminal of 80 and of 120 columns shows it, on a fixed store (the
cost tests' scenario: five calls in March 2025, hand-worked in tests/reports/test_cost.py).

`python -m tests.screens` runs every command of SCREENS in a real terminal (tmux, NO_COLOR) of each width
and writes what the terminal shows to tests/golden/screens/NAME.WIDTH.txt. tests/reports/test_screens.py
renders the same reports in-process, fitted to the width, and compares.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

GOLDEN: Final = Path(__file__).parent / "golden" / "screens"
WIDTHS: Final = (80, 120)
SCREENS: Final[dict[str, tuple[str, ...]]] = {
    "cost-by-day": ("report", "cost", "--by", "day"),
    "cost-by-model": ("report", "cost", "--by", "model"),
    "cost-by-day-model": ("report", "cost", "--by", "day,model"),
    "cost-by-conversation": ("report", "cost", "--by", "conversation"),
    "cache-by-model": ("report", "cache", "--by", "model"),
    "ops": ("report", "ops"),
    "anomalies": ("report", "anomalies"),
    "conversation": ("report", "conversation", "c1"),
    "call": ("report", "call", "b"),
}
"""Name: the command's arguments after `--db URL` (each also gets `--tz UTC`)."""


def build_store(url: str) -> None:
    from tests.reports.test_cost import scenario, store_rows

    store_rows(url, *scenario())


def argv(url: str, args: tuple[str, ...]) -> list[str]:
    zone = () if args[1] == "call" else ("--tz", "UTC")  # a call's times are UTC
    return ["compactobs", "--db", url, *args, *zone]


_TMUX: Final = ["tmux", "-L", f"compactobs-screens-{os.getpid()}"]
"""A tmux server of our own (its own socket), left to no one else."""


def capture(command: list[str], width: int, number: int) -> str:
    """What a tmux terminal `width` columns wide shows after `command` ran in it."""
    session = f"screen-{number}"
    done = Path(tempfile.mkdtemp()) / "done"
    shell = f"NO_COLOR=1 {shlex.join(command)}; touch {shlex.quote(str(done))}; sleep 600"
    subprocess.run(
        [*_TMUX, "new-session", "-d", "-s", session, "-x", str(width), "-y", "400", shell], check=True
    )
    try:
        for _ in range(600):
            if done.exists():
                break
            time.sleep(0.1)
        shown = subprocess.run(
            [*_TMUX, "capture-pane", "-p", "-t", session, "-S", "0", "-E", "399"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        subprocess.run([*_TMUX, "kill-session", "-t", session], check=False)
    return "\n".join(line.rstrip() for line in shown.rstrip("\n").splitlines()) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/screens.db"
        build_store(url)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        # One session kept for the whole run, so the server outlives each capture's session.
        subprocess.run([*_TMUX, "new-session", "-d", "-s", "keep", "sleep 3600"], check=True)
        try:
            for number, (name, args) in enumerate(SCREENS.items()):
                for width in WIDTHS:
                    text = capture(argv(url, args), width, number * 1000 + width)
                    (GOLDEN / f"{name}.{width}.txt").write_text(text)
                    print(f"{name}.{width}.txt", file=sys.stderr)
        finally:
            subprocess.run([*_TMUX, "kill-server"], check=False)


if __name__ == "__main__":
    main()
