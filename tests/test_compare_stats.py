"""The numbers `arena compare` reports between two groups of runs: the bootstrap interval of the difference of
their mean best val_bpb, on small hand-made examples whose answer is known, and its properties."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from agent.ui.stats import bootstrap_ci
from tests.test_replay_compare import arena, paper_trials


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_bootstrap_interval_of_examples_with_a_known_answer(seed):
    # a = [0, 1]: a resampled mean is 0, 0.5 or 1 (1/4, 1/2, 1/4); b = [0, 0] is always 0. Both ends hold a
    # quarter of the 10,000 samples, far more than the 2.5% each percentile cuts: the interval is [0, 1].
    assert bootstrap_ci([0.0, 1.0], [0.0, 0.0], seed=seed) == (0.0, 1.0)
    # a = [0, 0, 0, 1]: the mean of 4 draws is k/4 with k ~ Binomial(4, 1/4); P(k = 0) = 32%, P(k >= 3) = 5.1%
    # but P(k = 4) = 0.4%, so the 97.5th percentile is 3/4
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], [0.0, 0.0], seed=seed) == (0.0, 0.75)
    # no spread on either side: the interval is the difference itself
    assert bootstrap_ci([1.5, 1.5, 1.5], [1.25, 1.25], seed=seed) == (0.25, 0.25)


def test_the_same_seed_gives_the_same_interval():
    a, b = [1.01, 0.99, 1.03, 0.98], [1.05, 1.02, 1.07]
    assert bootstrap_ci(a, b, seed=7) == bootstrap_ci(a, b, seed=7)
    assert bootstrap_ci(a, b) == bootstrap_ci(a, b, seed=0)  # compare's intervals are reproducible


def test_compare_reports_the_known_interval(tmp_path, capsys):
    """Two runs a side (trials.jsonl in the paper's format): tpe's bests are 0.980 and 0.981, cmaes's 1.000 and
    1.001. A resampled mean moves by 0, 0.0005 or 0.001 on each side (1/4, 1/2, 1/4), so the difference of
    means is -0.02 + 0.0005 * j with P(j = -2) = P(j = 2) = 1/16 > 2.5%: the interval is [-0.021, -0.019]."""
    trials = paper_trials(tmp_path / "trials.jsonl")
    assert arena("compare", trials, "--out", tmp_path / "cmp") == 0
    test = json.loads((tmp_path / "cmp" / "summary.json").read_text())["tests"][0]
    assert (test["a"], test["b"], test["n_a"], test["n_b"]) == ("tpe", "cmaes", 2, 2)
    assert test["mean_diff"] == pytest.approx(-0.02, abs=1e-12)
    assert test["ci_low"] == pytest.approx(-0.021, abs=1e-12) and test["ci_high"] == pytest.approx(-0.019, abs=1e-12)
    capsys.readouterr()


@pytest.mark.parametrize("example", range(8))
def test_the_interval_contains_the_mean_difference(example):
    rng = np.random.default_rng(example)
    a = list(rng.normal(1.0, 0.03, rng.integers(2, 9)))
    b = list(rng.normal(1.01, 0.03, rng.integers(2, 9)))
    low, high = bootstrap_ci(a, b)
    assert low < np.mean(a) - np.mean(b) < high


def test_the_interval_narrows_as_runs_are_added():
    """The same spread of bests over 4, 16 and 64 runs a side: the same means, an interval about half as wide
    for each fourfold (it shrinks as 1/sqrt(n))."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 0.05, 4), rng.normal(1.02, 0.05, 4)
    widths = []
    for copies in (1, 4, 16):
        low, high = bootstrap_ci(list(np.tile(a, copies)), list(np.tile(b, copies)))
        assert low < a.mean() - b.mean() < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0
    for wider, narrower in pairwise(widths):
        assert narrower / wider == pytest.approx(0.5, abs=0.1)
