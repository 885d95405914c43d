"""The local backend beyond what every backend must do (test_backend_conformance.py): the harness's contract
on a real trial, and its one-line errors. The cheating trials it must withstand are in test_reward_hacks.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import LocalBackend, SandboxError, Status
from sandbox.bwrap import find_bwrap
from sandbox.local import SupervisorWatch, proc_file, process_state
from sandbox.phases import bare_phase
from sandbox.trial import PhaseOutput
from tests.run_helpers import pids_whose_command_line
from tests.trial_helpers import cpu_template, make_spec, run, with_train


@pytest.mark.slow
def test_a_broken_contract_is_a_crash(stdlib_dataset):
    isolated = LocalBackend(isolation="bwrap")
    outcome, _ = run(isolated, make_spec(stdlib_dataset, cpu_template().replace("def train(ctx)",
                                                                                "def train_renamed(ctx)")))
    assert outcome.status is Status.CRASH and "no train(ctx) function" in outcome.reason
    outcome, _ = run(isolated, make_spec(stdlib_dataset, with_train("""
        model = _template_train(ctx)
        model.forward = lambda idx: model.lm_head.weight[idx] if idx.sum() > 0 else None  # data-dependent
        return model
    """)))
    assert outcome.status is Status.CRASH and "cannot be exported with torch.export" in outcome.reason


def test_unknown_isolation_is_one_line():
    with pytest.raises(SandboxError, match="unknown isolation 'chroot'; choose one of: bwrap, none"):
        LocalBackend(isolation="chroot")


def test_a_memory_limit_the_harness_imports_alone_exceed_is_one_line():
    with pytest.raises(SandboxError, match=r"^--mem-limit 0.10g is too small: a sandbox that only tried to import "
                                           r"numpy, torch, safetensors went over it; raise it$"):
        LocalBackend(isolation="bwrap", mem_limit="100m")


def test_a_changed_harness_stops_before_anything_runs(stdlib_dataset, tmp_path):
    spec = make_spec(stdlib_dataset, cpu_template())
    tampered = spec.__class__(**{**spec.__dict__, "harness_hash": "0" * 16})
    with pytest.raises(SandboxError, match=r"differ from this run's \(hash 0{16}\); reinstall"):
        LocalBackend(isolation="none").run(tampered, lambda line: None)


def test_the_library_path_passes_with_only_the_libraries_it_names(monkeypatch):
    """Some hosts find the CUDA driver only through LD_LIBRARY_PATH (GKE: /usr/local/nvidia/lib64): it
    passes into the sandbox, resolved (/lib is /usr/lib on a merged-/usr system: nothing to bind), and of a
    directory it names outside what the sandbox shows, only the shared libraries are there; directories where
    the sandbox has its own (/tmp) are left out, and too many libraries to bind are one line."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as outside:  # /tmp is the sandbox's own
        libraries = Path(outside) / "vendor" / "lib64"
        libraries.mkdir(parents=True)
        (libraries / "libcuda.so.1").write_bytes(b"\x7fELF not really")
        (libraries / "notes.txt").write_text("the user's, not the trial's")
        (libraries / "libraries.sorted.csv").write_text("not a library either")
        system = os.path.realpath("/lib")
        monkeypatch.setenv("LD_LIBRARY_PATH", f"{libraries}:/lib:/tmp/lib:relative/lib:{libraries}")
        backend = LocalBackend(isolation="bwrap")
        code = ("import os, sys\n"
                "print('PROBE path', os.environ.get('LD_LIBRARY_PATH'), flush=True)\n"
                f"print('PROBE files', sorted(os.listdir({str(libraries)!r})), flush=True)\n")
        lines: list[str] = []
        with tempfile.TemporaryDirectory() as root:
            result = backend.run_phase(bare_phase(Path(root), 60, backend.owner), PhaseOutput(lines.append),
                                       ["-c", code])
        assert result.report is not None and result.report.exit_code == 0, lines
        probes = [line.strip() for line in lines if line.startswith("PROBE")]
        assert probes == [f"PROBE path {libraries}:{system}", "PROBE files ['libcuda.so.1']"], lines

        many = Path(outside) / "many"
        many.mkdir()
        for i in range(2100):
            (many / f"lib{i}.so").write_bytes(b"")
        monkeypatch.setenv("LD_LIBRARY_PATH", str(many))
        with tempfile.TemporaryDirectory() as root, pytest.raises(SandboxError) as error:
            backend.run_phase(bare_phase(Path(root), 60, backend.owner), PhaseOutput(lines.append), ["-c", code])
        assert "\n" not in str(error.value) and "unset it" in str(error.value)


def test_a_stopped_supervisor_is_found_in_bwrap_under_its_look_alikes(tmp_path):
    """Arena's side of the stop check, on a real bubblewrap tree (bwrap, its pid 1, the supervisor): the
    supervisor is found under its look-alikes, and seen once stopped; a stopped look-alike is not it."""
    (tmp_path / "supervisor.py").write_text(textwrap.dedent("""
        import subprocess, sys, time
        if sys.argv[1:] == ["first"]:  # the supervisor: a trial under it, which runs a look-alike of it
            subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              f"subprocess.Popen([sys.executable, {__file__!r}, '--lookalike']); time.sleep(60)"])
        print("up", flush=True)
        time.sleep(60)
    """))
    bwrap = subprocess.Popen([find_bwrap(), "--die-with-parent", "--new-session", "--unshare-pid", "--ro-bind", "/",
                              "/", "--proc", "/proc", "--dev", "/dev", sys.executable, str(tmp_path / "supervisor.py"),
                              "first"], stdout=subprocess.PIPE, text=True)
    try:
        assert bwrap.stdout.readline() == "up\n" and bwrap.stdout.readline() == "up\n"  # both started
        watch = SupervisorWatch(bwrap.pid)
        supervisor = watch.find()
        assert supervisor is not None and proc_file(supervisor, "cmdline").endswith(b"supervisor.py\0first\0")
        [lookalike] = pids_whose_command_line(lambda line: line.endswith("supervisor.py\0--lookalike\0"))
        deadline = time.monotonic() + 30
        for pid in (lookalike, supervisor):
            assert not watch.stopped()
            os.kill(pid, signal.SIGSTOP)
            while process_state(pid) != b"T" and time.monotonic() < deadline:
                time.sleep(0.05)
        assert watch.stopped()
    finally:
        bwrap.kill()
        bwrap.wait()
