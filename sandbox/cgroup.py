"""A memory cgroup for each local phase, where this machine lets arena make one: the kernel's own limit on
everything the phase's processes hold, the limit Docker sets on a container.

The supervisor's count (resident sets, private tmpfs files, System V memory) sees what a process can be
asked about; the kernel's charge also holds what no process shows, such as kernel buffers and a memfd
written but never mapped. Past the limit the kernel reclaims what it can (page cache) and then kills, and
the cgroup's oom_kill count says so. Arena needs root (or a delegated cgroup) for this; elsewhere phases
run without one and the supervisor's count is the limit (README, Isolation).

cgroup v1 (a `memory` hierarchy) and v2 are both used; v2 only where arena's own cgroup can give its
children the memory controller, which v2 refuses to a cgroup that holds processes unless it is the root.
Each phase's cgroup is a child of arena's own, so whatever limit arena runs under still holds, and is named
after its arena (sandbox/owners.py): one left empty by an arena killed outright, or by a phase whose
processes took too long to leave, is removed by the next phase that makes a cgroup there.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sandbox.owners import left_behind, owner_tag

PREFIX = "arena-phase-"
_IN_USE: set[Path] = set()  # this arena's phase cgroups not yet removed
REMOVE_SECONDS = 5.0  # a killed phase's processes take a moment to leave their cgroup


@dataclass(frozen=True)
class Hierarchy:
    """Where arena's own memory cgroup is, and which version of the interface it speaks."""
    path: Path
    version: int


def own_memory_cgroup(proc: Path = Path("/proc/self")) -> Hierarchy | None:
    """Arena's memory cgroup as mounted here: the v1 memory hierarchy, else the v2 one; None if neither."""
    memberships = {}
    for line in (proc / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        memberships[controllers] = path
    v1 = next((path for controllers, path in memberships.items() if "memory" in controllers.split(",")), None)
    for line in (proc / "mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _, options = tail.split(" ")[:3]
        root, mountpoint = fields.split(" ")[3:5]
        if fstype == "cgroup" and v1 is not None and "memory" in options.split(","):
            return Hierarchy(mounted(mountpoint, root, v1), 1)
        if fstype == "cgroup2" and v1 is None and "" in memberships:
            return Hierarchy(mounted(mountpoint, root, memberships[""]), 2)
    return None


def mounted(mountpoint: str, root: str, path: str) -> Path:
    """The directory of cgroup `path` under a mount of the hierarchy's `root`."""
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return Path(mountpoint) / path.lstrip("/")


class MemoryCgroup:
    """One phase's cgroup: limit set on creation; processes join it by `enter`; `remove` when they are gone."""

    def __init__(self, path: Path, version: int):
        self.path, self.version = path, version

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup | None:
        """A new cgroup limited to `limit_bytes` with no swap, or None where arena may not make one."""
        try:
            hierarchy = own_memory_cgroup()
            if hierarchy is None or not os.access(hierarchy.path, os.W_OK):
                return None
            remove_abandoned(hierarchy.path)
            if hierarchy.version == 2 and not memory_for_children(hierarchy.path):
                return None
            path = hierarchy.path / f"{PREFIX}{uuid.uuid4().hex[:12]}-{owner_tag()}"
            _IN_USE.add(path)  # before it exists: another worker's phase would take it for one left empty
            path.mkdir()
        except OSError:
            return None
        cgroup = cls(path, hierarchy.version)
        try:
            cgroup.limit(limit_bytes)
        except OSError:
            cgroup.remove()
            return None
        return cgroup

    def limit(self, limit_bytes: int) -> None:
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):  # absent without swap accounting: then there is no swap to count
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        else:
            (self.path / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")
            with contextlib.suppress(OSError):  # past the limit the whole phase goes, as the supervisor would do
                (self.path / "memory.oom.group").write_text("1")

    def enter(self, argv: list[str]) -> list[str]:
        """`argv` prefixed so that its process joins this cgroup before it starts anything (it is started by
        exec; no child of it can be forked outside)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def oom_kills(self) -> int:
        """How many processes the kernel killed here for memory."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (they are being killed when this is called)."""
        deadline = time.monotonic() + REMOVE_SECONDS
        _IN_USE.discard(self.path)  # removed now, or by a later phase once its processes are gone
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


def memory_for_children(path: Path) -> bool:
    """cgroup v2: whether the memory controller is (or can be) enabled for children of `path`."""
    control = path / "cgroup.subtree_control"
    if "memory" in control.read_text().split():
        return True
    try:
        control.write_text("+memory")
    except OSError:
        return False  # not delegated, or `path` holds processes and is not the root
    return True


def remove_abandoned(parent: Path) -> None:
    """Empty phase cgroups of arenas that are gone, and this arena's own that no phase uses any more (one that
    lives may be about to start a phase in its own)."""
    mine = {path for path in parent.glob(f"{PREFIX}*-{owner_tag()}") if path not in _IN_USE}
    for child in mine | set(left_behind(parent, PREFIX)):
        with contextlib.suppress(OSError):  # busy
            if not (child / "cgroup.procs").read_text().strip():
                child.rmdir()
