"""One error tree: every error compactobs raises is a CompactobsError; what the user can fix is a UserError,
which the CLI prints as one line with exit code 2, and it catches nothing else."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import compactobs
from compactobs.errors import CompactobsError, UserError
from tests.cli import one_line_error, run

# Modules that do something when imported: the CLI's entry point runs the CLI, Alembic's env runs migrations.
_NOT_IMPORTED = {"compactobs.__main__", "compactobs._migrations.env"}


def _error_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in the package, by qualified name, found by importing every module."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(compactobs.__path__, "compactobs."):
        if info.name in _NOT_IMPORTED:
            continue
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_error_class_derives_from_compactobs_error() -> None:
    classes = _error_classes()
    names = {name.rpartition(".")[2] for name in classes}
    # The introspection finds what it must: a walk that imported nothing would pass the check below.
    assert {"ConfigError", "StoreError", "GuardError", "SimulationError", "ReportFetchError"} <= names
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, CompactobsError))
    assert outside == []


@pytest.mark.parametrize(
    "name",
    [
        "compactobs.configfile.ConfigError",
        "compactobs.rules.RulesInputError",
        "compactobs.store.errors.StoreError",
        "compactobs.store.replay.ReplayError",
        "compactobs.reports.model.ReportInputError",
        "compactobs.anthropic_reports.ReportFetchError",
        "compactobs.otlp.OtlpConfigError",
        "compactobs.pricing.records.PricingError",
        "compactobs.pricing.overrides.OverridesError",
        "compactobs.alerts.run.AlertInputError",
    ],
)
def test_what_the_user_can_fix_is_a_user_error(name: str) -> None:
    assert issubclass(_error_classes()[name], UserError)


def test_value_errors_stay_value_errors() -> None:
    # Callers that caught ValueError before the tree existed still catch these.
    classes = _error_classes()
    for name in ("ConfigError", "ReportInputError", "OtlpConfigError", "PricingError"):
        (cls,) = [c for qualified, c in classes.items() if qualified.endswith("." + name)]
        assert issubclass(cls, ValueError), name


def test_guard_errors_are_not_user_errors() -> None:
    # Raised into the application by design (on_breach="raise"), not a mistake the user made.
    assert issubclass(compactobs.BudgetExceeded, CompactobsError)
    assert not issubclass(compactobs.GuardError, UserError)
    assert compactobs.UserError is UserError


def test_a_bad_database_url_is_one_line() -> None:
    code, out, err = run("--db", "mysql://user@host/db", "report", "cost")
    one_line_error(code, err)
    assert "unsupported database 'mysql'" in err
    assert out == ""


def test_a_bad_date_is_one_line(tmp_path: Path) -> None:
    code, _, err = run("--db", f"sqlite:///{tmp_path / 'c.db'}", "report", "cost", "--since", "yesterdayish")
    one_line_error(code, err)
    assert "invalid date or time 'yesterdayish'" in err


class _NewUserError(UserError):
    """A user error the CLI has never heard of."""


def test_the_cli_catches_any_user_error_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("", encoding="utf-8")

    def refuse(path: str) -> None:
        raise _NewUserError("the file is\nwrong")

    monkeypatch.setattr("compactobs.rules.load_budgets", refuse)
    code, _, err = run("budgets", "check", str(budgets))
    assert one_line_error(code, err) == "Error: the file is wrong\n"

    def crash(path: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("compactobs.rules.load_budgets", crash)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug shows as one: `run` re-raises it
        run("budgets", "check", str(budgets))


def test_a_budgets_file_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    """TOML's parser recurses per nesting level: a hostile file exhausts the stack. `budgets check` says so
    in one line, exit 2, as for any file it cannot read."""
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "1" + "]" * 5000 + "\n")
    code, out, err = run("budgets", "check", str(deep))
    assert (code, out) == (2, "")
    assert err == f"Error: budgets file {deep} is not valid TOML: nested too deeply\n"


def test_the_guard_module_is_an_attribute_of_the_package_before_anything_loads_it() -> None:
    """The README calls `compactobs.guard.allow_wrap_up(...)` after a bare `import compactobs`; the package
    loads the guard lazily, so the attribute must load it."""
    code = (
        "import compactobs, sys; assert 'compactobs.guard' not in sys.modules; compactobs.guard.allow_wrap_up"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
