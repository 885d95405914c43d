"""A run under real use: one arena per run (a real second process), a refused start or resume that changes
nothing, a lost state/ rebuilt from the ledger, settings that may change while no trial is recorded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.ledger import Ledger
from agent.runlock import RunLock
from sandbox.bwrap import BWRAP_ENV
from tests.conftest import DATASET_STAGE, ROOT, one_line_error
from tests.run_helpers import BASE, FAST, NEXT, arena_run, check_run_consistent, fake_arena_run


def snapshot(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "lock"}


def start_arena(runs: Path, cache: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ARENA_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_arena_on_a_running_run_is_refused(base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    shutil.copytree(base_run, runs / "base")
    first = start_arena(runs, cache_root, "--name", "base", "--trials", NEXT)
    log = runs / "base" / "logs" / f"trial-{BASE:05d}.log"
    deadline = time.monotonic() + 120
    while not log.exists():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    # the first arena is paused while the second one starts, so it still holds the run however long the
    # second takes to get there (its trial's processes go on; a trial is judged on their own clocks)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    line = one_line_error(second)
    assert f"in use by arena process {first.pid}" in line
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    check_run_consistent(runs / "base", BASE + 1)  # the refused one wrote nothing


def test_a_bad_value_on_resume_is_named_as_bad_not_as_changed(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    assert fake_arena_run(runs, cache_root, "--name", "r", "--trials", "1", "--budget", "1").returncode == 0
    before = snapshot(runs / "r")
    line = one_line_error(fake_arena_run(runs, cache_root, "--name", "r", "--trials", "2", "--budget", "-1"))
    assert "--budget must be more than 0 and at most 1000000, got -1.0" in line  # not "was started with budget=1.0"
    assert snapshot(runs / "r") == before


def test_the_lock_names_its_holder_from_the_moment_it_is_taken(tmp_path):
    """Not once the holder's start is checked (seconds, or minutes on a model check): until then a second arena
    was told the pid of the run's previous holder, maybe by now another process, and to kill it."""
    (tmp_path / "lock").write_text("4242\n")  # the previous holder's, long gone
    lock = RunLock.take(tmp_path)
    try:
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
        second = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                 "from agent.runlock import RunLock; RunLock.take(Path(sys.argv[1]))", str(tmp_path)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert f"in use by arena process {os.getpid()}; wait for it to end, or stop it (kill {os.getpid()})" \
            in second.stderr
    finally:
        lock.release()


@pytest.mark.slow
def test_two_arenas_creating_one_run_at_once(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    both = [start_arena(runs, cache_root, "--name", "twin", "--trials", "1", *FAST) for _ in range(2)]
    results = [(proc.wait(timeout=600), proc.communicate()[1]) for proc in both]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    lines = [line for line in refused.splitlines() if line.strip() and not DATASET_STAGE.match(line)]
    assert len(lines) == 1 and ("in use by arena process" in lines[0] or "created by another" in lines[0]), refused
    assert sorted(p.name for p in runs.iterdir()) == ["twin"]  # no half-made run left behind
    check_run_consistent(runs / "twin", 1)


@pytest.mark.slow
def test_a_refused_resume_leaves_a_torn_ledger_as_it_was(base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    shutil.copytree(base_run, runs / "base")
    with open(runs / "base" / "ledger.jsonl", "a") as ledger:
        ledger.write(f'{{"trial": {BASE}, "kind": "proposal", "val_b')  # a kill mid-write
    before = snapshot(runs / "base")
    assert "seed=42, not 7" in one_line_error(arena_run(runs, cache_root, "--name", "base", "--seed", "7"))
    line = one_line_error(arena_run(runs, cache_root, "--name", "base", env={BWRAP_ENV: str(tmp_path / "no-bwrap")}))
    assert "not an executable bwrap" in line  # refused by the sandbox's pre-flight, after every run check
    assert snapshot(runs / "base") == before
    assert arena_run(runs, cache_root, "--name", "base", "--trials", NEXT).returncode == 0
    check_run_consistent(runs / "base", BASE + 1)  # the torn line was cut once the resume went ahead


@pytest.mark.slow  # arena child processes, seconds each
def test_a_lost_state_folder_is_rebuilt_from_the_ledger(fake_base_run, fake_straight_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    shutil.rmtree(runs / "base" / "state")
    assert fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT).returncode == 0
    records = check_run_consistent(runs / "base", BASE + 1)
    assert records[BASE]["config"] == fake_straight_run[BASE]["config"]  # not trial 1's draw again
    assert (runs / "base" / "state" / "status.json").exists()


@pytest.mark.slow  # arena child processes, seconds each
def test_a_run_named_before_the_rules_for_new_names_still_resumes(fake_base_run, tmp_path, cache_root):
    runs, name = tmp_path / "runs", "a long name " * 10  # 120 characters, a space at the end
    shutil.copytree(fake_base_run, runs / name)
    damage_settings(runs / name, lambda settings: settings.update(name=name))
    proc = fake_arena_run(runs, cache_root, "--name", name, "--trials", NEXT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_run_consistent(runs / name, BASE + 1)
    assert "at most 100" in one_line_error(fake_arena_run(runs, cache_root, "--name", name + "new"))


@pytest.mark.slow  # arena child processes, seconds each
def test_a_lost_best_branch_is_made_again_from_the_ledger(fake_base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    subprocess.run(["git", "-C", str(runs / "base" / "repo"), "update-ref", "-d", "refs/heads/best"], check=True)
    proc = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    assert proc.returncode == 0, proc.stderr[-2000:]  # was: "check it with git fsck", which makes no branch
    check_run_consistent(runs / "base", BASE + 1)


@pytest.mark.slow  # arena child processes, seconds each
def test_locks_a_killed_git_left_do_not_stop_a_resume(fake_base_run, fake_straight_run, tmp_path, cache_root):
    """git takes `<ref>.lock` beside each ref it moves and renames it into place: a kill -9 of arena's process
    group in between leaves it, and every later move of that ref would fail."""
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    repo = runs / "base" / "repo"
    for lock in (f"refs/trials/{BASE}.lock", "refs/notes/arena.lock", "refs/heads/best.lock", "packed-refs.lock"):
        (repo / lock).parent.mkdir(parents=True, exist_ok=True)
        (repo / lock).write_text("")
    assert fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT).returncode == 0
    records = check_run_consistent(runs / "base", BASE + 1)
    assert records[BASE]["config"] == fake_straight_run[BASE]["config"]
    assert not list(repo.rglob("*.lock"))


@pytest.mark.slow
def test_a_repository_git_refuses_is_one_line(fake_base_run, tmp_path, cache_root):
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    (runs / "base" / "repo" / "refs" / "trials" / f"{BASE}.lock").mkdir()  # not a lock a kill leaves: git's own refusal
    proc = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the run's own lines: it fails when it commits the trial
    assert line.startswith("error: git update-ref") and f"cannot lock ref 'refs/trials/{BASE}'" in line
    assert "git fsck" in line


def damage_settings(run_dir: Path, change) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    change(info["settings"])
    (run_dir / "run.json").write_text(json.dumps(info))


def replace_val_bpb(run_dir: Path, value) -> None:
    path = run_dir / "ledger.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[-1]["val_bpb"] = value
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


DAMAGE = {  # what a resume met as a traceback (or, for the ledger, as a fresh start that dropped the trials)
    "run.json not JSON": (lambda d: (d / "run.json").write_text("garbage"), "run.json is unreadable"),
    "run.json not UTF-8": (lambda d: (d / "run.json").write_bytes(b"\xff"), "run.json is unreadable"),
    "run.json a list": (lambda d: (d / "run.json").write_text("[]"), "is not a run's run.json"),
    "a setting unknown": (lambda d: damage_settings(d, lambda s: s.update(bogus=1)), "does not know, 'bogus'"),
    "a setting of the wrong type": (lambda d: damage_settings(d, lambda s: s.update(budget="fast")),
                                    "setting budget is 'fast'"),
    "a setting out of range": (lambda d: damage_settings(d, lambda s: s.update(seed=-1)),
                               "holds a value this arena refuses (--seed must be at least 0"),
    "journal garbage": (lambda d: (d / "state" / "journal.pkl").write_text("garbage"), "journal.pkl is unreadable"),
    "journal a directory": (lambda d: ((d / "state" / "journal.pkl").unlink(), (d / "state" / "journal.pkl").mkdir()),
                            "journal.pkl is unreadable"),
    "state a file": (lambda d: (shutil.rmtree(d / "state"), (d / "state").write_text("")), "state is not a directory"),
    "val_bpb a string": (lambda d: replace_val_bpb(d, "abc"), "its val_bpb is 'abc'"),
    "ledger emptied": (lambda d: (d / "ledger.jsonl").write_text(""), "has observed trials the ledger does not hold"),
    "ledger deleted": (lambda d: (d / "ledger.jsonl").unlink(), "has observed trials the ledger does not hold"),
}


@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_is_one_line_and_left_as_it_was(fake_base_run, tmp_path, cache_root, damage):
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    do, message = DAMAGE[damage]
    do(runs / "base")
    before = snapshot(runs / "base")
    assert message in one_line_error(fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT))
    assert snapshot(runs / "base") == before


@pytest.mark.slow
def test_a_failed_preflight_creates_nothing_and_its_advice_works(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    line = one_line_error(arena_run(runs, cache_root, "--name", "x", "--method", "llm", "--model", "openai/x",
                                    "--api-base", "http://127.0.0.1:9/v1", "--llm-timeout", "2"))
    assert "cannot reach model openai/x" in line
    line = one_line_error(arena_run(runs, cache_root, "--name", "x", env={BWRAP_ENV: str(tmp_path / "none")}))
    assert "bwrap" in line
    assert not runs.exists() or not any(runs.iterdir())
    proc = fake_arena_run(runs, cache_root, "--name", "x", "--trials", "1", *FAST)  # the loop's part: it starts
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((runs / "x" / "run.json").read_text())["settings"]["method"] == "random"


@pytest.mark.slow
def test_settings_may_change_while_no_trial_is_recorded(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    too_many = ["--eval-tokens", str(256 * 100_000)]  # more than the validation split: the baseline fails
    failed = arena_run(runs, cache_root, "--name", "y", "--trials", "1", "--budget", "1", *too_many)
    assert failed.returncode == 2 and failed.stderr.splitlines()[-1].startswith("error: the baseline trial failed")
    assert Ledger.read(runs / "y" / "ledger.jsonl").records == []
    proc = fake_arena_run(runs, cache_root, "--name", "y", "--trials", "1", *FAST)  # other settings: accepted
    assert proc.returncode == 0, proc.stderr[-2000:]
    settings = json.loads((runs / "y" / "run.json").read_text())["settings"]
    assert settings["eval_tokens"] == 4096 and settings["budget"] == 2.0
    assert (runs / "y" / "logs" / "trial-00000.log").read_text().count("=== trial 0 started") == 2
    check_run_consistent(runs / "y", 1)
    line = one_line_error(arena_run(runs, cache_root, "--name", "y", "--seed", "7"))
    assert "seed=42, not 7" in line  # with a trial recorded, the settings are the run's
