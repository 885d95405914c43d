"""Who made a trial's directory, a phase's cgroup, a run's or a dataset's scratch directory: this host and arena
process, written at the end of its name, so that a later arena removes what one killed outright (kill -9 skips
every cleanup) left behind, and nothing of one still alive."""

from __future__ import annotations

import glob
import os
import re
import socket
from pathlib import Path

_TAG_AT_END = re.compile(r"(?:^|-)(\d+@[^@/]+)$")  # the random parts before a tag hold no "@"


def owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def left_behind(parent: Path, prefix: str) -> list[Path]:
    """The entries of `parent` named `prefix`, [a random part and "-",] then the tag of an arena that has ended."""
    found = []
    for path in parent.glob(glob.escape(prefix) + "*"):
        match = _TAG_AT_END.search(path.name[len(prefix):])
        if match and tag_is_gone(match.group(1)):
            found.append(path)
    return found


def tag_is_gone(tag: str) -> bool:
    """Whether the arena that `tag` names has ended; another host's arena may be alive."""
    pid, _, host = tag.partition("@")
    return host == socket.gethostname() and pid.isdigit() and process_is_gone(int(pid))


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, run by another user
    return False
