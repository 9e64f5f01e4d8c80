"""Start-up of the `compactobs` command: each command's wall time against `python -c pass`, in one run.

    python bench/cli_startup.py [--rounds 5]

Builds a demo store in a temporary directory (`compactobs demo`'s workload, 45 calls), then runs each
command `--rounds` times as a fresh process, interleaved, and prints the median wall time and its ratio to
the bare interpreter's, and the median CPU time (user + system) of the process, which a loaded machine
inflates much less than the wall time. The target is under 0.35 s and at most 10x `python -c pass` for
`--help` and each report on the demo store. A shared machine's figures move with its load: compare ratios
from one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("report", "cost"),
    ("report", "cost", "--by", "day", "--by", "model"),
    ("report", "cache"),
    ("report", "anomalies"),
    ("report", "ops"),
    ("db", "status"),
    ("pricing", "show", "claude-opus-4-8"),
)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wall(argv: list[str]) -> tuple[float, float]:
    """(wall time, CPU time) of one run of `argv`."""
    cpu = _children_cpu()
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Runs of each command (median shown).")
    options = parser.parse_args()
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    from compactobs.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        run_demo(url)
        baseline = [sys.executable, "-c", "pass"]
        runs = {"python -c pass": baseline}
        for command in COMMANDS:
            runs["compactobs " + " ".join(command)] = [
                sys.executable,
                "-m",
                "compactobs",
                "--db",
                url,
                *command,
            ]
        # A first run of each warms the page cache and the bytecode files.
        for argv in runs.values():
            _wall(argv)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(options.rounds):
            for name, argv in runs.items():
                times[name].append(_wall(argv))
    base = [statistics.median(run[i] for run in times["python -c pass"]) for i in (0, 1)]
    width = max(len(name) for name in runs)
    print(
        f"{'command':<{width}}  median wall  x python -c pass   median CPU  x python -c pass"
        f"   (demo store, {options.rounds} rounds)"
    )
    for name, runs_of in times.items():
        wall, cpu = (statistics.median(run[i] for run in runs_of) for i in (0, 1))
        print(
            f"{name:<{width}}  {wall * 1000:8.0f} ms   {wall / base[0]:8.1f}x      "
            f"{cpu * 1000:6.0f} ms   {cpu / base[1]:8.1f}x"
        )


if __name__ == "__main__":
    import _harness

    _harness.run(main)
