"""The Docker backend: each phase in a fresh container with no network, capped memory and processes,
no root, read-only code, and only the data files its phase needs (the train phase never sees val.bin)."""

from __future__ import annotations

import codecs
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests
from docker.types import DeviceRequest, LogConfig, Mount

from agent.errors import ArenaError
from sandbox.outcome import Outcome, PhaseRun, judge
from sandbox.trial import LogSink, TrialSpec, stage_workdir

TRIAL_LABEL = "arena.trial"
OWNER_LABEL = "arena.owner"
RUN_LABEL = "arena.run"
NOBODY = 65534
WORKDIR = "/trial"
DATA_DIR = "/data"
CACHE_DIR = "/cache"
PHASE_DATA = {"train": ("train.bin", "meta.json"),
              "eval": ("val.bin", "token_bytes.npy", "meta.json")}
DEFAULT_MEM_LIMIT = "32g"  # torch.compile's worker processes each hold a copy of torch
LOG_LIMIT = LogConfig(type="json-file", config={"max-size": "100m"})  # a print loop cannot fill the engine's disk


def connect() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise ArenaError(f"no Docker engine reachable ({e}); start the Docker daemon or use --backend local") from None
    return client


def owner_id() -> str:
    """This host and process: what marks the containers this arena started."""
    return f"{socket.gethostname()}/{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    host, _, pid = owner.rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's or container's arena: it may be alive, leave its trials alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, run by another user
    return False


def remove_stale_containers(client: docker.DockerClient) -> int:
    """Remove trial containers whose arena process has died; returns how many were removed."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": TRIAL_LABEL}):
        if owner_is_gone(container.labels.get(OWNER_LABEL, "")):
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                pass  # removed meanwhile by someone else
    return removed


def container_user() -> tuple[int, int]:
    """The host user, so files in out/ stay theirs; but never root: root's arena runs trials as nobody."""
    uid, gid = os.getuid(), os.getgid()
    return (uid, gid) if uid != 0 else (NOBODY, NOBODY)


def hand_over(path: Path, user: tuple[int, int]) -> None:
    """Make `path` writable by the container user (only root can chown; otherwise it is ours already)."""
    stat = path.stat()
    if (stat.st_uid, stat.st_gid) != user:
        os.chown(path, *user)


def pump_logs(container, lines: list[str], on_log: LogSink) -> None:
    """Split the container's merged stdout and stderr into lines as they arrive."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in container.logs(stream=True, follow=True):
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            lines.append(line + "\n")
            on_log(line + "\n")
    pending += decoder.decode(b"", final=True)
    if pending:
        lines.append(pending)
        on_log(pending)


class DockerBackend:
    """Runs each trial phase in a new container of `image`, on the given GPUs or on the CPU."""

    def __init__(self, image: str, gpus: list[str] | None = None, mem_limit: str | None = None,
                 pids_limit: int = 1024, shm_size: str = "2g", cpus: float | None = None,
                 compile_cache: Path | None = None, run_name: str | None = None,
                 client: docker.DockerClient | None = None):
        self.client = client or connect()
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ArenaError(f"Docker image '{image}' not found; build it with `docker build -t {image} .` "
                             "or pass --image") from None
        self.image = image
        self.gpus = gpus
        self.mem_limit = mem_limit or DEFAULT_MEM_LIMIT
        self.pids_limit = pids_limit
        self.shm_size = shm_size
        self.cpus = cpus
        self.user = container_user()
        self.labels = {TRIAL_LABEL: "1", OWNER_LABEL: owner_id(), **({RUN_LABEL: run_name} if run_name else {})}
        self.compile_cache = compile_cache.resolve() if compile_cache else None
        if self.compile_cache:
            self.compile_cache.mkdir(parents=True, exist_ok=True)
            hand_over(self.compile_cache, self.user)
        remove_stale_containers(self.client)

    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="arena-trial-") as tmp:
            workdir = Path(tmp)
            stage_workdir(spec, workdir)
            workdir.chmod(0o755)  # the container user must enter it; trial files are no secret
            for path in workdir.iterdir():
                if path.is_file():
                    path.chmod(0o644)
            hand_over(workdir / "out", self.user)
            train = self.run_phase("train", spec, workdir, spec.train_timeout, on_log)
            evaluation = None
            if train.exit_code == 0 and not train.timed_out and not train.oom_killed:
                on_log("=== eval phase\n")
                evaluation = self.run_phase("eval", spec, workdir, spec.eval_timeout, on_log)
            return judge(train, evaluation, spec.train_limit)

    def run_phase(self, phase: str, spec: TrialSpec, workdir: Path, timeout: float, on_log: LogSink) -> PhaseRun:
        container = self.create(phase, spec, workdir)
        try:
            return self.watch(container, phase, timeout, on_log)
        finally:
            container.remove(force=True)  # never auto-removed: the state and logs are read first

    def create(self, phase: str, spec: TrialSpec, workdir: Path):
        data_dir = spec.data_dir.resolve()
        mounts = [Mount(WORKDIR, str(workdir), type="bind", read_only=True),
                  Mount(f"{WORKDIR}/out", str(workdir / "out"), type="bind", read_only=False)]
        # single files, so a phase cannot even list what it was not given
        mounts += [Mount(f"{DATA_DIR}/{name}", str(data_dir / name), type="bind", read_only=True)
                   for name in PHASE_DATA[phase]]
        # USER: the container user may have no passwd entry, and torch's default cache paths ask for a name
        env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp", "TMPDIR": "/tmp",
               "USER": "arena"}
        if self.compile_cache and phase == "train":  # eval runs an exported graph and compiles nothing
            mounts.append(Mount(CACHE_DIR, str(self.compile_cache), type="bind", read_only=False))
            env.update(TORCHINDUCTOR_CACHE_DIR=f"{CACHE_DIR}/inductor", TRITON_CACHE_DIR=f"{CACHE_DIR}/triton")
        if self.cpus:
            env["OMP_NUM_THREADS"] = str(max(1, int(self.cpus)))  # torch would start a thread per host core
        command = ["python3", "harness.py", phase, "--config", "run.json", "--data", DATA_DIR, "--out", "out"]
        try:
            # init: a tiny PID 1 reaps what the trial orphans; /tmp is memory, so it counts against mem_limit
            return self.client.containers.create(
                self.image, command, working_dir=WORKDIR, user=f"{self.user[0]}:{self.user[1]}",
                environment=env, mounts=mounts, labels={**self.labels, "arena.phase": phase},
                init=True, network_mode="none", read_only=True, tmpfs={"/tmp": "rw,exec,nosuid,nodev"},
                mem_limit=self.mem_limit, memswap_limit=self.mem_limit, pids_limit=self.pids_limit,
                shm_size=self.shm_size, nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
                cap_drop=["ALL"], security_opt=["no-new-privileges"], log_config=LOG_LIMIT,
                device_requests=[DeviceRequest(device_ids=self.gpus, capabilities=[["gpu"]])] if self.gpus else None)
        except docker.errors.APIError as e:
            raise ArenaError(f"Docker could not create the {phase} container: {e.explanation}") from None

    def watch(self, container, phase: str, timeout: float, on_log: LogSink) -> PhaseRun:
        """Start the container, stream its output, kill it at `timeout`, then read how it ended."""
        lines: list[str] = []
        start = time.monotonic()
        try:
            container.start()
        except docker.errors.APIError as e:
            if self.gpus:
                raise ArenaError(f"GPUs {','.join(self.gpus)} requested but the Docker engine cannot provide them "
                                 f"({e.explanation}); install the NVIDIA Container Toolkit and restart dockerd, "
                                 "or run without GPUs") from None
            raise ArenaError(f"Docker could not start the {phase} container: {e.explanation}") from None
        reader = threading.Thread(target=pump_logs, args=(container, lines, on_log), daemon=True)
        reader.start()
        timed_out = False
        try:
            container.wait(timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            if time.monotonic() - start < timeout:
                raise  # the engine went away: not the trial's fault, and not a timeout
            timed_out = True  # over the unix socket, a wait past its timeout ends as ConnectionError
            try:
                container.kill()
            except docker.errors.APIError:
                pass  # it exited just now, on its own
            container.wait()
        wall_seconds = time.monotonic() - start
        reader.join(timeout=10)
        container.reload()
        state = container.attrs["State"]
        return PhaseRun(exit_code=state["ExitCode"], timed_out=timed_out, wall_seconds=wall_seconds,
                        log=lines, oom_killed=bool(state["OOMKilled"]))
