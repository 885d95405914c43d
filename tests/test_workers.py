"""Several trials at once (`--workers N`, `--gpus 0,1,...`): the real loop with two workers, its ledger, git
history and method state in agreement, also after a kill -9 with two trials in flight; where each worker runs;
the bad inputs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from agent.cli import main
from agent.errors import ArenaError
from agent.loop import StopRule, final_status, placements, run_loop
from agent.presets import get_preset
from agent.run import RunSettings, open_run
from sandbox import Placement
from sandbox.bwrap import gpu_devices, gpu_env, gpu_nodes
from sandbox.errors import SandboxError
from sandbox.local import UVM_NODE, LocalBackend
from sandbox.workers import (
    NvidiaGpu,
    by_physical_core,
    cpu_list,
    cpu_placements,
    gpu_memory_gb,
    gpu_placements,
    nvidia_gpus,
)
from tests.conftest import one_line_error
from tests.fake_gpus import fake_gpus, fake_nvidia_smi
from tests.fake_runs import FAST_SETTINGS, FakeBackend
from tests.run_helpers import BASE, ROOT, arena_run, check_run_consistent, fake_arena_run, pids_whose_command_line


class Hold:
    """A trial held until its partner is recorded: the partner sets `released` as its sandbox returns, with the
    number of records the run had then."""

    def __init__(self):
        self.released = threading.Event()
        self.records_then = 0


class PairedBackend(FakeBackend):
    """Trials that overlap, and are recorded in the reverse of the order they started: each trial that starts
    while no other waits holds until the next one has been recorded (or a few seconds went by, when none comes).
    The baseline, which runs alone, does not wait. `recorded` counts the run's records."""

    def __init__(self, recorded: Callable[[], int]):
        super().__init__()
        self.recorded = recorded
        self.lock = threading.Lock()
        self.waiting: Hold | None = None
        self.now = self.most = 0

    def run(self, spec, on_log):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            mine, partner = (Hold(), None) if self.waiting is None else (None, self.waiting)
            if spec.trusted:
                mine = None
            self.waiting = mine
        # its partner starts once the loop has proposed and committed it: seconds when busy
        if mine is not None and mine.released.wait(timeout=30):
            deadline = time.monotonic() + 30  # no other trial is under way: the next record is the partner's
            while self.recorded() == mine.records_then and time.monotonic() < deadline:
                time.sleep(0.01)
        outcome = super().run(spec, on_log)
        with self.lock:
            self.now -= 1
            if partner is not None:
                partner.records_then = self.recorded()
                partner.released.set()
        return outcome


@pytest.mark.parametrize("method", ["cmaes", "tpe"])
def test_two_workers_finish_a_run_whose_ledger_git_and_method_state_agree(method, tmp_path, cache_root,
                                                                         stdlib_dataset):
    run = open_run(tmp_path / "runs", {"name": "pair", "method": method, "workers": 2, **FAST_SETTINGS},
                   cache_root=cache_root)
    runner = PairedBackend(recorded=lambda: len(run.ledger.records))
    try:
        with final_status(run):
            # the baseline alone, then ten proposals: five pairs, none left waiting for a partner
            run_loop(run, runner, StopRule(trials=11), report=lambda line: None, where=[Placement(), Placement()])
    finally:
        run.lock.release()
    assert runner.most == 2  # two trials were under way at once
    records = check_run_consistent(run.dir, 11)
    trials = [r["trial"] for r in records]
    assert trials != sorted(trials)  # recorded as they finished, not as they were numbered
    status = json.loads((run.dir / "state" / "status.json").read_text())
    assert status["phase"] == "done"
    for r in records[1:]:  # each judged against the best when it finished
        finished_before = records[:records.index(r)]
        best = min(x["val_bpb"] for x in finished_before if x["kept"])
        assert r["kept"] == (r["val_bpb"] < best)


def status_of(run_dir):
    try:
        return json.loads((run_dir / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow  # arena child processes
def test_kill_9_with_two_trials_in_flight_reruns_exactly_those(tmp_path, cache_root, stdlib_dataset):
    """kill -9 while two workers each run a trial: the resumed arena re-runs those two trials with the proposals
    they had (journaled), records every trial once, and ends consistent."""
    runs = tmp_path / "runs"
    args = ["--name", "killed", "--method", "tpe", "--workers", "2", "--budget", "2", "--eval-tokens", "4096",
            "--startup-allowance", "300"]
    env = {**os.environ, "ARENA_CACHE": str(cache_root), "ARENA_FAKE_HOLD": "600"}
    arena = subprocess.Popen([sys.executable, "-m", "tests.fake_arena", "run", "--runs-dir", str(runs), *args,
                              "--trials", "8", "--no-tui"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    run_dir = runs / "killed"
    deadline = time.monotonic() + 120
    try:
        while True:  # trial 1 is held: trial 2 starts beside it
            workers = status_of(run_dir).get("workers", [])
            logs = [run_dir / "logs" / f"trial-{t:05d}.log" for t in (1, 2)]
            if [w.get("phase") for w in workers] == ["running", "running"] and all(
                    log.exists() and "=== trial" in log.read_text() for log in logs):  # both sandboxes started
                break
            assert time.monotonic() < deadline and arena.poll() is None, arena.stderr.read() if arena.stderr else ""
            time.sleep(0.05)
    finally:
        arena.send_signal(signal.SIGKILL)
        arena.wait()
    journal = pickle.loads((run_dir / "state" / "journal.pkl").read_bytes())
    in_flight = journal["in_flight"]
    assert sorted(in_flight) == [1, 2] and journal["observed"] == [0]
    resumed = fake_arena_run(runs, cache_root, *args, "--trials", "8")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = {r["trial"]: r for r in check_run_consistent(run_dir, 8)}
    for trial, job in in_flight.items():
        assert records[trial]["config"] == job.proposal.config  # the journaled proposal, not a new draw
        log = (run_dir / "logs" / f"trial-{trial:05d}.log").read_text()
        assert log.count(f"=== trial {trial} started") == 2  # the killed attempt, and the one that finished


@pytest.mark.slow  # arena child processes
@pytest.mark.parametrize("point", ["proposed", "recorded"])
def test_a_kill_at_any_write_with_a_trial_beside_it_resumes_consistent(point, tmp_path, cache_root,
                                                                       stdlib_dataset):
    """kill -9 at one of the loop's writes of trial 3 while another trial runs on the other worker."""
    runs = tmp_path / "runs"
    args = ["--name", "k", "--method", "cmaes", "--workers", "2", "--trials", "7"]
    killed = fake_arena_run(runs, cache_root, *args, env={"ARENA_CRASH_AT": f"{point}:3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = fake_arena_run(runs, cache_root, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_run_consistent(runs / "k", 7)


def test_cores_are_split_between_cpu_workers():
    cores = sorted(os.sched_getaffinity(0))
    assert cpu_placements(1) == [Placement()]  # one worker: every core, unpinned
    split = cpu_placements(len(cores))
    assert sorted(c for p in split for c in p.cores or ()) == cores and all(len(p.cores or ()) == 1 for p in split)
    with pytest.raises(SandboxError, match=f"--workers {len(cores) + 1} .* gives arena {len(cores)}"):
        cpu_placements(len(cores) + 1)


def test_a_cpu_eval_phase_runs_on_one_thread_whatever_the_share(tmp_path, stdlib_dataset):
    """Scoring rows one at a time is many tiny ops: one thread; training gets a thread per core of its share."""
    from sandbox import LocalBackend
    from sandbox.trial import stage
    from tests.trial_helpers import make_spec, tiny_train

    spec = make_spec(stdlib_dataset, tiny_train("return None"))
    backend = LocalBackend(isolation="none").placed(Placement(cores=(0, 1)))
    train, evaluation = (stage(spec, name, tmp_path / name, backend.owner) for name in ("train", "eval"))
    for phase in (train, evaluation):
        backend.environment(phase)
    assert train.env["OMP_NUM_THREADS"] == "2" and evaluation.env["OMP_NUM_THREADS"] == "1"


def test_hyperthread_siblings_go_to_the_same_worker(tmp_path):
    for core, siblings in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3"), (4, "4")):
        (tmp_path / f"cpu{core}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{core}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    assert by_physical_core([0, 1, 2, 3, 4], tmp_path) == [0, 2, 1, 3, 4]
    assert by_physical_core([1, 2, 3], tmp_path) == [1, 3, 2]  # a sibling arena may not use stays out


def test_a_worker_per_gpu_and_gpus_that_are_not_there():
    known = {"0": "GPU-aaaa", "1": "GPU-bbbb", "GPU-aaaa": "GPU-aaaa", "GPU-bbbb": "GPU-bbbb"}
    assert gpu_placements(["1", "0"], None, known) == [Placement(gpus=("1",)), Placement(gpus=("0",))]
    assert gpu_placements(["GPU-bbbb"], 1, known) == [Placement(gpus=("GPU-bbbb",))]
    with pytest.raises(SandboxError, match="no GPU 7 on this machine .it has 0, 1."):
        gpu_placements(["0", "7"], None, known)
    with pytest.raises(SandboxError, match="a worker runs on each listed GPU"):
        gpu_placements(["0", "1"], 3, known)
    for twice in (["0", "0"], ["1", "GPU-bbbb"]):
        with pytest.raises(SandboxError, match="lists a GPU twice"):
            gpu_placements(twice, None, known)
    with pytest.raises(ArenaError, match="--workers 2 on a GPU preset runs one trial per GPU"):
        placements(RunSettings(name="g", preset="gpu", workers=2), get_preset("gpu"))
    surrogate = RunSettings(name="s", preset="gpu", workers=3, backend="surrogate", surrogate_data=["x"])
    assert placements(surrogate, get_preset("gpu")) == [Placement(name="surrogate")] * 3  # no device


@pytest.mark.slow  # arena child processes
@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "999"], "--workers 999 on a CPU preset needs a core per worker"),
])
def test_bad_worker_settings_are_one_line_and_create_nothing(flags, message, tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    proc = arena_run(runs, cache_root, "--name", "w", *flags)
    assert proc.returncode == 2
    assert message in one_line_error(proc)
    assert not (runs / "w").exists()


def trial_sandboxes(tmp: Path) -> list[int]:
    """PIDs of the bwrap processes of trials whose phases lie under `tmp` (not the sandbox check that runs
    before them, which is not pinned)."""
    return pids_whose_command_line(lambda cmdline: f"{tmp}/arena-trial-" in cmdline)


def cores_of(pid: int) -> frozenset[int] | None:
    """The cores a process may run on, from /proc (e.g. "0-3,8")."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    listed = next((line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")), "")
    return frozenset(cpu_list(listed))


@pytest.mark.slow  # real training in real sandboxes
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two cores")
def test_two_real_workers_train_side_by_side_each_on_its_own_cores(base_run, tmp_path, cache_root):
    """The session's real run resumed with --workers 2: its next two trials train at the same time, in two
    bubblewrap sandboxes pinned to disjoint cores, and the run ends consistent."""
    runs, tmp = tmp_path / "runs", tmp_path / "tmp"
    tmp.mkdir()
    shutil.copytree(base_run, runs / "base")
    env = {**os.environ, "ARENA_CACHE": str(cache_root), "TMPDIR": str(tmp)}
    total = str(BASE + 2)
    arena = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", "base",
                              "--trials", total, "--workers", "2", "--no-tui"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[frozenset[int]] = set()
    deadline = time.monotonic() + 300
    try:
        while len(seen) < 2 and arena.poll() is None and time.monotonic() < deadline:
            found = {cores for pid in trial_sandboxes(tmp) if (cores := cores_of(pid)) is not None}
            if len(found) == 2:  # every process of a sandbox has its sandbox's cores
                seen = found
            time.sleep(0.05)
        output, _ = arena.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        arena.kill()
    assert arena.returncode == 0, output[-3000:]
    assert len(seen) == 2  # two sandboxes at once
    first, second = seen
    assert not first & second  # on disjoint cores
    check_run_consistent(runs / "base", BASE + 2)


def test_nvidia_smi_listing_gives_ids_bus_and_memory(tmp_path, monkeypatch, request):
    """One nvidia-smi query serves placement (index, UUID, bus id) and the feasibility limit (memory.total);
    a board without a size is skipped for the limit, and one-line errors name --device-memory."""
    fake_nvidia_smi("0, GPU-aaaa, 00000000:17:00.0, 81559\\n1, GPU-bbbb, 00000000:65:00.0, [N/A]\\n",
                    tmp_path, monkeypatch, request)
    assert nvidia_gpus() == (NvidiaGpu("0", "GPU-aaaa", "00000000:17:00.0", 81559 * 2**20 / 1e9),
                             NvidiaGpu("1", "GPU-bbbb", "00000000:65:00.0", None))
    assert gpu_memory_gb(["GPU-aaaa", "1"]) == pytest.approx(85.52, abs=0.01)
    with pytest.raises(SandboxError, match="--device-memory GB"):
        gpu_memory_gb(["1"])


def test_a_gpu_sandbox_gets_its_own_gpus_device_and_no_other(tmp_path):
    """bubblewrap binds the driver's shared nodes and the listed GPUs' own /dev/nvidiaN (found through
    nvidia-smi's bus ids and the driver's /proc/driver/nvidia/gpus/<bus id>/information), and numbers them
    from 0 for CUDA, with their UUIDs for the supervisor's memory count."""
    proc = tmp_path / "gpus"
    for bus, minor in (("0000:17:00.0", 2), ("0000:65:00.0", 0)):
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(f"Model: \t\t NVIDIA H100\nIRQ:   \t\t 1\nDevice Minor: \t {minor}\n")
    table = gpu_nodes([NvidiaGpu("0", "GPU-aaaa", "00000000:17:00.0", 80.0),
                       NvidiaGpu("1", "GPU-bbbb", "00000000:65:00.0", None)], proc)
    assert [(n.index, n.uuid, n.minor) for n in table] == [("0", "GPU-aaaa", 2), ("1", "GPU-bbbb", 0)]
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (dev / name).touch()
    shared = ["nvidia-uvm", "nvidia-uvm-tools", "nvidiactl"]
    assert sorted(Path(p).name for p in gpu_devices(["0"], table, dev)) == sorted([*shared, "nvidia2"])
    assert sorted(Path(p).name for p in gpu_devices(["GPU-bbbb"], table, dev)) == sorted([*shared, "nvidia0"])
    assert gpu_env(["1"], table) == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                     "ARENA_GPU_UUIDS": "GPU-bbbb"}
    with pytest.raises(SandboxError, match="cannot tell which /dev/nvidiaN is GPU 5"):
        gpu_devices(["5"], table, dev)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a sandbox whose torch has no CUDA")
def test_a_gpu_sandbox_whose_torch_cannot_use_the_gpu_stops_before_any_trial(tmp_path, monkeypatch, request):
    """Before the first trial, CUDA runs in a sandbox as a trial's would. Here (no GPU, a CPU build of torch)
    torch sees none: one line says so and what to do. Only the host's list of GPUs is made up."""
    fake_gpus(tmp_path, monkeypatch, request)
    with pytest.raises(SandboxError) as raised:
        LocalBackend(isolation="bwrap", gpus=["1"])  # arena train's check
    message = str(raised.value)
    assert "torch cannot use GPU 1" in message and "torch sees 0 GPUs in the sandbox, not its 1" in message
    assert ("nvidia-modprobe -u -c=0" in message) is not UVM_NODE.exists() and "\n" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a sandbox whose torch has no CUDA")
def test_arena_run_checks_each_workers_gpu_in_its_sandbox_before_creating_the_run(tmp_path, monkeypatch, request,
                                                                                 capsys):
    """arena run places its workers, then runs the check in each one's sandbox, before anything of the run
    exists. Made up: the host's GPUs, and arena's own torch seeing them (its check, before the sandbox's)."""
    fake_gpus(tmp_path, monkeypatch, request)
    monkeypatch.setattr("agent.cli.require_device", lambda preset: None)
    runs = tmp_path / "runs"
    assert main(["run", "--name", "g", "--preset", "gpu", "--gpus", "1,0", "--runs-dir", str(runs)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: inside the sandbox, torch cannot use GPU 1 (AssertionError: torch sees 0 GPUs")
    assert "\n" not in error and not (runs / "g").exists()
