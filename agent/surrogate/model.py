"""Models of a trial's outcome fitted on recorded trials: what a fixed-space method would have got, in a millisecond.

Random forests (the model the paper's SMAC baseline also uses as its surrogate): a classifier of the outcome
(ok, oom, crash, ...) on every trial, a regressor of val_bpb on the scored ones, and regressors of peak memory and
training time where the data has them. Inputs are each constant on the scale it is searched on (space.to_unit)
and one column per choice of a categorical one. Peak memory is first fitted, by least squares, on what it is made
of (the memory model's terms: parameters, activations, logits, a constant) and the forest learns what that leaves:
a forest alone smooths over the steps that rounding the width up to whole heads makes (held out of the paper's
trials, 0.82 GB mean error and 16 GB at worst against 0.014 GB and 0.23 GB with the terms).

Before it is used, a surrogate is fitted on 80% of the trials (of the scored ones and of the failed ones alike)
and scored on the other 20% (`Quality`); the models it then answers with are fitted on all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from agent.errors import ArenaError
from agent.feasibility import measured_peak
from agent.space import SearchSpace
from agent.surrogate.data import Observation
from sandbox.outcome import Status

MIN_SCORED = 20       # scored trials needed to fit val_bpb and still hold some out to measure the fit
MIN_MEASURED = 10     # trials with a memory or time figure needed to model it
HOLDOUT = 0.2
TREES = 100

MemoryTerms = Callable[[dict[str, Any]], NDArray[np.float64]]  # what a configuration's peak memory is made of


@dataclass(frozen=True)
class Quality:
    """The fit on held-out trials: what a user should believe of the surrogate's answers."""
    trials: int                   # all usable trials
    scored: int                   # of which ok, with a val_bpb
    held_out: int
    mae: float                    # val_bpb, on held-out scored trials
    r2: float
    rank_correlation: float | None  # Spearman, among the held-out scored trials at or below their median val_bpb
    failure_accuracy: float       # ok-or-failed predicted right, on every held-out trial
    memory_mae_gb: float | None
    seconds_mae: float | None

    def line(self) -> str:
        rank = "n/a" if self.rank_correlation is None else f"{self.rank_correlation:.2f}"
        memory = "" if self.memory_mae_gb is None else f", memory MAE {self.memory_mae_gb:.2f} GB"
        return (f"surrogate fitted on {self.trials} trials ({self.scored} scored); on {self.held_out} held out: "
                f"val_bpb MAE {self.mae:.4f}, R² {self.r2:.2f}, rank correlation among good configs {rank}, "
                f"failure accuracy {self.failure_accuracy:.1%}{memory}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    status: Status
    failure_probability: float
    val_bpb: float | None         # ok only
    peak_memory_gb: float | None
    training_seconds: float | None


class Features:
    """A configuration as a row of numbers: unit coordinates, then one column per categorical choice."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def row(self, config: dict[str, Any]) -> list[float]:
        values = [float(x) for x in self.space.to_unit(config)]
        for param in self.space.categorical:
            values += [1.0 if choice == config[param.name] else 0.0 for choice in param.choices]
        return values

    def matrix(self, configs: Sequence[dict[str, Any]]) -> NDArray[np.float64]:
        return np.array([self.row(config) for config in configs], dtype=np.float64)


class MemoryRegressor:
    """Peak memory in GB: least squares on a configuration's memory terms, and a forest on the residual."""

    def __init__(self, memory_terms: MemoryTerms, x: NDArray[np.float64], configs: Sequence[dict[str, Any]],
                 y: Sequence[float], seed: int):
        self.memory_terms = memory_terms
        basis = self._basis(configs)
        scale = np.abs(basis).max(axis=0)  # the terms span ten orders of magnitude: solve on columns of one
        scale[scale == 0] = 1.0
        target = np.array(y, dtype=np.float64)
        self.coefficients = np.linalg.lstsq(basis / scale, target, rcond=None)[0] / scale
        self.residual = RandomForestRegressor(n_estimators=TREES, random_state=seed, n_jobs=1)
        self.residual.fit(x, target - basis @ self.coefficients)

    def _basis(self, configs: Sequence[dict[str, Any]]) -> NDArray[np.float64]:
        return np.array([self.memory_terms(config) for config in configs], dtype=np.float64)

    def predict(self, x: NDArray[np.float64], configs: Sequence[dict[str, Any]]) -> NDArray[np.float64]:
        predicted: NDArray[np.float64] = self._basis(configs) @ self.coefficients + forest_mean(self.residual, x)
        return np.maximum(predicted, 0.0)  # a line through large configurations may pass below zero at tiny ones


class Models:
    """The models fitted on one set of trials."""

    def __init__(self, features: Features, observations: Sequence[Observation], memory_terms: MemoryTerms,
                 seed: int):
        self.features = features
        x = features.matrix([o.config for o in observations])
        labels = np.array([str(o.status) for o in observations])
        self.only_status: Status | None = Status(labels[0]) if len(set(labels)) == 1 else None
        self.outcome = RandomForestClassifier(n_estimators=TREES, random_state=seed, n_jobs=1)
        if self.only_status is None:
            self.outcome.fit(x, labels)
        scored = [i for i, o in enumerate(observations) if o.val_bpb is not None]
        self.value = self._regressor(x[scored], [observations[i].val_bpb for i in scored], seed)
        peaks = [(i, peak) for i, peak in enumerate(map(measured_peak, observations)) if peak is not None]
        self.memory = MemoryRegressor(memory_terms, x[[i for i, _ in peaks]],
                                      [observations[i].config for i, _ in peaks], [peak for _, peak in peaks],
                                      seed) if len(peaks) >= MIN_MEASURED else None
        self.seconds = self._optional(x, [o.training_seconds for o in observations], seed)

    @staticmethod
    def _regressor(x: NDArray[np.float64], y: Sequence[float | None], seed: int) -> RandomForestRegressor:
        model = RandomForestRegressor(n_estimators=TREES, random_state=seed, n_jobs=1)
        model.fit(x, np.array(y, dtype=np.float64))
        return model

    def _optional(self, x: NDArray[np.float64], y: Sequence[float | None],
                  seed: int) -> RandomForestRegressor | None:
        known = [i for i, value in enumerate(y) if value is not None]
        return self._regressor(x[known], [y[i] for i in known], seed) if len(known) >= MIN_MEASURED else None

    def outcome_probabilities(self, x: NDArray[np.float64]) -> tuple[list[str], NDArray[np.float64]]:
        if self.only_status is not None:
            return [str(self.only_status)], np.ones((len(x), 1))
        trees = [tree.predict_proba(as_tree_input(x), check_input=False) for tree in self.outcome.estimators_]
        return [str(c) for c in self.outcome.classes_], np.asarray(np.mean(trees, axis=0), dtype=np.float64)

    def predict(self, configs: Sequence[dict[str, Any]]) -> list[Prediction]:
        """Failed when a failure is more likely than not, then as its most likely kind; else ok and scored."""
        x = self.features.matrix(configs)
        classes, probabilities = self.outcome_probabilities(x)
        failures = [i for i, name in enumerate(classes) if name != Status.OK]
        values = forest_mean(self.value, x)
        memory = self.memory.predict(x, configs) if self.memory is not None else [None] * len(x)
        seconds = forest_mean(self.seconds, x) if self.seconds is not None else [None] * len(x)
        predictions = []
        for row, value, m, s in zip(probabilities, values, memory, seconds, strict=True):
            failing = float(row[failures].sum()) if failures else 0.0
            status = Status(classes[max(failures, key=lambda i: row[i])]) if failing > 0.5 else Status.OK
            predictions.append(Prediction(status, failing, float(value) if status is Status.OK else None,
                                          None if m is None else float(m), None if s is None else float(s)))
        return predictions


def as_tree_input(x: NDArray[np.float64]) -> NDArray[np.float32]:
    return np.ascontiguousarray(x, dtype=np.float32)  # what a fitted tree reads, so it need not check or copy


def forest_mean(forest: RandomForestRegressor, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """forest.predict(x), tree by tree: for one row, a few milliseconds instead of joblib's tens."""
    trees = [tree.predict(as_tree_input(x), check_input=False) for tree in forest.estimators_]
    return np.asarray(np.mean(trees, axis=0), dtype=np.float64)


class Surrogate:
    """Fitted models of a trial's outcome, and how well they did on trials they had not seen."""

    def __init__(self, space: SearchSpace, observations: Sequence[Observation], memory_terms: MemoryTerms,
                 seed: int = 0):
        scored = sum(o.val_bpb is not None for o in observations)
        if scored < MIN_SCORED:
            raise ArenaError(f"the trial files hold {len(observations)} usable trials, {scored} of them scored; the "
                             f"surrogate needs at least {MIN_SCORED} scored trials to fit and measure its error — give "
                             "more trials (several runs' ledgers, or the paper's trials.jsonl)")
        self.space = space
        features = Features(space)
        train, held = split(observations, np.random.default_rng(seed))
        self.quality = measure(Models(features, train, memory_terms, seed), held, len(observations), scored)
        self.models = Models(features, observations, memory_terms, seed)

    def predict(self, config: dict[str, Any]) -> Prediction:
        return self.models.predict([config])[0]

    def predict_many(self, configs: Sequence[dict[str, Any]]) -> list[Prediction]:
        return self.models.predict(configs)


def split(observations: Sequence[Observation],
          rng: np.random.Generator) -> tuple[list[Observation], list[Observation]]:
    """HOLDOUT of the scored trials and HOLDOUT of the failed ones held out, the rest to fit on."""
    train: list[Observation] = []
    held: list[Observation] = []
    for scored in (True, False):
        group = [o for o in observations if (o.val_bpb is not None) == scored]
        order = rng.permutation(len(group))
        cut = round(len(group) * (1 - HOLDOUT))
        train += [group[i] for i in order[:cut]]
        held += [group[i] for i in order[cut:]]
    return train, held


def measure(models: Models, held: Sequence[Observation], trials: int, scored: int) -> Quality:
    predictions = models.predict([o.config for o in held])
    scored_held = [o for o in held if o.val_bpb is not None]
    actual = np.array([o.val_bpb for o in scored_held], dtype=np.float64)
    predicted = forest_mean(models.value, models.features.matrix([o.config for o in scored_held]))
    residual = float(((actual - predicted) ** 2).sum())
    total = float(((actual - actual.mean()) ** 2).sum())
    good = actual <= np.median(actual)
    rank = None
    if good.sum() >= 3 and len(set(actual[good])) > 1:
        rank = float(spearmanr(actual[good], predicted[good]).statistic)
    failed_right = [(p.status is Status.OK) == (o.status is Status.OK) for p, o in zip(predictions, held, strict=True)]
    return Quality(
        trials=trials, scored=scored, held_out=len(held), mae=float(np.abs(actual - predicted).mean()),
        r2=1.0 - residual / total if total > 0 else 0.0, rank_correlation=rank,
        failure_accuracy=float(np.mean(failed_right)),
        memory_mae_gb=_error([measured_peak(o) for o in held], [p.peak_memory_gb for p in predictions]),
        seconds_mae=_error([o.training_seconds for o in held], [p.training_seconds for p in predictions]))


def _error(actual: Sequence[float | None], predicted: Sequence[float | None]) -> float | None:
    """Mean absolute error over the trials that measured the figure and were given a prediction of it."""
    errors = [abs(a - p) for a, p in zip(actual, predicted, strict=True) if a is not None and p is not None]
    return float(np.mean(errors)) if errors else None
