"""One exclusive lock per run, held for as long as an arena process works on it.

The lock is `flock` on runs/<name>/lock: taken before anything of the run is read or written, released
by the kernel when the process ends however it ends (kill -9 included), so it is never stale. The
holder writes its pid into the file as soon as it has the lock, so a second arena can say who has it, even
while the first is still checking its start (a second on a dataset build or a model check may wait minutes).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import ArenaError

LOCK_FILE = "lock"


class RunLock:
    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    @classmethod
    def take(cls, run_dir: Path) -> RunLock:
        """The run's lock, or ArenaError naming the process that holds it."""
        path = run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ArenaError(f"run '{run_dir.name}' is in use by arena process {holder}; wait for it to end, or "
                             f"stop it (kill {holder}) and run the same command again") from None
        os.ftruncate(fd, 0)  # the pid of an earlier holder, long gone, would name a process that is not arena
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1
