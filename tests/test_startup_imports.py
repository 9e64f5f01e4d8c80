"""Start-up: the modules `import compactobs` and each command load, held to lists written by hand here.

Each command runs in a fresh interpreter (a subprocess) that prints `sys.modules` after it; a module added
to a list below is start-up time added to every run of that command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from compactobs import cli
from compactobs.cli import common
from compactobs.store import ENV_DATABASE_URL

# What instrumenting needs, and nothing for the CLI, the store, the guard or OpenTelemetry (those load
# when recording is set up, or when a command needs them).
IMPORT_COMPACTOBS = {
    "compactobs",
    "compactobs._version",
    "compactobs._words",
    "compactobs.checkpoint",
    "compactobs.configfile",
    "compactobs.errors",
    "compactobs.instrument",
    "compactobs.instrument.conversation",
    "compactobs.instrument.state",
    "compactobs.lifecycle",
    "compactobs.otlp",
    "compactobs.platforms",
    "compactobs.runtime",
    "compactobs.usage",
}
HEAVY = ("sqlalchemy", "opentelemetry", "anthropic", "httpx", "asyncio", "click")
"""Third-party (and asyncio) packages `import compactobs` must not load."""
NOT_FOR_READING = ("opentelemetry", "anthropic", "httpx")
"""What no report needs: the recording side and the SDK."""
RECORDING = (
    "compactobs.recorder",
    "compactobs.guard",
    "compactobs.instrument.middleware",
    "compactobs.store.exporter",
)

# The command modules each command loads: only its own (and what it shares), never its siblings'.
CLI_MODULES: dict[tuple[str, ...], set[str]] = {
    ("--help",): {"compactobs.cli"},
    ("report", "cost"): {
        "compactobs.cli",
        "compactobs.cli.common",
        "compactobs.cli.options",
        "compactobs.cli.report",
    },
    ("report", "cache"): {
        "compactobs.cli",
        "compactobs.cli.common",
        "compactobs.cli.options",
        "compactobs.cli.report",
    },
    ("report", "anomalies"): {
        "compactobs.cli",
        "compactobs.cli.common",
        "compactobs.cli.options",
        "compactobs.cli.report",
    },
    ("report", "ops"): {
        "compactobs.cli",
        "compactobs.cli.common",
        "compactobs.cli.options",
        "compactobs.cli.report",
    },
    ("pricing", "show", "claude-opus-4-8"): {
        "compactobs.cli",
        "compactobs.cli.common",
        "compactobs.cli.options",
        "compactobs.cli.pricing",
    },
}

# What a command's output does not need at start-up, so that loading it is a regression: rich draws only
# on a terminal (the probe's stdout is a pipe); the anomaly kinds and their rules serve `report anomalies`.
NOT_LOADED: dict[tuple[str, ...], tuple[str, ...]] = {
    ("report", "cost"): ("rich", "compactobs.reports.anomalies", "compactobs.rules"),
    ("report", "cache"): ("rich", "compactobs.reports.anomalies", "compactobs.rules"),
    ("report", "ops"): ("rich", "compactobs.reports.anomalies", "compactobs.rules"),
    ("report", "anomalies"): ("rich",),
    ("pricing", "show", "claude-opus-4-8"): ("rich", "compactobs.reports.anomalies", "compactobs.rules"),
}

_PROBE = """
import json, runpy, sys
sys.argv = ["compactobs", *sys.argv[1:]]
if sys.argv[1:] == ["--import-only"]:
    import compactobs
else:
    try:
        runpy.run_module("compactobs", run_name="__main__")
    except SystemExit:
        pass
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def _modules(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    line = [text for text in done.stderr.splitlines() if text.startswith("MODULES ")]
    assert line, done.stderr
    return set(json.loads(line[-1].removeprefix("MODULES ")))


def _loaded(modules: set[str], roots: tuple[str, ...]) -> set[str]:
    return {root for root in roots if any(name == root or name.startswith(root + ".") for name in modules)}


def test_import_compactobs_loads_what_instrumenting_needs() -> None:
    modules = _modules("--import-only")
    assert {name for name in modules if name.startswith("compactobs")} == IMPORT_COMPACTOBS
    assert _loaded(modules, HEAVY) == set()


def test_help_imports_no_command_module_and_no_sqlalchemy() -> None:
    modules = _modules("--help")
    assert {name for name in modules if name.startswith("compactobs")} == IMPORT_COMPACTOBS | {
        "compactobs.cli"
    }
    assert _loaded(modules, ("sqlalchemy", *NOT_FOR_READING, "asyncio")) == set()


@pytest.mark.parametrize(
    "command", [command for command in CLI_MODULES if command != ("--help",)], ids=" ".join
)
def test_each_command_imports_its_own_module_only(command: tuple[str, ...], tmp_path: Path) -> None:
    modules = _modules("--db", f"sqlite:///{tmp_path / 'empty.db'}", *command)
    assert {name for name in modules if name.startswith("compactobs.cli")} == CLI_MODULES[command]
    assert _loaded(modules, NOT_FOR_READING + RECORDING) == set()
    assert _loaded(modules, NOT_LOADED[command]) == set()


def test_the_listing_says_what_each_command_says() -> None:
    """`--help` lists the commands from a table, without importing them: it must say what they say."""
    ctx = click.Context(cli.main)
    for name, (_, _, short_help) in cli._COMMANDS.items():
        command = cli.main.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(1000) == short_help, name
    assert (cli.EXIT_USER_ERROR, cli.EXIT_INTERRUPTED) == (common.EXIT_USER_ERROR, common.EXIT_INTERRUPTED)
    assert cli.ENV_DATABASE_URL == ENV_DATABASE_URL
