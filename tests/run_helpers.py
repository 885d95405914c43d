"""Running `arena run` as a user does, and checking that a run directory is consistent."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent.ledger import Ledger
from agent.workspace import RunRepo, read_trailers

ROOT = Path(__file__).resolve().parents[1]
# real training, kept short; a generous start-up allowance so a loaded machine is not over budget
FAST = ["--budget", "2", "--eval-tokens", "4096", "--startup-allowance", "300"]
BASE = 4  # trials in the shared base run; the crash tests interrupt trial BASE and resume
NEXT = str(BASE + 1)


def arena_run(runs: Path, cache: Path, *args: str, env: dict | None = None,
              command: str = "agent.cli") -> subprocess.CompletedProcess:
    full_env = {**os.environ, "ARENA_CACHE": str(cache), **(env or {})}
    return subprocess.run([sys.executable, "-m", command, "run", "--runs-dir", str(runs), *args],
                          capture_output=True, text=True, env=full_env, timeout=900, cwd=ROOT)


def pids_whose_command_line(match: Callable[[str], bool]) -> list[int]:
    """PIDs of the processes whose command line `match` accepts (read from /proc; a process may be gone)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace") if proc.name.isdigit() else ""
        except OSError:
            continue
        if cmdline and match(cmdline):
            found.append(int(proc.name))
    return found


def fake_arena_run(runs: Path, cache: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """arena_run whose trials train nothing (tests/fake_arena.py): for tests of the loop, not of training."""
    return arena_run(runs, cache, *args, env=env, command="tests.fake_arena")


def check_run_consistent(run_dir: Path, n_trials: int) -> list[dict]:
    """Ledger, git refs, notes, branch, journal and derived files agree; every trial counted once, and
    `n_trials` of them ran (infeasible ones, refused by the memory model, are recorded beside). Returns the
    ledger's lines as JSON, the file format users read, each also a valid TrialRecord. With several workers
    the lines are in the order trials finished; this returns them so too."""
    path = run_dir / "ledger.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.to_json() for r in Ledger.read(path).records] == records  # nothing lost or added in reading
    trials = [r["trial"] for r in records]
    assert trials[0] == 0 and sorted(trials) == list(range(len(records)))
    assert sum(1 for r in records if r["status"] != "infeasible") == n_trials
    assert all(r["commit"] is None for r in records if r["status"] == "infeasible")
    repo = RunRepo(run_dir / "repo")
    assert repo.trial_numbers() == sorted(r["trial"] for r in records if r["commit"])
    by_trial = {r["trial"]: r for r in records}
    became_best = []  # a kept trial, or a candidate once its confirmation runs kept it
    on_the_best = True  # whether every trial built on the best of the moment it was recorded
    for r in records:
        if r["trial"] and r["kind"] == "proposal" and became_best and r["parent"] != became_best[-1]:
            on_the_best = False
        if r["kept"]:
            became_best.append(r["commit"])
        elif (r.get("decision") or {}).get("kept"):
            became_best.append(by_trial[r["decision"]["trial"]]["commit"])
    branch = repo.branch_log()
    if on_the_best:  # the branch is exactly the trials that became the best
        assert branch == list(reversed(became_best))
    else:  # with workers, a trial may build on an earlier best than the one it beats: the branch is its line
        assert branch[0] == became_best[-1] and set(branch) <= set(became_best)
    journal = pickle.loads((run_dir / "state" / "journal.pkl").read_bytes())
    assert journal["observed"] == trials and not journal["in_flight"]  # the method saw each trial once, in order
    for r in records:
        if r["commit"] is None:
            continue
        assert repo.trial_commit(r["trial"]) == r["commit"]
        note = repo.note(r["commit"])
        assert note["trial"] == r["trial"] and note["status"] == r["status"] and note["val_bpb"] == r["val_bpb"]
        if r["trial"]:
            trailers = read_trailers(repo.message(r["commit"]))
            assert trailers["Arena-Trial"] == str(r["trial"]) and trailers["Arena-Parent"] == r["parent"]
            assert repo.repo.commit(r["commit"]).parents[0].hexsha == r["parent"]
    assert (run_dir / "best_train.py").read_text() == repo.show("best", "train.py")
    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(tsv) == len(records) + 1
    return records


def baseline_only(base_run: Path, runs: Path, settings: dict | None = None, baseline: dict | None = None) -> Path:
    """A copy of the shared base run cut back to its baseline, for a test that needs a run with other settings
    without training a baseline of its own: `settings` change run.json (as if the run had been started with
    them; nothing of the baseline depends on them), `baseline` changes the baseline's ledger line (and its git
    note). The loop's own recovery does the rest on resume: trial refs past the ledger are dropped and the
    method state, deleted here, is rebuilt from the ledger."""
    run = runs / base_run.name
    shutil.copytree(base_run, run)
    first = Ledger.read(run / "ledger.jsonl").records[0].to_json() | (baseline or {})
    (run / "ledger.jsonl").write_text(json.dumps(first, sort_keys=True) + "\n")  # as Ledger.append writes it
    if baseline:
        repo = RunRepo(run / "repo")
        note = repo.note(first["commit"])
        repo.add_note(first["commit"], {**note, **{k: v for k, v in baseline.items() if k in note}})
    shutil.rmtree(run / "state")
    for log in (run / "logs").glob("trial-*.log"):
        if log.name != "trial-00000.log":
            log.unlink()
    info = json.loads((run / "run.json").read_text())
    info["settings"].update(settings or {})
    (run / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return run


def dead_pid() -> int:
    """The pid of a process that has ended (until the kernel hands it out again, which takes a while)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
