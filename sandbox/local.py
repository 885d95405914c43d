"""The local backend: each phase of a trial in its own bubblewrap sandbox on this machine (or, only when
asked with isolation "none", as a plain child process of arena)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.bwrap import ADVICE, bwrap_argv, find_bwrap, gpu_env
from sandbox.cgroup import PhaseCgroup
from sandbox.errors import SandboxError
from sandbox.outcome import PhaseRun
from sandbox.phases import SUPERVISOR, PathMap, Phase, memory_bytes, sandbox_user
from sandbox.seccomp import sandbox_filter_fd
from sandbox.supervisor import MAX_PROCESSES, parents
from sandbox.trial import GPU_CHECK, Backend, PhaseOutput
from sandbox.workers import Placement, pinned_to, registered

ISOLATIONS = ("bwrap", "none")
NEEDED_MODULES = "numpy, torch, safetensors"
UVM_NODE = Path("/dev/nvidia-uvm")
STOP_CHECK_SECONDS = 1.0  # how often arena looks for a supervisor its trial stopped


class SupervisorWatch:
    """The phase's supervisor, seen from arena. A trial of the supervisor's own user (arena not root, or
    unisolated) can SIGSTOP it, and with it the watch on the phase's memory and disk. Continued, the supervisor
    ends the phase itself (supervisor.Watch.check_stopped); but a trial may never continue it, or stop it again
    at once each time it is. Arena sends no SIGSTOP, so a supervisor it finds stopped was stopped by its trial,
    and arena ends the phase."""

    def __init__(self, root: int):
        self.root = root  # bwrap, or (unisolated) the supervisor itself
        self.pid: int | None = None

    def find(self) -> int | None:
        """The shallowest process that runs supervisor.py, at most two levels under root (bwrap, its pid 1, the
        supervisor): every process of the trial is its descendant (or its orphan, which it reaps as subreaper), so
        a trial's look-alike is always deeper."""
        tree = parents()
        level = [self.root]
        for _ in range(3):
            for pid in level:
                argv = proc_file(pid, "cmdline").split(b"\0")
                if len(argv) > 1 and argv[1].endswith(b"/" + SUPERVISOR.name.encode()):
                    return pid
            level = [child for child, parent in tree.items() if parent in level]
        return None

    def stopped(self) -> bool:
        self.pid = self.pid or self.find()
        return self.pid is not None and process_state(self.pid) == b"T"


def proc_file(pid: int, name: str) -> bytes:
    """/proc/<pid>/<name>, or nothing for a process that is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def process_state(pid: int) -> bytes:
    """The state letter of /proc/<pid>/stat (after the command name, which may hold spaces and parentheses)."""
    stat = proc_file(pid, "stat")
    return stat[stat.rfind(b")") + 2:][:1]


def run_process(cmd: list[str], cwd: Path | None, env: dict[str, str], timeout: float,
                output: PhaseOutput, cores: tuple[int, ...] | None = None, pass_fds: tuple[int, ...] = ()) -> PhaseRun:
    """Run `cmd` in a new session (on `cores`, if given); stream its merged output; kill the whole group at
    `timeout`, or when the loop that started it stops."""
    start = time.monotonic()
    with pinned_to(cores):
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace",
                                bufsize=1, pass_fds=pass_fds)

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):  # bwrap, and with it its whole pid namespace
            os.killpg(proc.pid, signal.SIGKILL)

    stream = proc.stdout
    assert stream is not None  # asked for with stdout=PIPE

    def pump() -> None:
        for line in stream:
            output(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    supervisor = SupervisorWatch(proc.pid)
    deadline = start + timeout
    stopped = False
    try:
        with registered(kill):
            while proc.poll() is None and time.monotonic() < deadline:
                if supervisor.stopped():
                    stopped = True
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(min(STOP_CHECK_SECONDS, deadline - time.monotonic()), 0))
        timed_out = proc.poll() is None and not stopped
    finally:
        kill()
        proc.wait()
        reader.join(timeout=5)
    return PhaseRun(exit_code=proc.returncode, timed_out=timed_out, wall_seconds=time.monotonic() - start,
                    lines=list(output.lines), supervisor_stopped=stopped)


def parent_death_guard() -> list[str]:
    """A prefix that makes an unisolated phase die with arena (bwrap has --die-with-parent for the rest)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


class LocalBackend(Backend):
    """Runs trials on this machine's CPU or GPUs, each phase sandboxed by bubblewrap unless isolation is "none"."""

    def __init__(self, isolation: str = "bwrap", python: str = sys.executable, gpus: list[str] | None = None,
                 mem_limit: str | None = None):
        if isolation not in ISOLATIONS:
            raise SandboxError(f"unknown isolation '{isolation}'; choose one of: {', '.join(ISOLATIONS)}")
        self.isolation = isolation
        self.memory_limit = memory_bytes(mem_limit) if mem_limit is not None else None
        self.python = python
        self.gpus = gpus
        self.owner = sandbox_user() if isolation == "bwrap" else (os.getuid(), os.getgid())
        if isolation == "bwrap":
            self.bwrap = find_bwrap()
            self.preflight()

    def environment(self, phase: Phase) -> None:
        phase.memory_limit = self.memory_limit
        if self.gpus and self.isolation == "bwrap":  # only these GPUs' device nodes are in the sandbox
            phase.env.update(gpu_env(self.gpus))
        elif self.gpus:  # unisolated: every GPU is there, in PCI order as NVML numbers them for the supervisor
            phase.env.update(CUDA_VISIBLE_DEVICES=",".join(self.gpus), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        if self.cores:  # torch would start a thread per core of the machine, not of its share
            phase.env.setdefault("OMP_NUM_THREADS", str(len(self.cores)))
        elif "OMP_NUM_THREADS" in os.environ:
            phase.env.setdefault("OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

    def run_phase(self, phase: Phase, output: PhaseOutput, python_args: list[str] | None = None) -> PhaseRun:
        self.environment(phase)
        cgroup = PhaseCgroup.create(self.memory_limit, MAX_PROCESSES)
        phase.processes_limited = cgroup is not None and cgroup.limits("pids")
        try:
            run = self.run_confined(phase, output, python_args, cgroup.enter if cgroup else list)
            run.oom_killed = cgroup is not None and cgroup.oom_kills() > 0
            return run
        finally:
            if cgroup is not None:
                cgroup.remove()

    def run_confined(self, phase: Phase, output: PhaseOutput, python_args: list[str] | None,
                     enter: Callable[[list[str]], list[str]]) -> PhaseRun:
        """The phase in bubblewrap (or unisolated), its first process started by `enter(argv)`."""
        if self.isolation == "bwrap":
            # no keyrings, no page-cache probes; pinned, no widening its affinity onto other workers' cores either
            fd = sandbox_filter_fd(pinned=bool(self.cores))
            try:
                argv = bwrap_argv(self.bwrap, phase, self.python, self.gpus, python_args, fd)
                return run_process(enter(argv), None, {}, phase.kill_after, output, self.cores, (fd,))
            finally:
                os.close(fd)
        paths = PathMap(phase)
        command = parent_death_guard() + phase.command(self.python, None, paths, python_args)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **phase.phase_env(paths)}
        return run_process(enter(command), phase.trial_dir, env, phase.kill_after, output, self.cores)

    def preflight(self) -> None:
        """An empty sandbox before any trial: bwrap works here and its Python imports what the harness needs;
        with GPUs (arena train), CUDA runs on them there too. arena run checks each worker's GPUs apart
        (check_placement), once it has placed them."""
        last = self.failure(self.check(f"import {NEEDED_MODULES}"), f"import {NEEDED_MODULES}")
        if last is not None:
            raise SandboxError(f"inside the sandbox, {self.python} cannot import {NEEDED_MODULES} ({last[:200]}); "
                               f"install them into that interpreter's own environment (a venv), or {ADVICE}")
        if self.gpus:
            self.check_gpus()

    def check_placement(self, placement: Placement) -> None:
        if self.isolation == "bwrap" and placement.gpus:  # unisolated, arena's own torch saw the GPUs
            worker = self.placed(placement)
            assert isinstance(worker, LocalBackend)
            worker.check_gpus()

    def check_gpus(self) -> None:
        gpus = self.gpus or []
        last = self.failure(self.check(GPU_CHECK.format(count=len(gpus))), f"use GPU {','.join(gpus)}")
        if last is None:
            return
        if not UVM_NODE.exists():  # made by the first CUDA program after boot, which the sandbox cannot be
            advice = f"{UVM_NODE} does not exist yet: run `nvidia-modprobe -u -c=0` as root (or any CUDA program) once"
        else:
            advice = f"check that {self.python} runs CUDA outside the sandbox, or {ADVICE}"
        raise SandboxError(f"inside the sandbox, torch cannot use GPU {','.join(gpus)} ({last[:200]}); {advice}")

    def failure(self, run: PhaseRun, what: str) -> str | None:
        """None when a check passed, else its last line; raises for what failed around it: a sandbox that could
        not be made, or one that went over --mem-limit (`what`: what the check only tried to do)."""
        if run.succeeded:
            return None
        if run.over_memory and self.memory_limit is not None:
            raise SandboxError(f"--mem-limit {self.memory_limit / 2**30:.2f}g is too small: a sandbox that only "
                               f"tried to {what} went over it; raise it")
        report = run.report
        if report is None:
            last = run.last_line() or f"exit code {run.exit_code}"
            raise SandboxError(f"bubblewrap cannot create a sandbox here ({self.bwrap}: {last[:200]}); allow "
                               "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or "
                               f"kernel.apparmor_restrict_unprivileged_userns=0), or {ADVICE}")
        ended = f"signal {report.signal}" if report.signal is not None else f"exit code {report.exit_code}"
        return report.failed_to_start or run.last_line() or ended

