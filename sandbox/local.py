"""The local backend: each phase in a fresh temp dir, its own process group, a scrubbed environment."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sandbox.outcome import Outcome, PhaseRun, judge
from sandbox.trial import LogSink, TrialSpec, stage_workdir

# Only these variables reach trial code: no API keys, tokens or credentials from the caller's shell.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR",
              "TRITON_CACHE_DIR")


def scrubbed_env(workdir: Path, gpus: list[str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(HOME=str(workdir), TMPDIR=str(workdir), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: the kernel kills it if arena dies (even by kill -9), so no trial outlives a run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_process(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, on_log: LogSink) -> PhaseRun:
    """Run `cmd` in a new session; stream its merged output; kill the whole group at `timeout`."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent, text=True, errors="replace",
                            bufsize=1)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            on_log(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also reaps children the trial left behind
        except ProcessLookupError:
            pass
        proc.wait()
        reader.join(timeout=5)
    return PhaseRun(exit_code=proc.returncode, timed_out=timed_out, wall_seconds=time.monotonic() - start,
                    log=lines)


class LocalBackend:
    """Runs trials as child processes of arena, on this machine's CPU or GPUs."""

    def __init__(self, python: str = sys.executable, gpus: list[str] | None = None):
        self.python = python
        self.gpus = gpus

    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="arena-trial-") as tmp:
            workdir = Path(tmp)
            stage_workdir(spec, workdir)
            env = scrubbed_env(workdir, self.gpus)
            common = ["--config", "run.json", "--data", str(spec.data_dir), "--out", "out"]
            train = run_process([self.python, "harness.py", "train", *common], workdir, env,
                                spec.train_timeout, on_log)
            evaluation = None
            if train.exit_code == 0 and not train.timed_out:
                on_log("=== eval phase\n")
                evaluation = run_process([self.python, "harness.py", "eval", *common], workdir, env,
                                         spec.eval_timeout, on_log)
            return judge(train, evaluation, spec.train_limit)
