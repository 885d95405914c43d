"""The Docker backend beyond what every backend must do (test_backend_conformance.py), against a real
engine: the engine's memory limit, a container that ends without arena, stale containers, one-line errors.

The engine is started and the CPU trial image built by tests/docker_env.py when missing. Without an
engine these tests fail; ARENA_SKIP_DOCKER=1 skips them instead. The cheating trials that every confined
backend must withstand are in test_reward_hacks.py.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import docker
import pytest

from agent.cli import main
from sandbox import Placement, SandboxError, Status
from sandbox.docker import (
    OWNER_LABEL,
    TRIAL_LABEL,
    DockerBackend,
    remove_stale_containers,
)
from sandbox.owners import owner_tag, pid_namespace
from sandbox.trial import stage
from tests.backends import own_containers
from tests.fake_gpus import fake_gpus
from tests.trial_helpers import CAP, cpu_template, make_spec, run, with_train

BUDGET = 5.0


def run_trial(client, image, data_dir, source: str, budget: float = BUDGET, cap: float = CAP,
              export_grace: float = 60, **backend_options):
    """Run `source` as train.py through a DockerBackend; checks that no container is left behind."""
    backend = DockerBackend(image, client=client, **{"mem_limit": "2g", **backend_options})
    outcome, streamed = run(backend, make_spec(data_dir, source, budget=budget, cap=cap, export_grace=export_grace))
    assert own_containers(client) == []
    return outcome, streamed


@pytest.mark.slow
def test_memory_hog_is_oom(docker_client, trial_image, stdlib_dataset):
    outcome, _ = run_trial(docker_client, trial_image, stdlib_dataset, with_train("""
        hog = []
        while True:
            hog.append(b"x" * (64 << 20))  # written, so every page is really taken
    """), mem_limit="512m")
    assert outcome.status is Status.OOM, outcome.reason + "\n" + outcome.log_tail
    assert "went over the trial's memory limit" in outcome.reason, outcome.reason


@pytest.mark.slow
def test_a_container_ends_by_itself_when_arena_is_gone(docker_client, trial_image, stdlib_dataset, tmp_path):
    """Started and never watched, as when arena is killed: the supervisor's deadline ends the container,
    even though the trial tries to stop its supervisor."""
    backend = DockerBackend(trial_image, client=docker_client, mem_limit="2g")
    source = with_train("""
        import os, signal, time
        print("PROBE stop supervisor:", end=" ")
        try:
            os.kill(1, signal.SIGSTOP)
            print("stopped")
        except OSError as e:
            print(e)
        while True:
            time.sleep(1)
    """)
    spec = make_spec(stdlib_dataset, source, budget=1, cap=1, export_grace=3)
    phase = stage(spec, "train", tmp_path / "phase", backend.owner)
    container = backend.create(phase)
    try:
        container.start()
        deadline = time.monotonic() + phase.deadline + 60
        while time.monotonic() < deadline:
            container.reload()
            if container.status == "exited":
                break
            time.sleep(1)
        assert container.status == "exited", f"still {container.status} {phase.deadline + 60:.0f} s later"
        log = container.logs().decode()
        assert '"deadline": true' in log and "PROBE stop supervisor: stopped" not in log
    finally:
        container.remove(force=True)


@pytest.mark.slow
def test_stale_containers_are_removed(docker_client, trial_image):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names an arena that is gone
    stale = docker_client.containers.create(trial_image, ["sleep", "300"], network_mode="none", labels={
        TRIAL_LABEL: "1", OWNER_LABEL: f"{finished.pid}@{pid_namespace()}@{socket.gethostname()}"})
    live = docker_client.containers.create(trial_image, ["sleep", "300"], network_mode="none", labels={
        TRIAL_LABEL: "1", OWNER_LABEL: owner_tag()})
    try:
        stale.start()
        assert remove_stale_containers(docker_client) == 1
        with pytest.raises(docker.errors.NotFound):
            stale.reload()
        live.reload()  # this process's own trials are never stale
    finally:
        for container in (stale, live):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    assert own_containers(docker_client) == []


@pytest.mark.slow  # needs a Docker engine: the quick subset never starts dockerd
def test_missing_image_is_a_one_line_error(docker_client):
    with pytest.raises(SandboxError, match=r"build it with `docker build -t arena-no-such-image:0 \.` or pass --image"):
        DockerBackend("arena-no-such-image:0", client=docker_client)


def test_unreachable_engine_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(SandboxError, match="start the Docker daemon or use --backend local"):
        DockerBackend("any-image")


@pytest.mark.slow  # needs a Docker engine: the quick subset never starts dockerd
def test_gpu_request_without_nvidia_runtime_is_a_one_line_error(docker_client, trial_image, stdlib_dataset):
    without_nvidia_runtime(docker_client)
    with pytest.raises(SandboxError, match="GPUs 0 requested .* NVIDIA Container Toolkit"):
        run_trial(docker_client, trial_image, stdlib_dataset, cpu_template(), gpus=["0"])
    assert own_containers(docker_client) == []


def without_nvidia_runtime(client) -> None:
    if "nvidia" in client.info().get("Runtimes", {}):
        pytest.skip("this engine has the NVIDIA runtime")


@pytest.mark.slow  # needs a Docker engine: the quick subset never starts dockerd
def test_a_workers_gpus_are_checked_in_a_container_before_any_trial(docker_client, trial_image):
    """The GPU check runs in a container given the worker's GPUs, as its trials' would be; an engine that
    cannot hand them over says so in one line. A worker without GPUs starts no container for it."""
    without_nvidia_runtime(docker_client)
    backend = DockerBackend(trial_image, client=docker_client, mem_limit="2g")
    backend.check_placement(Placement(cores=(0,)))
    with pytest.raises(SandboxError) as raised:
        backend.check_placement(Placement(gpus=("1",)))
    message = str(raised.value)
    assert message.startswith("GPUs 1 requested but the Docker engine cannot provide them") and "\n" not in message
    assert "install the NVIDIA Container Toolkit" in message
    assert own_containers(docker_client) == []


@pytest.mark.slow  # needs a Docker engine: the quick subset never starts dockerd
def test_arena_run_on_docker_checks_its_gpus_before_creating_the_run(docker_client, trial_image, tmp_path,
                                                                     monkeypatch, request, capsys):
    """arena run --backend docker on a GPU preset stops before anything of the run exists when the engine
    cannot give a worker its GPU. Made up: the host's list of GPUs (nvidia-smi)."""
    without_nvidia_runtime(docker_client)
    fake_gpus(tmp_path, monkeypatch, request)
    runs = tmp_path / "runs"
    assert main(["run", "--name", "g", "--preset", "gpu", "--backend", "docker", "--image", trial_image,
                 "--gpus", "1", "--runs-dir", str(runs)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: GPUs 1 requested but the Docker engine cannot provide them"), error
    assert "\n" not in error and not (runs / "g").exists()
    assert own_containers(docker_client) == []
