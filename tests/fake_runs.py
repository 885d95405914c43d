"""Run directories made by the real loop (agent.run.open_run, agent.loop.run_loop) with a backend that trains
nothing: for tests about reading, resuming or refusing a run rather than training one. A run takes a second or
two instead of minutes, and what it writes (run.json, ledger, git repository, notes, status, logs) is the
loop's own. The settings match tests/run_helpers.FAST, so a CLI resume with other flags is refused alike."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from agent.loop import StopRule, final_status, run_loop
from agent.run import open_run
from sandbox import Outcome, Placement, Status, TrialSpec

FAST_SETTINGS = {"budget": 2.0, "eval_tokens": 4096, "startup_allowance": 300.0}  # as run_helpers.FAST


def fake_score(source: str) -> float:
    """A made-up val_bpb that depends only on train.py: the same source always scores the same."""
    return 4.0 + int(hashlib.sha256(source.encode()).hexdigest()[:6], 16) % 5000 / 10_000


class FakeBackend:
    """A backend whose trials print a few harness-like lines and 'score' fake_score(source).

    `gate`, when given, is called in the middle of each trial (after its step lines, before its eval
    phase): a test can block there to look at the run while a trial is under way."""
    def __init__(self, score: Callable[[str], float] = fake_score, gate: Callable[[], None] | None = None,
                 isolation: str = "none"):
        self.isolation = isolation  # what the ledger records; a run made as a twin of a real one says "bwrap"
        self.score = score
        self.gate = gate
        self.trials = 0

    def placed(self, placement: Placement) -> FakeBackend:
        return self  # its trials run nowhere

    def run(self, spec: TrialSpec, on_log) -> Outcome:
        self.trials += 1
        value = self.score(spec.source)
        budget = spec.budget.budget
        for step in range(3):
            on_log(f"step={step} loss={4.5 - step / 10:.6f} progress={(step + 1) / 3:.4f} tok_per_s={8000 + step} "
                   f"mem_gb=0.50 train_s={(step + 1) * budget / 3:.1f}\n")
        if self.gate is not None:
            self.gate()
        on_log("=== eval phase\n")
        on_log(f"---\nval_bpb:          {value:.6f}\n")
        reported = {"steps": 3, "training_seconds": budget, "timed_tokens": 3 * 1024}
        result = {"val_bpb": value, "work_seconds": budget + 1.0, "outside_seconds": 1.0, "ready_seconds": 1.0,
                  "allowance_seconds": 12.0, "peak_memory_gb": 0.5, "host_memory_gb": 0.5, "gpu_memory_gb": None,
                  "num_params": 1000, "reported": reported}
        return Outcome(Status.OK, f"val_bpb {value:.6f}", result, log_tail="step=2\n", train_wall_seconds=budget + 2,
                       eval_wall_seconds=1.0)


def fake_run(runs_dir: Path, cache: Path, name: str, trials: int, runner=None, **settings) -> Path:
    """A run of `trials` trials (the baseline included) made by the real loop on a FakeBackend (or on
    `runner`); it ends as `arena run` ends, its status saying done."""
    run = open_run(runs_dir, {"name": name, **FAST_SETTINGS, **settings}, cache_root=cache)
    try:
        with final_status(run):
            run_loop(run, runner or FakeBackend(isolation=run.settings.isolation), StopRule(trials=trials),
                     report=lambda line: None)
    finally:
        run.lock.release()
    return run.dir


class Stepper:
    """A FakeBackend gate that holds each trial until the test lets it go: the run then advances one trial at
    a time, and each state it passes through stays put until the test has seen it."""

    def __init__(self):
        self._entered = threading.Semaphore(0)
        self._release = threading.Semaphore(0)

    def __call__(self) -> None:  # called by the backend, in a worker thread of the loop
        self._entered.release()
        self._release.acquire()

    def wait_for_trial(self, timeout: float = 120) -> None:
        """Until a trial is held mid-way."""
        assert self._entered.acquire(timeout=timeout), f"no trial reached the gate within {timeout:.0f} s"

    def release(self) -> None:
        self._release.release()
