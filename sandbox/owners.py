"""Who made a trial's directory or container, a phase's cgroup, a run's or a dataset's scratch directory: this
arena process, its pid namespace and its host, written at the end of its name (or in a label), so that a later
arena removes what one killed outright (kill -9 skips every cleanup) left behind, and nothing of one still
alive. A pid means something only in its own namespace: two containers may share a host name and a /tmp, so an
arena in another pid namespace is taken to be alive."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

_TAG_AT_END = re.compile(r"(?:^|-)(\d+@\d+@[^@/]+)$")  # the random parts before a tag hold no "@"


def owner_tag() -> str:
    """pid@pid-namespace@host of this arena."""
    return f"{os.getpid()}@{pid_namespace()}@{socket.gethostname()}"


def pid_namespace() -> int:
    """The inode of this process's pid namespace (0 where /proc does not say)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def left_behind(parent: Path, prefix: str) -> list[Path]:
    """The entries of `parent` named `prefix`, [a random part and "-",] then the tag of an arena that has ended."""
    found = []
    for path in parent.glob(glob.escape(prefix) + "*"):
        match = _TAG_AT_END.search(path.name[len(prefix):])
        if match and tag_is_gone(match.group(1)):
            found.append(path)
    return found


def remove_left_behind(parent: Path, prefix: str) -> None:
    """Remove what left_behind finds: directories with all they hold, files."""
    for path in left_behind(parent, prefix):
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a directory trial code wrote into, as far as this user may, never raising. The trial shaped the
    tree: thousands of levels deep (Python's rmtree recurses once per level and gives up near 1,000), paths
    past PATH_MAX, directories it took its own permissions from. GNU rm removes a tree of any depth."""
    if os.getuid() != 0:  # root enters any directory; this user gives back what its trial took from its own
        with contextlib.suppress(OSError):  # directories only: a file may be a hard link into the dataset cache
            subprocess.run(["find", str(path), "-type", "d", "!", "-perm", "-u=rwx", "-exec", "chmod", "u+rwx", "{}",
                            ";"], capture_output=True, check=False)  # each before find enters it
    with contextlib.suppress(OSError):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, check=False)
    if path.exists():  # an rm without GNU's options (BusyBox): Python's own, as deep as it can go
        with contextlib.suppress(RecursionError):
            shutil.rmtree(path, ignore_errors=True)


def tag_is_gone(tag: str) -> bool:
    """Whether the arena that `tag` names has ended; one on another host or in another pid namespace may be
    alive."""
    pid, namespace, host = (tag.split("@", 2) + ["", ""])[:3]
    return (host == socket.gethostname() and namespace == str(pid_namespace()) and pid.isdigit()
            and process_is_gone(int(pid)))


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, run by another user
    return False
