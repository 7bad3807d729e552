"""When the command started: a time budget (`--time-budget`) counts from it.

`lordkit.cli.app.main` (the console script and `python -m lordkit`) marks the process's own start,
read from /proc on Linux, so that the interpreter's start and the imports count against the budget
too; where nothing was marked (the command run in-process, or no /proc), a command counts from when
it asks."""

from __future__ import annotations

import os
import time
from pathlib import Path

_started: float | None = None  # time.monotonic() of the process's start, once marked


def process_age_s() -> float | None:
    """Seconds since this process started (Linux), or None where that cannot be read."""
    try:
        stat = Path("/proc/self/stat").read_text()
        started_ticks = int(stat.rpartition(")")[2].split()[19])  # field 22 of proc(5)
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
        age = since_boot - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return age if 0.0 <= age < 86400.0 else None


def mark_process_start() -> None:
    """Record the process's start (called once, by the console script, before the command runs)."""
    global _started
    age = process_age_s()
    _started = time.monotonic() - (age or 0.0)


def command_start() -> float:
    """time.monotonic() the current command counts from: the marked process start, else now."""
    return _started if _started is not None else time.monotonic()
