"""The Docker backend: each phase in a fresh container with no network, capped memory and processes,
trial code as a non-root user under arena's seccomp filter as well as Docker's, and exactly the tree
phases.py describes (the train phase never sees val.bin); the image's standard library test suites are
covered by empty directories (sandbox/hidden_stdlib.py)."""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from pathlib import Path

import docker
import requests
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig, Mount

from sandbox import hidden_stdlib
from sandbox.errors import SandboxError
from sandbox.outcome import PhaseRun
from sandbox.owners import owner_tag, tag_is_gone
from sandbox.phases import MEMORY_LIMIT_ENV, SUPERVISOR_CAPABILITIES, TRIAL, PathMap, Phase, memory_bytes, sandbox_user
from sandbox.seccomp import sandbox_filter
from sandbox.trial import GPU_CHECK, Backend, PhaseOutput
from sandbox.workers import Placement, registered

TRIAL_LABEL = "arena.trial"
OWNER_LABEL = "arena.owner"
RUN_LABEL = "arena.run"
DEFAULT_MEM_LIMIT = "32g"  # torch.compile's worker processes each hold a copy of torch
LOG_LIMIT = LogConfig(type="json-file", config={"max-size": "100m"})  # a print loop cannot fill the engine's disk
PYTHON = "python3"  # the image's interpreter, on its PATH


def connect() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise SandboxError(f"no Docker engine reachable ({e}); start the Docker daemon or use --backend local") \
            from None
    return client


def remove_stale_containers(client: docker.DockerClient) -> int:
    """Remove trial containers whose arena process has died; returns how many were removed."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": TRIAL_LABEL}):
        if tag_is_gone(container.labels.get(OWNER_LABEL, "")):
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                pass  # removed meanwhile by someone else
    return removed


def pump_logs(container: Container, output: PhaseOutput) -> None:
    """Split the container's merged stdout and stderr into lines as they arrive."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in container.logs(stream=True, follow=True):
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            output(line + "\n")
    pending += decoder.decode(b"", final=True)
    if pending:
        output(pending)


class DockerBackend(Backend):
    """Runs each trial phase in a new container of `image`, on the given GPUs or on the CPU."""

    isolation = "docker"

    def __init__(self, image: str, gpus: list[str] | None = None, mem_limit: str | None = None,
                 pids_limit: int = 1024, shm_size: str = "2g", cpus: float | None = None,
                 run_name: str | None = None, client: docker.DockerClient | None = None):
        self.client = client or connect()
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxError(f"Docker image '{image}' not found; build it with `docker build -t {image} .` "
                               "or pass --image") from None
        self.image = image
        self.gpus = gpus
        self.mem_limit = mem_limit or DEFAULT_MEM_LIMIT
        self.memory_limit = memory_bytes(self.mem_limit)  # a bad size fails here, in one line
        self.pids_limit = pids_limit
        self.shm_size = shm_size
        self.cpus = cpus
        self.owner = sandbox_user()
        self.labels = {TRIAL_LABEL: "1", OWNER_LABEL: owner_tag(), **({RUN_LABEL: run_name} if run_name else {})}
        remove_stale_containers(self.client)
        self.hidden = self.image_test_suites()

    def image_test_suites(self) -> list[str]:
        """The test suites of the image's Python, as hidden_stdlib.py finds them inside a container."""
        source = Path(hidden_stdlib.__file__).read_text(encoding="utf-8")
        container = None
        try:
            container = self.client.containers.create(self.image, [PYTHON, "-c", source], network_mode="none",
                                                      read_only=True, labels=self.labels, log_config=LOG_LIMIT)
            container.start()
            exit_code = container.wait(timeout=120)["StatusCode"]
            printed: str = container.logs(stdout=True, stderr=False).decode(errors="replace")
            complaint: str = container.logs(stdout=False, stderr=True).decode(errors="replace")
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            detail = (str(getattr(e, "explanation", None) or e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SandboxError(f"Docker could not run the image '{self.image}' to list its Python's test suites "
                               f"({detail}); check the engine and the image") from None
        finally:
            if container is not None:
                container.remove(force=True)
        if exit_code != 0:
            last = (complaint.strip().splitlines() or ["no output"])[-1][:200]
            raise SandboxError(f"the image '{self.image}' has no working python3 ({last}); build it from the "
                               "Dockerfile or pass another --image")
        return [line for line in printed.splitlines() if line.startswith("/")]

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "client": None}  # sent to a Ray node: the engine there is another one

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.client = connect()

    def check_placement(self, placement: Placement) -> None:
        """A worker's GPUs as its trials get them: the engine hands them to a container (else watch says to
        install the NVIDIA Container Toolkit), and the image's torch sees exactly them and runs a kernel on each."""
        if not placement.gpus:
            return
        gpus = ",".join(placement.gpus)
        run = self.placed(placement).check(GPU_CHECK.format(count=len(placement.gpus)))
        if run.succeeded:
            return
        if run.over_memory:
            raise SandboxError(f"--mem-limit {self.mem_limit} is too small: a container that only tried to use GPU "
                               f"{gpus} went over it; raise it")
        last = run.last_line() or f"exit code {run.exit_code}"
        raise SandboxError(f"in a container of '{self.image}', torch cannot use GPU {gpus} ({last[:200]}); check "
                           f"that `docker run --rm --gpus all {self.image} python3 -c 'import torch; "
                           "print(torch.cuda.is_available())'` prints True (a CUDA build of torch, the Dockerfile's)")

    def run_phase(self, phase: Phase, output: PhaseOutput, python_args: list[str] | None = None) -> PhaseRun:
        container = self.create(phase, python_args)
        try:
            with registered(container.kill):
                return self.watch(container, phase.name, phase.kill_after, output)
        finally:
            container.remove(force=True)  # never auto-removed: the state and logs are read first

    def create(self, phase: Phase, python_args: list[str] | None = None) -> Container:
        mounts = [Mount(m.target, str(m.source), type="bind", read_only=not m.writable) for m in phase.mounts()]
        if self.cores:  # torch would start a thread per host core (a phase may have set its own count)
            phase.env.setdefault("OMP_NUM_THREADS", str(len(self.cores)))
        elif self.cpus:
            phase.env.setdefault("OMP_NUM_THREADS", str(max(1, int(self.cpus))))
        phase.env.setdefault(MEMORY_LIMIT_ENV, str(self.memory_limit))  # the container's, enforced by Docker
        phase.processes_limited = True  # pids_limit, per container; the trial user's rlimit would count them all
        # Docker's own filter allows the page-cache calls; its cpuset holds a pinned trial to its cores
        phase.filter_harness(sandbox_filter(pinned=False))
        # The supervisor is PID 1 and starts as root with the rights to hand over, to kill and to read any
        # directory (to count the phase's files), nothing else;
        # it runs the harness as the (non-root) trial user and ends the container itself at its deadline.
        command = phase.command(PYTHON, self.owner, PathMap(), python_args)
        try:
            return self.client.containers.create(
                self.image, command, working_dir=TRIAL, user="0:0", environment=phase.phase_env(PathMap()),
                mounts=mounts, labels={**self.labels, "arena.phase": phase.name}, network_mode="none",
                read_only=True, tmpfs={"/tmp": "rw,exec,nosuid,nodev,mode=1777",
                                       **{path: "ro,size=4k,mode=0555" for path in self.hidden}},
                mem_limit=self.mem_limit, memswap_limit=self.mem_limit, pids_limit=self.pids_limit,
                shm_size=self.shm_size, nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
                cpuset_cpus=",".join(map(str, self.cores)) if self.cores else None,
                cap_drop=["ALL"], cap_add=list(SUPERVISOR_CAPABILITIES), security_opt=["no-new-privileges"],
                log_config=LOG_LIMIT,
                device_requests=[DeviceRequest(device_ids=self.gpus, capabilities=[["gpu"]])] if self.gpus else None)
        except docker.errors.APIError as e:
            raise SandboxError(f"Docker could not create the {phase.name} container: {e.explanation}") from None

    def watch(self, container: Container, phase: str, timeout: float, output: PhaseOutput) -> PhaseRun:
        """Start the container, stream its output, kill it at `timeout`, then read how it ended."""
        start = time.monotonic()
        try:
            container.start()
        except docker.errors.APIError as e:
            if self.gpus:
                raise SandboxError(f"GPUs {','.join(self.gpus)} requested but the Docker engine cannot provide them "
                                   f"({e.explanation}); install the NVIDIA Container Toolkit and restart dockerd, "
                                   "or run without GPUs") from None
            raise SandboxError(f"Docker could not start the {phase} container: {e.explanation}") from None
        reader = threading.Thread(target=pump_logs, args=(container, output), daemon=True)
        reader.start()
        timed_out = False
        try:
            container.wait(timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            if time.monotonic() - start < timeout:
                raise  # the engine went away: not the trial's fault, and not a timeout
            timed_out = True  # over the unix socket, a wait past its timeout ends as ConnectionError
            with contextlib.suppress(docker.errors.APIError):  # it exited just now, on its own
                container.kill()
            container.wait()
        wall_seconds = time.monotonic() - start
        reader.join(timeout=10)
        container.reload()
        state = container.attrs["State"]
        return PhaseRun(exit_code=state["ExitCode"], timed_out=timed_out, wall_seconds=wall_seconds,
                        lines=list(output.lines), oom_killed=bool(state["OOMKilled"]))
