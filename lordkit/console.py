"""Shared rich console (stderr, so stdout stays for results) and the progress bar of every long job."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)  # progress, warnings, diagnostics
out_console = Console()  # results (tables) a user may redirect or pipe
if not out_console.is_terminal and "COLUMNS" not in os.environ:
    # Redirected to a file or a pipe: rich would assume 80 columns and squeeze wide tables into
    # ellipses; a file has room, so give tables their natural width (COLUMNS still wins).
    out_console = Console(width=160)


class RateColumn(ProgressColumn):
    """Items per second, with the unit given as the task field `unit` (default 'it')."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class _Progress(Progress):
    """rich's Progress, except that on a file or pipe a bar that vanishes (a failed run, a transient
    bar) leaves no empty line behind: the error line is then the whole of stderr."""

    def stop(self) -> None:
        if self.disable:
            return
        self.live.stop()
        if not self.console.is_interactive and not self.console.is_jupyter and not self.live.transient:
            self.console.print()


def make_progress(*extra_columns, transient: bool = False) -> Progress:
    """Progress bar with count, rate, elapsed time and ETA: `with make_progress() as p: ...`."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
    )
