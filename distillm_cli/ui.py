"""Terminal output: rich progress bars (with tokens/s and ETA) and summary tables, rank 0 only."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: wide enough that the bar's fields are not cut
    console = Console(stderr=True, width=160)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class Bar:
    """A progress bar that also shows tokens/s and any extra fields (loss, phi, sources)."""

    def __init__(self, progress: Progress | None, task, start_step: int = 0):
        self.progress, self.task = progress, task
        self.tokens, self.started = 0, time.perf_counter()
        if progress is not None and start_step:
            progress.update(task, completed=start_step)

    def advance(self, steps: int = 1, tokens: int = 0, **fields) -> None:
        self.tokens += tokens
        if self.progress is None:
            return
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        info = "  ".join(f"{k} {v}" for k, v in fields.items())
        self.progress.update(self.task, advance=steps, info=f"{rate:,.0f} tok/s  {info}")


@contextmanager
def progress_bar(description: str, total: int, start: int = 0):
    if not is_main_process():
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield Bar(progress, task, start)


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    if not is_main_process():
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
