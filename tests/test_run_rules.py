"""The run's judging and stop rules end to end, through the `arena run` command: confirmation runs
(--confirm), the noise margin (--noise-margin) and the total-time stop rule (--hours). The rules are what is
tested, so the trials train nothing (tests/fake_arena.py; a trial's score depends on its train.py alone).

Each run starts from the session's shared fake base run cut back to its baseline (run_helpers.baseline_only);
the noise-margin and --hours tests share one run of one trial. Where the rule under test must see a trial beat
the best, the baseline's recorded score is raised out of reach, and its recorded time outside the budget with
it, so the trials after it get the preset's whole start-up allowance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.workspace import RunRepo
from tests.run_helpers import baseline_only, check_run_consistent, fake_arena_run

SEED = 42  # the run's seed (the default); confirmation run k uses SEED + k
GENEROUS = {"outside_seconds": 1000.0}  # the allowance is then the preset's cap (--startup-allowance 300)


@pytest.mark.slow  # arena child processes, seconds each
def test_a_winner_is_confirmed_with_other_seeds_and_kept_on_the_mean(fake_base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    run = baseline_only(fake_base_run, runs, settings={"confirm": 2}, baseline={"val_bpb": 100.0, **GENEROUS})
    proc = fake_arena_run(runs, cache_root, "--name", "base", "--confirm", "2", "--trials", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(run, 4)
    candidate, first, second = records[1:]
    # trial 1 beats the baseline's 100: with --confirm it becomes a candidate, not yet the best
    assert candidate["kind"] == "proposal" and candidate["status"] == "ok", candidate["reason"]
    assert candidate["candidate"] and not candidate["kept"] and candidate["confirms"] is None
    assert "-> candidate" in proc.stderr
    for k, confirm in enumerate((first, second), start=1):  # the same train.py again, with other seeds
        assert confirm["kind"] == "confirm" and confirm["method"] == "confirm" and confirm["confirms"] == 1
        assert confirm["seed"] == SEED + k and confirm["parent"] == candidate["commit"]
        assert confirm["config"] == candidate["config"] and confirm["diff"] == ""
        assert not confirm["kept"] and not confirm["candidate"]
    assert first["decision"] is None  # the decision waits for the last confirmation run
    values = [candidate["val_bpb"], first["val_bpb"], second["val_bpb"]]
    decision = second["decision"]
    assert decision["trial"] == 1 and decision["values"] == values
    if None in values:  # a failed confirmation run sinks the candidate
        assert decision == {"trial": 1, "values": values, "kept": False, "mean_val_bpb": None}
    else:
        assert decision["mean_val_bpb"] == pytest.approx(sum(values) / 3)
        assert decision["kept"] is (decision["mean_val_bpb"] < 100.0)
    best = candidate if decision["kept"] else records[0]
    assert RunRepo(run / "repo").best() == best["commit"]
    assert f"{'kept' if decision['kept'] else 'rejected'} trial 1" in proc.stderr


@pytest.fixture(scope="module")
def margin_run(fake_base_run, tmp_path_factory, cache_root) -> tuple[Path, str, float]:
    """One trial for two rules: a noise margin of 100 over a baseline whose score is raised to 50 (any
    trial scores far below it, but not by more than 100), and --hours set a millisecond past the baseline's
    recorded time (trial 1 starts below the limit and crosses it). Returns the run, what arena printed, the limit."""
    runs = tmp_path_factory.mktemp("margin")
    baseline = {"val_bpb": 50.0, "total_seconds": 1000.0, **GENEROUS}
    run = baseline_only(fake_base_run, runs, settings={"noise_margin": 100.0}, baseline=baseline)
    limit = 1000.0 + 0.001  # a trial that trains nothing still takes more than a millisecond (a commit, at least)
    proc = fake_arena_run(runs, cache_root, "--name", "base", "--noise-margin", "100", "--hours", repr(limit / 3600))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc.stderr, limit


@pytest.mark.slow  # arena child processes, seconds each
def test_a_trial_must_beat_the_best_by_more_than_the_noise_margin(margin_run):
    run, printed, _ = margin_run
    baseline, trial = check_run_consistent(run, 2)
    assert baseline["kept"]
    assert trial["status"] == "ok" and trial["val_bpb"] < 50.0, trial["reason"]  # better than the best...
    assert not trial["kept"] and not trial["candidate"] and "-> discard" in printed  # ...but within the margin
    assert RunRepo(run / "repo").branch_log() == [baseline["commit"]]  # nothing but the baseline
    assert (run / "best_train.py").read_text() == RunRepo(run / "repo").show(baseline["commit"], "train.py")


@pytest.mark.slow  # arena child processes, seconds each
def test_hours_stop_the_run_after_the_first_trial_that_crosses_them(margin_run, tmp_path, cache_root):
    run, printed, limit = margin_run
    records = check_run_consistent(run, 2)
    totals = [r["total_seconds"] for r in records]
    assert totals[0] < limit <= sum(totals)  # it ran while under the limit and stopped once over it
    assert "done: 2 trials" in printed
    # resumed with the same limit, the run is over it already: not one more trial
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / run.name)
    again = fake_arena_run(runs, cache_root, "--name", run.name, "--hours", repr(limit / 3600))
    assert again.returncode == 0, again.stderr[-3000:]
    assert check_run_consistent(runs / run.name, 2) == records
    # resumed with fewer --trials than it has: nothing runs, and the target it shows stays the one it reached
    fewer = fake_arena_run(runs, cache_root, "--name", run.name, "--trials", "1")
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    assert "the run has 2 trials already, more than --trials 1: nothing more to run" in fewer.stderr
    assert check_run_consistent(runs / run.name, 2) == records
    assert json.loads((runs / run.name / "state" / "status.json").read_text())["stop"]["trials"] == 2
