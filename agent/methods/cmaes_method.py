"""CMA-ES over the fixed space, with the `cmaes` library's CatCMAwM (CatCMA with Margin).

CatCMAwM (Hamano et al. 2025, arXiv 2504.07884) searches continuous, integer and categorical variables
jointly: a Gaussian N(m, sigma^2 C) over the continuous and integer axes, with the margin of CMA-ES
with Margin (Hamano et al. 2022) on the integer ones, and a categorical distribution per categorical
variable, updated by a natural gradient from the same ranking (CatCMA, Hamano et al. 2024). Here:

* the coordinates are those of SearchSpace.to_unit: the unit cube, log constants on their log scale,
  pow2 constants on their exponent;
* float constants are continuous axes bounded by [0, 1]; a sample outside the box runs clipped, and
  the library's box penalty (Hansen et al. 2009) ranks it as if it had run at the clipped point plus
  a penalty for the distance;
* int and pow2 constants are integer axes whose allowed values are the unit coordinates of the
  constant's values (every int from low to high, every power of two), so the step is 1/(high-low)
  for a linear int and 1/(exponent range) for pow2, log ints included exactly, and from_unit maps
  every sample back to its value exactly;
* categorical constants (WINDOW_PATTERN) are CatCMA categorical variables; one with a single choice
  is not searched.

Start: the mean is the baseline's configuration (the preset's starting constants, trial 0), or the
center of the cube when there is none inside the space. sigma0 = 0.15 with C = I, a little under a sixth of every
axis (Optuna's CmaEsSampler takes a sixth of the narrowest range): m ± 3 sigma0 then spans most of an
axis, and step-size adaptation widens the search when the optimum lies farther. A wider start costs
the short budgets this runs under: at 0.3 the first generations are as spread as uniform draws (a
uniform axis has a standard deviation of 0.29), many land outside the cube and are clipped, and the
first hundred trials were no better than random search. Measured with bench/methods.py (10 seeds x 300
trials, the memory model on, while the surrogate's peak memory was a forest alone): sigma0 0.3, 0.2, 0.15,
0.12, 0.08 gave 0.9895, 0.9895, 0.9888, 0.9889, 0.9892 on the landscape whose optimum is near the baseline,
and 0.3 and 0.15 both 0.9922 on the one whose optimum is far from it, past the memory wall. The categorical
distribution starts uniform (the library's default): a probability vector has no step size that could say
"near the baseline". The population is the library's default, 4 + floor(3 ln n) for n searched variables
(11 for the 14 constants).

Generations: every propose() takes the next candidate of the current generation and every result
fills that candidate's slot; when all of a generation's candidates have results it is told once, in
the order asked. With several workers the candidates of a generation run side by side, results come in
any order, and can_propose() holds the loop back once a whole generation is out. A failure (any
status but ok, invalid patches included) is told as failure_value(successes) of agent/methods/failure.py,
computed at tell time so that it ranks below every success of its generation; an infeasible proposal adds
how far past the memory limit it was predicted (failure.excess).

Restarts (IPOP, Auger & Hansen 2005): when should_stop() holds after a tell, a new CatCMAwM with
twice the population starts at the best configuration seen so far, with sigma0 again. Classic IPOP
restarts at a random point; a budget of about a hundred trials leaves room for a restart or two, so
they refine the incumbent with a wider population instead. Its RNG is seeded from (seed, restart).

State: the optimizer (mean, sigma, C, margins, evolution paths, categorical probabilities), its RNG
state saved on its own (the library's CMA drops its RNG when pickled; saved apart, no version of the
library can lose it), the current generation's slots, the candidate drawn for the next proposal, the
successes seen and the incumbent. Restoring it gives the identical next ask.

Centaur reads the search through mean_config, sigma, covariance, correlations(), category_probabilities
and next_candidate(), and may put its own configuration in place of the next candidate with
replace_candidate(). CatCMAwM has no accessors for its distribution, so these read its fields
(_mean, _sigma, _C, _A, _q; tests/test_methods.py pins them).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from cmaes import CatCMAwM
from numpy.typing import NDArray

from agent.constants import Value
from agent.methods.base import Config, Context, Proposal
from agent.methods.failure import INFEASIBLE_SLOPE, excess, failure_value, success_value
from agent.methods.random_search import describe
from agent.record import TrialRecord
from agent.space import Param, SearchSpace, SpaceError

SIGMA0 = 0.15


@dataclass
class Slot:
    """One candidate of the current generation and, once observed, its result."""
    trial: int
    solution: CatCMAwM.Solution
    observed: bool = False
    value: float | None = None  # val_bpb when the trial succeeded
    excess: float = 0.0         # of an infeasible proposal (failure.excess)


@dataclass
class Search:
    """Everything that changes as the search goes; state() is a copy of it."""
    optimizer: CatCMAwM | None = None  # made at the first need, once the baseline is known
    restarts: int = 0
    slots: list[Slot] = field(default_factory=list)
    next: tuple[CatCMAwM.Solution, Config] | None = None  # the next proposal's candidate and its config
    successes: list[float] = field(default_factory=list)
    incumbent: tuple[float, Config] | None = None  # (val_bpb, config) of the best success seen
    start: Config | None = None  # the baseline's configuration


# what np.random.RandomState.get_state() returns: the library's CatCMAwM draws from a RandomState
RandomStateTuple = tuple[str, NDArray[np.uint32], int, int, float]


class CMAESState(TypedDict):
    search: Search                  # a copy
    rng: RandomStateTuple | None    # the optimizer's RNG, saved apart (see the module docstring); None: no optimizer


def unit_grid(param: Param) -> list[float]:
    """The unit coordinates of every value an int or pow2 constant can take, ascending."""
    low, high = param.int_bounds
    if param.kind == "pow2":
        values = [1 << e for e in range(low.bit_length() - 1, high.bit_length())]
    else:
        values = list(range(low, high + 1))
    return [param.to_unit(v) for v in values]


class CMAES:
    name = "cmaes"
    fixed_space = True

    def __init__(self, space: SearchSpace, seed: int):
        # no run directory: the whole search is in state(), which the loop saves
        self.space = space
        self.seed = seed
        self.floats = [p for p in space.numeric if p.kind == "float"]
        self.discretes = [p for p in space.numeric if p.kind != "float"]
        self.categoricals = [p for p in space.categorical if len(p.choices) > 1]
        self.fixed = {p.name: p.choices[0] for p in space.categorical if len(p.choices) == 1}
        # the library's vector holds the floats, then the discretes; axes[j] is where numeric j sits
        library_order = [p.name for p in self.floats + self.discretes]
        self.axes = [library_order.index(p.name) for p in space.numeric]
        self.search = Search()

    # -- the Method protocol

    def propose(self, ctx: Context) -> Proposal:
        solution, config = self._take_next()
        self.search.slots.append(Slot(ctx.trial, solution))
        optimizer = self._optimizer()
        member, population = len(self.search.slots), optimizer.population_size
        meta = {"generation": optimizer.generation, "member": member, "population": population,
                "restart": self.search.restarts, "sigma": self.sigma}
        return Proposal(description=f"cmaes gen {optimizer.generation} {member}/{population}: {describe(config)}",
                        config=config, meta=meta)

    def can_propose(self) -> bool:
        """A generation's candidates all proposed: the next generation needs its results first."""
        return self.search.optimizer is None or len(self.search.slots) < self.population_size

    def observe(self, record: TrialRecord) -> None:
        value = success_value(record)
        if value is not None:
            self._note_success(value, record.config)
        if record.kind == "baseline" and record.config is not None:
            self.search.start = {name: record.config[name] for name in self.space}
        if record.kind != "proposal":
            return  # the baseline and confirmation runs are not members of a generation
        slot = self._slot(record.trial, record.config)
        slot.observed, slot.value, slot.excess = True, value, excess(record)
        slots = self.search.slots
        if len(slots) == self.population_size and all(s.observed for s in slots):
            self._tell()

    def state(self) -> CMAESState:
        optimizer = self.search.optimizer
        return {"search": copy.deepcopy(self.search),
                "rng": None if optimizer is None else optimizer._rng.get_state()}

    def restore(self, state: CMAESState) -> None:
        self.search = copy.deepcopy(state["search"])
        if self.search.optimizer is not None:
            self.search.optimizer._rng.set_state(state["rng"])

    # -- what Centaur reads (unit coordinates are those of SearchSpace.to_unit, in space.numeric order)

    @property
    def mean_config(self) -> Config:
        """The mean as a configuration: numeric constants by from_unit (clipped, rounded), each
        categorical at its most likely choice."""
        optimizer = self._optimizer()
        numeric = self.space.from_unit(optimizer._mean[self.axes])
        likeliest = {param.name: param.choices[int(np.argmax(optimizer._q[i, :len(param.choices)]))]
                     for i, param in enumerate(self.categoricals)}
        return self._in_space_order({**numeric, **likeliest, **self.fixed})

    @property
    def sigma(self) -> float:
        """The step size."""
        return float(self._optimizer()._sigma)

    @property
    def covariance(self) -> NDArray[np.float64]:
        """The covariance of the distribution candidates are drawn from, sigma^2 A C A (A: the
        integer margins), in unit coordinates; rows and columns follow space.numeric."""
        optimizer = self._optimizer()
        scaled = optimizer._A[:, None] * optimizer._C * optimizer._A[None, :] * optimizer._sigma ** 2
        return np.asarray(scaled[np.ix_(self.axes, self.axes)], dtype=np.float64)

    @property
    def category_probabilities(self) -> dict[str, dict[Value, float]]:
        """For each searched categorical constant, the probability of each choice."""
        q = self._optimizer()._q
        return {p.name: {choice: float(q[i, k]) for k, choice in enumerate(p.choices)}
                for i, p in enumerate(self.categoricals)}

    @property
    def generation(self) -> int:
        """Generations told since the last (re)start."""
        return int(self._optimizer().generation)

    @property
    def population_size(self) -> int:
        return int(self._optimizer().population_size)

    def correlations(self, top: int = 5) -> list[tuple[str, str, float]]:
        """The `top` strongest correlations between two numeric constants, as (name_a, name_b, rho),
        strongest |rho| first."""
        cov = self.covariance
        std = np.sqrt(np.diag(cov))
        rho = cov / np.outer(std, std)
        names = [p.name for p in self.space.numeric]
        pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
        pairs.sort(key=lambda pair: -abs(rho[pair]))
        return [(names[i], names[j], float(rho[i, j])) for i, j in pairs[:top]]

    def next_candidate(self) -> Config:
        """The configuration the next propose() will return (drawn now, kept until then)."""
        return dict(self._peek_next()[1])

    def replace_candidate(self, config: Config) -> None:
        """Put `config` (every constant, inside the space) in place of the next candidate: the next
        propose() returns it as given and its result is told to CMA-ES as that member of the generation.
        The replaced candidate was drawn, so the draws of the generation's other members do not change."""
        config = {name: config[name] for name in self.space}
        self.space.check(config)
        self._peek_next()
        self.search.next = (self._solution_of(config), config)

    # -- candidates

    def _optimizer(self) -> CatCMAwM:
        if self.search.optimizer is None:
            self.search.optimizer = self._new_optimizer(self.search.start, population=None)
        return self.search.optimizer

    def _new_optimizer(self, center: Config | None, population: int | None) -> CatCMAwM:
        """A CatCMAwM at `center` (a configuration; None: the center of the cube) with sigma0, C = I."""
        n = len(self.floats) + len(self.discretes)
        return CatCMAwM(
            x_space=[[0.0, 1.0]] * len(self.floats) or None,
            z_space=[unit_grid(p) for p in self.discretes] or None,
            c_space=[len(p.choices) for p in self.categoricals] or None,
            population_size=population, mean=self._library_point(center), sigma=SIGMA0, cov=np.eye(n),
            seed=int(np.random.SeedSequence([self.seed, self.search.restarts]).generate_state(1)[0]))

    def _library_point(self, config: Config | None) -> NDArray[np.float64]:
        """The numeric constants of `config` in the library's order; the center if it is not in the space."""
        point = np.full(len(self.axes), 0.5)
        if config is not None:
            with contextlib.suppress(SpaceError):  # starting constants outside a custom space: start at the center
                point[self.axes] = self.space.to_unit(config)
        return point

    def _peek_next(self) -> tuple[CatCMAwM.Solution, Config]:
        if self.search.next is None:
            solution = self._optimizer().ask()
            self.search.next = (solution, self._config_of(solution))
        return self.search.next

    def _take_next(self) -> tuple[CatCMAwM.Solution, Config]:
        candidate = self._peek_next()
        self.search.next = None
        return candidate

    def _slot(self, trial: int, config: Mapping[str, Value] | None) -> Slot:
        """The slot of proposal `trial`, which ran `config`. A proposal this object never made is one made
        after the state it was restored from, or all of them when the state was lost (run.py replays the
        ledger's records): the candidate propose() would have taken is, by determinism, the one it took,
        unless something ran in its place (Centaur's LLM), which then takes its place again."""
        for slot in self.search.slots:
            if slot.trial == trial:
                return slot
        solution, drawn = self._take_next()
        if config is not None and {name: config.get(name) for name in self.space} != drawn:
            solution = self._solution_of({name: config[name] for name in self.space})
        slot = Slot(trial, solution)
        self.search.slots.append(slot)
        return slot

    def _config_of(self, solution: CatCMAwM.Solution) -> Config:
        parts = [part for part in (solution.x, solution.z) if part is not None]
        numeric = self.space.from_unit(np.concatenate(parts)[self.axes])
        chosen = {param.name: param.choices[int(np.argmax(solution.c[i]))] for i, param in enumerate(self.categoricals)}
        return self._in_space_order({**numeric, **chosen, **self.fixed})

    def _solution_of(self, config: Config) -> CatCMAwM.Solution:
        """A configuration as the library's solution (as if drawn there exactly)."""
        point = self._library_point(config)
        n_floats = len(self.floats)
        one_hot = None
        if self.categoricals:
            one_hot = np.zeros((len(self.categoricals), max(len(p.choices) for p in self.categoricals)), dtype=bool)
            for i, param in enumerate(self.categoricals):
                one_hot[i, param.choices.index(config[param.name])] = True
        return CatCMAwM.Solution(x=point[:n_floats] if self.floats else None,
                                 z=point[n_floats:] if self.discretes else None, c=one_hot, _v_raw=point)

    def _in_space_order(self, config: Mapping[str, Value]) -> Config:
        return {name: config[name] for name in self.space}

    # -- results

    def _note_success(self, value: float, config: Mapping[str, Value] | None) -> None:
        self.search.successes.append(value)
        incumbent = self.search.incumbent
        if config is not None and (incumbent is None or value < incumbent[0]):
            self.search.incumbent = (value, {name: config[name] for name in self.space})

    def _tell(self) -> None:
        """Tell the complete generation, in the order asked; failures at the shared failure value."""
        failed = failure_value(self.search.successes)
        optimizer = self._optimizer()
        # With nearly all of a generation failed before any generation had a spread of values, the
        # library's box penalty is the median of an empty history: NaN, with numpy warnings. Its second
        # sort then keeps the order of the told values, so only that generation's penalty is lost.
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            optimizer.tell([(s.solution, failed + INFEASIBLE_SLOPE * s.excess if s.value is None else s.value)
                            for s in self.search.slots])
        self.search.slots = []
        self.search.next = None  # drawn from the distribution just replaced
        if optimizer.should_stop():
            self._restart()

    def _restart(self) -> None:
        """IPOP: twice the population, at the incumbent, sigma0 again (see the module docstring)."""
        population = self.population_size * 2
        self.search.restarts += 1
        center = self.search.incumbent[1] if self.search.incumbent else self.search.start
        self.search.optimizer = self._new_optimizer(center, population)
