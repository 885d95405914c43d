"""Preparing datasets from the CLI: a progress bar per stage on a terminal, one plain line per stage elsewhere.

The building itself is agent/dataset_build.py's; its errors are ArenaErrors, one line each."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from agent.dataset_build import DEFAULT_VAL_FRACTION, build_dataset
from agent.download import StageProgress

QUIET_SECONDS = 1.0  # a build that ends (or fails) sooner prints nothing: a cached dataset, a bad --corpus


class StageLines:
    """Progress for logs and pipes: one line per stage of a build that takes a while."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.printed: set[str] = set()
        self.start = time.monotonic()

    def __call__(self, task: str, done: float, total: float) -> None:
        elapsed = time.monotonic() - self.start
        if task not in self.printed and elapsed >= QUIET_SECONDS:
            self.printed.add(task)
            self.console.print(f"dataset: {task} ({elapsed:.0f} s into the build)", markup=False)


def prepare_dataset(corpus: str, vocab_size: int, *, val_fraction: float = DEFAULT_VAL_FRACTION,
                    shards: int = 1, column: str = "text", cache_root: Path | None = None,
                    console: Console | None = None) -> Path:
    """The dataset directory for `corpus`, built on first use and cached by content."""
    console = console or Console(stderr=True)

    def build(progress: StageProgress) -> Path:
        return build_dataset(corpus, cache_root, vocab_size=vocab_size, val_fraction=val_fraction, shards=shards,
                             column=column, progress=progress)

    if not console.is_terminal:
        return build(StageLines(console))
    columns = (TextColumn("{task.description:<22}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def report(task: str, done: float, total: float) -> None:
            if task not in tasks:  # a stage's name may hold a server's words: never markup
                tasks[task] = bar.add_task(escape(task), total=total or None)
            bar.update(tasks[task], completed=done, total=total or None)

        return build(report)
