"""What every bench shares: the machine's load printed before and after, and `--ref GIT_REF`.

`--ref GIT_REF` runs the bench twice in one invocation: at GIT_REF (its own bench script, from a
temporary git worktree, importing that commit's compactobs) and at this checkout, one after the
other, so that a regression is measured against its cause on the same machine at the same moment.
The rest of the command line goes to both runs unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_INNER = "COMPACTOBS_BENCH_INNER"  # set in the two runs `--ref` starts: the outer run prints the load


def load() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _split_ref(argv: list[str]) -> tuple[str | None, list[str]]:
    rest: list[str] = []
    ref: str | None = None
    items = iter(argv)
    for item in items:
        if item == "--ref":
            ref = next(items, None)
            if ref is None:
                raise SystemExit("--ref needs a git ref, e.g. --ref HEAD~5")
        elif item.startswith("--ref="):
            ref = item.split("=", 1)[1]
        else:
            rest.append(item)
    return ref, rest


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@contextmanager
def _worktree(ref: str) -> Iterator[Path]:
    try:
        sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"--ref {ref!r}: not a commit in {ROOT}") from None
    with tempfile.TemporaryDirectory(prefix="compactobs-ref-") as tmp:
        path = Path(tmp) / sha[:12]
        _git("worktree", "add", "--detach", "--quiet", str(path), sha)
        try:
            # A fresh tree has no bytecode: compile it first, or its first imports pay for it.
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(path / "compactobs")], check=True)
            yield path
        finally:
            _git("worktree", "remove", "--force", str(path))


def _run_script(root: Path, script: str, args: list[str]) -> int:
    # PYTHONPATH puts that tree's compactobs ahead of the editable install of this checkout (which
    # setuptools' finder appends after the path search).
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, **{_INNER: "1"}, PYTHONPATH=path)
    return subprocess.run([sys.executable, str(root / "bench" / script), *args], env=env, cwd=root).returncode


def run(main: Callable[[], None]) -> None:
    """Run a bench's `main` (which reads `sys.argv`), with `--ref` and the load lines around it."""
    ref, rest = _split_ref(sys.argv[1:])
    script = Path(sys.argv[0]).name
    inner = os.environ.get(_INNER) == "1"
    if not inner:
        print(f"machine load before: {load()} ({os.cpu_count()} cores)", flush=True)
    if ref is None:
        sys.argv[1:] = rest
        main()
        if inner:
            return
    else:
        with _worktree(ref) as tree:
            head = _git("rev-parse", "--short=12", "HEAD")
            print(f"\n== at {ref} ({tree.name}), its own bench/{script}", flush=True)
            code = _run_script(tree, script, rest)
            dirty = ", with uncommitted changes" if _git("status", "--porcelain") else ""
            # Compiled like the ref's tree: under PYTHONDONTWRITEBYTECODE no import writes bytecode, and
            # this side would compile its changed modules from source on every start while the ref's did not.
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "compactobs")], check=True)
            print(f"\n== at this checkout ({head}{dirty})", flush=True)
            code = _run_script(ROOT, script, rest) or code
        if code:
            raise SystemExit(code)
    print(f"machine load after: {load()}", flush=True)
