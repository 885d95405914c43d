"""TPE and CMA-ES driven as the loop drives them (baseline, then propose -> record -> observe), on the
real cpu search space with a synthetic objective: bounds and types, learning, the failure value,
generations, and exact resume from every state the loop saves. The slow tests run the `arena run` command through."""

from __future__ import annotations

import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from cmaes import CatCMAwM
from optuna.distributions import FloatDistribution
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from agent.methods import METHODS, Context, Proposal, make_method
from agent.methods.cmaes_method import CMAES, SIGMA0
from agent.methods.failure import FAILURE_MARGIN, FALLBACK_VALUE, failure_value
from agent.methods.random_search import RandomSearch
from agent.methods.tpe import TPE
from agent.presets import load_presets
from agent.record import TrialRecord
from agent.run import RunSettings
from agent.space import load_space
from tests.run_helpers import FAST, check_run_consistent, fake_arena_run

SPACE = load_space("cpu")
BASELINE = dict(load_presets()["cpu"].constants)
OPTIMUM = np.full(len(SPACE.numeric), 0.8)  # in unit coordinates, far from the baseline
BEST_PATTERN = "LLLL"


def objective(config: dict) -> float:
    """A val_bpb-like bowl: 1 at the optimum, rising with the squared unit distance; a wrong pattern costs 0.2."""
    distance = float(((SPACE.to_unit(config) - OPTIMUM) ** 2).sum())
    return 1.0 + distance + (0.0 if config["WINDOW_PATTERN"] == BEST_PATTERN else 0.2)


def make_record(trial: int, kind: str, config: dict | None, value: float | None, status: str = "ok") -> TrialRecord:
    """A ledger record as agent/loop.py makes it, with the fields methods read."""
    ok = status == "ok"
    return TrialRecord.from_json({"trial": trial, "kind": kind, "method": "test" if kind == "proposal" else kind,
                                  "description": f"trial {trial}", "status": status,
                                  "val_bpb": value if ok else None, "config": config,
                                  "peak_memory_gb": 1.0 if ok else None})


Failing = Callable[[int, dict], bool]


def never(trial: int, config: dict) -> bool:
    return False


def every_fifth(trial: int, config: dict) -> bool:
    return trial % 5 == 0


class FakeLoop:
    """Drives a method as agent/loop.py does, one trial at a time; a failing trial is recorded as a crash."""

    def __init__(self, method, records: list[TrialRecord] | None = None, fails: Failing = never):
        self.method = method
        self.records = list(records or [])
        self.fails = fails

    def baseline(self) -> None:
        self.observe(make_record(0, "baseline", BASELINE, objective(BASELINE)))

    def propose(self) -> Proposal:
        trial = len(self.records)
        return self.method.propose(Context(trial, self.records, self.records[0], "", SPACE))

    def finish(self, proposal: Proposal) -> TrialRecord:
        trial = len(self.records)
        if self.fails(trial, proposal.config):
            record = make_record(trial, "proposal", proposal.config, None, status="crash")
        else:
            record = make_record(trial, "proposal", proposal.config, objective(proposal.config))
        self.observe(record)
        return record

    def confirm(self) -> None:
        """A confirmation run of the baseline's config: observed, but proposed by no method."""
        self.observe(make_record(len(self.records), "confirm", BASELINE, objective(BASELINE) + 0.001))

    def step(self) -> TrialRecord:
        return self.finish(self.propose())

    def run(self, n: int) -> list[TrialRecord]:
        return [self.step() for _ in range(n)]

    def observe(self, record: TrialRecord) -> None:
        self.records.append(record)
        self.method.observe(record)


def settings(method: str, seed: int = 0) -> RunSettings:
    return RunSettings(name="test", method=method, seed=seed)


def new_method(name: str, run_dir: Path | None, seed: int = 0):
    return make_method(settings(name, seed), SPACE, run_dir)


def configs(records: list[TrialRecord]) -> list[dict]:
    return [r.config for r in records]


def frozen(state: object) -> object:
    """A state as the loop keeps it: pickled to disk and read back."""
    return pickle.loads(pickle.dumps(state))


# ---------------------------------------------------------------- both methods

@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_registered_and_dry_checkable(name):
    assert name in METHODS
    method = new_method(name, None)  # the dry check before a run exists: nothing on disk
    assert method.name == name and method.fixed_space


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_proposals_lie_inside_the_space_with_exact_types(name, tmp_path):
    loop = FakeLoop(new_method(name, tmp_path), fails=every_fifth)
    loop.baseline()
    for record in loop.run(30):
        config = record.config
        SPACE.check(config)
        assert list(config) == list(SPACE)
        for param in SPACE.values():
            value = config[param.name]
            if param.kind in ("int", "pow2"):
                assert type(value) is int, param.name
            if param.kind == "pow2":
                assert value & (value - 1) == 0, param.name
            if param.kind == "float":
                assert type(value) is float, param.name


def test_failure_value_is_the_worst_success_plus_the_margin():
    assert failure_value([1.2, 1.5, 1.3]) == 1.5 + FAILURE_MARGIN
    assert failure_value([]) == FALLBACK_VALUE


# ---------------------------------------------------------------- TPE

def test_tpe_learns_more_than_random_search(tmp_path):
    values = {}
    for name, method in (("tpe", TPE(SPACE, 0, tmp_path)),
                         ("random", RandomSearch(SPACE, 0))):
        loop = FakeLoop(method)
        loop.baseline()
        values[name] = [r.val_bpb for r in loop.run(40)]
    # after its 10 random start-up trials TPE's proposals are far better on average than random ones (by 1.0-1.5
    # over seeds 0-4); not compared: the single best of 40 draws in 13 dimensions, which is luck either way
    assert np.mean(values["tpe"][-15:]) < np.mean(values["random"]) - 0.5


def test_tpe_tells_the_baseline_once_and_failures_as_complete_trials(tmp_path):
    method = TPE(SPACE, 0, tmp_path)
    loop = FakeLoop(method, fails=lambda trial, config: trial == 3)
    loop.baseline()
    method.observe(loop.records[0])  # a replayed observation adds nothing
    loop.run(3)
    loop.confirm()  # not told
    trials = method.study.get_trials()
    assert [t.user_attrs["arena_trial"] for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].value == objective(BASELINE) and trials[0].params["log2(HEAD_DIM)"] == 5
    worst = max(r.val_bpb for r in loop.records[:3])
    assert trials[3].value == worst + FAILURE_MARGIN
    assert (tmp_path / "state" / "optuna.journal").exists()


def test_tpe_resumes_from_its_state_and_storage_exactly(tmp_path):
    straight = FakeLoop(TPE(SPACE, 0, tmp_path / "a"), fails=every_fifth)
    straight.baseline()
    straight.run(12)
    state = frozen(straight.method.state())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    expected = configs(straight.run(8))
    resumed = FakeLoop(TPE(SPACE, 0, tmp_path / "b"), straight.records[:13], fails=every_fifth)
    resumed.method.restore(state)
    assert configs(resumed.run(8)) == expected


def test_one_sampler_reseeded_on_resume_would_not_continue_a_study():
    """Why each TPE proposal has a sampler seeded of its own (agent/methods/tpe.py): one TPESampler
    created again with the run's seed on resume restarts its random stream, so past the start-up
    trials it proposes otherwise than the sampler that ran on."""
    distributions = {"x": FloatDistribution(0.0, 1.0)}

    def run(study: optuna.Study, n: int) -> None:
        for _ in range(n):
            trial = study.ask(distributions)
            study.tell(trial, (trial.params["x"] - 0.3) ** 2)

    uninterrupted = optuna.create_study(sampler=TPESampler(seed=0))
    run(uninterrupted, 12)
    resumed = optuna.create_study(sampler=TPESampler(seed=0))
    resumed.add_trials(uninterrupted.trials[:11])
    run(resumed, 1)
    assert resumed.trials[11].params != uninterrupted.trials[11].params


def test_tpe_killed_between_ask_and_journal_asks_the_same_point(tmp_path):
    straight = FakeLoop(TPE(SPACE, 0, tmp_path / "a"))
    straight.baseline()
    straight.run(11)
    saved = frozen(straight.method.state())  # the journal after trial 11
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    expected = configs(straight.run(3))
    killed = FakeLoop(TPE(SPACE, 0, tmp_path / "b"), straight.records[:12])
    killed.propose()  # asked, then killed before the loop journaled the proposal
    resumed = FakeLoop(TPE(SPACE, 0, tmp_path / "b"), straight.records[:12])
    resumed.method.restore(saved)
    assert configs(resumed.run(3)) == expected
    states = [t.state for t in resumed.method.study.get_trials()]
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states


# ---------------------------------------------------------------- CMA-ES

def test_cmaes_starts_at_the_baseline_with_sigma0():
    method = CMAES(SPACE, 0)
    FakeLoop(method).baseline()
    mean = method.mean_config
    assert SPACE.to_unit(mean) == pytest.approx(SPACE.to_unit(BASELINE), abs=1e-12)
    assert method.sigma == SIGMA0 and method.population_size == 4 + int(3 * np.log(len(SPACE)))
    assert np.allclose(method.covariance, SIGMA0 ** 2 * np.eye(len(SPACE.numeric)))
    assert method.category_probabilities["WINDOW_PATTERN"] == pytest.approx({c: 1 / 6 for c in
                                                                              SPACE["WINDOW_PATTERN"].choices})


def test_cmaes_mean_moves_toward_the_optimum():
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method, fails=every_fifth)
    loop.baseline()
    before = np.linalg.norm(SPACE.to_unit(method.mean_config) - OPTIMUM)
    loop.run(10 * method.population_size)
    after = np.linalg.norm(SPACE.to_unit(method.mean_config) - OPTIMUM)
    assert method.generation == 10
    assert after < 0.6 * before
    assert method.category_probabilities["WINDOW_PATTERN"][BEST_PATTERN] > 0.5


@pytest.fixture
def told(monkeypatch) -> list[list[float]]:
    """The values of every generation told to any CatCMAwM, in the order given."""
    generations: list[list[float]] = []
    tell = CatCMAwM.tell

    def spy(self, solutions):
        generations.append([value for _, value in solutions])
        return tell(self, solutions)

    monkeypatch.setattr(CatCMAwM, "tell", spy)
    return generations


def test_cmaes_tells_each_full_generation_once_in_order_with_failures_at_worst_plus_margin(told):
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method, fails=lambda trial, config: trial in (2, 5))
    loop.baseline()
    population = method.population_size
    loop.run(population - 1)
    loop.confirm()  # confirmation runs are no members of a generation
    assert told == [] and method.generation == 0
    loop.step()
    assert len(told) == 1 and len(told[0]) == population
    members = [r for r in loop.records if r.kind == "proposal"]
    worst = max(r.val_bpb for r in loop.records if r.ok)  # at tell time, whole generation
    assert told[0] == [worst + FAILURE_MARGIN if not r.ok else r.val_bpb for r in members]
    loop.run(population + 3)
    assert len(told) == 2 and method.generation == 2


def test_cmaes_tells_a_generation_of_nearly_all_failures_quietly(told):
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method, fails=lambda trial, config: trial > 2)  # 9 of the first 11 fail
    loop.baseline()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.run(method.population_size)
    assert len(told) == 1 and np.isfinite(method.search.optimizer._mean).all()
    SPACE.check(method.next_candidate())


def test_cmaes_state_round_trip_mid_generation_is_exact():
    straight = FakeLoop(CMAES(SPACE, 0), fails=every_fifth)
    straight.baseline()
    straight.run(straight.method.population_size * 3 // 2)  # 1.5 generations
    straight.method.next_candidate()  # a candidate drawn for the next proposal is part of the state
    state = frozen(straight.method.state())
    restored = CMAES(SPACE, 0)
    restored.restore(state)
    a, b = straight.method.search.optimizer, restored.search.optimizer
    for name in ("_mean", "_sigma", "_C", "_A", "_q", "_p_sigma", "_pc", "_g"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for x, y in zip(a._rng.get_state(), b._rng.get_state()):
        assert np.array_equal(x, y)
    assert [s.trial for s in restored.search.slots] == [s.trial for s in straight.method.search.slots]
    resumed = FakeLoop(restored, straight.records, fails=every_fifth)
    assert configs(resumed.run(20)) == configs(straight.run(20))


def test_cmaes_rng_survives_a_pickle_that_drops_it():
    """The library's CMA class drops its RNG when pickled; the saved RNG state restores it anyway."""
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method)
    loop.baseline()
    loop.run(3)
    state = frozen(method.state())
    expected = method.next_candidate()
    state["search"].optimizer._rng = np.random.RandomState(12345)  # as if lost on unpickling
    restored = CMAES(SPACE, 0)
    restored.restore(state)
    assert restored.next_candidate() == expected


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_resume_from_the_pending_journal_continues_exactly(name, tmp_path):
    """Killed after the proposal was journaled: the loop restores the state saved right after propose()
    and observes the trial's record."""
    (tmp_path / "a").mkdir()
    straight = FakeLoop(new_method(name, tmp_path / "a"), fails=every_fifth)
    straight.baseline()
    straight.run(15)  # mid-generation for CMA-ES
    proposal = straight.propose()
    pending = frozen(straight.method.state())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    straight.finish(proposal)
    expected = configs(straight.run(10))
    resumed = FakeLoop(new_method(name, tmp_path / "b"), straight.records[:16], fails=every_fifth)
    resumed.method.restore(pending)
    resumed.finish(proposal)
    assert configs(resumed.run(10)) == expected


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
@pytest.mark.parametrize("told_before_kill", [False, True])
def test_records_replayed_over_an_older_state_continue_exactly(name, told_before_kill, tmp_path):
    """run.py's reconcile restores the journal and replays the records after it; the state may predate
    the proposal of the first replayed record (killed after the ledger line, before or after observe())."""
    (tmp_path / "a").mkdir()
    straight = FakeLoop(new_method(name, tmp_path / "a"), fails=every_fifth)
    straight.baseline()
    straight.run(15)
    saved = frozen(straight.method.state())  # the journal through trial 15
    proposal = straight.propose()
    if told_before_kill:
        straight.finish(proposal)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
    else:
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        straight.finish(proposal)
    expected = configs(straight.run(10))
    resumed = FakeLoop(new_method(name, tmp_path / "b"), straight.records[:16], fails=every_fifth)
    resumed.method.restore(saved)
    resumed.observe(straight.records[16])  # the replay
    assert configs(resumed.run(10)) == expected


@pytest.mark.parametrize("name", ["random", "tpe", "cmaes"])
def test_a_lost_state_is_rebuilt_from_the_ledger(name, tmp_path):
    """state/ deleted (journal.pkl and TPE's Optuna journal with it): run.py replays every record into a new method."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = FakeLoop(new_method(name, tmp_path / "a"), fails=every_fifth)
    straight.baseline()
    straight.run(15)  # mid-generation for CMA-ES
    recorded = list(straight.records)
    expected = configs(straight.run(10))
    rebuilt = FakeLoop(new_method(name, tmp_path / "b"), fails=every_fifth)
    for record in recorded:
        rebuilt.observe(record)
    assert configs(rebuilt.run(10)) == expected


def test_tpe_clears_a_journal_lock_left_by_a_kill(tmp_path):
    """A kill inside ask() leaves Optuna's journal lock; Optuna would wait ~30 s for it to go stale. The run's
    own lock means no one else writes the journal, so the leftover is removed at once."""
    (tmp_path / "state").mkdir()
    first = FakeLoop(new_method("tpe", tmp_path))
    first.baseline()
    first.run(3)
    lock = tmp_path / "state" / "optuna.journal.lock"
    lock.symlink_to(tmp_path / "state" / "optuna.journal")  # what JournalFileSymlinkLock holds while writing
    again = FakeLoop(new_method("tpe", tmp_path), first.records)
    assert not lock.exists() and not lock.is_symlink()
    again.run(1)


def test_cmaes_restarts_with_twice_the_population_at_the_incumbent(monkeypatch):
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method)
    loop.baseline()
    population = method.population_size
    monkeypatch.setattr(CatCMAwM, "should_stop", lambda self: True)
    loop.run(population)
    best = min((r for r in loop.records if r.ok), key=lambda r: r.val_bpb)
    assert method.search.restarts == 1 and method.population_size == 2 * population
    assert method.generation == 0 and method.sigma == SIGMA0
    numeric = [p.name for p in SPACE.numeric]
    assert SPACE.to_unit(method.mean_config) == pytest.approx(SPACE.to_unit({n: best.config[n] for n in numeric}))
    monkeypatch.undo()
    loop.run(2 * population)
    assert method.generation == 1


def test_cmaes_views_for_centaur():
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method, fails=every_fifth)
    loop.baseline()
    loop.run(3 * method.population_size)
    names = [p.name for p in SPACE.numeric]
    cov = method.covariance
    assert cov.shape == (len(names), len(names)) and np.allclose(cov, cov.T)
    top = method.correlations(top=5)
    assert len(top) == 5 and all(a in names and b in names and a != b for a, b, _ in top)
    assert [abs(rho) for _, _, rho in top] == sorted((abs(rho) for _, _, rho in top), reverse=True)
    i, j = names.index(top[0][0]), names.index(top[0][1])
    assert top[0][2] == pytest.approx(cov[i, j] / np.sqrt(cov[i, i] * cov[j, j]))
    SPACE.check(method.mean_config)
    upcoming = method.next_candidate()
    assert method.next_candidate() == upcoming and loop.step().config == upcoming


def test_cmaes_replace_candidate_runs_that_config_as_a_generation_member(told):
    method = CMAES(SPACE, 0)
    loop = FakeLoop(method)
    loop.baseline()
    loop.run(method.population_size - 1)
    own = method.next_candidate()
    theirs = {**BASELINE, "DEPTH": 5, "MATRIX_LR": 0.1, "WINDOW_PATTERN": "LLLL"}
    method.replace_candidate(theirs)
    record = loop.step()
    assert record.config == theirs != own  # run as given
    assert len(told) == 1 and told[0][-1] == objective(record.config)


# ---------------------------------------------------------------- runs of the arena command

@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("name", ["cmaes", "tpe"])
def test_arena_run_of_six_trials(name, tmp_path, cache_root, stdlib_dataset):
    """The whole command with each method; its trials train nothing (random search's base run trains for real
    through the same constants-block pipeline)."""
    runs = tmp_path / "runs"
    proc = fake_arena_run(runs, cache_root, "--name", name, "--method", name, "--trials", "6", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(runs / name, 6)
    for record in records[1:]:  # the ledger's lines, as JSON
        assert record["method"] == name
        SPACE.check(record["config"])
    assert (runs / name / "state" / "journal.pkl").exists()
    if name == "tpe":
        assert (runs / name / "state" / "optuna.journal").exists()
