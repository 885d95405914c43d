"""The trial loop: propose, apply, commit, run, judge, record — one trial at a time, resumable anywhere.

Crash safety rests on one order of writes per trial:
  1. the proposal is journaled (state/pending.pkl) before anything runs, so a restart reuses it;
  2. the commit lands on refs/trials/<n>; a restart drops refs of unrecorded trials and re-runs them;
  3. the ledger line is appended and fsynced: from here on the trial is done;
  4. the method observes it and its state is saved (a restart replays missed observations);
  5. the best branch moves if the trial is kept (a restart recomputes it from the ledger).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from agent.constants import read_constants
from agent.errors import ArenaError, Terminated
from agent.judging import best_of, confirmation_decision, judge, open_candidate
from agent.methods import Context, Proposal, Repairable
from agent.patches import (
    InvalidPatch,
    apply_diff,
    check_train_py,
    diff_stats,
    make_diff,
    render_config,
)
from agent.presets import Preset
from agent.record import Kind, Repair, TrialRecord
from agent.run import Run, RunSettings
from agent.space import SearchSpace
from agent.template import EDITABLE_FILE, HARNESS_FILES, template_dir
from sandbox import BudgetRule, LocalBackend, Outcome, Status, TrialRunner, TrialSpec
from sandbox.outcome import Reported, reported_mfu, reported_rate, summary

Reporter = Callable[[str], None]
CRASH_ENV = "ARENA_CRASH_AT"  # fault injection for the crash-safety tests: "<point>:<trial>"


def crash_point(point: str, trial: int) -> None:
    """Die here, as `kill -9` would, when the tests ask for it; otherwise nothing."""
    if os.environ.get(CRASH_ENV) == f"{point}:{trial}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class StopRule:
    trials: int | None = None   # total trials in the ledger, baseline included
    hours: float | None = None  # total sandbox and proposal time over all trials

    def reached(self, records: list[TrialRecord]) -> bool:
        if self.trials is not None and len(records) >= self.trials:
            return True
        return self.hours is not None and sum(r.total_seconds for r in records) >= self.hours * 3600


@dataclass
class Job:
    trial: int
    kind: Kind
    proposal: Proposal
    parent: str | None   # the commit the trial builds on (None for the baseline, which is commit 0)
    seed: int
    confirms: int | None = None
    propose_seconds: float = 0.0


def make_backend(settings: RunSettings, preset: Preset, space: SearchSpace) -> TrialRunner:
    """The run's sandbox, checked on creation: it raises SandboxError when it cannot run trials here (or, for
    the surrogate, ArenaError when its trials cannot be fitted)."""
    if settings.backend == "docker":
        from sandbox.docker import DockerBackend

        if settings.image is None:  # RunSettings.validate says so first, with advice; this narrows the type
            raise ArenaError("the docker backend needs --image")
        return DockerBackend(image=settings.image, gpus=settings.gpus, mem_limit=settings.mem_limit,
                             run_name=settings.name)
    if settings.backend == "surrogate":
        from agent.surrogate.backend import SurrogateBackend

        paths = [Path(p).expanduser() for p in settings.surrogate_data or []]
        return SurrogateBackend.fit(paths, space, preset.time_budget)
    return LocalBackend(isolation=settings.isolation, gpus=settings.gpus)


@contextlib.contextmanager
def final_status(run: Run) -> Iterator[None]:
    """However the loop ends, status.json says so last: done, stopped (Ctrl-C, SIGTERM) or failed (and why)."""
    resume = "run the same command to resume"
    try:
        yield
    except KeyboardInterrupt:
        run.set_status(phase="stopped", trial=len(run.ledger), reason=f"interrupted (Ctrl-C); {resume}")
        raise
    except Terminated:
        run.set_status(phase="stopped", trial=len(run.ledger), reason=f"terminated (SIGTERM); {resume}")
        raise
    except BaseException as e:
        run.set_status(phase="failed", trial=len(run.ledger), reason=" ".join((str(e) or type(e).__name__).split()))
        raise
    best_trial, best_value = best_of(run.ledger.records)
    run.set_status(phase="done", trial=len(run.ledger),
                   reason=f"{len(run.ledger)} trials, best val_bpb {best_value:.6f} (trial {best_trial})")


def run_loop(run: Run, backend: TrialRunner, stop: StopRule, report: Reporter = print) -> None:
    while not stop.reached(run.ledger.records):
        job = next_job(run)
        record = execute(run, backend, job, report)
        if job.kind == "baseline" and not record.ok:
            # not recorded: without a working baseline there is nothing to compare against; a resume retries it
            raise ArenaError(f"the baseline trial failed ({record.status.value}: {record.reason}); "
                             f"see {run.log_path(0)} and fix the environment, then run the same command again")
        record_trial(run, record, report)


def next_job(run: Run) -> Job:
    trial = len(run.ledger)
    seed = run.settings.seed
    if trial == 0:
        return Job(0, "baseline", Proposal("baseline: the template, unmodified"), None, seed)
    candidate = open_candidate(run.ledger.records, run.settings.confirm)
    if candidate is not None:
        k = sum(1 for r in run.ledger.records if r.confirms == candidate.trial) + 1
        return Job(trial, "confirm", Proposal(f"confirm trial {candidate.trial} with seed {seed + k}"),
                   candidate.commit, seed + k, confirms=candidate.trial)
    best_trial, _ = best_of(run.ledger.records)
    parent = run.repo.best()
    pending = run.load_pending()
    if pending is not None and pending["trial"] == trial:
        run.method.restore(pending["state"])
        return Job(trial, "proposal", pending["proposal"], parent, seed)
    run.set_status(phase="proposing", trial=trial, method=run.settings.method)
    start = time.monotonic()
    ctx = Context(trial, run.ledger.records, run.ledger.records[best_trial],
                  run.repo.show(parent, EDITABLE_FILE), run.space)
    proposal = run.method.propose(ctx)
    run.save_pending(trial, proposal)
    crash_point("proposed", trial)
    return Job(trial, "proposal", proposal, parent, seed, propose_seconds=time.monotonic() - start)


def build_source(run: Run, job: Job, parent_source: str) -> str:
    """The trial's train.py; raises InvalidPatch when the proposal breaks a rule."""
    proposal = job.proposal
    if job.kind != "proposal":
        return parent_source
    # the method could not produce a proposal (e.g. bad JSON); a pending.pkl journaled before Proposal had
    # its own field for the reason keeps it in meta
    invalid = proposal.invalid or proposal.meta.get("invalid")
    if invalid:
        raise InvalidPatch(str(invalid))
    if proposal.config is not None:
        source = render_config(parent_source, proposal.config)
    elif proposal.diff is not None:
        source = apply_diff(parent_source, proposal.diff)
    else:
        raise InvalidPatch("the proposal holds neither a config nor a diff")
    check_train_py(source, parent_source, fixed_space=run.method.fixed_space,
                   space=run.space if run.method.fixed_space else None)
    return source


def apply_with_repairs(run: Run, job: Job, parent_source: str) -> tuple[str | None, list[Repair]]:
    """The trial's source, sending a rejected proposal back to a method that can repair it (bounded).

    Returns (None, attempts) when every attempt was rejected. Each repaired proposal is journaled,
    so a restart does not ask the model again.
    """
    attempts: list[Repair] = []
    while True:
        try:
            return build_source(run, job, parent_source), attempts
        except InvalidPatch as e:
            attempts.append(Repair(job.proposal.description, e.reason, job.proposal.diff, job.proposal.config))
            if job.kind != "proposal" or not isinstance(run.method, Repairable) or len(attempts) > run.settings.repairs:
                return None, attempts
            job.proposal = run.method.repair(job.proposal, e.reason, job.trial)
            run.save_pending(job.trial, job.proposal)


def execute(run: Run, backend: TrialRunner, job: Job, report: Reporter) -> TrialRecord:
    started = time.time()
    parent_source = run.repo.show(job.parent or run.repo.recorded_trial_commit(0), EDITABLE_FILE)
    method = run.settings.method if job.kind == "proposal" else job.kind
    run.set_status(phase="applying", trial=job.trial, description=job.proposal.description, started=started)
    source, repairs = apply_with_repairs(run, job, parent_source)
    record = TrialRecord(
        trial=job.trial, kind=job.kind, method=method, description=job.proposal.description,
        status=Status.INVALID_PATCH, reason=repairs[-1].reason if repairs else "", parent=job.parent,
        seed=job.seed, confirms=job.confirms, repairs=repairs,
        proposal_meta=job.proposal.meta,  # the attempt that ran (or the last one refused), not the first
        propose_seconds=job.propose_seconds, host=socket.gethostname(), harness_hash=run.harness_hash,
        dataset_fingerprint=run.info["dataset_fingerprint"], isolation=backend.isolation,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)))
    if source is None:
        outcome = Outcome(Status.INVALID_PATCH, record.reason)
        return finish(run, record, outcome, None, job.proposal.diff or "", None, started)
    diff = make_diff(parent_source, source)
    crash_point("applied", job.trial)
    if job.kind == "baseline":
        commit = run.repo.recorded_trial_commit(0)
    else:
        assert job.parent is not None  # only the baseline builds on nothing
        trailers: dict[str, object] = {"Arena-Trial": job.trial, "Arena-Method": method, "Arena-Parent": job.parent}
        if job.confirms is not None:
            trailers["Arena-Confirms"] = job.confirms
        commit = run.repo.commit_trial(job.trial, job.parent, {EDITABLE_FILE: source}, job.proposal.description,
                                       trailers)
    crash_point("committed", job.trial)
    run.set_status(phase="running", trial=job.trial, description=job.proposal.description, started=started,
                   commit=commit, diff=diff)
    report(f"trial {job.trial} [{method}] {job.proposal.description}")
    outcome = run_sandbox(run, backend, job, source)
    crash_point("ran", job.trial)
    return finish(run, record, outcome, commit, diff, source, started)


def budget_rule(run: Run) -> BudgetRule:
    """The budget, and the allowance outside it: the preset's cap until the baseline has measured its own."""
    baseline = run.ledger.records[0] if run.ledger.records else None
    reference = None
    if baseline is not None and baseline.outside_seconds is not None and baseline.ready_seconds:
        reference = (baseline.outside_seconds, baseline.ready_seconds)
    return BudgetRule(run.preset.time_budget, run.preset.startup_allowance, reference)


def run_sandbox(run: Run, backend: TrialRunner, job: Job, source: str) -> Outcome:
    spec = TrialSpec(source=source, data_dir=run.data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                     harness_hash=run.harness_hash, config=run.preset.harness_config(job.seed),
                     budget=budget_rule(run), eval_timeout=run.preset.eval_timeout,
                     compile_cache=run.dir / "compile-cache", trusted=job.kind == "baseline")
    with open(run.log_path(job.trial), "a") as log:
        log.write(f"=== trial {job.trial} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

        def on_log(line: str) -> None:
            log.write(line)
            log.flush()

        outcome = backend.run(spec, on_log)
        log.write(summary(outcome) + f"{outcome.status.value}: {outcome.reason}\n")
    return outcome


def finish(run: Run, record: TrialRecord, outcome: Outcome, commit: str | None, diff: str, source: str | None,
           started: float) -> TrialRecord:
    """Judge the outcome, attach the result to the commit as a note, and complete the record."""
    result = outcome.result
    _, best_value = best_of(run.ledger.records)
    value = result["val_bpb"] if result is not None and outcome.status is Status.OK else None
    settings = run.settings
    kept, candidate = judge(record.kind, value, best_value, settings.noise_margin, settings.confirm)
    decision = None
    if record.confirms is not None:
        decision = confirmation_decision(run.ledger.records, value, record.confirms, settings.confirm, best_value,
                                         settings.noise_margin)
    reported: Reported = result["reported"] if result is not None else {}
    work = result["work_seconds"] if result is not None else None
    record = replace(
        record, commit=commit, diff=diff, diff_stats=diff_stats(diff) if diff else None,
        config=read_constants(source) if source else None,
        status=outcome.status, reason=outcome.reason, val_bpb=value, kept=kept, candidate=candidate,
        decision=decision, training_seconds=work,
        tokens_per_second=reported_rate(reported), mfu_percent=reported_mfu(reported),
        steps=reported_int(reported, "steps"), gpu=reported_str(reported, "device_name"), reported=reported,
        train_wall_seconds=outcome.train_wall_seconds, eval_wall_seconds=outcome.eval_wall_seconds,
        overhead_seconds=outcome.train_wall_seconds + outcome.eval_wall_seconds - (work or 0),
        log_tail=outcome.log_tail, total_seconds=time.time() - started + record.propose_seconds)
    if result is not None:
        record = replace(record, peak_memory_gb=result["peak_memory_gb"], outside_seconds=result["outside_seconds"],
                         allowance_seconds=result["allowance_seconds"], ready_seconds=result["ready_seconds"],
                         num_params=result["num_params"])
    if commit is not None:
        run.repo.add_note(commit, record.note())
        crash_point("noted", record.trial)
    return record


def reported_int(reported: Reported, key: str) -> int | None:
    """A number the trial reported of itself, when it is a whole one (the trial may write anything there)."""
    value = reported.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reported_str(reported: Reported, key: str) -> str | None:
    value = reported.get(key)
    return value if isinstance(value, str) else None


def record_trial(run: Run, record: TrialRecord, report: Reporter) -> None:
    run.ledger.append(record)  # the commit point of the trial
    crash_point("recorded", record.trial)
    run.method.observe(record)
    run.save_method_state(record.trial)
    crash_point("observed", record.trial)
    run.clear_pending()
    best_trial, best_value = best_of(run.ledger.records)
    best_commit = run.repo.recorded_trial_commit(best_trial)
    if run.repo.best() != best_commit:
        run.repo.set_best(best_commit)
    run.write_views(best_commit)
    run.set_status(phase="idle", trial=record.trial + 1)
    verdict = "keep" if record.kept else ("candidate" if record.candidate else "discard")
    if record.decision is not None:
        verdict = f"{'kept' if record.decision.kept else 'rejected'} trial {record.decision.trial}"
    score = f"val_bpb {record.val_bpb:.6f}" if record.val_bpb is not None else record.reason
    best = f"{best_value:.6f}" if best_value is not None else "-"
    report(f"trial {record.trial} {record.status.value}: {score} -> {verdict} "
           f"(best {best} at trial {best_trial}, {record.total_seconds:.0f} s)")
