"""TPE: Optuna's Tree-structured Parzen Estimator over the fixed space, driven through ask and tell.

Search space. One Optuna distribution per constant, named after it:
  float -> FloatDistribution(low, high, log)      int -> IntDistribution(low, high, log)
  pow2  -> IntDistribution over the exponent, named "log2(NAME)", mapped back to 2**e
  categorical -> CategoricalDistribution(choices)
The sampler is TPESampler as Ferreira et al. ran it (univariate, 10 random start-up trials) with the constant
liar added (trials under way on other workers count as bad ones, so parallel proposals spread out). Multivariate
TPE was tried and measured worse on bench/methods.py's landscapes with the memory model (measured while the
surrogate's peak memory was a forest alone): far from the baseline 0.9940 ± 0.0023 against univariate's
0.9915 ± 0.0013 (40 seeds each), near it 0.9892 ± 0.0008 against 0.9894 ± 0.0006 (10 seeds each); on a
surrogate of the paper's trials it did better without the model (0.9801 against 0.9826) and no better with
it (0.9807 against 0.9814, 10 seeds each). Optuna 5 made multivariate the default: it is asked for by name.

The study lives in the run: run_dir/state/optuna.journal (a JournalStorage on a JournalFileBackend),
so a resumed run continues it. With run_dir None (the dry check before a run exists) it lives in memory.
Each Optuna trial carries the arena trial number as the user attribute "arena_trial"; that link is
how observe() finds what to tell, so it survives any kill.

What is told:
* each of this method's proposals, as a COMPLETE trial: its val_bpb, or for a failure the shared
  failure value (agent/methods/failure.py). Not as FAIL: Optuna's TPE reads only COMPLETE and PRUNED
  trials (optuna/samplers/_tpe/sampler.py), so a FAIL trial would teach it nothing and it would
  sample the failing region again;
* the baseline, with study.add_trial (a COMPLETE trial of the starting constants), so TPE starts from
  a measured point; not enqueue_trial, which would spend a trial running the baseline config again;
* not the confirmation runs: they repeat a told configuration with another seed (their val_bpb still
  counts towards the failure value's worst success).

Exact resume. Every proposal gets a fresh TPESampler seeded from (the run's seed, arena trial number),
so a proposal depends only on the seed, the trial number and the trials in storage; there is no RNG
stream to save. (Reseeding one TPESampler with the run's seed on resume would not do: its stream would
restart, and the resumed run would repeat the draws of the run's first proposals.) The kills:
* between ask and the loop's journal of the proposal: the resumed loop proposes again. At propose
  time every earlier proposal has been observed or is under way (ctx.in_flight), so any other RUNNING
  trial is such a leftover; it is told FAIL first, which TPE ignores (with the constant liar it would
  count a RUNNING trial as a bad one), and the same sampler seed over the same trials asks the same
  point again;
* after the journal: the loop restores the journaled state and observes; the trial is told by its link;
* after the tell, before the method state was saved: the loop replays observe(); the trial is
  finished already and nothing is told twice (the baseline likewise: it is added once).
state() is what storage does not hold: the successful values seen, for the failure value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from agent.constants import Value
from agent.methods.base import Config, Context, Proposal
from agent.methods.failure import INFEASIBLE_SLOPE, excess, failure_value, success_value
from agent.methods.random_search import describe
from agent.record import TrialRecord
from agent.space import Param, SearchSpace, SpaceError

STUDY_NAME = "arena"
JOURNAL_FILE = "optuna.journal"
LINK_ATTR = "arena_trial"  # user attribute of an Optuna trial: the arena trial number it belongs to
TOLD_KINDS = ("baseline", "proposal")


class TPEState(TypedDict):
    successes: list[float]  # the val_bpb of every success seen, for the failure value


def _exponent(power_of_two: int) -> int:
    return power_of_two.bit_length() - 1


def optuna_name(param: Param) -> str:
    return f"log2({param.name})" if param.kind == "pow2" else param.name


def distribution(param: Param) -> BaseDistribution:
    if param.kind == "categorical":
        return CategoricalDistribution(param.choices)
    if param.kind == "float":
        return FloatDistribution(*param.bounds, log=param.log)
    low, high = param.int_bounds
    if param.kind == "pow2":
        return IntDistribution(_exponent(low), _exponent(high))
    return IntDistribution(low, high, log=param.log)


def to_params(space: SearchSpace, config: Config) -> dict[str, Value]:
    """A configuration inside the space as Optuna parameters (pow2 constants as exponents)."""
    return {optuna_name(p): _optuna_value(p, config[p.name]) for p in space.values()}


def _optuna_value(param: Param, value: Value) -> Value:
    """A constant's value as its Optuna parameter: a power of two as its exponent; raises SpaceError."""
    if param.kind != "pow2":
        return value
    if not isinstance(value, int):
        raise SpaceError(f"{param.name} = {value!r} is not a power of two")
    return _exponent(value)


def to_config(space: SearchSpace, params: dict[str, Any]) -> Config:  # params: a trial's, as Optuna types them
    """Optuna parameters as a configuration, with the Python types the constants block expects."""
    config: Config = {}
    for p in space.values():
        value = params[optuna_name(p)]
        if p.kind == "pow2":
            config[p.name] = 1 << int(value)
        elif p.kind == "int":
            config[p.name] = int(value)
        elif p.kind == "float":
            config[p.name] = float(value)
        else:
            config[p.name] = value
    return config


def trial_seed(seed: int, trial: int) -> int:
    """The sampler seed of arena trial `trial`: independent streams per trial, from one run seed."""
    return int(np.random.SeedSequence([seed, trial]).generate_state(1)[0])


def open_storage(run_dir: Path | None) -> BaseStorage:
    if run_dir is None:
        return InMemoryStorage()
    path = Path(run_dir) / "state" / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # A kill inside ask() or tell() leaves the journal's lock behind, and Optuna would wait for it to
    # grow stale (~30 s). The run's own lock (agent/runlock.py) is held: no one else can be writing.
    Path(f"{path}.lock").unlink(missing_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


class TPE:
    name = "tpe"
    fixed_space = True

    def __init__(self, space: SearchSpace, seed: int, run_dir: Path | None = None):
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per told trial on the console
        self.space = space
        self.seed = seed
        self.distributions = {optuna_name(p): distribution(p) for p in space.values()}
        # the study's sampler is replaced before every ask (see trial_seed)
        self.study = optuna.create_study(storage=open_storage(run_dir), study_name=STUDY_NAME,
                                         direction="minimize", load_if_exists=True)
        self.successes: list[float] = []

    # -- the Method protocol

    def propose(self, ctx: Context) -> Proposal:
        self._fail_leftovers(ctx.in_flight)
        self.study.sampler = optuna.samplers.TPESampler(seed=trial_seed(self.seed, ctx.trial), multivariate=False,
                                                        constant_liar=True)
        trial = self.study.ask(self.distributions)
        trial.set_user_attr(LINK_ATTR, ctx.trial)
        config = to_config(self.space, trial.params)
        return Proposal(description=f"tpe: {describe(config)}", config=config,
                        meta={"optuna_trial": trial.number})

    def observe(self, record: TrialRecord) -> None:
        value = success_value(record)
        told = value if value is not None else failure_value(self.successes) + INFEASIBLE_SLOPE * excess(record)
        if value is not None:
            self.successes.append(value)
        if record.kind not in TOLD_KINDS:
            return
        trial = self.linked_trial(record.trial)
        if trial is None:
            self._add_measured(record, told)
        elif trial.state == TrialState.RUNNING:
            self.study.tell(trial.number, told)
        # else finished already: a replayed observation (see the module docstring)

    def state(self) -> TPEState:
        return {"successes": list(self.successes)}

    def restore(self, state: TPEState) -> None:
        self.successes = list(state["successes"])

    # -- the study

    def linked_trial(self, arena_trial: int) -> FrozenTrial | None:
        """The latest Optuna trial linked to arena trial `arena_trial`, or None."""
        linked = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get(LINK_ATTR) == arena_trial]
        return linked[-1] if linked else None

    def _fail_leftovers(self, in_flight: Mapping[int, object]) -> None:
        """Tell FAIL to trials asked by a proposal that was killed before the loop journaled it; the trials
        under way stay RUNNING (the constant liar counts them as bad ones, so workers spread out)."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get(LINK_ATTR) not in in_flight:
                self.study.tell(trial.number, state=TrialState.FAIL)

    def _add_measured(self, record: TrialRecord, value: float) -> None:
        """A configuration measured without an ask (the baseline) joins the study as a COMPLETE trial."""
        if record.config is None:
            return  # nothing ran: there is no point to tell
        config = {name: record.config[name] for name in self.space}
        try:
            self.space.check(config)
        except SpaceError:
            return  # starting constants outside a custom space: TPE cannot represent them
        self.study.add_trial(optuna.trial.create_trial(
            params=to_params(self.space, config), distributions=self.distributions, value=value,
            user_attrs={LINK_ATTR: record.trial}))
