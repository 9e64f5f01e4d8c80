"""The CLI's face: `--help` lists the options it listed before the CLI became a package, and options
restating a dataclass are generated from its fields (a field added there is an option here)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import click
import pytest
from click.testing import CliRunner

from compactobs.cli import main
from compactobs.cli.options import dataclass_options
from compactobs.reports.anomalies import Thresholds
from tests.cli import one_line_error, run

# The lists below were copied by hand from `--help` on main before the split (commit 9adef32): a change
# here is a change users see.
FILTERS = ["--since", "--until", "--tz", "--model", "--conversation", "--service", "--format"]
HELP = ["-h, --help"]
BEFORE: dict[tuple[str, ...], list[str]] = {
    (): ["--db", "--clickhouse-table", "--version", *HELP],
    ("report",): HELP,
    ("report", "anomalies"): [
        *FILTERS,
        "--fail-on",
        "--budgets",
        "--loop-min",
        "--loop-window",
        "--ineffective-ratio",
        "--cost-share",
        "--error-share",
        "--error-min-calls",
        "--cache-drop-ratio",
        "--cache-min-tokens",
        *HELP,
    ],
    ("report", "cache"): ["--by", *FILTERS, "--limit", "--sort", *HELP],
    ("report", "call"): ["--format", *HELP],
    ("report", "conversation"): [*FILTERS, *HELP],
    ("report", "cost"): ["--by", "--compare", "--forecast", *FILTERS, "--limit", "--sort", *HELP],
    ("report", "ops"): [*FILTERS, "--limit", "--sort", *HELP],
}
COMMANDS_BEFORE = [
    "alert",
    "budgets",
    "clickhouse",
    "collect",
    "db",
    "demo",
    "export",
    "import",
    "pricing",
    "reconcile",
    "report",
    "reprice",
    "serve",
    "spool",
    "tune",
]


def _help(*command: str) -> str:
    code, out, err = run(*command, "--help")
    assert code == 0, err
    return out


def _section(text: str, title: str) -> list[str]:
    """The entries of a help section ("Options:", "Commands:"), each with its wrapped lines joined."""
    found = re.search(rf"^{title}:\n((?:[ \t]+\S.*\n?)+)", text, re.M)
    assert found is not None, text
    entries: list[str] = []
    for line in found.group(1).splitlines():
        if re.match(r"^  \S", line):
            entries.append(line.strip())
        else:
            entries[-1] += " " + line.strip()
    return entries


def _names(entries: list[str]) -> list[str]:
    return [re.match(r"((?:-\w, )?--[\w-]+)", entry).group(1) for entry in entries]  # type: ignore[union-attr]


@pytest.mark.parametrize("command", list(BEFORE), ids=lambda c: " ".join(c) or "compactobs")
def test_help_lists_the_options_it_listed_before(command: tuple[str, ...]) -> None:
    assert _names(_section(_help(*command), "Options")) == BEFORE[command]


def test_the_root_help_still_lists_every_command() -> None:
    """Commands may be added (other branches add some), never lost."""
    listed = [entry.split()[0] for entry in _section(_help(), "Commands")]
    assert set(COMMANDS_BEFORE) <= set(listed), listed


def test_threshold_options_show_the_defaults_and_help_they_showed() -> None:
    """Generated from `Thresholds`: each with the default and help it had when written by hand."""
    listed = _section(_help("report", "anomalies"), "Options")
    entries = dict(zip(_names(listed), listed, strict=True))
    shown = {
        "--loop-min": ("INTEGER", "compaction_loop: this many ineffective compactions...", "3"),
        "--loop-window": ("INTEGER", "...within this many consecutive calls.", "5"),
        "--ineffective-ratio": (
            "FLOAT",
            "A compaction leaving the context at this share of the trigger or more is ineffective.",
            "0.8",
        ),
        "--cost-share": ("FLOAT", "Compaction share of a conversation's cost.", "0.5"),
        "--error-share": ("FLOAT", "429/529/5xx share of an hour's calls.", "0.1"),
        "--error-min-calls": ("INTEGER", "Calls an hour needs to judge.", "20"),
        "--cache-drop-ratio": (
            "FLOAT",
            "Cache reads after a compaction at or below this share of those before count as a miss.",
            "0.05",
        ),
        "--cache-min-tokens": ("INTEGER", "Smallest cache read/write considered.", "1024"),
    }
    for option, (kind, text, default) in shown.items():
        assert " ".join(entries[option].split()) == f"{option} {kind} {text} [default: {default}]"
    # One option per field: a field added to Thresholds without an option here fails this.
    generated = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Thresholds)}
    assert generated == set(shown)


def test_a_threshold_out_of_range_is_the_dataclass_error_on_one_line(sqlite_url: str) -> None:
    code, _, err = run("--db", sqlite_url, "report", "anomalies", "--loop-min", "1")
    assert one_line_error(code, err) == "Error: --loop-min must be at least 2, not 1\n"
    code, _, err = run("--db", sqlite_url, "report", "anomalies", "--cost-share", "1.5")
    assert one_line_error(code, err) == "Error: --cost-share must be between 0 and 1, not 1.5\n"
    # Past a database's 64-bit integers: one line, not the driver's OverflowError from inside the query.
    code, _, err = run("--db", sqlite_url, "report", "anomalies", "--error-min-calls", str(10**23))
    expected = f"Error: --error-min-calls must be at most {2**63 - 1}, not {10**23}\n"
    assert one_line_error(code, err) == expected


@pytest.mark.parametrize(
    ("since", "tz"),
    [("999999999w", "UTC"), ("0001-01-01", "Asia/Tokyo"), ("9999-12-31T23:00", "America/New_York")],
)
def test_a_moment_past_the_calendar_is_one_line(sqlite_url: str, since: str, tz: str) -> None:
    """A span or a date that datetime cannot hold once moved to UTC: one line, exit 2, no traceback."""
    code, _, err = run("--db", sqlite_url, "report", "cost", "--since", since, "--tz", tz)
    assert one_line_error(code, err) == f"Error: {since!r} is out of the range of dates compactobs reads\n"


# -- the generator, on a dataclass of the test's own --------------------------------------------------------


@dataclass(frozen=True)
class _Knobs:
    size: int = field(default=7, metadata={"help": "How big."})
    ratio: float = field(default=0.25, metadata={"help": "How much.", "metavar": "SHARE"})
    labels: tuple[str, ...] = field(default=(), metadata={"option": "--label", "help": "Repeatable."})
    name: str | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise click.BadParameter(f"size must be at least 1, not {self.size}")


def _knobs_command(seen: list[_Knobs]) -> click.Command:
    @click.command()
    @click.option("--other", default="x")
    @dataclass_options(_Knobs, into="knobs")
    def command(other: str, knobs: _Knobs) -> None:
        assert other == "x"
        seen.append(knobs)

    return command


def test_each_field_is_an_option_with_its_type_default_and_help() -> None:
    command = _knobs_command([])
    options = {p.name: p for p in command.params}
    assert list(options) == ["other", "size", "ratio", "labels", "name"]
    size, ratio, labels, name = options["size"], options["ratio"], options["labels"], options["name"]
    assert isinstance(size, click.Option) and isinstance(ratio, click.Option)
    assert isinstance(labels, click.Option) and isinstance(name, click.Option)
    assert (size.opts, size.type, size.default, size.show_default, size.help) == (
        ["--size"],
        click.INT,
        7,
        True,
        "How big.",
    )
    assert (ratio.type, ratio.metavar, ratio.default) == (click.FLOAT, "SHARE", 0.25)
    assert (labels.opts, labels.multiple, labels.type, labels.show_default) == (
        ["--label"],
        True,
        click.STRING,
        None,
    )
    assert (name.opts, name.type, name.show_default, name.help) == (["--name"], click.STRING, None, None)


def test_the_command_receives_the_dataclass_built_from_the_options() -> None:
    seen: list[_Knobs] = []
    result = CliRunner().invoke(
        _knobs_command(seen), ["--ratio", "0.5", "--label", "a", "--label", "b", "--name", "n"]
    )
    assert result.exit_code == 0, result.output
    assert seen == [_Knobs(size=7, ratio=0.5, labels=("a", "b"), name="n")]
    assert CliRunner().invoke(_knobs_command(seen), []).exit_code == 0
    assert seen[-1] == _Knobs()


def test_the_dataclass_check_runs_before_the_command() -> None:
    seen: list[_Knobs] = []
    result = CliRunner().invoke(_knobs_command(seen), ["--size", "0"])
    assert result.exit_code == 2 and "size must be at least 1, not 0" in result.output
    assert seen == []


def test_a_field_added_to_the_dataclass_is_an_option() -> None:
    """What makes the options generated: a subclass with one more field has one more option, no edit."""

    @dataclass(frozen=True)
    class MoreKnobs(_Knobs):
        depth: int = field(default=3, metadata={"help": "How deep."})

    seen: list[MoreKnobs] = []

    @click.command()
    @dataclass_options(MoreKnobs, into="knobs")
    def command(knobs: MoreKnobs) -> None:
        seen.append(knobs)

    assert [p.name for p in command.params] == ["size", "ratio", "labels", "name", "depth"]
    result = CliRunner().invoke(command, ["--depth", "9"])
    assert result.exit_code == 0, result.output
    assert seen == [MoreKnobs(depth=9)]


def test_a_field_without_a_default_is_a_required_option() -> None:
    @dataclass(frozen=True)
    class Named:
        name: str
        note: str | None = None

    seen: list[Named] = []

    @click.command()
    @dataclass_options(Named, into="named")
    def command(named: Named) -> None:
        seen.append(named)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2 and "Missing option '--name'" in result.output
    assert CliRunner().invoke(command, ["--name", "x"]).exit_code == 0
    assert seen == [Named("x")]


def test_a_field_the_cli_cannot_type_or_a_stray_metadata_key_is_refused_at_import() -> None:
    @dataclass
    class Odd:
        when: complex = 0j

    with pytest.raises(TypeError, match=r"Odd.when: no option type"):
        dataclass_options(Odd, into="odd")

    @dataclass
    class Typo:
        size: int = field(default=1, metadata={"hlep": "How big."})

    with pytest.raises(TypeError, match=r"Typo.size: metadata \['hlep'\]"):
        dataclass_options(Typo, into="typo")

    @dataclass
    class Factory:
        sizes: tuple[int, ...] = field(default_factory=lambda: (1, 2))

    with pytest.raises(TypeError, match=r"Factory.sizes: an option cannot stand for a default_factory"):
        dataclass_options(Factory, into="factory")


def test_the_root_group_is_the_console_entry_point() -> None:
    """pyproject's `compactobs = "compactobs.cli:main"` and `python -m compactobs` both name it."""
    import compactobs.__main__ as dunder_main

    assert dunder_main.main is main
    assert isinstance(main, click.Group) and main.name == "compactobs"


def test_a_mistyped_command_gets_suggestions_from_the_lazy_table() -> None:
    """The root group loads a command's module only when it runs, so click's own suggestions (from the
    loaded commands) would be empty: they come from the table of commands."""
    code, _, err = run("repor")
    assert code == 2
    assert err.strip() == (
        "Error: No such command 'repor'. (Did you mean one of: 'export', 'report', 'reprice'?) "
        "(see `compactobs --help`)"
    )
