"""Preparing datasets from the CLI: a progress bar per stage on a terminal, one plain line per stage elsewhere."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from agent.errors import ArenaError
from train_template import prepare as harness_prepare

QUIET_SECONDS = 1.0  # a build that ends (or fails) sooner prints nothing: a cached dataset, a bad --corpus


class StageLines:
    """Progress for logs and pipes: one line per stage of a build that takes a while."""

    def __init__(self, console: Console):
        self.console = console
        self.printed: set[str] = set()
        self.start = time.monotonic()

    def __call__(self, task: str, done: float, total: float) -> None:
        elapsed = time.monotonic() - self.start
        if task not in self.printed and elapsed >= QUIET_SECONDS:
            self.printed.add(task)
            self.console.print(f"dataset: {task} ({elapsed:.0f} s)", markup=False)


def prepare_dataset(corpus: str, vocab_size: int, *, val_fraction: float = harness_prepare.DEFAULT_VAL_FRACTION,
                    shards: int = 1, column: str = "text", cache_root: Path | None = None,
                    console: Console | None = None) -> Path:
    """The dataset directory for `corpus`, built on first use and cached by content."""
    console = console or Console(stderr=True)
    options = dict(vocab_size=vocab_size, val_fraction=val_fraction, shards=shards, column=column)
    try:
        if not console.is_terminal:
            return harness_prepare.prepare(corpus, cache_root, progress=StageLines(console), **options)
        columns = (TextColumn("{task.description:<22}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def report(task: str, done: float, total: float) -> None:
                if task not in tasks:
                    tasks[task] = bar.add_task(task, total=total or None)
                bar.update(tasks[task], completed=done, total=total or None)

            return harness_prepare.prepare(corpus, cache_root, progress=report, **options)
    except harness_prepare.DataError as e:
        raise ArenaError(str(e)) from None
