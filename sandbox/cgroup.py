"""The cgroups of each local phase, where this machine lets arena make them: the kernel's own limits on
everything the phase's processes hold and on how many there are, the limits Docker sets on a container.

Memory: the supervisor's count (resident sets, private tmpfs files, System V memory) sees what a process can
be asked about; the kernel's charge also holds what no process shows, such as kernel buffers and a memfd
written but never mapped. Past the limit the kernel reclaims what it can (page cache) and then kills, and
the cgroup's oom_kill count says so.

Processes: without a cgroup the only limit is the trial user's RLIMIT_NPROC, which counts that user's
processes on the whole host, so one trial holding them all would starve every trial beside it run as the
same user. A pids cgroup counts the phase's own.

Arena needs root (or a delegated cgroup) for these; elsewhere phases run without them (README, Isolation).
cgroup v1 (a hierarchy per controller) and v2 are both used; v2 only where arena's own cgroup can give its
children the controller, which v2 refuses to a cgroup that holds processes unless it is the root.
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


def own_cgroup(controller: str, proc: Path = Path("/proc/self")) -> Hierarchy | None:
    """Arena's cgroup for `controller` as mounted here: in its v1 hierarchy, else the v2 one; None if neither."""
    memberships = {}
    for line in (proc / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        memberships[controllers] = path
    v1 = next((path for controllers, path in memberships.items() if controller in controllers.split(",")), None)
    for line in (proc / "mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _, options = tail.split(" ")[:3]
        root, mountpoint = fields.split(" ")[3:5]
        if fstype == "cgroup" and v1 is not None and controller in options.split(","):
            return Hierarchy(mounted(mountpoint, root, v1), 1)
        if fstype == "cgroup2" and v1 is None and "" in memberships:
            return Hierarchy(mounted(mountpoint, root, memberships[""]), 2)
    return None


def mounted(mountpoint: str, root: str, path: str) -> Path:
    """The directory of cgroup `path` under a mount of the hierarchy's `root`."""
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return Path(mountpoint) / path.lstrip("/")


class PhaseCgroup:
    """One phase's cgroups, a directory per hierarchy its controllers are in (v1: one per controller; v2: one
    for both): limits set on creation; processes join them by `enter`; `remove` when they are gone."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}   # controller -> the directory that limits it
        self.version: dict[str, int] = {}  # controller -> its interface's version
        self.made: list[Path] = []         # every directory made, limiting or not

    @classmethod
    def create(cls, memory_bytes: int | None, processes: int | None) -> PhaseCgroup | None:
        """New cgroups limiting memory to `memory_bytes` (no swap) and the processes to `processes`, each where
        arena may make one (None: that limit is not wanted); None where it may make neither."""
        cgroup, name = cls(), f"{PREFIX}{uuid.uuid4().hex[:12]}-{owner_tag()}"
        for controller, limit in (("memory", memory_bytes), ("pids", processes)):
            if limit is None:
                continue
            try:
                hierarchy = own_cgroup(controller)
                if hierarchy is None or not os.access(hierarchy.path, os.W_OK):
                    continue
                if hierarchy.version == 2 and not controller_for_children(hierarchy.path, controller):
                    continue
                path = hierarchy.path / name
                if path not in cgroup.made:  # v2: one directory for both controllers
                    remove_abandoned(hierarchy.path)
                    _IN_USE.add(path)  # before it exists: another worker's phase would take it for one left empty
                    path.mkdir()
                    cgroup.made.append(path)
                    if hierarchy.version == 2 and (path / "cgroup.type").read_text().strip() != "domain":
                        break  # it could take no process (see controller_for_children), for either controller
                cgroup.paths[controller], cgroup.version[controller] = path, hierarchy.version
                set_limit(path, hierarchy.version, controller, limit)
            except OSError:
                cgroup.paths.pop(controller, None)
        if cgroup.paths:
            return cgroup
        cgroup.remove()
        return None

    def limits(self, controller: str) -> bool:
        return controller in self.paths

    def enter(self, argv: list[str]) -> list[str]:
        """`argv` prefixed so that its process joins these cgroups before it starts anything (it is started by
        exec; no child of it can be forked outside)."""
        procs = [str(path / "cgroup.procs") for path in dict.fromkeys(self.paths.values())]
        joins = " && ".join(f'echo $$ > "${i}"' for i in range(len(procs)))  # $0, $1: the cgroup.procs files
        return ["/bin/sh", "-c", f'{joins} && shift {len(procs) - 1} && exec "$@"', *procs, *argv]

    def oom_kills(self) -> int:
        """How many processes the kernel killed here for memory."""
        if "memory" not in self.paths:
            return 0
        name = "memory.oom_control" if self.version["memory"] == 1 else "memory.events"
        try:
            for line in (self.paths["memory"] / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Remove the cgroups once their processes are gone (they are being killed when this is called)."""
        for path in self.made:
            remove_when_empty(path)


def set_limit(path: Path, version: int, controller: str, limit: int) -> None:
    if controller == "pids":
        (path / "pids.max").write_text(str(limit))
    elif version == 1:
        (path / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting: then there is no swap to count
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
    else:
        (path / "memory.max").write_text(str(limit))
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
        with contextlib.suppress(OSError):  # past the limit the whole phase goes, as the supervisor would do
            (path / "memory.oom.group").write_text("1")


def remove_when_empty(path: Path) -> None:
    """Remove a phase's cgroup once its processes have left (a killed process takes a moment)."""
    deadline = time.monotonic() + REMOVE_SECONDS
    _IN_USE.discard(path)  # removed now, or by a later phase once its processes are gone
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def controller_for_children(path: Path, controller: str) -> bool:
    """cgroup v2: whether `controller` is (or can be) enabled for children of `path`, and a child of it can
    take processes. A cgroup other than the root (which alone has no cgroup.type) that holds processes can
    give its children none: v2 refuses memory there, and accepts pids, a threaded controller, only to make
    it a threaded domain whose new children take no process at all."""
    if (path / "cgroup.type").exists() and (path / "cgroup.procs").read_text().strip():
        return False
    control = path / "cgroup.subtree_control"
    if controller in control.read_text().split():
        return True
    try:
        control.write_text(f"+{controller}")
    except OSError:
        return False  # not delegated to arena
    return True


def remove_abandoned(parent: Path) -> None:
    """Empty phase cgroups of arenas that are gone, and this arena's own that no phase uses any more (one that
    lives may be about to start a phase in its own)."""
    mine = {path for path in parent.glob(f"{PREFIX}*-{owner_tag()}") if path not in _IN_USE}
    for child in mine | set(left_behind(parent, PREFIX)):
        with contextlib.suppress(OSError):  # busy
            if not (child / "cgroup.procs").read_text().strip():
                child.rmdir()
