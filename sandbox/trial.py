"""One trial as every backend runs it: stage the train phase, run it, carry the exported model into a
freshly staged eval phase, run that, and judge both on what was measured outside them. A backend only
says how one staged phase runs in its sandbox (Backend.run_phase)."""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox.errors import SandboxError
from sandbox.outcome import BudgetRule, Outcome, PhaseRun, judge
from sandbox.owners import owner_tag, remove_left_behind, remove_tree
from sandbox.phases import (
    PHASE_DATA,
    Phase,
    bare_phase,
    copy_cache,
    copy_harness,
    copy_model,
    install_supervisor,
    link_data,
    make_dir,
    printable,
    promote_cache,
    read_reported,
)
from sandbox.workers import Placement

LogSink = Callable[[str], None]

EXPORT_GRACE_SECONDS = 60.0  # past budget + allowance: time to export the model before the phase is killed
LOG_LIMIT_BYTES = 32 << 20   # per phase: a print loop cannot fill the disk
TRIAL_DIR_PREFIX = "arena-trial-"
CHECK_SECONDS = 120          # a check of the sandbox: imports torch, at most runs a kernel
KEPT_LINES = 5000            # lines of a phase kept in memory for judging (all of it goes to the log sink)
KEPT_CHARS = 8 << 20         # and at most this much of them
HARNESS_LOG_BYTES = 1 << 20  # past the log limit, the harness's lines (ARENA_...) still go to the log, up to this
# CUDA in the sandbox as a trial gets it: the GPUs handed to it, and a kernel that runs on each
GPU_CHECK = """import torch
count = torch.cuda.device_count()
assert count == {count}, f"torch sees {{count}} GPUs in the sandbox, not its {count}"
for device in range(count):
    torch.ones(1, device=f"cuda:{{device}}").add_(1).item()
"""


@dataclass(frozen=True)
class TrialSpec:
    source: str               # the trial's train.py
    data_dir: Path            # the prepared dataset
    harness_dir: Path         # where the pristine harness files come from (the template)
    harness_files: tuple[str, ...]
    harness_hash: str         # what their hash must be: a changed harness stops the run
    config: dict[str, object]  # run.json for the harness: the preset's fixed settings and the seed
    budget: BudgetRule
    eval_timeout: float
    export_grace: float = EXPORT_GRACE_SECONDS  # tests shorten it to see a timeout in seconds
    compile_cache: Path | None = None  # the run's trusted compile cache; each phase works on a copy
    trusted: bool = False     # the unmodified template: its compile cache may become the trusted one

    @property
    def train_deadline(self) -> float:
        return self.budget.budget + self.budget.cap + self.export_grace

    @property
    def on_gpu(self) -> bool:
        return str(self.config["device"]).startswith("cuda")


class PhaseOutput:
    """Collects a phase's output lines, control characters replaced: every line to the sink up to a size limit
    (then only the harness's lines, up to a smaller one), and the last ones kept, up to a number and a size."""

    def __init__(self, on_log: LogSink):
        self.on_log = on_log
        self.lines: deque[str] = deque()
        self.kept = 0  # characters in self.lines
        self.written = 0
        self.truncated = False

    def __call__(self, line: str) -> None:
        line = printable(line)
        self.lines.append(line)
        self.kept += len(line)
        while len(self.lines) > KEPT_LINES or self.kept > KEPT_CHARS:
            self.kept -= len(self.lines.popleft())
        if self.truncated and not (line.startswith("ARENA_") and self.written < LOG_LIMIT_BYTES + HARNESS_LOG_BYTES):
            return
        self.written += len(line)
        if self.written > LOG_LIMIT_BYTES and not self.truncated:
            self.truncated = True
            self.on_log(f"[arena: output cut here, more than {LOG_LIMIT_BYTES >> 20} MB]\n")
            return
        self.on_log(line)


def stage(spec: TrialSpec, name: str, root: Path, owner: tuple[int, int], model_from: Path | None = None) -> Phase:
    """Lay out one phase under `root`; `owner` is the user its trial code runs as."""
    deadline = spec.train_deadline if name == "train" else spec.eval_timeout
    phase = Phase(name, root, deadline)
    if name == "eval" and not spec.on_gpu:
        # Scoring one row at a time is thousands of tiny ops, which OpenMP threads spend waiting on each other:
        # 64 rows took 37-42 s with two threads and 2.8-3.5 s with one on a busy 2-core host.
        phase.env["OMP_NUM_THREADS"] = "1"
    make_dir(root)
    trial = make_dir(phase.trial_dir)
    copy_harness(spec.harness_dir, spec.harness_files, spec.harness_hash, trial)
    install_supervisor(trial)
    (trial / "run.json").write_text(json.dumps(spec.config, indent=2) + "\n")
    if name == "train":
        (trial / "train.py").write_text(spec.source)
    for path in trial.iterdir():
        path.chmod(0o644)
    make_dir(phase.out_dir, owner)
    if model_from is not None:
        make_dir(phase.in_dir)
        copy_model(model_from, phase.in_dir)
        for path in phase.in_dir.iterdir():
            path.chmod(0o644)
    phase.data_files = link_data(spec.data_dir, PHASE_DATA[name], root / "data")
    if name == "train" and spec.compile_cache is not None:
        copy_cache(spec.compile_cache, phase.cache_dir, owner)
    return phase


class TrialRunner(Protocol):
    """What the loop needs of whatever answers a trial: every Backend, and stand-ins that train nothing (the
    surrogate backend, agent/surrogate). `run` is called from the loop's worker threads, one trial per
    thread at a time, on the runner `placed` made for that worker."""

    isolation: str  # recorded with each trial

    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome: ...

    def placed(self, placement: Placement) -> TrialRunner:
        """This runner, its trials on `placement` (one worker's GPU or cores)."""
        ...


class Backend(ABC):
    """A way to confine trial code. A backend maps one staged phase (phases.py: what the phase sees) onto
    its own mechanism; running a trial's two phases and judging them is the same for every backend."""

    isolation: str          # how trial code is confined ("bwrap", "docker", or "none": not at all); recorded
    owner: tuple[int, int]  # the uid and gid trial code runs as: a phase's writable directories are theirs
    gpus: list[str] | None = None          # GPUs a trial may use (None: none, or what the sandbox sees)
    cores: tuple[int, ...] | None = None   # CPU cores a trial runs on (None: all)

    def placed(self, placement: Placement) -> Backend:
        clone = object.__new__(type(self))  # the same settings and client (copy.copy would pickle: reconnect)
        clone.__dict__.update(self.__dict__)
        if placement.gpus is not None:
            clone.gpus = list(placement.gpus)
        clone.cores = placement.cores
        return clone

    def check(self, code: str) -> PhaseRun:
        """`python -c code` run as a trial's code would be, in an empty phase: a check of the sandbox itself."""
        with tempfile.TemporaryDirectory(prefix="arena-check-") as tmp:
            phase = bare_phase(Path(tmp), CHECK_SECONDS, self.owner)
            return self.run_phase(phase, PhaseOutput(lambda line: None), ["-c", code])

    def check_placement(self, placement: Placement) -> None:
        """Before any trial: what a worker on `placement` needs that the backend could not check without it
        (a GPU that works in the sandbox); SandboxError, in one line, if it does not."""
        return None  # nothing, unless a backend says otherwise

    @abstractmethod
    def run_phase(self, phase: Phase, output: PhaseOutput, python_args: list[str] | None = None) -> PhaseRun:
        """Run the staged `phase` under its supervisor, each line of its output to `output` as it comes;
        end the whole sandbox at `phase.kill_after` should the supervisor not have. With `python_args`
        the sandbox's Python runs those instead of the harness (a check of the sandbox itself)."""

    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome:
        """The two phases of a trial in fresh directories, then judged; raises SandboxError only when the
        sandbox itself cannot run, never for what the trial did."""
        remove_left_behind(Path(tempfile.gettempdir()), TRIAL_DIR_PREFIX)  # a model, a cache and logs each
        tmp = tempfile.mkdtemp(prefix=TRIAL_DIR_PREFIX, suffix=f"-{owner_tag()}")
        try:
            train = stage(spec, "train", Path(tmp) / "train", self.owner)
            train_run = started(self.run_phase(train, PhaseOutput(on_log)), "train")
            report = train_run.report
            evaluation, missing = None, "evaluation did not run"
            if report is not None and report.exit_code == 0 and not report.deadline and not train_run.oom_killed:
                if spec.trusted and spec.compile_cache is not None:
                    promote_cache(train, spec.compile_cache)
                try:
                    phase = stage(spec, "eval", Path(tmp) / "eval", self.owner, model_from=train.out_dir)
                except OSError as e:
                    missing = f"the train phase left no usable exported model ({e})"
                else:
                    on_log("=== eval phase\n")
                    evaluation = started(self.run_phase(phase, PhaseOutput(on_log)), "eval")
            return judge(train_run, evaluation, spec.budget, read_reported(train.out_dir), missing, spec.trusted,
                         on_gpu=spec.on_gpu)
        finally:
            remove_tree(Path(tmp))  # not TemporaryDirectory's cleanup: the trial shaped this tree


def started(run: PhaseRun, phase: str) -> PhaseRun:
    """`run`, unless its supervisor could not start the harness: no trial code ran, so that is no verdict on
    the trial but the sandbox's failure."""
    report = run.report
    if report is not None and report.failed_to_start:
        raise SandboxError(f"the {phase} phase's sandbox could not start its harness ({report.failed_to_start}); "
                           "this is the backend's doing, not the trial's: fix it (or choose another --backend) "
                           "and run the same command again")
    return run
