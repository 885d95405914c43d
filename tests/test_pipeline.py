"""The trial pipeline end to end: real runs of `arena run` (random search, local backend, real training), a
kill -9 in the middle of real training, kill -9 at every write of the loop (on trials that train nothing, the
loop being what is tested), and settings checks."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ledger import Ledger
from agent.methods import Context
from agent.run import open_run
from agent.space import load_space
from agent.workspace import RunRepo
from tests.conftest import ROOT, one_line_error
from tests.fake_runs import FAST_SETTINGS, fake_run
from tests.run_helpers import BASE, NEXT, arena_run, check_run_consistent, fake_arena_run, pids_whose_command_line


@pytest.mark.slow
def test_random_search_run_records_every_trial(base_run):
    records = check_run_consistent(base_run, BASE)
    assert records[0]["kind"] == "baseline" and records[0]["kept"]
    space = load_space("cpu")
    for r in records[1:]:
        assert r["method"] == "random"
        if r["status"] == "over_budget":  # a busy machine slowed it past its allowance: unscored, the rule at work
            assert r["val_bpb"] is None
        else:
            assert r["status"] == "ok" and r["val_bpb"] > 0, (r["status"], r["reason"])
        space.check(r["config"])  # what ran is inside the bounds
        assert r["diff_stats"]["files"] == 1 and r["diff"].startswith("--- a/train.py")
    for key in ("val_bpb", "peak_memory_gb", "training_seconds", "outside_seconds", "allowance_seconds",
                "overhead_seconds", "total_seconds", "tokens_per_second", "seed", "host", "harness_hash",
                "dataset_fingerprint", "commit", "config", "reported"):
        assert all(key in r for r in records), key
    assert {r["isolation"] for r in records} == {"bwrap"}  # the default: every phase in a bubblewrap sandbox
    baseline = records[0]
    for r in records[1:]:  # the allowance after the baseline comes from what the baseline needed
        assert r["allowance_seconds"] >= 2 * baseline["outside_seconds"] + 10 - 1e-9
    log = (base_run / "logs" / "trial-00001.log").read_text()
    assert "step=0 " in log and "ARENA_EVAL " in log and "\nval_bpb:" in log


CRASH_POINTS = ["applied", "committed", "ran", "recorded", "observed"]  # apply, commit, run, record, branch move


@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_any_point_then_resume(point, fake_base_run, fake_straight_run, tmp_path, cache_root):
    """kill -9 during trial BASE at `point`; the resumed run records it exactly once, as proposed, and ends as
    the uninterrupted run did. (The loop's own writes are under test: its trials train nothing here.)"""
    reference = [r.to_json() for r in Ledger.read(fake_base_run / "ledger.jsonl").records]
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    killed = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT,
                            env={"ARENA_CRASH_AT": f"{point}:{BASE}"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = check_run_consistent(runs / "base", BASE + 1)
    assert records[:BASE] == reference
    assert not pickle.loads((runs / "base" / "state" / "journal.pkl").read_bytes())["in_flight"]
    same = ("config", "description", "val_bpb", "status", "kept", "parent", "diff")
    assert {k: records[BASE][k] for k in same} == {k: fake_straight_run[BASE][k] for k in same}


@pytest.mark.slow  # arena child processes, seconds each
def test_a_kill_right_after_the_proposal_runs_that_proposal_on_resume(fake_base_run, fake_straight_run, tmp_path,
                                                                       cache_root):
    """kill -9 once trial BASE is proposed and journaled, before anything of it ran: the resumed run takes the
    journaled proposal (marked here, to tell it from a new draw of the same one) and records it once."""
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    killed = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT,
                            env={"ARENA_CRASH_AT": f"proposed:{BASE}"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    journal_file = runs / "base" / "state" / "journal.pkl"
    journal = pickle.loads(journal_file.read_bytes())
    pending = journal["in_flight"][BASE]
    assert list(journal["in_flight"]) == [BASE] and pending.proposal.config == fake_straight_run[BASE]["config"]
    assert len(Ledger.read(runs / "base" / "ledger.jsonl").records) == BASE  # nothing recorded,
    assert RunRepo(runs / "base" / "repo").trial_commit(BASE) is None  # committed
    log = runs / "base" / "logs" / f"trial-{BASE:05d}.log"
    assert not log.exists()  # or run
    pending.proposal.description += " (as journaled)"
    journal_file.write_bytes(pickle.dumps(journal))
    resumed = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = check_run_consistent(runs / "base", BASE + 1)
    assert records[BASE]["description"] == pending.proposal.description  # the journaled proposal ran,
    assert records[BASE]["config"] == fake_straight_run[BASE]["config"]  # the same one an uninterrupted run drew
    assert log.read_text().count(f"=== trial {BASE} started") == 1  # once
    assert not pickle.loads(journal_file.read_bytes())["in_flight"]


def trial_processes(tmp: Path) -> list[int]:
    """PIDs of a trial's processes: bwrap (its command line names the phase directories under `tmp`) and
    the supervisor and harness inside it (in their own mount namespace, so found by command line)."""
    return pids_whose_command_line(lambda cmdline: str(tmp) in cmdline or "harness.py" in cmdline
                                   or "supervisor.py" in cmdline)


@pytest.mark.slow
def test_kill_during_training_leaves_no_trial_behind(base_run, tmp_path, cache_root):
    import signal
    import time

    runs, tmp = tmp_path / "runs", tmp_path / "tmp"
    tmp.mkdir()
    shutil.copytree(base_run, runs / "base")
    env = {**os.environ, "ARENA_CACHE": str(cache_root), "TMPDIR": str(tmp)}
    arena = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", "base",
                              "--trials", NEXT], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    log = runs / "base" / "logs" / f"trial-{BASE:05d}.log"
    deadline = time.monotonic() + 600  # a poll: the first step took 46 s on a loaded machine
    while not (log.exists() and "step=" in log.read_text()):
        assert time.monotonic() < deadline and arena.poll() is None
        time.sleep(0.05)
    assert trial_processes(tmp)  # training is under way
    journaled = pickle.loads((runs / "base" / "state" / "journal.pkl").read_bytes())["in_flight"][BASE].proposal
    arena.send_signal(signal.SIGKILL)
    arena.wait()
    deadline = time.monotonic() + 60  # generous: on a busy machine the kernel takes its time to reap them
    while trial_processes(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not trial_processes(tmp)  # the trial died with arena
    assert arena_run(runs, cache_root, "--name", "base", "--trials", NEXT).returncode == 0
    records = check_run_consistent(runs / "base", BASE + 1)
    assert records[BASE]["config"] == journaled.config  # the trial that was killed, run again
    assert log.read_text().count(f"=== trial {BASE} started") == 2  # both attempts' output kept


@pytest.mark.slow  # arena child processes, seconds each
def test_resume_with_other_settings_is_refused_and_harmless(fake_base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    before = {p: p.read_bytes() for p in (runs / "base").rglob("*") if p.is_file() and p.name != "lock"}
    for args, message in [(["--seed", "7"], "seed=42, not 7"), (["--preset", "gpu"], "preset='cpu'"),
                          (["--budget", "9"], "budget=2.0, not 9.0")]:
        line = one_line_error(arena_run(runs, cache_root, "--name", "base", *args))
        assert message in line and "choose another --name" in line
    after = {p: p.read_bytes() for p in (runs / "base").rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before  # the lock file names the last arena that held the run, a refused one too


@pytest.mark.parametrize("key, value, message", [
    ("harness_hash", "0" * 16, ("the harness (prepare.py/harness.py/exported.py/memory_check.py) changed since run "
                                "'base' started")),
    ("dataset_fingerprint", "0123456789abcdef", ("the dataset changed since run 'base' started (fingerprint "
                                                 "0123456789abcdef then, ")),
])
def test_resume_is_refused_after_the_harness_or_the_dataset_changed(key, value, message, fake_base_run, tmp_path,
                                                                     cache_root):
    """run.json records the harness hash and the dataset fingerprint the trials were measured with; a resume
    under another harness or on other data would mix measurements, so it stops with one line, changing nothing."""
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    info = json.loads((runs / "base" / "run.json").read_text())
    assert info[key] != value
    info[key] = value  # what the run was started with; this arena's harness and dataset differ from it
    (runs / "base" / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    before = {p: p.read_bytes() for p in (runs / "base").rglob("*") if p.is_file() and p.name != "lock"}
    line = one_line_error(arena_run(runs, cache_root, "--name", "base", "--trials", NEXT))
    assert message in line
    after = {p: p.read_bytes() for p in (runs / "base").rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before


@pytest.mark.parametrize("args, message", [
    (["--method", "gradient-descent"], "unknown method 'gradient-descent'"),
    (["--backend", "cloud"], "unknown backend 'cloud'"),
    (["--preset", "tpu"], "unknown preset 'tpu'"),
    (["--backend", "docker"], "needs --image"),
    (["--image", "arena-gpu"], "--image is the docker backend's; add --backend docker"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--name", "../escape"], "plain directory name"),
])
def test_bad_run_flags_are_one_line_errors(tmp_path, cache_root, stdlib_dataset, args, message):
    line = one_line_error(arena_run(tmp_path / "runs", cache_root, *args))
    assert message in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_space_file_is_refused(tmp_path, cache_root, stdlib_dataset):
    space = tmp_path / "space.toml"
    space.write_text('[cpu.DEPTH]\nkind = "int"\nlow = 9\nhigh = 3\n')
    line = one_line_error(arena_run(tmp_path / "runs", cache_root, "--space", str(space)))
    assert "DEPTH" in line


@pytest.mark.slow  # arena child processes, seconds each
def test_config_file_settings(tmp_path, cache_root, stdlib_dataset):
    config = tmp_path / "run.toml"
    config.write_text('method = "random"\nseeed = 3\n')
    assert "unknown keys seeed" in one_line_error(arena_run(tmp_path / "runs", cache_root, "--config", str(config)))
    config.write_text('method = "random"\n[oops\n')
    assert "not valid TOML" in one_line_error(arena_run(tmp_path / "runs", cache_root, "--config", str(config)))


@pytest.mark.slow  # arena child processes, seconds each
def test_damaged_runs_are_refused(fake_base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    (runs / "notarun").mkdir(parents=True)
    assert "not a run" in one_line_error(arena_run(runs, cache_root, "--name", "notarun"))
    shutil.copytree(fake_base_run, runs / "edited")
    lines = (runs / "edited" / "ledger.jsonl").read_text().splitlines()
    (runs / "edited" / "ledger.jsonl").write_text(lines[0] + "\n{garbage\n" + lines[2] + "\n")
    assert "line 2 is not valid JSON" in one_line_error(arena_run(runs, cache_root, "--name", "edited"))
    shutil.copytree(fake_base_run, runs / "norepo")
    shutil.rmtree(runs / "norepo" / "repo")
    assert "not a git repository" in one_line_error(arena_run(runs, cache_root, "--name", "norepo"))


@pytest.mark.slow  # arena child processes, seconds each
def test_torn_ledger_line_is_dropped_and_rerun(fake_base_run, fake_straight_run, tmp_path, cache_root):
    """A kill in the middle of writing a ledger line leaves a torn line; it is cut and that trial re-run."""
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    killed = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT,
                            env={"ARENA_CRASH_AT": f"noted:{BASE}"})
    assert killed.returncode == -9
    with open(runs / "base" / "ledger.jsonl", "a") as ledger:
        ledger.write(f'{{"trial": {BASE}, "kind": "proposal", "val_b')
    assert fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT).returncode == 0
    records = check_run_consistent(runs / "base", BASE + 1)
    assert records[BASE]["config"] == fake_straight_run[BASE]["config"]


def test_a_run_of_the_version_before_the_journal_resumes_exactly(tmp_path, cache_root, stdlib_dataset):
    """A run killed by the previous version left state/method.pkl (after trial 5) and state/pending.pkl (the
    proposal of trial 6, being run): the resume takes that proposal, once, and goes on as a run never
    interrupted would."""
    straight = fake_run(tmp_path / "straight", cache_root, "c", 9, method="cmaes")
    run_dir = fake_run(tmp_path / "old", cache_root, "c", 6, method="cmaes")
    journal = pickle.loads((run_dir / "state" / "journal.pkl").read_bytes())
    (run_dir / "state" / "method.pkl").write_bytes(pickle.dumps({"observed_through": 5, "state": journal["state"]}))
    after = open_run(tmp_path / "old", {"name": "c", **FAST_SETTINGS}, cache_root=cache_root)  # propose trial 6
    try:
        proposal = after.method.propose(Context(6, after.ledger.records, after.ledger.records[0], "", after.space))
        proposal.description += " (as journaled)"
        state = after.method.state()
    finally:
        after.lock.release()
    (run_dir / "state" / "journal.pkl").unlink()
    (run_dir / "state" / "pending.pkl").write_bytes(pickle.dumps({"trial": 6, "proposal": proposal, "state": state}))
    fake_run(tmp_path / "old", cache_root, "c", 9, method="cmaes")
    records = check_run_consistent(run_dir, 9)
    assert records[6]["description"] == proposal.description  # the journaled proposal ran,
    assert [r["config"] for r in records] == [r["config"] for r in check_run_consistent(straight, 9)]  # as it would
    assert not (run_dir / "state" / "method.pkl").exists() and not (run_dir / "state" / "pending.pkl").exists()
