"""The numbers compare reports: per run, per group of runs (a method, or a method and model), and
a statistical test between every pair of groups on the best val_bpb each run found."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate, combinations

import numpy as np
from scipy.stats import mannwhitneyu

from agent.ui.history import RunHistory
from sandbox.outcome import FAILURES

BOOTSTRAP_SAMPLES = 10_000
SMALL_N = 5  # below this many runs per side a rank test can hardly reject anything


@dataclass
class RunStats:
    run: RunHistory
    best: float | None
    failures: dict[str, int]
    best_so_far: list[float]           # per trial; nan until the first scored trial
    hours: list[float] | None          # cumulative train+eval wall hours per trial; None when not recorded
    tokens: int
    cost_usd: float
    target_trials: int | None          # trials run when --target was first reached
    target_hours: float | None

    @property
    def trials(self) -> int:
        return len(self.run.trials)

    @property
    def total_hours(self) -> float | None:
        """Hours the device (GPU, or CPU for a CPU preset) was held: every trial's train and eval phases."""
        return self.hours[-1] if self.hours else None


def run_stats(run: RunHistory, target: float | None) -> RunStats:
    scores = [math.inf if view.score is None else view.score for view in run.trials]
    best_so_far = [math.nan if v == math.inf else v for v in accumulate(scores, min)]
    walls = [view.wall_seconds for view in run.trials]
    hours = list(accumulate((w or 0.0) / 3600 for w in walls)) if any(w is not None for w in walls) else None
    reached = next((i for i, v in enumerate(best_so_far) if target is not None and v <= target), None)
    best = min((v for v in scores if v != math.inf), default=None)
    return RunStats(run=run, best=best, failures=Counter(view.status for view in run.trials if view.status != "ok"),
                    best_so_far=best_so_far, hours=hours,
                    tokens=sum(c.prompt_tokens + c.completion_tokens for c in run.llm_calls),
                    cost_usd=sum(c.cost_usd for c in run.llm_calls),
                    target_trials=None if reached is None else reached + 1,
                    target_hours=None if reached is None or hours is None else hours[reached])


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class GroupStats:
    label: str
    runs: list[RunStats]

    @property
    def bests(self) -> list[float]:
        return [r.best for r in self.runs if r.best is not None]

    @property
    def seeds(self) -> list:
        return [r.run.seed for r in self.runs]

    def summary(self) -> dict:
        """One flat row of the comparison table (also what summary.csv and summary.json hold)."""
        bests, trials = self.bests, sum(r.trials for r in self.runs)
        hours = [r.total_hours for r in self.runs if r.total_hours is not None]
        reached = [r for r in self.runs if r.target_trials is not None]
        reached_hours = [r.target_hours for r in reached if r.target_hours is not None]
        failures = Counter()
        for r in self.runs:
            failures.update(r.failures)
        row = {"group": self.label, "method": self.runs[0].run.method, "model": self.runs[0].run.model,
               "runs": len(self.runs), "seeds": " ".join(str(s) for s in self.seeds),
               "scored_runs": len(bests), "best_mean": _mean(bests),
               "best_std": float(np.std(bests, ddof=1)) if len(bests) > 1 else None,
               "best_median": float(np.median(bests)) if bests else None,
               "best_min": min(bests, default=None), "trials": trials,
               "unisolated_runs": sum(1 for r in self.runs if r.run.isolation == "none")}
        row.update({f"failure_rate_{kind}": failures.get(kind, 0) / trials if trials else None
                    for kind in FAILURES})
        row.update(device_hours=sum(hours) if hours else None, llm_tokens=sum(r.tokens for r in self.runs),
                   llm_cost_usd=sum(r.cost_usd for r in self.runs), target_reached=len(reached),
                   target_trials_mean=_mean([r.target_trials for r in reached]),
                   target_hours_mean=_mean(reached_hours))
        return row


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


def pair_test(a: GroupStats, b: GroupStats) -> dict:
    """Mann-Whitney U (two-sided) on the runs' best val_bpb, and a bootstrap CI of the difference of means."""
    x, y = a.bests, b.bests
    result = {"a": a.label, "b": b.label, "n_a": len(x), "n_b": len(y), "u": None, "p_value": None,
              "mean_diff": None, "ci_low": None, "ci_high": None, "note": ""}
    if not x or not y:
        result["note"] = "no scored runs on one side: nothing to test"
        return result
    test = mannwhitneyu(x, y, alternative="two-sided")
    result.update(u=float(test.statistic), p_value=float(test.pvalue), mean_diff=float(np.mean(x) - np.mean(y)))
    if min(len(x), len(y)) >= 2:  # from one run a side, resampling gives back that one difference: no interval
        result["ci_low"], result["ci_high"] = bootstrap_ci(x, y)
    if min(len(x), len(y)) < 2:
        result["note"] = (f"{len(x)} vs {len(y)} runs: with one run on a side there is no spread to test against; "
                          "run more seeds")
    elif min(len(x), len(y)) < SMALL_N:
        floor = 2 / math.comb(len(x) + len(y), len(x))  # the smallest two-sided exact p these sizes allow
        result["note"] = (f"n is small ({len(x)} vs {len(y)} runs): even a complete separation gives "
                          f"p = {min(floor, 1.0):.3g}; run more seeds before reading anything into it")
    return result


def pairwise_tests(groups: list[GroupStats]) -> list[dict]:
    return [pair_test(a, b) for a, b in combinations(groups, 2)]
