"""The contract every search method keeps with the loop, checked the same way for each one.

Every method registered in agent.methods.METHODS takes part with no code of its own here: the LLM
methods get a real loopback chat server that answers every call with a usable proposal drawn from a hash
of the prompt. The driver
below plays the loop (agent/loop.py): it builds the Context, applies config or diff, records the trial
with a synthetic val_bpb, and hands the record to observe(). Adding a method: its module, its builder in
agent/methods/__init__.py — and this suite holds it to the contract.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.constants import read_constants, render_constants
from agent.errors import ArenaError
from agent.methods import METHODS, Context, Method, ModelBacked, Paced, Proposal, Repairable, make_method
from agent.patches import InvalidPatch, apply_diff, check_train_py, make_diff, render_config
from agent.presets import get_preset
from agent.record import Decision, TrialRecord
from agent.run import RunSettings
from agent.space import load_space
from agent.template import template_dir
from sandbox.outcome import FAILURES, Status
from tests.llm_server import ScriptedLLMServer

SPACE = load_space("cpu")
START = dict(get_preset("cpu").constants)
BASELINE_SOURCE = render_constants((template_dir() / "train.py").read_text(), START)


def prompt_digest(body: dict) -> int:
    """A number fixed by everything the method sent: a method restored with less (or more) than it had
    gets other answers, and so proposes something else."""
    return int(hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:8], 16)


def config_answer(body: dict) -> str:
    d = prompt_digest(body)
    return json.dumps({**START, "MATRIX_LR": 0.01 + (d % 97) / 1000, "DEPTH": 2 + d % 5})


def code_answer(body: dict) -> str:
    warmdown = f"WARMDOWN_RATIO = 0.{1 + prompt_digest(body) % 9} + "
    diff = make_diff(BASELINE_SOURCE, BASELINE_SOURCE.replace("WARMDOWN_RATIO = ", warmdown, 1))
    return f"Shorter warm-down\n```diff\n{diff}```"


ANSWERS = {"llm": config_answer, "centaur": config_answer, "code": code_answer}
TRIALS = 14  # past Centaur's warm-up and a CMA-ES generation, so every method has state worth saving


def objective(config: dict[str, Any]) -> float:
    return 2.0 + abs(float(config["MATRIX_LR"]) - 0.04) + 0.01 * int(config["DEPTH"])


@pytest.fixture
def server():
    with ScriptedLLMServer() as running:
        yield running


def build(name: str, server: ScriptedLLMServer, run_dir: Path) -> Method[Any]:
    """A fresh method as `arena run` makes it; LLM methods get a usable answer to every call, one that
    depends on the whole prompt."""
    (run_dir / "state").mkdir(parents=True, exist_ok=True)
    if name in ANSWERS:
        server.responder = ANSWERS[name]
    settings = RunSettings(name="conformance", method=name, seed=7, model="openai/test-model",
                           api_base=server.api_base, llm_timeout=10, llm_retries=0, llm_warmup=2, llm_ratio=0.5)
    return make_method(settings, SPACE, run_dir)


@dataclass
class Driver:
    """The loop, minus the sandbox: the proposal's outcome comes from `objective`, every fifth trial crashes."""
    method: Method[Any]
    records: list[TrialRecord] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)

    def baseline(self) -> None:
        self.observe(record(0, "baseline", START, objective(START)), BASELINE_SOURCE)

    def best(self) -> TrialRecord:
        kept = [r for r in self.records if r.kept]
        return kept[-1]

    def propose(self) -> Proposal:
        best = self.best()
        ctx = Context(len(self.records), list(self.records), best, self.sources[best.trial], SPACE)
        proposal = self.method.propose(ctx)
        self.proposals.append(proposal)
        return proposal

    def outcome(self, proposal: Proposal) -> tuple[TrialRecord, str | None]:
        """The record the loop would make of `proposal` (the same for the same proposal), and its train.py."""
        trial = len(self.records)
        try:
            source = self.source(proposal, self.sources[self.best().trial])
        except InvalidPatch as e:
            return record(trial, "proposal", None, None, Status.INVALID_PATCH, reason=e.reason), None
        config = read_constants(source)
        if trial % 5 == 0:
            return record(trial, "proposal", config, None, Status.CRASH), source
        value = objective(config)
        best_value = self.best().val_bpb
        return record(trial, "proposal", config, value, kept=best_value is not None and value < best_value), source

    def source(self, proposal: Proposal, parent: str) -> str:
        if proposal.invalid is not None:
            raise InvalidPatch(proposal.invalid)
        source = render_config(parent, proposal.config) if proposal.config is not None else \
            apply_diff(parent, proposal.diff or "")
        method = self.method
        check_train_py(source, parent, fixed_space=method.fixed_space, space=SPACE if method.fixed_space else None)
        return source

    def observe(self, trial_record: TrialRecord, source: str | None = None) -> None:
        """Record a trial; `source` is its train.py (None: no commit, so its parent's)."""
        self.sources.append(source or self.sources[self.best().trial])
        self.records.append(trial_record)
        self.method.observe(trial_record)

    def step(self) -> None:
        self.observe(*self.outcome(self.propose()))

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()


def record(trial: int, kind: str, config: dict[str, Any] | None, value: float | None, status: Status = Status.OK,
           **fields: Any) -> TrialRecord:
    return TrialRecord(trial=trial, kind=kind, method=kind, description=f"trial {trial}", status=status,
                       val_bpb=value if status is Status.OK else None, config=config,
                       peak_memory_gb=1.0 if status is Status.OK else None, kept=fields.pop("kept", trial == 0),
                       **fields)


def started(name: str, server: ScriptedLLMServer, run_dir: Path) -> Driver:
    driver = Driver(build(name, server, run_dir))
    driver.baseline()
    return driver


def same_proposals(a: list[Proposal], b: list[Proposal]) -> bool:
    return [(p.config, p.diff, p.invalid) for p in a] == [(p.config, p.diff, p.invalid) for p in b]


METHOD_NAMES = list(METHODS)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_proposals_are_one_thing_and_inside_the_rules(name, server, tmp_path):
    driver = started(name, server, tmp_path)
    for _ in range(TRIALS):
        proposal = driver.propose()
        assert sum(part is not None for part in (proposal.config, proposal.diff, proposal.invalid)) == 1
        assert proposal.description.strip()
        assert proposal.invalid is None  # every answer here is usable
        if driver.method.fixed_space:
            assert proposal.config is not None
            SPACE.check(proposal.config)
        else:
            assert proposal.diff is not None
        driver.source(proposal, driver.sources[driver.best().trial])  # applies and passes the loop's checks
        driver.observe(*driver.outcome(proposal))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_outcome_is_observed_and_the_search_goes_on(name, server, tmp_path):
    driver = started(name, server, tmp_path)
    driver.run(3)
    for status in FAILURES:
        proposal = driver.propose()
        config = proposal.config if proposal.config is not None else START
        driver.observe(record(len(driver.records), "proposal", config, None, status, reason=f"a {status} trial"))
    driver.propose()  # answered by a would-be best: a candidate awaiting its confirmation run
    driver.observe(record(len(driver.records), "proposal", START, 1.5, candidate=True))
    confirm = len(driver.records)
    driver.observe(record(confirm, "confirm", START, 1.6, confirms=confirm - 1,
                          decision=Decision(confirm - 1, [1.5, 1.6], True, 1.55)))
    driver.run(3)  # still proposing, inside the rules
    assert all(p.invalid is None for p in driver.proposals)


@pytest.mark.parametrize("crash", ["proposed", "observed"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_resumed_method_proposes_exactly_what_it_would_have(name, crash, server, tmp_path):
    """The loop's resume (agent/run.py reconcile): a fresh method in the same run directory restores the
    newest pickled state — the journaled one taken right after propose(), or the one saved after
    observe() — then observes what the ledger holds since. From there on, the proposals are those of a
    run that was never interrupted."""
    straight = started(name, server, tmp_path / "straight")
    straight.run(TRIALS)
    killed = started(name, server, tmp_path / "killed")
    killed.run(TRIALS // 2)
    if crash == "proposed":
        killed.propose()
        state = pickle.dumps(killed.method.state())  # state/journal.pkl, after a proposal
        replay = [straight.records[len(killed.records)]]  # recorded, but the kill came before observing it
    else:
        state = pickle.dumps(killed.method.state())  # state/journal.pkl, after an observation
        replay = []
    resumed = Driver(build(name, server, tmp_path / "killed"), list(killed.records), list(killed.sources))
    resumed.method.restore(pickle.loads(state))
    for missed in replay:
        resumed.observe(missed, straight.sources[missed.trial])
    resumed.run(TRIALS - len(resumed.records) + 1)
    done = len(resumed.proposals)
    assert same_proposals(resumed.proposals, straight.proposals[-done:])


WORKERS = 3


@dataclass
class Batch:
    """The loop with WORKERS workers: the method proposes while trials are under way (each applied and checked
    when proposed, as the loop commits it then), and their results come back in another order than they were
    proposed in, each judged against the best when it comes."""
    method: Method[Any]
    records: list[TrialRecord] = field(default_factory=list)
    sources: dict[int, str] = field(default_factory=dict)
    running: dict[int, tuple[Proposal, str | None]] = field(default_factory=dict)
    proposals: list[Proposal] = field(default_factory=list)
    next_trial: int = 1
    most_running: int = 0

    def best(self) -> TrialRecord:
        return [r for r in self.records if r.kept][-1]

    def step(self) -> None:
        paced = isinstance(self.method, Paced) and not self.method.can_propose()
        if len(self.running) < WORKERS and not paced:
            self.propose()
        else:
            self.finish(sorted(self.running)[len(self.records) % len(self.running)])

    def propose(self) -> None:
        best, trial = self.best(), self.next_trial
        ctx = Context(trial, list(self.records), best, self.sources[best.trial], SPACE,
                      in_flight={t: p for t, (p, _) in self.running.items()})
        proposal = self.method.propose(ctx)
        self.proposals.append(proposal)
        self.next_trial += 1
        try:
            source: str | None = Driver(self.method).source(proposal, self.sources[best.trial])
        except InvalidPatch as e:  # refused before it ran: recorded at once, as the loop does
            self.conclude(record(trial, "proposal", None, None, Status.INVALID_PATCH, reason=e.reason), None)
            return
        self.running[trial] = (proposal, source)
        self.most_running = max(self.most_running, len(self.running))

    def finish(self, trial: int) -> None:
        _, source = self.running.pop(trial)
        assert source is not None
        config = read_constants(source)
        if trial % 5 == 0:
            self.conclude(record(trial, "proposal", config, None, Status.CRASH), source)
            return
        value = objective(config)
        self.conclude(record(trial, "proposal", config, value, kept=value < (self.best().val_bpb or 0.0)), source)

    def conclude(self, trial_record: TrialRecord, source: str | None) -> None:
        self.sources[trial_record.trial] = source or self.sources[self.best().trial]
        self.records.append(trial_record)
        self.method.observe(trial_record)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


def batch(name: str, server: ScriptedLLMServer, run_dir: Path) -> Batch:
    driver = Batch(build(name, server, run_dir))
    baseline = record(0, "baseline", START, objective(START))
    driver.conclude(baseline, BASELINE_SOURCE)
    return driver


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_with_trials_under_way_a_resumed_method_proposes_exactly_what_it_would_have(name, server, tmp_path):
    """Several workers: proposals made while others run, results taken in another order. A method restored
    from the journal's state (taken after any proposal or observation, the trials under way journaled with
    it) goes on exactly as the run that was never interrupted, and every proposal keeps the rules."""
    steps = 2 * TRIALS + 4  # past a CMA-ES generation told out of order
    straight = batch(name, server, tmp_path / "straight")
    straight.run(steps)
    assert straight.most_running == WORKERS
    assert [r.trial for r in straight.records] != sorted(r.trial for r in straight.records)  # out of order
    assert all(p.invalid is None for p in straight.proposals)
    killed = batch(name, server, tmp_path / "killed")
    killed.run(steps // 2)
    state = pickle.dumps(killed.method.state())
    resumed = Batch(build(name, server, tmp_path / "killed"), list(killed.records), dict(killed.sources),
                    dict(killed.running), next_trial=killed.next_trial)
    resumed.method.restore(pickle.loads(state))
    resumed.run(steps - steps // 2)
    assert same_proposals(resumed.proposals, straight.proposals[len(killed.proposals):])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_repair_where_offered(name, server, tmp_path):
    driver = started(name, server, tmp_path)
    method = driver.method
    if not isinstance(method, Repairable):
        pytest.skip(f"{name} offers no repair")
    proposal = driver.propose()
    repaired = method.repair(proposal, "hunk 1 does not apply: a reason only this test gives", len(driver.records))
    assert (repaired.config is None) == (proposal.config is None) and repaired.invalid is None
    assert "a reason only this test gives" in json.dumps(server.requests[-1]["messages"])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_model_backed_method_checks_its_model_before_the_run(name, server, tmp_path):
    method = build(name, server, tmp_path)
    if not isinstance(method, ModelBacked):
        pytest.skip(f"{name} needs no model")
    method.check_ready()
    server.stop()
    with pytest.raises(ArenaError, match="cannot reach model"):
        method.check_ready()
