"""The one progress-bar helper: rich bars with ETA, silent when quiet or not a TTY.

Every text printed here is plain, never rich markup: status lines carry paths, run ids and recorded
failure reasons, and a ``[/…]`` in one (a gloo error names ``[/__w/…/pair.cc:545]``) raised
``MarkupError``, while ``[…]`` vanished (review 2, D2)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_quiet = False
_bars = True
console = Console(stderr=True)


class MetricSink(Protocol):
    """Where a run's per-step numbers go: the run's tracker (``bench.runs.tracking``)."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None: ...


_sink: MetricSink | None = None


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def set_bars(bars: bool) -> None:
    """Turn progress bars off (status lines stay), e.g. in parallel worker processes."""
    global _bars
    _bars = bars


def enabled() -> bool:
    return _bars and not _quiet and sys.stderr.isatty()


class _Task:
    def __init__(self, progress: Progress | None, task_id):
        self._progress, self._task_id = progress, task_id

    def advance(self, amount: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, advance=amount, **fields)


@contextmanager
def task(description: str, total: int) -> Iterator[_Task]:
    """A progress bar for ``total`` units; a no-op object when progress is disabled."""
    if not enabled():
        yield _Task(None, None)
        return
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield _Task(progress, progress.add_task(description, total=total, info=""))


def log(message: str) -> None:
    """A status line (stderr), suppressed by --quiet."""
    if not _quiet:
        console.print(message, markup=False, highlight=False, soft_wrap=True)


def error_line(error: BaseException) -> str:
    """One line naming an error: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def warn(message: str) -> None:
    """A line that must be seen even under --quiet (stderr): something the user asked for did not happen."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def metrics_to(sink: MetricSink) -> Iterator[None]:
    """Send ``metrics`` to ``sink`` for the duration (one run's tracker). The loops report their numbers
    here, as they report progress to the bars, so they never know which trackers are on (or any)."""
    global _sink
    saved, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = saved


def metrics(step: int, values: dict[str, float]) -> None:
    """One step's numbers (keys ``<stage>/<name>``, e.g. ``pretrain/loss``, ``finetune/SLF/loss``) to the
    current run's tracker; nothing when none is installed (a bare loop, a follower rank under DDP)."""
    if _sink is not None:
        _sink.log_step(step, values)
