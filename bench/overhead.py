"""Where a trial's time goes besides training: real trials through the real loop, each split into its parts.

    python bench/overhead.py [--preset cpu|gpu] [--trials 4] [--budget S] [--eval-tokens N]
                             [--backend local|docker] [--image IMAGE] [--method random] [--out bench-out/overhead]
                             [--oom [--mem-limit SIZE]]

The run's backend is wrapped so that every line a trial prints is timed as it arrives; with the ledger's own
figures that splits each trial into:

    staging + sandbox + torch import   run() called -> ARENA_READY (the harness, before train.py is imported)
    train.py import, build, compile    ARENA_READY -> the first step line (the first step itself included)
    training                            first -> last step line (about the budget)
    export + phase exit                 last step line -> the eval phase starting
    eval (process, import, load, score) the eval phase, to run() returning
    propose                             the method (an LLM call for LLM methods)
    git, ledger, judging                the rest of the trial's recorded time

The baseline (trial 0) runs with a cold compile cache and is shown apart; the median over the later trials
is the warm figure. Prints a table; writes parts.json under --out. With --oom, one more trial follows whose
constants cannot fit (the space's deepest, widest model at its largest device batch), run as the loop runs a
trial but without the memory model, and the seconds to its verdict are printed, with whether the compile-time
memory check gave it before any kernel was built (on a CPU preset give --mem-limit, or the trial trains slowly
until its deadline instead of running out of memory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.loop import StopRule, make_backend, run_loop, run_sandbox  # noqa: E402
from agent.methods import Proposal  # noqa: E402
from agent.patches import render_config  # noqa: E402
from agent.run import Job, Run, open_run  # noqa: E402
from agent.template import EDITABLE_FILE  # noqa: E402
from sandbox import Outcome, Placement, TrialRunner, TrialSpec  # noqa: E402

COMPILE_CHECK = "arena's compile-time memory check"  # in the log of a trial train_template/memory_check.py ended
PARTS = ("staging + sandbox + torch import", "train.py import, build, compile", "training", "export + phase exit",
         "eval (process, import, load, score)", "propose", "git, ledger, judging")


class TimedRunner:
    """The run's backend, with the arrival time of each line a trial prints."""

    def __init__(self, runner: TrialRunner):
        self.runner = runner
        self.isolation = runner.isolation
        self.trials: list[dict[str, Any]] = []

    def placed(self, placement: Placement) -> TimedRunner:
        self.runner = self.runner.placed(placement)
        return self  # one worker: trials run one at a time

    def run(self, spec: TrialSpec, on_log: Any) -> Outcome:
        times: dict[str, Any] = {"start": time.perf_counter(), "steps": []}

        def timed(line: str) -> None:
            now = time.perf_counter()
            if line.startswith("ARENA_READY") and "ready" not in times:
                times["ready"] = now
            elif line.startswith("step="):
                times["steps"].append(now)
            elif line.startswith("=== eval phase"):
                times["eval"] = now
            on_log(line)

        outcome = self.runner.run(spec, timed)
        times["end"] = time.perf_counter()
        self.trials.append(times)
        return outcome


def split(times: dict[str, Any], record: Any) -> dict[str, float | None]:
    """A trial's parts in seconds; None for the parts a failed trial never reached."""
    steps, ready, evaluation = times["steps"], times.get("ready"), times.get("eval")
    sandbox = times["end"] - times["start"]

    def span(a: float | None, b: float | None) -> float | None:
        return b - a if a is not None and b is not None else None

    values = [span(times["start"], ready), span(ready, steps[0] if steps else None),
              span(steps[0], steps[-1]) if steps else None, span(steps[-1] if steps else None, evaluation),
              span(evaluation, times["end"]), record.propose_seconds,
              (record.total_seconds or 0.0) - record.propose_seconds - sandbox]
    return dict(zip(PARTS, values, strict=True))


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def time_to_oom(run: Run, runner: TrialRunner) -> tuple[float, Outcome]:
    """Seconds from a trial's start to the verdict on one that cannot fit in memory, and that verdict."""
    largest = {name: run.space[name].bounds[1] for name in ("DEPTH", "ASPECT_RATIO", "DEVICE_BATCH_SIZE")}
    source = render_config(run.repo.show(run.repo.recorded_trial_commit(0), EDITABLE_FILE), largest)
    job = Job(max(run.ledger.trials) + 1, "proposal", Proposal("cannot fit"), None, run.settings.seed)
    start = time.perf_counter()
    outcome = run_sandbox(run, runner, job, source)
    return time.perf_counter() - start, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--trials", type=int, default=4, help="trials, the baseline included")
    parser.add_argument("--budget", type=float, help="training seconds per trial (default: the preset's)")
    parser.add_argument("--eval-tokens", type=int, help="validation tokens (default: the preset's)")
    parser.add_argument("--backend", default="local", choices=("local", "docker"))
    parser.add_argument("--image", help="docker image (docker backend)")
    parser.add_argument("--method", default="random")
    parser.add_argument("--out", type=Path, default=Path("bench-out/overhead"))
    parser.add_argument("--oom", action="store_true", help="then time a trial that cannot fit to its verdict")
    parser.add_argument("--mem-limit", help="host memory a trial may use, e.g. 4g (see arena run --mem-limit)")
    args = parser.parse_args()
    runs = args.out / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # the bench's own run, made anew each time
    given = {"name": "overhead", "preset": args.preset, "method": args.method, "backend": args.backend,
             "image": args.image, "budget": args.budget, "eval_tokens": args.eval_tokens, "mem_limit": args.mem_limit,
             "feasibility": "off"}
    backends: list[TimedRunner] = []
    run = open_run(runs, given, preflight=lambda settings, preset, space, method: backends.append(
        TimedRunner(make_backend(settings, preset, space))))
    try:
        run_loop(run, backends[0], StopRule(trials=args.trials), report=print)
        oom = time_to_oom(run, backends[0].runner) if args.oom else None
    finally:
        run.lock.release()
    parts = [split(times, record) for times, record in zip(backends[0].trials, run.ledger.records, strict=True)]
    later = parts[1:]
    rows = {part: {"baseline": parts[0][part], "median_later": median([p[part] for p in later])} for part in PARTS}
    budget = run.preset.time_budget
    print(f"\n{run.preset.name} preset, budget {budget:g} s, backend {args.backend}; baseline = cold compile cache, "
          f"then the median of {len(later)} trials")
    print(f"{'part':40s} {'baseline':>10s} {'later':>10s}")
    for part, row in rows.items():
        cells = ["-" if row[k] is None else f"{row[k]:.2f} s" for k in ("baseline", "median_later")]
        print(f"{part:40s} {cells[0]:>10s} {cells[1]:>10s}")
    outside = {k: sum(row[k] or 0.0 for part, row in rows.items() if part != "training")
               for k in ("baseline", "median_later")}
    print(f"{'everything but training':40s} {outside['baseline']:>8.2f} s {outside['median_later']:>8.2f} s")
    summary = {"preset": run.preset.name, "budget": budget, "backend": args.backend, "parts": rows, "trials": parts}
    if oom is not None:
        seconds, outcome = oom
        checked = COMPILE_CHECK in outcome.log_tail  # refused by memory_check.py, before any kernel was built
        verdict = f"{outcome.status}: {outcome.reason}" + (", before compiling" if checked else "")
        print(f"{'a trial that cannot fit, to its verdict':40s} {seconds:>8.2f} s  ({verdict})")
        summary["oom"] = {"seconds": seconds, "status": str(outcome.status), "reason": outcome.reason,
                          "before_compiling": checked}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parts.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
