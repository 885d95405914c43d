"""The live view: frames drawn from run directories (a real finished run, and crafted copies of a run made by
the real loop on a backend that trains nothing, one for each phase), `arena watch` attached in tmux to a run
that the test advances one trial at a time, and the command's errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from agent.loop import StopRule, final_status, run_loop
from agent.run import open_run
from agent.ui.live import SPARK_LEVELS, RunView, fmt_bpb, live_view
from sandbox import Placement
from tests.conftest import ROOT, one_line_error, run_arena
from tests.docker_env import apt_install
from tests.fake_runs import FAST_SETTINGS, FakeBackend, Stepper, fake_run
from tests.run_helpers import BASE

FAST = ["--budget", "2", "--eval-tokens", "4096", "--startup-allowance", "300"]  # real training, kept short
NAME = "live"
ROW = re.compile(r"^\s*(\d+)\s+(baseline|random)\s+(\w+)\s+([\d.]+|-)\s+(\w+)")  # a recent-trials row
SCREEN_DEADLINE = 60  # seconds a condition on the tmux screen may take to come true, however busy the machine


@dataclass
class LiveRun:
    dir: Path
    records: list[dict]


def tmux(socket: Path, *args: str) -> subprocess.CompletedProcess:
    # env: Python's own environment; the C-level one of a pytest process can hold COLUMNS=80 (set by a
    # curses setupterm), which the view would obey instead of the pane's width
    return subprocess.run(["tmux", "-S", str(socket), "-f", "/dev/null", *args], capture_output=True, text=True,
                          timeout=10, env=dict(os.environ))


@pytest.fixture(scope="module")
def tmux_ready() -> None:
    if not shutil.which("tmux"):
        apt_install("tmux")  # as the Docker tests install docker.io: a fresh machine lacks it


def start_watch(socket_path: Path, runs: Path, session: str = "w") -> None:
    """`arena watch` in a 160x50 tmux pane that stays on screen after the command ends."""
    command = f"{sys.executable} -m agent.cli watch {NAME} --runs-dir {runs}"
    started = tmux(socket_path, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", "-c", str(ROOT),
                   command, ";", "set-option", "-t", session, "remain-on-exit", "on")
    assert started.returncode == 0, started.stderr


def screen_until(socket_path: Path, condition: Callable[[str], bool], what: str, session: str = "w") -> str:
    """The pane's screen once `condition` holds of it; fails after SCREEN_DEADLINE seconds without."""
    deadline = time.monotonic() + SCREEN_DEADLINE
    while True:
        screen = tmux(socket_path, "capture-pane", "-p", "-t", session).stdout
        if condition(screen):
            return screen
        assert time.monotonic() < deadline, f"the screen never showed {what}:\n{screen}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def fake_live_run(tmp_path_factory, cache_root, stdlib_dataset) -> LiveRun:
    """A finished 3-trial run made by the real loop on a backend that trains nothing."""
    run_dir = fake_run(tmp_path_factory.mktemp("runs"), cache_root, NAME, 3)
    return LiveRun(run_dir, [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()])


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
def run_copy(fake_live_run, tmp_path) -> Path:
    """A copy of the finished run to craft one phase in."""
    return Path(shutil.copytree(fake_live_run.dir, tmp_path / NAME))


@pytest.mark.slow
def test_frame_of_a_finished_run(base_run):
    """The frame of a real run's directory (the session's shared run: real records, real timings)."""
    records = [json.loads(line) for line in (base_run / "ledger.jsonl").read_text().splitlines()]
    before = tree_state(base_run)
    text = frame(base_run, StopRule(trials=BASE))
    assert tree_state(base_run) == before  # drawing reads, never writes
    header = text.splitlines()[1]
    assert base_run.name in header and "method random" in header and "device cpu" in header
    assert "2 s/trial" in header
    assert f"trials {BASE}/{BASE}" in text and "ETA 0s" in text
    rows = table_rows(text)
    assert sorted(rows) == list(range(BASE))
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
    assert "run done" in text and f"{BASE} trials, best val_bpb {best['val_bpb']:.6f}" in text  # the last word
    assert "comes next" not in text


def test_frame_while_running_and_evaluating(run_copy, fake_live_run):
    proposal = fake_live_run.records[1]
    write_status(run_copy, phase="running", trial=3, description="raise the matrix LR", started=time.time() - 75,
                 commit=proposal["commit"], diff=proposal["diff"])
    steps = [f"step={i} loss={4.5 - i / 10:.6f} progress={i / 40:.4f} tok_per_s={8000 + i} mem_gb=0.73 "
             f"train_s={i / 2:.1f}\n" for i in range(17)]
    log = run_copy / "logs" / "trial-00003.log"
    log.write_text("=== trial 3 started 2026-01-01 00:00:00\n" + "".join(steps))
    view = RunView(run_copy, StopRule(trials=5))
    text = frame(run_copy, view=view)
    assert "trial 3 · running · 1m15s" in text and "raise the matrix LR" in text
    changed = [ln for ln in proposal["diff"].splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert changed[0].strip() in text  # the diff being trained: its changed lines before its headers
    assert "step 16  loss 2.9000  tok/s 8,016  mem 0.73 GB  train 8.0 s / 2 s" in text and "40%" in text
    assert steps[-1].strip() in text  # the log's last lines
    assert "trials 3/5" in text and "ETA" in text
    with open(log, "a") as f:
        f.write("=== eval phase\n---\nval_bpb:          4.400000\n")
    text = frame(run_copy, view=view)
    assert "trial 3 · evaluating" in text and "step 16  loss 2.9000" in text and "val_bpb:          4.400000" in text


def test_every_worker_has_a_line(tmp_path, cache_root, stdlib_dataset):
    """Two workers, each holding a trial mid-training: the frame shows a line per worker with its device, trial
    and last step; the panel below follows the newest trial."""
    stepper = Stepper()
    run = open_run(tmp_path / "runs", {"name": "two", "workers": 2, **FAST_SETTINGS}, cache_root=cache_root)

    def loop():
        try:
            with final_status(run):
                run_loop(run, FakeBackend(gate=stepper), StopRule(trials=3), report=lambda line: None,
                         where=[Placement(cores=(0,)), Placement(cores=(0,))])  # whatever cores this machine has
        finally:
            run.lock.release()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        stepper.wait_for_trial()  # the baseline, alone
        stepper.release()
        stepper.wait_for_trial()
        stepper.wait_for_trial()  # trials 1 and 2, side by side
        text = frame(run.dir)
        lines = {line.split()[1]: line for line in text.splitlines() if re.match(r"\W*w[01] ", line)}
        assert sorted(lines) == ["w0", "w1"] and "2 workers" in text
        assert sorted(int(re.search(r"trial (\d+)", line)[1]) for line in lines.values()) == [1, 2]
        assert all("cpu" in line and "step 2" in line and "random:" in line for line in lines.values())
        assert "trial 2 · running" in text
    finally:
        stepper.release()
        stepper.release()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert "2 workers" not in frame(run.dir)  # a finished run shows its end, not idle workers


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


def test_llm_totals_and_half_written_lines(run_copy, fake_live_run):
    calls = [{"prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.0125},
             {"prompt_tokens": 1800, "completion_tokens": 200, "cost_usd": 0.0175}]
    llm_log = run_copy / "llm.jsonl"
    llm_log.write_text("".join(json.dumps(c) + "\n" for c in calls) + '{"prompt_tokens": 99')
    ledger = run_copy / "ledger.jsonl"
    next_record = {**fake_live_run.records[2], "trial": 3, "status": "oom", "val_bpb": None, "kept": False}
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


def test_live_view_prints_report_lines_above_the_view(fake_live_run):
    before = tree_state(fake_live_run.dir)
    console = Console(record=True, width=120, force_terminal=True)
    with live_view(fake_live_run.dir, StopRule(trials=3), console=console) as report:
        report("trial 2 ok: val_bpb 4.460000 -> discard [not markup]")
        for n in range(200):  # a burst: queued, then all printed, in order
            report(f"line {n}")
    text = console.export_text()
    assert "trial 2 ok: val_bpb 4.460000 -> discard [not markup]" in text
    printed = re.findall(r"line (\d+)\n", text)  # the recording keeps each erased frame, minus the erasing
    assert printed == [str(n) for n in range(200)]
    assert f"{NAME}  method random" in text and "trials 3/3" in text  # a frame is drawn, at the latest on leaving
    assert tree_state(fake_live_run.dir) == before


@pytest.mark.slow
def test_watch_in_tmux_follows_the_run(tmux_ready, tmp_path, cache_root, stdlib_dataset):
    """`arena watch` beside a run that the real loop drives, one trial at a time: the test holds each trial
    mid-way (a backend that trains nothing, gated) until the screen has shown it, so every state is seen
    however slowly the machine draws."""
    runs, socket_path = tmp_path / "runs", tmp_path / "tmux.sock"
    stepper = Stepper()
    run = open_run(runs, {"name": NAME, **FAST_SETTINGS}, cache_root=cache_root)
    failures: list[Exception] = []

    def drive() -> None:
        try:
            with final_status(run):
                run_loop(run, FakeBackend(gate=stepper), StopRule(trials=3), report=lambda line: None)
        except Exception as e:  # noqa: BLE001 (shown by the main thread)
            failures.append(e)
        finally:
            run.lock.release()

    loop = threading.Thread(target=drive, name="arena-loop", daemon=True)
    loop.start()
    start_watch(socket_path, runs)
    try:
        for trial in range(3):
            stepper.wait_for_trial()
            screen = screen_until(socket_path, lambda s, trial=trial: f"trial {trial} · running" in s
                                  and "step 2  loss 4.3000  tok/s 8,002" in s  # its last step line
                                  and sorted(table_rows(s)) == list(range(trial)),  # the trials before it
                                  f"trial {trial} running after trials 0-{trial - 1}")
            assert "arena is gone" not in screen
            stepper.release()
        loop.join(timeout=SCREEN_DEADLINE)
        assert not loop.is_alive() and not failures, failures
        screen = screen_until(socket_path, lambda s: len(table_rows(s)) == 3 and "run done" in s, "the run's end")
        assert "trials 3" in screen and "3 trials, best val_bpb" in screen
        assert "Pane is dead" not in screen  # still watching when the run ended
    finally:
        for _ in range(3):
            stepper.release()  # a failed wait above leaves the loop free to finish
        tmux(socket_path, "kill-server")
        loop.join(timeout=SCREEN_DEADLINE)


def test_watch_refuses_what_is_not_a_run(tmp_path, cache_root):
    (tmp_path / "plain").mkdir()
    line = one_line_error(run_arena("watch", "plain", "--runs-dir", str(tmp_path), "--once", cache=cache_root))
    assert "is not a run (no run.json)" in line
    line = one_line_error(run_arena("watch", "absent", "--runs-dir", str(tmp_path), "--once", cache=cache_root))
    assert "no run directory" in line


@pytest.mark.parametrize("once", [["--once"], []])  # without a terminal to redraw on, one frame all the same
def test_watch_once_prints_one_frame(once, fake_live_run, cache_root):
    before = tree_state(fake_live_run.dir)
    proc = run_arena("watch", NAME, "--runs-dir", str(fake_live_run.dir.parent), *once, cache=cache_root)
    assert proc.returncode == 0, proc.stderr
    assert "arena" in proc.stdout and NAME in proc.stdout and "method random" in proc.stdout
    assert sorted(table_rows(proc.stdout)) == [0, 1, 2]
    assert "trials 3/3" in proc.stdout  # the run's --trials, as its arena wrote it into status.json
    assert tree_state(fake_live_run.dir) == before


# ---------------------------------------------------------------- how a run ends, as a view tells it

def start_run(runs: Path, cache: Path, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ARENA_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", name,
                             *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_training(run_dir: Path, trial: int, proc: subprocess.Popen) -> None:
    log = run_dir / "logs" / f"trial-{trial:05d}.log"
    deadline = time.monotonic() + 600  # a poll: the first step took 46 s on a loaded machine
    while not (log.exists() and "step=" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "state" / "status.json").read_text())


@pytest.fixture
def sigint_handled():
    """A test runner started in the background of a shell ignores SIGINT, and so would every arena it starts
    (an ignored signal stays ignored across exec; a handled one is reset): handle it, so arena gets Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize("how, phase, words, code", [
    (signal.SIGINT, "stopped", "interrupted (Ctrl-C)", 130),
    (signal.SIGTERM, "stopped", "terminated (SIGTERM)", 143),
])
def test_every_way_out_leaves_a_final_status(how, phase, words, code, tmp_path, cache_root, stdlib_dataset,
                                            sigint_handled):
    runs = tmp_path / "runs"
    proc = start_run(runs, cache_root, "stop", "--trials", "5", *FAST)
    wait_for_training(runs / "stop", 0, proc)
    proc.send_signal(how)
    assert proc.wait(timeout=120) == code
    last = proc.stderr.read().splitlines()[-1]
    assert last.startswith(words.split(" (")[0]) and last.endswith("; run the same command to resume"), last
    status = status_of(runs / "stop")
    assert status["phase"] == phase and words in status["reason"] and "run the same command" in status["reason"]
    text = frame(runs / "stop")
    assert f"run {phase}" in text and words in text
    assert harness_processes_end(), "the sandbox outlived arena"


def harness_processes_end(within: float = 30.0) -> bool:
    """Whether every harness process is gone within `within` seconds (the kernel ends a sandbox's pid
    namespace, once its first process is killed, asynchronously)."""
    deadline = time.monotonic() + within
    while [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_harness(p)]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


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
def test_watch_quits_on_q_and_redraws_cleanly_after_a_resize(tmux_ready, fake_live_run, tmp_path):
    socket_path = tmp_path / "tmux.sock"
    start_watch(socket_path, fake_live_run.dir.parent)
    try:
        screen_until(socket_path, lambda s: "arena watch · read-only · press q (or Ctrl-C) to quit" in s, "the view")
        tmux(socket_path, "resize-window", "-t", "w", "-x", "90", "-y", "30")
        # below 110 columns the leaderboard goes under the recent trials: a line of its own, from column 0,
        # which only a frame drawn for the new size has (the old one, cut or rewrapped, has it far right)
        def redrawn(screen: str) -> bool:
            return any(line.startswith("leaderboard (top") for line in screen.splitlines())

        screen = screen_until(socket_path, redrawn, "a frame drawn for 90 columns")
        screen = screen_until(socket_path, lambda s: redrawn(s) and s.count("method random") == 1
                              and s.count("press q") == 1, "one clean frame (no stale fragment)")
        assert screen.count("method random") == 1 and screen.count("press q") == 1, screen
        tmux(socket_path, "send-keys", "-t", "w", "q")
        screen_until(socket_path, lambda s: tmux(socket_path, "display-message", "-p", "-t", "w",
                                                 "#{pane_dead}").stdout.strip() == "1", "watch end on q")
    finally:
        tmux(socket_path, "kill-server")
