"""Probing a phase sandbox from inside with tests/escape_probe.py, and what its findings must be."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from sandbox.bwrap import python_dirs
from sandbox.phases import Phase, bare_phase, link_data

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("escape_probe.py")
SYSTEM_DIRS = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}  # read-only, what programs need


def fake_dataset(root: Path) -> Path:
    """A dataset directory whose files hold their own names, to show that nothing wrote them."""
    data = root / "cache" / "dataset"
    data.mkdir(parents=True)
    for name in ("train.bin", "val.bin", "meta.json", "token_bytes.npy"):
        (data / name).write_text(name)
    return data


def staged_probe_phase(root: Path, data_dir: Path, owner: tuple[int, int]) -> Phase:
    """A train phase holding the probe (run it as `python escape_probe.py SPEC`) and the train data."""
    phase = bare_phase(root, 60, owner)
    shutil.copyfile(PROBE, phase.trial_dir / "escape_probe.py")
    phase.data_files = link_data(data_dir, ("train.bin", "meta.json"), root / "data")
    return phase


def host_dirs(home: Path) -> dict[str, list[int]]:
    """The host's top-level directories and the entries of `home`, by device and inode: a sandbox may
    show a directory of the same name, but only the ones it needs may be the host's own."""
    found = {}
    for parent in (Path("/"), home):
        for path in parent.iterdir():
            with contextlib.suppress(OSError):
                info = path.stat()
                found[str(path)] = [info.st_dev, info.st_ino]
    return found


def probe_spec(tmp_path: Path, data_dir: Path, port: int, marker: str, home: Path | None = None) -> dict:
    """What must stay out of reach: the project's files, the dataset cache, the test's own directory."""
    canary = tmp_path / "canary.txt"
    canary.write_text("the host's")
    return {"paths": [str(ROOT / "README.md"), str(ROOT / "agent"), str(ROOT / "runs"), str(data_dir),
                      str(data_dir.parent), str(canary)],
            "host_dirs": host_dirs(home or Path.home()), "secrets": ["sk-probe-secret"], "port": port,
            "host_pid": os.getpid(), "marker": marker}


def parse_probe(lines: list[str]) -> dict:
    line = next((line for line in lines if line.startswith("PROBE ")), None)
    assert line, "".join(lines)[-3000:]
    return json.loads(line[len("PROBE "):])


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port on the host's loopback that nothing in a sandbox may reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def survivors(marker: str) -> list[str]:
    """Host processes whose command line carries `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


def assert_confined(found: dict, data_dir: Path, trial_uid: int) -> None:
    assert found["uid"] == found["euid"] == trial_uid != 0 and found["caps"] == "0000000000000000"
    assert found["interfaces"] == ["lo"]
    assert found["internet"] != "ok" and found["host_loopback"] != "ok"  # not even arena's own loopback
    assert found["host_pid_visible"] is False and max(found["pids"]) < 100  # its own pid namespace
    assert found["paths_visible"] == []  # project, dataset cache, the test's directory: all absent
    assert set(found["host_dirs_shown"]) <= SYSTEM_DIRS | {str(d) for d in python_dirs(sys.executable)}
    for key in ("write_usr", "write_etc", "write_trial", "write_data", "sysctl", "parent_environ", "parent_mem",
                "ptrace_parent"):
        assert found[key] != "ok", key
    assert found["write_out"] == "ok" and found["write_tmp"] == "ok"
    assert found["env_secrets"] == []
    assert not any(str(data_dir) in source for source in found["mount_sources"])  # neutral names only
