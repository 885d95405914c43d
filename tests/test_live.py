"""The live view: frames drawn from a real run's directory (and crafted copies of it for each phase),
`arena watch` attached in tmux to a real run as it advances, and the command's errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from agent.loop import StopRule
from agent.ui.live import SPARK_LEVELS, RunView, fmt_bpb, live_view
from agent.ui.live_reader import parse_step
from tests.conftest import ROOT, one_line_error, run_arena
from tests.docker_env import apt_install

FAST = ["--budget", "2", "--eval-tokens", "4096", "--startup-allowance", "300"]  # real training, kept short
NAME = "live"
ROW = re.compile(r"^\s*(\d+)\s+(baseline|random)\s+(\w+)\s+([\d.]+|-)\s+(\w+)")  # a recent-trials row


@dataclass
class WatchedRun:
    dir: Path
    records: list[dict]
    screens: list[str]  # what `arena watch` showed in tmux, in order


def tmux(socket: Path, *args: str) -> subprocess.CompletedProcess:
    # env: Python's own environment; the C-level one of a pytest process can hold COLUMNS=80 (set by a
    # curses setupterm), which the view would obey instead of the pane's width
    return subprocess.run(["tmux", "-S", str(socket), "-f", "/dev/null", *args], capture_output=True, text=True,
                          timeout=10, env=dict(os.environ))


def watch_in_tmux(run: subprocess.Popen, runs: Path, socket: Path) -> list[str]:
    """Start `arena watch` in a 160x50 tmux pane and capture the screen until the run exits."""
    command = f"{sys.executable} -m agent.cli watch {NAME} --runs-dir {runs}"
    started = tmux(socket, "new-session", "-d", "-s", "watch", "-x", "160", "-y", "50", "-c", str(ROOT), command,
                   ";", "set-option", "-t", "watch", "remain-on-exit", "on")
    assert started.returncode == 0, started.stderr
    screens = []
    try:
        while run.poll() is None:
            screens.append(tmux(socket, "capture-pane", "-p", "-t", "watch").stdout)
            time.sleep(0.5)
        time.sleep(1.0)  # the view redraws 4 times a second; let it show the last trial
        screens.append(tmux(socket, "capture-pane", "-p", "-t", "watch").stdout)
    finally:
        tmux(socket, "kill-server")
    return screens


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory, cache_root, stdlib_dataset) -> WatchedRun:
    """One real 3-trial run; `arena watch` follows it in tmux from its first trial to its end."""
    runs = tmp_path_factory.mktemp("runs")
    output = tmp_path_factory.mktemp("output") / "arena-run.txt"
    env = {**os.environ, "ARENA_CACHE": str(cache_root)}
    with open(output, "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", NAME,
                                "--trials", "3", *FAST], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (runs / NAME / "run.json").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not shutil.which("tmux"):
            apt_install("tmux")  # as the Docker tests install docker.io: a fresh machine lacks it
        screens = watch_in_tmux(run, runs, tmp_path_factory.mktemp("tmux") / "socket")
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, output.read_text()[-3000:]
    records = [json.loads(line) for line in (runs / NAME / "ledger.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in records] == [0, 1, 2]
    return WatchedRun(runs / NAME, records, screens)


def frame(run_dir: Path, stop_rule: StopRule | None = None, view: RunView | None = None) -> str:
    console = Console(record=True, width=120)
    console.print((view or RunView(run_dir, stop_rule)).frame(console))
    return console.export_text()


def table_rows(text: str) -> dict[int, tuple[str, str, str, str]]:
    """trial -> (method, status, val_bpb, verdict) of the recent-trials table."""
    return {int(m[1]): (m[2], m[3], m[4], m[5]) for m in map(ROW.match, text.splitlines()) if m}


def write_status(run_dir: Path, **status) -> None:
    (run_dir / "state" / "status.json").write_text(json.dumps({"time": time.time(), **status}) + "\n")


def tree_state(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*"))}


@pytest.fixture
def run_copy(watched_run, tmp_path) -> Path:
    """A copy of the real run to craft one phase in."""
    return Path(shutil.copytree(watched_run.dir, tmp_path / NAME))


@pytest.mark.slow
def test_frame_of_a_finished_run(watched_run):
    records = watched_run.records
    before = tree_state(watched_run.dir)
    text = frame(watched_run.dir, StopRule(trials=3))
    assert tree_state(watched_run.dir) == before  # drawing reads, never writes
    header = text.splitlines()[1]
    assert NAME in header and "method random" in header and "device cpu" in header and "2 s/trial" in header
    assert "trials 3/3" in text and "ETA 0s" in text
    rows = table_rows(text)
    assert sorted(rows) == [0, 1, 2]
    for r in records:
        method, status, val_bpb, verdict = rows[r["trial"]]
        assert (method, status, val_bpb) == (r["method"], r["status"], fmt_bpb(r["val_bpb"]))
        assert verdict == ("keep" if r["kept"] else "discard")
    curve = re.search(r"best ([\d.]+) \(trial (\d+)\)\s+(\S+)", text)
    best = min((r for r in records if r["status"] == "ok"), key=lambda r: r["val_bpb"])
    assert curve[1] == f"{best['val_bpb']:.6f}" and int(curve[2]) == best["trial"]
    assert len(curve[3]) == len(records) and set(curve[3]) <= set(SPARK_LEVELS)
    leaders = [line for line in text.splitlines() if "leaderboard" in line]
    first = text.splitlines()[text.splitlines().index(leaders[0]) + 2]  # below the title and column names
    assert re.search(rf"\b1\s+{best['trial']}\s+{best['val_bpb']:.6f}\s+[+-]\d+\.\d\d%", first), first
    assert "run done" in text and f"3 trials, best val_bpb {best['val_bpb']:.6f}" in text  # the run's last word
    assert "comes next" not in text


@pytest.mark.slow
def test_frame_while_running_and_evaluating(run_copy, watched_run):
    proposal = watched_run.records[1]
    write_status(run_copy, phase="running", trial=3, description="raise the matrix LR", started=time.time() - 75,
                 commit=proposal["commit"], diff=proposal["diff"])
    steps = [f"step={i} loss={4.5 - i / 10:.6f} progress={i / 40:.4f} tok_per_s={8000 + i} mem_gb=0.73 "
             f"train_s={i / 2:.1f}\n" for i in range(17)]
    log = run_copy / "logs" / "trial-00003.log"
    log.write_text("=== trial 3 started 2026-01-01 00:00:00\n" + "".join(steps))
    view = RunView(run_copy, StopRule(trials=5))
    text = frame(run_copy, view=view)
    assert "trial 3 · running · 1m15s" in text and "raise the matrix LR" in text
    changed = [l for l in proposal["diff"].splitlines() if l.startswith("+") and not l.startswith("+++")]
    assert changed[0].strip() in text  # the diff being trained: its changed lines before its headers
    assert "step 16  loss 2.9000  tok/s 8,016  mem 0.73 GB  train 8.0 s / 2 s" in text and "40%" in text
    assert steps[-1].strip() in text  # the log's last lines
    assert "trials 3/5" in text and "ETA" in text
    with open(log, "a") as f:
        f.write("=== eval phase\n---\nval_bpb:          4.400000\n")
    text = frame(run_copy, view=view)
    assert "trial 3 · evaluating" in text and "step 16  loss 2.9000" in text and "val_bpb:          4.400000" in text


@pytest.mark.slow
def test_frame_while_an_llm_proposes(run_copy):
    stream = run_copy / "state" / "llm_stream.txt"
    stream.write_text("an answer from an earlier trial")
    old = time.time() - 600
    os.utime(stream, (old, old))
    write_status(run_copy, phase="proposing", trial=3, method="code")
    text = frame(run_copy)
    assert "trial 3 · proposing" in text and "code is proposing trial 3" in text
    assert "earlier trial" not in text  # an older stream is not this proposal's
    stream.write_text("I will lower the warmup ratio.\n```diff\n--- a/train.py\n+++ b/train.py\n@@ -20 +20 @@\n-WARMUP")
    text = frame(run_copy)
    assert "the model's answer, streaming" in text and "-WARMUP" in text and "+++ b/train.py" in text


@pytest.mark.slow
def test_llm_totals_and_half_written_lines(run_copy, watched_run):
    calls = [{"prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.0125},
             {"prompt_tokens": 1800, "completion_tokens": 200, "cost_usd": 0.0175}]
    llm_log = run_copy / "llm.jsonl"
    llm_log.write_text("".join(json.dumps(c) + "\n" for c in calls) + '{"prompt_tokens": 99')
    ledger = run_copy / "ledger.jsonl"
    next_record = {**watched_run.records[2], "trial": 3, "status": "oom", "val_bpb": None, "kept": False}
    line = json.dumps(next_record) + "\n"
    with open(ledger, "a") as f:
        f.write(line[:40])  # the loop is half-way through appending trial 3
    view = RunView(run_copy)
    text = frame(run_copy, view=view)
    assert "LLM 2 calls · 3,000 prompt + 500 completion tokens · $0.0300" in text
    assert sorted(table_rows(text)) == [0, 1, 2]
    with open(ledger, "a") as f:
        f.write(line[40:])
    text = frame(run_copy, view=view)
    assert table_rows(text)[3][1:3] == ("oom", "-")
    assert re.search(r"\(trial \d\)\s+\S{4}\s", text)  # the curve grew by one trial


@pytest.mark.slow
def test_live_view_prints_report_lines_above_the_view(watched_run):
    before = tree_state(watched_run.dir)
    console = Console(record=True, width=120, force_terminal=True)
    with live_view(watched_run.dir, StopRule(trials=3), console=console) as report:
        report("trial 2 ok: val_bpb 4.460000 -> discard [not markup]")
        time.sleep(0.6)  # a few redraws
        for n in range(200):  # a burst: queued, then all printed, in order
            report(f"line {n}")
    text = console.export_text()
    assert "trial 2 ok: val_bpb 4.460000 -> discard [not markup]" in text
    printed = re.findall(r"line (\d+)\n", text)  # the recording keeps each erased frame, minus the erasing
    assert printed == [str(n) for n in range(200)]
    assert f"{NAME}  method random" in text and "trials 3/3" in text
    assert tree_state(watched_run.dir) == before


@pytest.mark.slow
def test_watch_in_tmux_follows_the_run(watched_run):
    screens = watched_run.screens
    titles = [int(m[1]) for s in screens for m in [re.search(r"trial (\d+) · (?:proposing|applying|running|"
                                                              r"evaluating)", s)] if m]
    assert titles[0] == 0 and titles == sorted(titles) and set(titles) >= {0, 1, 2}, titles
    assert any(re.search(r"trial 0 · (running|evaluating)", s) and not table_rows(s) for s in screens)
    assert len(table_rows(screens[-1])) == 3 and "trials 3" in screens[-1]
    assert "Pane is dead" not in screens[-1]  # still watching when the run ended
    assert any(len(table_rows(s)) == 2 for s in screens)  # seen between its first and last trial
    shown = []
    for trial in range(3):
        log = (watched_run.dir / "logs" / f"trial-{trial:05d}.log").read_text()
        for line in [line for line in log.splitlines() if line.startswith("step=")][-1:]:
            step = parse_step(line)
            shown.append(any(f"step {int(step['step'])}  loss {step['loss']:.4f}  tok/s {step['tok_per_s']:,.0f}"
                             in s for s in screens))
    assert any(shown), "no screen showed a trial's last step line"


def test_watch_refuses_what_is_not_a_run(tmp_path, cache_root):
    (tmp_path / "plain").mkdir()
    line = one_line_error(run_arena("watch", "plain", "--runs-dir", str(tmp_path), "--once", cache=cache_root))
    assert "is not a run (no run.json)" in line
    line = one_line_error(run_arena("watch", "absent", "--runs-dir", str(tmp_path), "--once", cache=cache_root))
    assert "no run directory" in line


@pytest.mark.slow
def test_watch_once_prints_one_frame(watched_run, cache_root):
    before = tree_state(watched_run.dir)
    proc = run_arena("watch", NAME, "--runs-dir", str(watched_run.dir.parent), "--once", cache=cache_root)
    assert proc.returncode == 0, proc.stderr
    assert "arena" in proc.stdout and NAME in proc.stdout and "method random" in proc.stdout
    assert sorted(table_rows(proc.stdout)) == [0, 1, 2]
    assert tree_state(watched_run.dir) == before


# ---------------------------------------------------------------- how a run ends, as a view tells it

def start_run(runs: Path, cache: Path, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ARENA_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", name,
                             *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_training(run_dir: Path, trial: int, proc: subprocess.Popen) -> None:
    log = run_dir / "logs" / f"trial-{trial:05d}.log"
    deadline = time.monotonic() + 180
    while not (log.exists() and "step=" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "state" / "status.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("how, phase, words, code", [
    (signal.SIGINT, "stopped", "interrupted (Ctrl-C)", 130),
    (signal.SIGTERM, "stopped", "terminated (SIGTERM)", 143),
])
def test_every_way_out_leaves_a_final_status(how, phase, words, code, tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    proc = start_run(runs, cache_root, "stop", "--trials", "5", *FAST)
    wait_for_training(runs / "stop", 0, proc)
    proc.send_signal(how)
    assert proc.wait(timeout=120) == code
    status = status_of(runs / "stop")
    assert status["phase"] == phase and words in status["reason"] and "run the same command" in status["reason"]
    text = frame(runs / "stop")
    assert f"run {phase}" in text and words in text
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_harness(p)]  # the sandbox ended


def _is_harness(proc: Path) -> bool:
    try:
        return b"harness.py" in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.slow
def test_a_failed_run_says_why_and_a_killed_one_is_noticed(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    too_many = ["--eval-tokens", str(256 * 100_000)]  # the baseline's evaluation fails: the run stops
    failed = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", "fail",
                             "--trials", "2", "--budget", "1", *too_many], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "ARENA_CACHE": str(cache_root)}, timeout=600)
    assert failed.returncode == 2
    status = status_of(runs / "fail")
    assert status["phase"] == "failed" and status["reason"].startswith("the baseline trial failed")
    assert "run failed" in frame(runs / "fail")
    proc = start_run(runs, cache_root, "killed", "--trials", "5", *FAST)
    wait_for_training(runs / "killed", 0, proc)
    proc.kill()  # kill -9: nothing of arena's can write a last word
    proc.wait()
    assert status_of(runs / "killed")["phase"] == "running"
    text = frame(runs / "killed")
    assert f"arena (pid {proc.pid}) is gone" in text and "to resume" in text
    assert "running ·" not in text  # no clock ticking for a trial nobody runs


def test_a_resumed_trials_quiet_time_counts_from_its_own_start(run_copy):
    log = run_copy / "logs" / "trial-00003.log"
    log.write_text("=== trial 3 started\nstep=0 loss=4.0 progress=0.0 tok_per_s=1 mem_gb=0.1 train_s=0.0\n")
    old = time.time() - 3600
    os.utime(log, (old, old))  # the killed attempt's output, an hour old
    write_status(run_copy, phase="running", trial=3, started=time.time() - 5, pid=os.getpid(),
                 host=socket.gethostname())
    text = frame(run_copy)
    assert "trial 3 · running" in text and "no output for" not in text


def test_a_small_screen_shows_the_changed_lines_of_a_long_diff(run_copy):
    from agent.constants import render_constants
    from agent.patches import make_diff
    from agent.presets import get_preset
    from agent.template import template_dir

    source = render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants)
    edited = source.replace("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.7").replace(
        "LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = 20.0").replace("ROPE_BASE = 10_000", "ROPE_BASE = 50_000")
    write_status(run_copy, phase="running", trial=3, started=time.time(), diff=make_diff(source, edited),
                 pid=os.getpid(), host=socket.gethostname())
    console = Console(record=True, width=80, height=24)
    console.print(RunView(run_copy).frame(console))
    text = console.export_text()
    for line in ("+WARMDOWN_RATIO = 0.7", "+LOGIT_SOFTCAP = 20.0", "+ROPE_BASE = 50_000"):
        assert line in text, text


@pytest.mark.slow
def test_watch_quits_on_q_and_redraws_cleanly_after_a_resize(watched_run, tmp_path):
    socket_path = tmp_path / "tmux.sock"
    command = f"{sys.executable} -m agent.cli watch {NAME} --runs-dir {watched_run.dir.parent}"
    started = tmux(socket_path, "new-session", "-d", "-s", "w", "-x", "160", "-y", "50", "-c", str(ROOT), command,
                   ";", "set-option", "-t", "w", "remain-on-exit", "on")
    assert started.returncode == 0, started.stderr
    try:
        screen = ""
        deadline = time.monotonic() + 60
        while "press q" not in screen and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = tmux(socket_path, "capture-pane", "-p", "-t", "w").stdout
        assert "arena watch · read-only · press q (or Ctrl-C) to quit" in screen
        tmux(socket_path, "resize-window", "-t", "w", "-x", "90", "-y", "30")
        time.sleep(1.5)  # a few redraws
        screen = tmux(socket_path, "capture-pane", "-p", "-t", "w").stdout
        assert screen.count("method random") == 1 and screen.count("press q") == 1, screen  # no stale fragment
        tmux(socket_path, "send-keys", "-t", "w", "q")
        deadline = time.monotonic() + 20
        dead = ""
        while dead != "1" and time.monotonic() < deadline:
            time.sleep(0.3)
            dead = tmux(socket_path, "display-message", "-p", "-t", "w", "#{pane_dead}").stdout.strip()
        assert dead == "1"  # watch ended on q
    finally:
        tmux(socket_path, "kill-server")
