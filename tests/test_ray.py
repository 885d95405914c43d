"""--executor ray against a real Ray cluster on loopback: a head with no CPU for trials and two worker nodes
(`ray start`), each a separate raylet with one CPU. Trials run there by the real local backend (bubblewrap),
their output streams back, a worker process killed mid-trial is retried once, and killed again the trial is
recorded as lost; the run ends consistent."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import one_line_error
from tests.run_helpers import FAST, ROOT, arena_run, check_run_consistent

RAY = Path(sys.executable).with_name("ray")
WORKER_LINE = re.compile(r"=== on Ray node \w+ \(.*\), worker pid (\d+)")

pytestmark = pytest.mark.skipif(shutil.which(str(RAY)) is None, reason="Ray is not installed (pip install '.[ray]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """The address of a head (no CPU: trials go to the workers) and two one-CPU worker nodes."""
    port = free_port()
    temp = Path(f"/tmp/ray-arena-{os.getpid()}")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "ARENA_RAY_CACHE": str(tmp_path_factory.mktemp("ray-data"))}
    address = f"127.0.0.1:{port}"
    starts = [["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={temp}"],
              [f"--address={address}", "--num-cpus=1"], [f"--address={address}", "--num-cpus=1"]]
    try:
        for args in starts:
            started = subprocess.run([str(RAY), "start", *args], env=env, capture_output=True, text=True,
                                     timeout=180)
            assert started.returncode == 0, started.stderr[-2000:]
        yield address
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def attempts(log: Path) -> list[int]:
    """The Ray worker pid of each attempt of a trial, from its log."""
    text = log.read_text() if log.exists() else ""
    return [int(m[1]) for m in WORKER_LINE.finditer(text)]


def kill_attempt(log: Path, number: int, deadline: float) -> None:
    """kill -9 the Ray worker running attempt `number` of a trial, once it is training."""
    while True:
        pids = attempts(log)
        if len(pids) >= number and "ARENA_READY" in log.read_text().rsplit("=== on Ray node", 1)[1]:
            os.kill(pids[number - 1], signal.SIGKILL)
            return
        assert time.monotonic() < deadline, f"attempt {number} never started:\n{log.read_text()[-2000:]}"
        time.sleep(0.1)


@pytest.mark.slow  # a Ray cluster and real training
def test_trials_run_on_a_ray_cluster_and_survive_a_killed_worker(ray_cluster, tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    env = {**os.environ, "ARENA_CACHE": str(cache_root)}
    arena = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs), "--name", "ray",
                              "--executor", "ray", "--ray-address", ray_cluster, "--trials", "3", "--no-tui", *FAST],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = runs / "ray" / "logs"
    deadline = time.monotonic() + 600
    try:
        kill_attempt(logs / "trial-00001.log", 1, deadline)  # retried by Ray: the trial still counts
        kill_attempt(logs / "trial-00002.log", 1, deadline)
        kill_attempt(logs / "trial-00002.log", 2, deadline)  # and its retry: lost
        output, _ = arena.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        arena.kill()
    assert arena.returncode == 0, output[-3000:]
    assert "2 workers (ray cpu, ray cpu)" in output  # a worker per CPU the cluster has for trials
    records = {r["trial"]: r for r in check_run_consistent(runs / "ray", 3)}
    assert [records[t]["status"] for t in (0, 1)] == ["ok", "ok"]
    assert records[2]["status"] == "lost" and "also when retried" in records[2]["reason"]
    assert len(attempts(logs / "trial-00001.log")) == 2 and len(attempts(logs / "trial-00002.log")) == 2
    for trial in (0, 1):  # the output came back as it was printed, up to the score
        text = (logs / f"trial-{trial:05d}.log").read_text()
        assert "step=" in text and "val_bpb:" in text


@pytest.mark.slow  # a Ray cluster
def test_a_cluster_without_the_device_a_trial_needs_is_one_line(ray_cluster):
    import ray

    from sandbox import LocalBackend
    from sandbox.errors import SandboxError
    from sandbox.ray_runner import RayRunner

    try:
        assert RayRunner(LocalBackend("none"), ray_cluster, gpu=False).capacity() == 2  # a CPU on each worker
        with pytest.raises(SandboxError, match="the Ray cluster has no GPU for trials"):
            RayRunner(LocalBackend("none"), ray_cluster, gpu=True).capacity()
    finally:
        ray.shutdown()


@pytest.mark.slow  # an arena child process
def test_a_ray_address_that_does_not_answer_is_one_line(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    proc = arena_run(runs, cache_root, "--name", "nowhere", "--executor", "ray", "--ray-address",
                     f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert "no Ray cluster answers at 127.0.0.1:" in one_line_error(proc)
    assert not (runs / "nowhere").exists()
