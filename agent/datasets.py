"""Preparing datasets from the CLI, with a progress bar per stage."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from agent.errors import ArenaError
from train_template import prepare as harness_prepare


def prepare_dataset(corpus: str, vocab_size: int, *, val_fraction: float = harness_prepare.DEFAULT_VAL_FRACTION,
                    shards: int = 1, column: str = "text", cache_root: Path | None = None,
                    console: Console | None = None) -> Path:
    """The dataset directory for `corpus`, built on first use and cached by content."""
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description:<22}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def report(task: str, done: float, total: float) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total or None)
            bar.update(tasks[task], completed=done, total=total or None)

        try:
            return harness_prepare.prepare(corpus, cache_root, vocab_size=vocab_size, val_fraction=val_fraction,
                                           shards=shards, column=column, progress=report)
        except harness_prepare.DataError as e:
            raise ArenaError(str(e)) from None
