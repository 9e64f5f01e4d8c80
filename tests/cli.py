"""Running the `compactobs` command in tests, as a user types it (click's CliRunner)."""

from __future__ import annotations

from click.testing import CliRunner

from compactobs.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); an exception that is not an exit is raised, so a traceback fails."""
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, stderr: str) -> str:
    """Asserts a user error: exit code 2 and one line, `Error: ...`, never a traceback."""
    assert code == 2, stderr
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    return stderr
