"""Paths the user names: directories arena writes to (the dataset cache, the runs directory), checked before any
work is done, and the small text files it reads (--train-py, --config)."""

from __future__ import annotations

import argparse
import math
import os
import stat
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


def path_argument(text: str) -> Path:
    """An argparse type: a path, but not an empty one (which Path reads as the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or directory")
    return Path(text)


def finite_float(text: str) -> float:
    """An argparse type: a float that is a number (not NaN or infinite)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


finite_float.__name__ = "number"  # argparse names the type in "invalid number value: 'abc'"


def read_text_file(path: Path, what: str, limit: int) -> str:
    """A UTF-8 file, or a pipe (`<(...)`), of at most `limit` bytes; else one line saying what is wrong. Opened
    without waiting: a named FIFO that no process writes to reads as empty instead of blocking for ever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ArenaError(f"cannot read {what} {path}: {e.strerror}; name an existing file") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        os.close(fd)
        raise ArenaError(f"{what} {path} is not a file; name a file")
    os.set_blocking(fd, True)  # a pipe's writer may not have written yet
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArenaError(f"{what} {path} is over {limit / 2**20:g} MiB; name a smaller file")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise ArenaError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
