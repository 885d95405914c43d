"""What an arena killed outright (kill -9 skips every cleanup) leaves behind: trial directories, a run's and a
dataset's scratch directories, a download's partial file, phase cgroups. Each is named after its arena's pid and
host; the next arena to make one of its kind removes those of arenas that have ended, and nothing of one alive."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from agent.run import clear_interrupted_creation
from sandbox.owners import left_behind, owner_tag, pid_namespace, remove_left_behind, remove_tree
from sandbox.trial import TRIAL_DIR_PREFIX
from tests.run_helpers import check_run_consistent, dead_pid, fake_arena_run


@pytest.mark.parametrize("prefix, random_part", [
    (TRIAL_DIR_PREFIX, "k2_x9abc-"),          # tempfile's random part, then the tag
    ("arena-phase-", "0f3a9c1d2e4b-"),        # a cgroup: a uuid's hex, then the tag
    (".my-run.creating-", ""),                # a run being made
    ("d6cf3966e65cc0e5.tmp-", ""),            # a dataset being built
])
def test_only_what_arenas_that_have_ended_left_is_found(tmp_path, prefix, random_part):
    host, namespace = socket.gethostname(), pid_namespace()
    gone = f"{dead_pid()}@{namespace}@{host}"
    left = tmp_path / f"{prefix}{random_part}{gone}"
    kept = [tmp_path / f"{prefix}{random_part}{owner_tag()}",                      # this arena's: alive
            tmp_path / f"{prefix}{random_part}{dead_pid()}@{namespace}@another-host",  # may be alive there
            tmp_path / f"{prefix}{random_part}{dead_pid()}@{namespace + 1}@{host}",  # another container's
            tmp_path / f"{prefix}{random_part}12345",                              # no tag: not ours to judge
            tmp_path / f"other{random_part}{gone}"]                                # another prefix
    for path in [left, *kept]:
        path.mkdir()
    assert left_behind(tmp_path, prefix) == [left]


def test_what_ended_arenas_left_is_removed_files_and_directories_alike(tmp_path):
    download, build = tmp_path / f"shard.bin.tmp-{dead_tag()}", tmp_path / f"d6cf.tmp-{dead_tag()}"
    live = tmp_path / f"d6cf.tmp-{owner_tag()}"
    download.write_bytes(b"half a shard")
    (build / "train.bin").parent.mkdir()
    (build / "train.bin").write_bytes(b"half a dataset")
    live.mkdir()
    remove_left_behind(tmp_path, "shard.bin.tmp-")
    remove_left_behind(tmp_path, "d6cf.tmp-")
    assert sorted(tmp_path.iterdir()) == [live]


def test_a_tree_deeper_than_python_can_recurse_is_removed(tmp_path):
    """A trial shapes its directory: 3,000 levels (past PATH_MAX, and past the recursion of Python's rmtree),
    a directory without permissions on the way. The next arena's sweep removes it and does not fail."""
    left = tmp_path / f"{TRIAL_DIR_PREFIX}k2_x9abc-{dead_tag()}"
    left.mkdir()
    fd = os.open(left, os.O_RDONLY)
    for _ in range(3000):
        os.mkdir("level", dir_fd=fd)
        deeper = os.open("level", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    os.chmod(left / "level" / "level", 0)
    remove_left_behind(tmp_path, TRIAL_DIR_PREFIX)
    assert list(tmp_path.iterdir()) == []


def build_and_remove_a_locked_tree(base: Path) -> str:
    """As a trial's own user would leave it: a hard link into the dataset cache, directories locked."""
    (base / "cache").mkdir()
    (base / "cache" / "train.bin").write_bytes(b"tokens")
    os.chmod(base / "cache" / "train.bin", 0o444)
    (base / "trial" / "data").mkdir(parents=True)
    os.link(base / "cache" / "train.bin", base / "trial" / "data" / "train.bin")  # as a phase's data is staged
    (base / "trial" / "out" / "a" / "b").mkdir(parents=True)
    for locked in ("out/a/b", "out/a"):
        os.chmod(base / "trial" / locked, 0)
    remove_tree(base / "trial")
    return f"{not (base / 'trial').exists()} {oct(stat.S_IMODE(os.stat(base / 'cache' / 'train.bin').st_mode))}"


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as another user")
def test_a_tree_its_own_user_locked_is_removed_and_linked_files_keep_their_mode():
    """An arena that is not root removes what its trial (run as the same user) locked, giving back the
    directories' permissions only: a file may be a hard link into the dataset cache, whose mode stays."""
    base = Path(tempfile.mkdtemp())
    os.chown(base, 65534, 65534)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # an arena that is not root
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, build_and_remove_a_locked_tree(base).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        found = result.read()
    os.waitpid(pid, 0)
    shutil.rmtree(base)
    assert found == "True 0o444"


@pytest.mark.slow  # an arena child process
def test_a_run_made_after_a_kill_removes_the_scratch_of_the_killed_one(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    (runs / f".r.creating-{dead_tag()}" / "repo").mkdir(parents=True)
    proc = fake_arena_run(runs, cache_root, "--name", "r", "--trials", "1", "--budget", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_run_consistent(runs / "r", 1)
    assert sorted(path.name for path in runs.iterdir()) == ["r"]


def test_a_run_being_replaced_when_arena_was_killed_comes_back_with_its_logs(tmp_path):
    """Killed between its two renames, an arena remaking a run with no recorded trial left the old run aside and
    the new one, holding the old one's logs, unfinished: the old one comes back, logs and all."""
    run_dir = tmp_path / "r"
    replaced, creating = tmp_path / f".r.replaced-{dead_tag()}", tmp_path / f".r.creating-{dead_tag()}"
    (replaced / "run.json").parent.mkdir()
    (replaced / "run.json").write_text("{}")
    (creating / "logs").mkdir(parents=True)
    (creating / "logs" / "trial-0000.log").write_text("the failed baseline's log")
    clear_interrupted_creation(run_dir)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r"]
    assert (run_dir / "run.json").exists() and (run_dir / "logs" / "trial-0000.log").read_text().startswith("the")


def test_a_run_put_aside_by_a_killed_remake_is_resumed_as_it_was(tmp_path, cache_root, stdlib_dataset):
    """The same kill, seen from the command line: the next `arena run` brings the run back and resumes it (it
    used to make a new run, find the old one back in its place and stop, saying another arena had made it)."""
    runs = tmp_path / "runs"
    proc = fake_arena_run(runs, cache_root, "--name", "r", "--trials", "1", "--budget", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (runs / "r").rename(runs / f".r.replaced-{dead_tag()}")
    (runs / f".r.creating-{dead_tag()}" / "logs").mkdir(parents=True)
    proc = fake_arena_run(runs, cache_root, "--name", "r", "--trials", "2", "--budget", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(path.name for path in runs.iterdir()) == ["r"]
    check_run_consistent(runs / "r", 2)


def dead_tag() -> str:
    return f"{dead_pid()}@{pid_namespace()}@{socket.gethostname()}"
