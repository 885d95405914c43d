"""The numbers compare reports: per run, per group of runs (a method, or a method and model), and
a statistical test between every pair of groups on the best val_bpb each run found."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, combinations

import numpy as np
from scipy.stats import mannwhitneyu

from agent.ui.history import RunHistory
from sandbox.outcome import FAILURES, Status

BOOTSTRAP_SAMPLES = 10_000
SMALL_N = 5  # below this many runs per side a rank test can hardly reject anything


@dataclass
class RunStats:
    """A run's figures over the trials that ran; proposals refused as infeasible ran nothing and are counted
    apart (`infeasible`), as --trials counts them."""
    run: RunHistory
    best: float | None
    failures: dict[str, int]
    best_so_far: list[float]           # per trial that ran; nan until the first scored trial
    hours: list[float] | None          # cumulative train+eval wall hours per trial; None when not recorded
    tokens: int
    cost_usd: float
    target_trials: int | None          # trials run when --target was first reached
    target_hours: float | None
    trials: int                        # that ran
    infeasible: int                    # refused by the memory model, not run

    @property
    def total_hours(self) -> float | None:
        """Hours the device (GPU, or CPU for a CPU preset) was held: every trial's train and eval phases."""
        return self.hours[-1] if self.hours else None


def run_stats(run: RunHistory, target: float | None) -> RunStats:
    ran = [view for view in run.trials if view.status != Status.INFEASIBLE]
    scores = [math.inf if view.score is None else view.score for view in ran]
    best_so_far = [math.nan if v == math.inf else v for v in accumulate(scores, min)]
    walls = [view.wall_seconds for view in ran]
    hours = list(accumulate((w or 0.0) / 3600 for w in walls)) if any(w is not None for w in walls) else None
    reached = next((i for i, v in enumerate(best_so_far) if target is not None and v <= target), None)
    best = min((v for v in scores if v != math.inf), default=None)
    return RunStats(run=run, best=best, failures=Counter(view.status for view in ran if view.status != "ok"),
                    best_so_far=best_so_far, hours=hours,
                    tokens=sum(c.prompt_tokens + c.completion_tokens for c in run.llm_calls),
                    cost_usd=sum(c.cost_usd for c in run.llm_calls),
                    target_trials=None if reached is None else reached + 1,
                    target_hours=None if reached is None or hours is None else hours[reached],
                    trials=len(ran), infeasible=len(run.trials) - len(ran))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass(frozen=True)
class GroupSummary:
    """One row of the comparison table (flattened by `row`, what summary.csv and summary.json hold)."""
    group: str
    method: str
    model: str | None
    runs: int
    seeds: str
    scored_runs: int
    best_mean: float | None
    best_std: float | None
    best_median: float | None
    best_min: float | None
    trials: int
    unisolated_runs: int
    failure_rates: dict[str, float | None]  # failure kind -> its share of the trials that ran (None without any)
    infeasible_per_trial: float | None      # proposals refused as infeasible, per trial that ran
    device_hours: float | None
    llm_tokens: int
    llm_cost_usd: float
    target_reached: int
    target_trials_mean: float | None
    target_hours_mean: float | None

    def row(self) -> dict[str, object]:
        """The fields in order, each failure rate in a column of its own (failure_rate_<kind>)."""
        row: dict[str, object] = {}
        for f in dataclasses.fields(self):
            if f.name == "failure_rates":
                row.update({f"failure_rate_{kind}": rate for kind, rate in self.failure_rates.items()})
            else:
                row[f.name] = getattr(self, f.name)
        return row


@dataclass
class GroupStats:
    label: str
    runs: list[RunStats]

    @property
    def bests(self) -> list[float]:
        return [r.best for r in self.runs if r.best is not None]

    @property
    def seeds(self) -> list[int | None]:
        return [r.run.seed for r in self.runs]

    def summary(self) -> GroupSummary:
        bests, trials = self.bests, sum(r.trials for r in self.runs)
        hours = [r.total_hours for r in self.runs if r.total_hours is not None]
        reached_trials = [r.target_trials for r in self.runs if r.target_trials is not None]
        reached_hours = [r.target_hours for r in self.runs if r.target_hours is not None]  # only runs that reached it
        failures: Counter[str] = Counter()
        for r in self.runs:
            failures.update(r.failures)
        return GroupSummary(
            group=self.label, method=self.runs[0].run.method, model=self.runs[0].run.model,
            runs=len(self.runs), seeds=" ".join(str(s) for s in self.seeds),
            scored_runs=len(bests), best_mean=_mean(bests),
            best_std=float(np.std(bests, ddof=1)) if len(bests) > 1 else None,
            best_median=float(np.median(bests)) if bests else None,
            best_min=min(bests, default=None), trials=trials,
            unisolated_runs=sum(1 for r in self.runs if r.run.isolation == "none"),
            failure_rates={kind.value: failures.get(kind, 0) / trials if trials else None for kind in FAILURES
                           if kind is not Status.INFEASIBLE},
            infeasible_per_trial=sum(r.infeasible for r in self.runs) / trials if trials else None,
            device_hours=sum(hours) if hours else None, llm_tokens=sum(r.tokens for r in self.runs),
            llm_cost_usd=sum(r.cost_usd for r in self.runs), target_reached=len(reached_trials),
            target_trials_mean=_mean(reached_trials), target_hours_mean=_mean(reached_hours))


def group_runs(stats: list[RunStats]) -> list[GroupStats]:
    groups: dict[str, list[RunStats]] = {}
    for s in stats:
        groups.setdefault(s.run.group, []).append(s)
    return [GroupStats(label, runs) for label, runs in groups.items()]


def bootstrap_ci(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(a) - mean(b), resampling runs within each group."""
    rng = np.random.default_rng(seed)
    diffs = (rng.choice(a, (BOOTSTRAP_SAMPLES, len(a))).mean(axis=1)
             - rng.choice(b, (BOOTSTRAP_SAMPLES, len(b))).mean(axis=1))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class PairTest:
    """Two groups compared on their runs' best val_bpb; None where there was nothing to compute."""
    a: str
    b: str
    n_a: int
    n_b: int
    u: float | None = None
    p_value: float | None = None
    mean_diff: float | None = None  # mean(a) - mean(b)
    ci_low: float | None = None     # its bootstrap 95% interval
    ci_high: float | None = None
    note: str = ""                  # why the test says little, if it does


def _sample_size_note(n_a: int, n_b: int) -> str:
    if min(n_a, n_b) < 2:
        return f"{n_a} vs {n_b} runs: with one run on a side there is no spread to test against; run more seeds"
    if min(n_a, n_b) < SMALL_N:
        floor = 2 / math.comb(n_a + n_b, n_a)  # the smallest two-sided exact p these sizes allow
        return (f"n is small ({n_a} vs {n_b} runs): even a complete separation gives "
                f"p = {min(floor, 1.0):.3g}; run more seeds before reading anything into it")
    return ""


def pair_test(a: GroupStats, b: GroupStats) -> PairTest:
    """Mann-Whitney U (two-sided) on the runs' best val_bpb, and a bootstrap CI of the difference of means."""
    x, y = a.bests, b.bests
    if not x or not y:
        return PairTest(a.label, b.label, len(x), len(y), note="no scored runs on one side: nothing to test")
    test = mannwhitneyu(x, y, alternative="two-sided")
    # from one run a side, resampling gives back that one difference: no interval
    ci_low, ci_high = bootstrap_ci(x, y) if min(len(x), len(y)) >= 2 else (None, None)
    return PairTest(a.label, b.label, len(x), len(y), u=float(test.statistic), p_value=float(test.pvalue),
                    mean_diff=float(np.mean(x) - np.mean(y)), ci_low=ci_low, ci_high=ci_high,
                    note=_sample_size_note(len(x), len(y)))


def pairwise_tests(groups: list[GroupStats]) -> list[PairTest]:
    return [pair_test(a, b) for a, b in combinations(groups, 2)]
