"""Running the `compactobs` command in a real terminal of a given width (a pseudo-terminal), as a user
types it: stdout is a TTY, so the CLI fits its tables to the terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios


def run_in_terminal(*args: str, width: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, what the terminal showed: stdout and stderr, line ends as \\n) of `compactobs *args` in a
    terminal `width` columns wide, without colour (NO_COLOR)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 500, width, 0, 0))
    environ = {**os.environ, "NO_COLOR": "1", **(env or {})}
    environ.pop("COLUMNS", None)
    environ.pop("LINES", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "compactobs", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=environ,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    code = process.wait()
    return code, b"".join(chunks).decode().replace("\r\n", "\n")
