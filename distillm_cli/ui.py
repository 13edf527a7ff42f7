"""What users see, rank 0 only: progress with tokens/s and ETA, and summary tables.

In a terminal progress is a rich bar. When stderr is a file (a cluster job's log, CI, a
pipe), a bar would only be drawn when its stage ends, so progress is printed as plain
lines instead: every `every_steps` steps for training, every PLAIN_SECONDS for
generation and evaluation, and once at the end.
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
PLAIN_SECONDS = 10.0  # generation and evaluation in a log file: one line this often


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


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class PlainBar:
    """Progress as plain lines for a log file: `description  step 120/300  loss 0.71  lr 4.1e-04
    1,017 tok/s  elapsed 0:00:54  eta 0:01:21` (no `step` word when every_steps is 0)."""

    def __init__(self, description: str, total: int, start: int = 0, every_steps: int = 0, stream=None):
        self.description, self.total, self.start, self.done = description, total, start, start
        self.every_steps, self.stream = every_steps, stream or sys.stderr
        self.tokens, self.started = 0, time.perf_counter()
        self.last_line = self.started

    def advance(self, steps: int = 1, tokens: int = 0, **fields) -> None:
        self.done += steps
        self.tokens += tokens
        now = time.perf_counter()
        if self.every_steps:
            due = self.done % self.every_steps == 0
        else:
            due = now - self.last_line >= PLAIN_SECONDS
        if due or self.done >= self.total:
            self.last_line = now
            print(self.line(now, fields), file=self.stream, flush=True)

    def line(self, now: float, fields: dict) -> str:
        elapsed = now - self.started
        progressed = self.done - self.start  # this run's share (a resumed run starts part way)
        eta = elapsed / progressed * (self.total - self.done) if progressed else float("nan")
        count = f"{'step ' if self.every_steps else ''}{self.done}/{self.total}"
        return "  ".join([self.description, count, *(f"{k} {v}" for k, v in fields.items()),
                          f"{self.tokens / max(elapsed, 1e-9):,.0f} tok/s", f"elapsed {_clock(elapsed)}",
                          f"eta {_clock(eta)}"])


@contextmanager
def progress_bar(description: str, total: int, start: int = 0, every_steps: int = 0):
    """A bar in a terminal, plain lines in a log file (every `every_steps` steps, else every
    PLAIN_SECONDS); nothing on ranks other than 0."""
    if not is_main_process():
        yield Bar(None, None)
        return
    if not console.is_terminal:
        yield PlainBar(description, total, start, every_steps)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield Bar(progress, task, start)


def mean_std(values: list[float], digits: int = 2) -> str:
    """'mean ± std' of a few runs (sample std; 0 for one run), as the result tables print them."""
    import statistics

    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    if not is_main_process():
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
