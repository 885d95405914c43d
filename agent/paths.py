"""Directories arena writes to (the dataset cache, the runs directory), checked before any work is done."""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import ArenaError

CACHE_REMEDY = "pass another --cache (or ARENA_CACHE)"
RUNS_REMEDY = "pass another --runs-dir"


def require_writable_dir(path: Path, what: str, remedy: str) -> None:
    """ArenaError, in one line, unless `path` is a directory this process can write to or can be made one; nothing
    is created here (a refused start leaves the disk as it was)."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        problem = "is not a directory" if existing == path else f"cannot be made: {existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not writable" if existing == path else f"cannot be made: {existing} is not writable"
    else:
        return
    raise ArenaError(f"{what} {path} {problem}; {remedy}")


def make_dirs(path: Path, what: str, remedy: str, error: type[ArenaError] = ArenaError) -> None:
    """`mkdir -p path`, or one line naming `what` and `remedy`: for what require_writable_dir cannot tell
    beforehand (/proc, a full disk)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot write to {what} ({e.strerror}); {remedy}") from None
