"""Running `arena run` as a user does, and checking that a run directory is consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.ledger import Ledger
from agent.workspace import RunRepo, read_trailers

ROOT = Path(__file__).resolve().parents[1]
# real training, kept short; a generous start-up allowance so a loaded machine is not over budget
FAST = ["--budget", "2", "--eval-tokens", "4096", "--startup-allowance", "300"]
BASE = 6  # trials in the shared base run; the crash tests interrupt trial BASE and resume
NEXT = str(BASE + 1)


def arena_run(runs: Path, cache: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "ARENA_CACHE": str(cache), **(env or {})}
    return subprocess.run([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), *args],
                          capture_output=True, text=True, env=full_env, timeout=900, cwd=ROOT)


def check_run_consistent(run_dir: Path, n_trials: int) -> list[dict]:
    """Ledger, git refs, notes, branch and derived files agree; every trial counted once.
    Returns the ledger's lines as JSON, the file format users read, each also a valid TrialRecord."""
    path = run_dir / "ledger.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.to_json() for r in Ledger.read(path).records] == records  # nothing lost or added in reading
    assert [r["trial"] for r in records] == list(range(n_trials))
    repo = RunRepo(run_dir / "repo")
    assert repo.trial_numbers() == [r["trial"] for r in records if r["commit"]]
    kept = [r for r in records if r["kept"]]
    branch = repo.branch_log()
    assert branch == [r["commit"] for r in reversed(kept)]  # the branch is exactly the kept trials
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
    assert len(tsv) == n_trials + 1
    return records
