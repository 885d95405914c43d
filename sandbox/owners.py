"""Who made a trial's directory or cgroup: this host and arena process, written into its name, so that a later
arena removes what one killed outright (kill -9 skips every cleanup) left behind, and nothing of one alive."""

from __future__ import annotations

import os
import socket


def owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def tag_is_gone(tag: str) -> bool:
    """Whether the arena that `tag` names has ended; an unreadable tag or another host's arena may be alive."""
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
