"""What happened to a trial: one status out of a fixed set, with the evidence kept."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum

RESULT_PREFIX = "ARENA_RESULT "
EXIT_DIVERGED = 3  # harness.py's exit code for a NaN or exploding loss
OOM_PATTERNS = re.compile(r"CUDA out of memory|OutOfMemoryError|MemoryError|CUBLAS_STATUS_ALLOC_FAILED|"
                          r"Cannot allocate memory|HIP out of memory")
LOG_TAIL_LINES = 60


class Status(str, Enum):
    OK = "ok"
    OOM = "oom"
    CRASH = "crash"
    NAN = "nan"
    TIMEOUT = "timeout"
    OVER_BUDGET = "over_budget"
    INVALID_PATCH = "invalid_patch"


@dataclass
class PhaseRun:
    """How one process (train or eval phase) ended, as seen from outside it."""
    exit_code: int | None
    timed_out: bool
    wall_seconds: float
    log: list[str] = field(default_factory=list)
    oom_killed: bool = False  # the container engine or kernel killed it for memory


@dataclass
class Outcome:
    status: Status
    reason: str
    result: dict | None = None
    log_tail: str = ""
    train_wall_seconds: float = 0.0
    eval_wall_seconds: float = 0.0

    @property
    def val_bpb(self) -> float | None:
        return self.result["val_bpb"] if self.result else None


def tail(lines: list[str], n: int = LOG_TAIL_LINES) -> str:
    return "".join(lines[-n:])


def parse_result(lines: list[str]) -> dict | None:
    for line in reversed(lines):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def classify_failure(phase: str, run: PhaseRun) -> tuple[Status, str]:
    text = "".join(run.log)
    if run.oom_killed or OOM_PATTERNS.search(text):
        return Status.OOM, f"{phase} phase ran out of memory"
    if run.timed_out:
        return Status.TIMEOUT, f"{phase} phase killed after {run.wall_seconds:.0f} s"
    if run.exit_code == EXIT_DIVERGED:
        return Status.NAN, next((l.strip() for l in run.log if l.startswith("ARENA_DIVERGED")), "loss diverged")
    last = next((l.strip() for l in reversed(run.log) if l.strip()), "no output")
    return Status.CRASH, f"{phase} phase exited with code {run.exit_code}: {last[:300]}"


def judge(train: PhaseRun, evaluation: PhaseRun | None, train_limit: float) -> Outcome:
    """Classify a trial from its two phases. `train_limit` is budget plus start-up allowance, in seconds."""
    logs = train.log + (evaluation.log if evaluation else [])
    walls = dict(train_wall_seconds=train.wall_seconds,
                 eval_wall_seconds=evaluation.wall_seconds if evaluation else 0.0, log_tail=tail(logs))
    if train.exit_code != 0 or train.timed_out or train.oom_killed:
        status, reason = classify_failure("train", train)
        return Outcome(status, reason, **walls)
    if evaluation is None:
        return Outcome(Status.CRASH, "evaluation did not run", **walls)
    if evaluation.exit_code != 0 or evaluation.timed_out or evaluation.oom_killed:
        status, reason = classify_failure("eval", evaluation)
        return Outcome(status, reason, **walls)
    result = parse_result(evaluation.log)  # only the eval phase's output counts: train.py cannot print a score
    if result is None:
        return Outcome(Status.CRASH, "evaluation printed no result", **walls)
    if train.wall_seconds > train_limit:
        return Outcome(Status.OVER_BUDGET, f"training phase took {train.wall_seconds:.1f} s, "
                       f"limit {train_limit:.0f} s", result, **walls)
    return Outcome(Status.OK, f"val_bpb {result['val_bpb']:.6f}", result, **walls)
