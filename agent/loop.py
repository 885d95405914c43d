"""The trial loop: propose, apply, commit, run, judge, record, with one or several trials under way at
once, resumable anywhere.

The main thread does all the bookkeeping (proposals, git, the ledger, the method, status.json); each
worker is a thread that only waits on its trial's sandbox, on its own GPU or share of the cores
(sandbox/workers.py). Crash safety rests on one order of writes per trial:
  1. the job (its proposal, and the method's state right after it) is journaled in state/journal.pkl
     before anything runs, so a restart re-runs exactly the trials that were in flight, as they were;
  2. the commit lands on refs/trials/<n>; a restart drops refs of unrecorded trials and commits again;
  3. the ledger line is appended and fsynced: from here on the trial is done;
  4. the method observes it and the journal is saved (a restart replays a missed observation);
  5. the best branch moves if the trial is kept (a restart recomputes it from the ledger).
A trial is numbered when its job is made and recorded when it finishes: with several workers the ledger
is in completion order, and each trial is kept or not against the best at the moment it finished.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from agent.constants import Value, read_constants
from agent.errors import ArenaError, Terminated
from agent.feasibility import MemoryModel, Verdict, for_run
from agent.judging import best_of, confirmation_decision, judge, open_candidate
from agent.methods import Context, Paced, Proposal, Repairable
from agent.methods.prompts import outcome_line
from agent.patches import (
    InvalidPatch,
    apply_diff,
    check_train_py,
    diff_stats,
    make_diff,
    render_config,
)
from agent.presets import Preset
from agent.record import Repair, TrialRecord, counted, first_run_with, has_constants, ran_in_search
from agent.run import Change, Job, Run, RunSettings
from agent.space import SearchSpace
from agent.template import EDITABLE_FILE, HARNESS_FILES, template_dir
from sandbox import BudgetRule, LiveSandboxes, LocalBackend, Outcome, Placement, Status, TrialRunner, TrialSpec
from sandbox.outcome import Reported, reported_mfu, reported_rate, summary
from sandbox.ray_runner import RayRunner
from sandbox.workers import collected_by, cpu_placements, gpu_ids, gpu_placements

Reporter = Callable[[str], None]
MAX_INFEASIBLE_IN_A_ROW = 200
UNUSABLE_TO_STOP = 20  # proposals, none of them usable since the run was taken up: the model cannot do the task
CRASH_ENV = "ARENA_CRASH_AT"  # fault injection for the crash-safety tests: "<point>:<trial>"


def crash_point(point: str, trial: int) -> None:
    """Die here, as `kill -9` would, when the tests ask for it; otherwise nothing."""
    if os.environ.get(CRASH_ENV) == f"{point}:{trial}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class StopRule:
    trials: int | None = None   # trials in the ledger, baseline included; infeasible ones, which ran nothing, aside
    hours: float | None = None  # total sandbox and proposal time over all trials (device-hours with workers)

    def reached(self, records: list[TrialRecord]) -> bool:
        if self.trials is not None and counted(records) >= self.trials:
            return True
        return self.hours is not None and sum(r.total_seconds for r in records) >= self.hours * 3600

    def allows_another(self, records: list[TrialRecord], running: int) -> bool:
        """Whether a new trial may start while `running` are under way (they count towards --trials)."""
        return not self.reached(records) and (self.trials is None or counted(records) + running < self.trials)


def make_backend(settings: RunSettings, preset: Preset, space: SearchSpace) -> TrialRunner:
    """The run's sandbox, checked on creation: it raises SandboxError when it cannot run trials here (or, for
    the surrogate, ArenaError when its trials cannot be fitted)."""
    backend: TrialRunner
    if settings.backend == "docker":
        from sandbox.docker import DockerBackend

        if settings.image is None:  # RunSettings.validate says so first, with advice; this narrows the type
            raise ArenaError("the docker backend needs --image")
        backend = DockerBackend(image=settings.image, mem_limit=settings.mem_limit, run_name=settings.name)
    elif settings.backend == "surrogate":
        from agent.surrogate.backend import SurrogateBackend

        paths = [Path(p).expanduser() for p in settings.surrogate_data or []]
        backend = SurrogateBackend.fit(paths, space, preset)
    else:
        backend = LocalBackend(isolation=settings.isolation, mem_limit=settings.mem_limit)
    if settings.executor == "ray":
        return RayRunner(backend, settings.ray_address, gpu=preset.device.startswith("cuda"))
    return backend


def placements(settings: RunSettings, preset: Preset, runner: TrialRunner | None = None) -> list[Placement]:
    """Where each worker runs its trials: a GPU each (--gpus), a share of the cores (--workers on a CPU
    preset), or wherever Ray puts it (`runner`, with --executor ray). Raises SandboxError or ArenaError, in
    one line, for devices that are not there."""
    workers = settings.workers
    if isinstance(runner, RayRunner):
        capacity = runner.capacity()
        if workers is not None and workers > capacity:
            raise ArenaError(f"--workers {workers}, and the Ray cluster has {capacity} {runner.resource}s for "
                             f"trials; use --workers {capacity} or fewer, or add nodes")
        return [Placement(name=f"ray {runner.resource.lower()}")] * (workers or capacity)
    if settings.backend == "surrogate":
        return [Placement(name="surrogate")] * (workers or 1)
    gpus = settings.gpus
    if gpus is None and preset.device.startswith("cuda"):
        if (workers or 1) > 1:
            raise ArenaError(f"--workers {workers} on a GPU preset runs one trial per GPU: name them with --gpus "
                             "(e.g. --gpus 0,1)")
        gpus = ["0"]  # one trial at a time, on the first GPU (the sandbox binds only that GPU's device)
    if gpus:
        return gpu_placements(gpus, workers, gpu_ids())
    return cpu_placements(workers or 1)


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


def run_loop(run: Run, backend: TrialRunner, stop: StopRule, report: Reporter = print,
             where: list[Placement] | None = None) -> None:
    """Run trials until `stop`, on one worker per placement (default: the run's --gpus/--workers)."""
    run.stop = {name: value for name, value in (("trials", stop.trials), ("hours", stop.hours)) if value is not None}
    Scheduler(run, backend, where or placements(run.settings, run.preset), report).drive(stop)


@dataclass
class Running:
    """A trial handed to a worker: what the loop knows of it before its outcome comes back."""
    job: Job
    worker: int
    record: TrialRecord
    commit: str
    diff: str
    source: str
    started: float


class Scheduler:
    """Keeps every worker busy with a trial, and records each trial as it finishes."""

    def __init__(self, run: Run, backend: TrialRunner, where: list[Placement], report: Reporter):
        self.run = run
        self.report = report
        self.where = where
        self.resumed_at = len(run.ledger.records)  # trials recorded before this arena took the run up
        self.memory: MemoryModel | None
        self.memory, line = for_run(run.settings, run.preset, run.space, where)
        if line:
            report(line)
        self.left_out = 0  # out-of-memory trials the memory model could not explain, as last reported
        self.runners = [backend.placed(placement) for placement in where]
        self.isolation = backend.isolation
        self.idle = list(range(len(where)))
        self.running: dict[int, Running] = {}
        self.finished: queue.SimpleQueue[tuple[int, Outcome | BaseException, float]] = queue.SimpleQueue()
        self.live = LiveSandboxes()

    def drive(self, stop: StopRule) -> None:
        pool = ThreadPoolExecutor(max_workers=len(self.runners), thread_name_prefix="arena-worker")
        try:
            while True:
                self.fill(pool, stop)
                if not self.running:
                    return  # nothing could start and nothing is under way: the stop rule is reached
                trial, outcome, ended = self.next_finished()
                if isinstance(outcome, BaseException):
                    self.record_finished()  # trials that did finish count; a resume re-runs the rest
                    raise outcome  # the sandbox itself failed (not a trial's doing)
                self.complete(trial, outcome, ended)
        finally:
            self.live.end_all()  # Ctrl-C, SIGTERM or an error: no sandbox outlives the loop
            pool.shutdown(wait=True, cancel_futures=True)

    def record_finished(self) -> None:
        """Record the outcomes already in, before the loop stops on a failed sandbox."""
        with contextlib.suppress(queue.Empty):
            while True:
                trial, outcome, ended = self.finished.get_nowait()
                if not isinstance(outcome, BaseException):
                    self.complete(trial, outcome, ended)

    def next_finished(self) -> tuple[int, Outcome | BaseException, float]:
        while True:  # a timeout keeps the wait open to Ctrl-C and SIGTERM
            with contextlib.suppress(queue.Empty):
                return self.finished.get(timeout=0.5)

    # -- starting trials

    def fill(self, pool: ThreadPoolExecutor, stop: StopRule) -> None:
        """Start trials on idle workers while the stop rule and the method allow."""
        run = self.run
        while self.idle and stop.allows_another(run.ledger.records, len(self.running)):
            if not run.ledger.records and self.running:
                return  # the baseline runs alone: every other trial is measured against it
            job = self.next_job()
            if job is None:
                return  # the method waits for results of the trials under way
            started = time.time()
            prepared = self.prepare(job, started)
            if isinstance(prepared, TrialRecord):  # refused before it ran (an invalid patch, or infeasible)
                self.record(prepared)
                check_not_stuck(run.ledger.records, self.resumed_at)
                continue
            worker = self.idle.pop(0)
            self.running[job.trial] = Running(job, worker, *prepared, started=started)
            self.publish()
            self.report(f"trial {job.trial} [{prepared[0].method}] {job.proposal.description}"
                        + (f" (worker {worker}, {self.where[worker].label()})" if len(self.where) > 1 else ""))
            pool.submit(self.work, job, worker, prepared[3])

    def work(self, job: Job, worker: int, source: str) -> None:
        """In a worker thread: run the trial's sandbox and hand the outcome to the main thread."""
        try:
            with collected_by(self.live):
                outcome: Outcome | BaseException = run_sandbox(self.run, self.runners[worker], job, source)
        except BaseException as e:  # noqa: BLE001 - handed over and raised in the main thread
            outcome = e
        self.finished.put((job.trial, outcome, time.time()))

    def next_job(self) -> Job | None:
        """The next trial: one journaled before a restart, the baseline, a confirmation run, or a proposal
        of the method (None when the method must wait for results first)."""
        run = self.run
        records = run.ledger.records
        if self.memory is not None:
            self.memory.calibrate(records)
            left_out = self.memory.calibration.unexplained
            if left_out > self.left_out:  # OOMs where trials measured room to spare: the user should look
                self.report(self.memory.describe())
            self.left_out = left_out
        waiting = sorted(trial for trial in run.in_flight if trial not in self.running)
        if waiting:
            return run.in_flight[waiting[0]]  # in flight when arena stopped: runs again as it was
        seed = run.settings.seed
        if not records:
            job = Job(0, "baseline", Proposal("baseline: the template, unmodified"), None, seed)
            run.journal_job(job)
            return job
        trial = max(run.ledger.trials | set(run.in_flight)) + 1
        confirming = [r.job.confirms for r in self.running.values() if r.job.confirms is not None]
        candidate = open_candidate(records, run.settings.confirm, confirming)
        if candidate is not None:
            k = sum(1 for r in records if r.confirms == candidate.trial) + confirming.count(candidate.trial) + 1
            job = Job(trial, "confirm", Proposal(f"confirm trial {candidate.trial} with seed {seed + k}"),
                      candidate.commit, seed + k, confirms=candidate.trial)
            run.journal_job(job)
            return job
        if isinstance(run.method, Paced) and not run.method.can_propose():
            if not self.running:
                raise ArenaError(f"method '{run.settings.method}' waits for results, and no trial is under way; "
                                 "this is a bug — report it with the run's state/journal.pkl")
            return None
        best_trial, _ = best_of(records)
        parent = self.parent_for()
        self.publish(proposing=trial)
        start = time.monotonic()
        in_flight = {t: j.proposal for t, j in run.in_flight.items() if j.kind == "proposal"}
        parent_trial = run.ledger.get(parent[0])
        best = run.ledger.get(best_trial)
        model = self.memory
        memory: Callable[[], str] = (functools.partial(model.boundary, best.config, run.space)
                                     if model is not None and best.config else lambda: "")
        ctx = Context(trial, records, best, run.repo.show(parent[1], EDITABLE_FILE), run.space, parent=parent_trial,
                      in_flight=in_flight, memory=memory)
        proposal = run.method.propose(ctx)
        job = Job(trial, "proposal", proposal, parent[1], seed, propose_seconds=time.monotonic() - start)
        run.journal_job(job)
        crash_point("proposed", trial)
        return job

    def parent_for(self) -> tuple[int, str]:
        """(trial, commit) a proposal builds on: the best; for a code agent with several workers, the one of
        the best few kept commits that the fewest trials under way build on (the better one on a tie), so
        that parallel agents explore side by side instead of racing on one parent."""
        run = self.run
        best_trial, _ = best_of(run.ledger.records)
        if run.method.fixed_space or len(self.runners) == 1:
            return best_trial, run.repo.recorded_trial_commit(best_trial)
        frontier = best_kept(run.ledger.records, len(self.runners))
        children = [r.job.parent for r in self.running.values()]
        trial = min(frontier, key=lambda t: (children.count(run.repo.recorded_trial_commit(t)), frontier.index(t)))
        return trial, run.repo.recorded_trial_commit(trial)

    def prepare(self, job: Job, started: float) -> TrialRecord | tuple[TrialRecord, str, str, str]:
        """Apply the job's proposal and commit it: (the record so far, commit, diff, source), or the final
        record of a proposal that was refused."""
        run = self.run
        parent_source = run.repo.show(job.parent or run.repo.recorded_trial_commit(0), EDITABLE_FILE)
        method = run.settings.method if job.kind == "proposal" else job.kind
        self.publish(applying=job)
        source, repairs = apply_with_repairs(run, job, parent_source)
        record = TrialRecord(
            trial=job.trial, kind=job.kind, method=method, description=job.proposal.description,
            status=Status.INVALID_PATCH, reason=repairs[-1].reason if repairs else "", parent=job.parent,
            seed=job.seed, confirms=job.confirms, repairs=repairs,
            proposal_meta=job.proposal.meta,  # the attempt that ran (or the last one refused), not the first
            propose_seconds=job.propose_seconds, host=socket.gethostname(), harness_hash=run.harness_hash,
            dataset_fingerprint=run.info["dataset_fingerprint"], isolation=self.isolation,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)))
        if source is None:
            outcome = Outcome(Status.INVALID_PATCH, record.reason)
            return finish(run, record, outcome, None, job.proposal.diff or "", None, started)
        diff = make_diff(parent_source, source)
        verdict = self.memory_verdict(job, source)
        if verdict is not None:
            record = replace(record, predicted_memory_gb=verdict.predicted_gb, memory_threshold_gb=verdict.threshold_gb)
            if verdict.reason:
                return finish(run, record, Outcome(Status.INFEASIBLE, verdict.reason), None, diff, source, started)
        crash_point("applied", job.trial)
        if job.kind == "baseline":
            commit = run.repo.recorded_trial_commit(0)
        else:
            assert job.parent is not None  # only the baseline builds on nothing
            trailers: dict[str, object] = {"Arena-Trial": job.trial, "Arena-Method": method,
                                           "Arena-Parent": job.parent}
            if job.confirms is not None:
                trailers["Arena-Confirms"] = job.confirms
            commit = run.repo.commit_trial(job.trial, job.parent, {EDITABLE_FILE: source}, job.proposal.description,
                                           trailers)
        crash_point("committed", job.trial)
        return record, commit, diff, source

    def memory_verdict(self, job: Job, source: str) -> Verdict | None:
        """The memory model's verdict on a fixed-space proposal (None: no model, or not a proposal). Decided once
        per job and journaled, so a resumed run keeps the verdict an uninterrupted one made, whatever finished
        in between."""
        if job.kind != "proposal" or self.memory is None or not self.run.method.fixed_space:
            return None
        if job.memory is None:
            job.memory = self.memory.verdict(read_constants(source))
            self.run.journal_job(job)
        return job.memory

    # -- finishing trials

    def complete(self, trial: int, outcome: Outcome, ended: float) -> None:
        running = self.running.pop(trial)
        self.idle.append(running.worker)
        self.idle.sort()
        crash_point("ran", trial)
        record = finish(self.run, running.record, outcome, running.commit, running.diff, running.source,
                        running.started, ended)
        if running.job.kind == "baseline" and not record.ok:
            # not recorded: without a working baseline there is nothing to compare against; a resume retries it
            raise ArenaError(f"the baseline trial failed ({record.status.value}: {record.reason}); "
                             f"see {self.run.log_path(0)} and fix the environment, then run the same command again")
        self.record(record)

    def record(self, record: TrialRecord) -> None:
        record_trial(self.run, record, self.report)
        self.publish()

    # -- status.json

    def publish(self, proposing: int | None = None, applying: Job | None = None) -> None:
        """status.json: what the loop does now (the newest trial under way leads), and each worker's trial."""
        run = self.run
        workers: list[dict[str, object]] = []
        for index, placement in enumerate(self.where):
            entry: dict[str, object] = {"worker": index, "device": placement.label(), "phase": "idle"}
            on_it = [r for r in self.running.values() if r.worker == index]
            if on_it:
                r = on_it[0]
                entry.update(phase="running", trial=r.job.trial, description=r.job.proposal.description,
                             started=r.started)
            workers.append(entry)
        if proposing is not None:
            run.set_status(phase="proposing", trial=proposing, method=run.settings.method, workers=workers)
        elif applying is not None:
            run.set_status(phase="applying", trial=applying.trial, description=applying.proposal.description,
                           started=time.time(), workers=workers)
        elif self.running:
            lead = max(self.running.values(), key=lambda r: r.started)
            run.set_status(phase="running", trial=lead.job.trial, description=lead.job.proposal.description,
                           started=lead.started, commit=lead.commit, diff=lead.diff, workers=workers)
        else:
            upcoming = max(run.ledger.trials | set(run.in_flight), default=-1) + 1
            run.set_status(phase="idle", trial=upcoming, workers=workers)


def check_not_stuck(records: list[TrialRecord], resumed_at: int = 0) -> None:
    """Stop a method that keeps proposing what cannot fit (infeasible trials cost nothing, so nothing else would),
    or a model none of whose answers since this arena took the run up (`resumed_at` records) could be used:
    a resume after the model or its template was fixed starts the count anew."""
    streak = 0
    for record in reversed(records):
        if record.status is not Status.INFEASIBLE:
            break
        streak += 1
    if streak >= MAX_INFEASIBLE_IN_A_ROW:
        raise ArenaError(f"the last {streak} proposals were all predicted not to fit in memory ({records[-1].reason}); "
                         "check --device-memory, or run with --feasibility off")
    proposals = [record for record in records[resumed_at:] if record.kind == "proposal"]
    if len(proposals) >= UNUSABLE_TO_STOP and all(r.status is Status.INVALID_PATCH for r in proposals):
        raise ArenaError(f"none of the model's {len(proposals)} proposals so far could be used (the last: "
                         f"{records[-1].reason[:200]}); check the model's answers in `arena replay`, and use a model "
                         "that follows the answer format (or check its chat template)")


def best_kept(records: list[TrialRecord], k: int) -> list[int]:
    """The trials of the best `k` commits the run has kept (confirmed candidates included), best first."""
    scores: dict[int, float] = {}
    for record in records:
        if record.kept and record.val_bpb is not None:
            scores[record.trial] = record.val_bpb
        elif record.decision is not None and record.decision.kept and record.decision.mean_val_bpb is not None:
            scores[record.decision.trial] = record.decision.mean_val_bpb
    return sorted(scores, key=lambda t: scores[t])[:k] or [0]


def build_source(run: Run, job: Job, parent_source: str) -> str:
    """The trial's train.py; raises InvalidPatch when the proposal breaks a rule."""
    proposal = job.proposal
    if job.kind != "proposal":
        return parent_source
    invalid = proposal.invalid  # the method could not produce a proposal (e.g. bad JSON)
    if invalid:
        raise InvalidPatch(str(invalid))
    if proposal.config is not None:
        source = render_config(parent_source, proposal.config)
    elif proposal.diff is not None:
        source = apply_diff(parent_source, proposal.diff)
    else:
        raise InvalidPatch("the proposal holds neither a config nor a diff")
    change = None
    # a model echoing what it was shown, or what it was told ran; once accepted (journaled), a proposal runs:
    # a resume must not refuse it for a trial that finished since
    if isinstance(run.method, Repairable) and job.accepted is None:
        if source == parent_source:
            raise InvalidPatch("the proposal changes nothing: train.py would be the same as the one it was "
                               "proposed against; propose a change")
        change = Change(make_diff(parent_source, source), read_constants(source) if run.method.fixed_space else None)
        repeated = repeat_of(run, job, change)
        if repeated:
            raise InvalidPatch(f"the proposal repeats trial {repeated}; propose something not yet tried")
    check_train_py(source, parent_source, fixed_space=run.method.fixed_space,
                   space=run.space if run.method.fixed_space else None)
    if change is not None:
        job.accepted = change
    return source


def repeat_of(run: Run, job: Job, change: Change) -> str:
    """The trial a proposal would repeat, and how it went ("" if none): the first that ran, or one under way,
    with the same constants (`change.config`, for a fixed-space method, whatever it built on), else with the
    same change of the same commit."""
    def same(parent: str | None, diff: str | None, config: dict[str, Value] | None) -> bool:
        if change.config is not None:
            return has_constants(config, change.config)
        return parent == job.parent and diff == change.diff

    if change.config is not None:
        ran = first_run_with(run.ledger.records, change.config)
    else:
        ran = next((r for r in run.ledger.records if ran_in_search(r) and same(r.parent, r.diff, None)), None)
    if ran is not None:
        return f"{ran.trial}, which ran already: {outcome_line(ran)}"
    running = [other.trial for other in run.in_flight.values() if other.trial != job.trial and other.accepted
               and same(other.parent, other.accepted.diff, other.accepted.config)]
    return f"{min(running)}, which is under way" if running else ""


def apply_with_repairs(run: Run, job: Job, parent_source: str) -> tuple[str | None, list[Repair]]:
    """The trial's source, sending a rejected proposal back to a method that can repair it (bounded).

    Returns (None, attempts) when every attempt was rejected. Each repaired proposal is journaled with the
    attempts before it, so a restart neither asks the model again nor starts the count of repairs anew.
    """
    attempts = list(job.repairs)
    accepted_before = job.accepted is not None
    while True:
        try:
            source = build_source(run, job, parent_source)
        except InvalidPatch as e:
            attempts.append(Repair(job.proposal.description, e.reason, job.proposal.diff, job.proposal.config))
            if job.kind != "proposal" or not isinstance(run.method, Repairable) or len(attempts) > run.settings.repairs:
                return None, attempts
            job.proposal = run.method.repair(job.proposal, e.reason, job.trial)
            job.repairs = tuple(attempts)
            run.journal_job(job)
            continue
        if job.accepted is not None and not accepted_before:
            run.journal_job(job)
        return source, attempts


def budget_rule(run: Run) -> BudgetRule:
    """The budget, and the allowance outside it: the preset's cap until the baseline has measured its own."""
    baseline = run.ledger.records[0] if run.ledger.records else None
    reference = None
    if baseline is not None and baseline.outside_seconds is not None and baseline.ready_seconds:
        reference = (baseline.outside_seconds, baseline.ready_seconds)
    return BudgetRule(run.preset.time_budget, run.preset.startup_allowance, reference)


def run_sandbox(run: Run, runner: TrialRunner, job: Job, source: str) -> Outcome:
    """The trial's sandbox, its output to the trial's log (in a worker thread)."""
    spec = TrialSpec(source=source, data_dir=run.data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                     harness_hash=run.harness_hash, config=run.preset.harness_config(job.seed),
                     budget=budget_rule(run), eval_timeout=run.preset.eval_timeout,
                     compile_cache=run.dir / "compile-cache", trusted=job.kind == "baseline")
    with open(run.log_path(job.trial), "a") as log:
        log.write(f"=== trial {job.trial} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

        def on_log(line: str) -> None:
            log.write(line)
            log.flush()

        outcome = runner.run(spec, on_log)
        log.write(summary(outcome) + f"{outcome.status.value}: {outcome.reason}\n")
    return outcome


def finish(run: Run, record: TrialRecord, outcome: Outcome, commit: str | None, diff: str, source: str | None,
           started: float, ended: float | None = None) -> TrialRecord:
    """Judge the outcome, attach the result to the commit as a note, and complete the record. `ended`: when
    the sandbox returned (the main thread may take the outcome up later; that wait is no trial's time)."""
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
    trial_seconds = (ended or time.time()) - started
    if record.isolation == "surrogate":  # nothing ran: the trial took the time the surrogate predicts
        trial_seconds = outcome.train_wall_seconds + outcome.eval_wall_seconds
    record = replace(
        record, commit=commit, diff=diff, diff_stats=diff_stats(diff) if diff else None,
        config=read_constants(source) if source else None,
        status=outcome.status, reason=outcome.reason, val_bpb=value, kept=kept, candidate=candidate,
        decision=decision, training_seconds=work,
        tokens_per_second=reported_rate(reported), mfu_percent=reported_mfu(reported),
        steps=reported_int(reported, "steps"), gpu=reported_str(reported, "device_name"), reported=reported,
        train_wall_seconds=outcome.train_wall_seconds, eval_wall_seconds=outcome.eval_wall_seconds,
        overhead_seconds=outcome.train_wall_seconds + outcome.eval_wall_seconds - (work or 0),
        log_tail=outcome.log_tail, total_seconds=trial_seconds + record.propose_seconds)
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
    run.journal_observed(record.trial)
    crash_point("observed", record.trial)
    best_trial, best_value = best_of(run.ledger.records)
    best_commit = run.repo.recorded_trial_commit(best_trial)
    if run.repo.best() != best_commit:
        run.repo.set_best(best_commit)
    run.write_views(best_commit)
    verdict = "keep" if record.kept else ("candidate" if record.candidate else "discard")
    if record.decision is not None:
        verdict = f"{'kept' if record.decision.kept else 'rejected'} trial {record.decision.trial}"
    score = f"val_bpb {record.val_bpb:.6f}" if record.val_bpb is not None else record.reason
    best = f"{best_value:.6f}" if best_value is not None else "-"
    report(f"trial {record.trial} {record.status.value}: {score} -> {verdict} "
           f"(best {best} at trial {best_trial}, {record.total_seconds:.0f} s)")
