"""The local backend's memory cgroups: found under arena's own cgroup on either interface, limited, left behind by
no phase, and the ones an arena killed outright left removed by the next."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import LocalBackend
from sandbox.cgroup import PREFIX, Hierarchy, controller_for_children, own_cgroup, remove_abandoned, remove_when_empty
from sandbox.owners import owner_tag, pid_namespace
from sandbox.phases import bare_phase
from sandbox.trial import PhaseOutput
from tests.backends import memory_cgroups
from tests.run_helpers import dead_pid

V1_CGROUP = "12:pids:/\n4:memory:/process_api/abc\n1:name=systemd:/\n0::/\n"
V1_MOUNTS = (
    "25 24 0:22 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "29 24 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "33 24 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V2_CGROUP = "0::/user.slice/arena.service\n"
V2_MOUNTS = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
# a container without its own cgroup namespace: the mount's root is the container's cgroup
NESTED_MOUNTS = "29 24 0:26 /docker/c0ffee /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
NESTED_CGROUP = "4:memory:/docker/c0ffee/arena\n"


def fake_proc(tmp_path: Path, cgroup: str, mounts: str) -> Path:
    (tmp_path / "cgroup").write_text(cgroup)
    (tmp_path / "mountinfo").write_text(mounts)
    return tmp_path


@pytest.mark.parametrize(("cgroup", "mounts", "expected"), [
    (V1_CGROUP, V1_MOUNTS, Hierarchy(Path("/sys/fs/cgroup/memory/process_api/abc"), 1)),
    (V2_CGROUP, V2_MOUNTS, Hierarchy(Path("/sys/fs/cgroup/user.slice/arena.service"), 2)),
    (NESTED_CGROUP, NESTED_MOUNTS, Hierarchy(Path("/sys/fs/cgroup/memory/arena"), 1)),
    ("3:cpu:/\n", "29 24 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", None),
])
def test_arenas_own_memory_cgroup_is_found(tmp_path, cgroup, mounts, expected):
    assert own_cgroup("memory", fake_proc(tmp_path, cgroup, mounts)) == expected


@pytest.mark.parametrize(("cgroup", "mounts", "expected"), [
    (V1_CGROUP, V1_MOUNTS, Hierarchy(Path("/sys/fs/cgroup/pids"), 1)),
    (V2_CGROUP, V2_MOUNTS, Hierarchy(Path("/sys/fs/cgroup/user.slice/arena.service"), 2)),  # one for both
])
def test_arenas_own_pids_cgroup_is_found(tmp_path, cgroup, mounts, expected):
    assert own_cgroup("pids", fake_proc(tmp_path, cgroup, mounts)) == expected


def fake_v2_cgroup(path: Path, processes: str, subtree: str, root: bool = False) -> Path:
    path.mkdir()
    (path / "cgroup.procs").write_text(processes)
    (path / "cgroup.subtree_control").write_text(subtree)
    if not root:  # the root cgroup alone has no cgroup.type
        (path / "cgroup.type").write_text("domain\n")
    return path


def test_a_v2_cgroup_holding_processes_gives_its_children_no_controller(tmp_path):
    """v2 refuses memory there, and takes pids (a threaded controller) only to make the cgroup a threaded domain
    whose new children take no process: arena asks for neither, and changes nothing of the user's cgroup."""
    busy = fake_v2_cgroup(tmp_path / "session.scope", "4242\n", "")
    assert not controller_for_children(busy, "pids") and not controller_for_children(busy, "memory")
    assert (busy / "cgroup.subtree_control").read_text() == ""
    root = fake_v2_cgroup(tmp_path / "root", "1\n4242\n", "cpu memory pids\n", root=True)
    assert controller_for_children(root, "pids") and controller_for_children(root, "memory")
    empty = fake_v2_cgroup(tmp_path / "delegated", "", "")
    assert controller_for_children(empty, "pids")
    assert (empty / "cgroup.subtree_control").read_text() == "+pids"


@pytest.fixture
def cgroups() -> None:
    if not memory_cgroups():
        pytest.skip("no memory cgroup can be made here (needs root or a delegated cgroup)")


def test_only_the_empty_cgroups_of_arenas_that_are_gone_are_removed(cgroups):
    """Those of an arena that has ended, and this arena's own that no phase uses (one whose processes took too
    long to leave); never one with a process in it, nor one of another arena alive."""
    hierarchy = own_cgroup("memory")
    assert hierarchy is not None
    namespace, host = pid_namespace(), socket.gethostname()
    gone, alive = f"{dead_pid()}@{namespace}@{host}", f"{os.getppid()}@{namespace}@{host}"
    abandoned, busy, mine, other = (hierarchy.path / f"{PREFIX}{name}" for name in (
        f"abandoned-{gone}", f"busy-{gone}", f"slow-{owner_tag()}", f"other-{alive}"))
    for cgroup in (abandoned, busy, mine, other):
        cgroup.mkdir()
    sleeper = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0" && exec sleep 60', str(busy / "cgroup.procs")])
    try:
        deadline = time.monotonic() + 60
        while not (busy / "cgroup.procs").read_text().strip():  # the shell has not joined yet
            assert time.monotonic() < deadline and sleeper.poll() is None, "the process never joined the cgroup"
            time.sleep(0.01)
        remove_abandoned(hierarchy.path)
        assert not abandoned.exists() and not mine.exists()
        assert busy.exists()  # its arena is gone, but a process of it is not
        assert other.exists()  # an arena that lives may be about to start a phase there
    finally:
        sleeper.kill()
        sleeper.wait()
        for cgroup in (abandoned, busy, mine, other):
            remove_when_empty(cgroup)


@pytest.mark.slow  # a real sandbox
def test_a_phase_runs_in_a_cgroup_of_its_own_that_goes_with_it(cgroups, tmp_path):
    """Limited as asked, its processes the kernel's first pick when memory runs short, and gone afterwards."""
    backend = LocalBackend(isolation="bwrap", mem_limit="1g")
    hierarchy = own_cgroup("memory")
    assert hierarchy is not None
    limit_file = "memory.limit_in_bytes" if hierarchy.version == 1 else "memory.max"
    seen: dict[str, tuple[str, str]] = {}

    def look(line: str) -> None:  # the phase waits while we look at its cgroup from outside
        if line.startswith("OOM_SCORE_ADJ"):
            seen.update({cgroup.name: ((cgroup / limit_file).read_text().strip(),
                                       (cgroup / "cgroup.procs").read_text().strip())
                         for cgroup in hierarchy.path.glob(f"{PREFIX}*-{owner_tag()}")})
            seen["score"] = (line.split()[1], "")

    code = ("import time\n"
            "print('OOM_SCORE_ADJ', open('/proc/self/oom_score_adj').read().strip(), flush=True)\n"
            "time.sleep(5)\n")
    run = backend.run_phase(bare_phase(tmp_path / "phase", 60, backend.owner), PhaseOutput(look), ["-c", code])
    assert run.report is not None and run.report.exit_code == 0, run.lines
    assert seen.pop("score") == ("1000", "")
    [(limit, processes)] = seen.values()
    assert int(limit) == 1 << 30 and processes  # the sandbox's processes, in a cgroup named by this arena
    assert not run.oom_killed
    assert not list(hierarchy.path.glob(f"{PREFIX}*-{owner_tag()}"))
