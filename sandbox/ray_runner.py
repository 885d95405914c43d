"""Trials on a Ray cluster: each trial a Ray task that needs one GPU (one CPU on a CPU preset), anywhere in the
cluster, run there by the same backend as on one host (bubblewrap, Docker, ...).

What travels with a task: the backend itself (pickled once per run; a Docker backend reconnects to the
node's engine), the trial's train.py and the harness files (their hash is checked on the node as on one
host), and the dataset's files, put into Ray's object store once per run and written once per node into a
cache keyed by their content. Output lines come back through a Ray queue as the trial prints them; the
outcome returns as the task's result. The compile cache stays on the head: a remote trial compiles cold.

A task whose worker or node dies is retried once by Ray (max_retries=1); a second loss makes the trial's
outcome `lost`, which the loop records like any failure: never dropped, never silently re-run. Nodes must
have arena installed at the same path as the head (Ray clusters run one image), since the backend runs
the same Python and sandbox binaries there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.outcome import Outcome, Status
from sandbox.phases import PHASE_DATA
from sandbox.trial import LogSink, TrialRunner, TrialSpec
from sandbox.workers import Placement, registered

CONNECT_SECONDS = 10.0   # a Ray address that does not answer within this is refused
FLUSH_SECONDS = 0.25     # output lines are sent back in batches at least this often
FLUSH_LINES = 200
CACHE_ENV = "ARENA_RAY_CACHE"  # where a node keeps the datasets trials were sent (default ~/.cache/...)


def check_address(address: str) -> None:
    """Refuse, in one line, an address nothing answers at (ray.init would wait a long time on it)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise SandboxError(f"--ray-address '{address}' is not HOST:PORT; give the head's address as `ray start "
                           "--head` printed it, e.g. 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise SandboxError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with `ray start "
                           "--head`, or check the address") from None


class RayRunner:
    """A TrialRunner that runs each trial as a Ray task on the cluster, by `backend`."""

    def __init__(self, backend: TrialRunner, address: str | None, gpu: bool):
        try:
            import ray
        except ImportError:
            raise SandboxError("--executor ray needs Ray: pip install 'autoresearch-arena[ray]' (or ray>=2.40) on "
                               "this machine and on every node") from None
        if address:
            check_address(address)
        try:
            # no address: RAY_ADDRESS, else a cluster `ray start` made on this machine, else a new local one
            if not ray.is_initialized():  # (a process joins one cluster)
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as e:
            where = address or "RAY_ADDRESS or this machine"
            raise SandboxError(f"cannot join a Ray cluster at {where} ({' '.join(str(e).split())[:200]}); start "
                               "one with `ray start --head` and pass --ray-address HOST:PORT") from None
        self.isolation = backend.isolation
        self.resource = "GPU" if gpu else "CPU"
        self.backend_ref = ray.put(backend)
        self.task = ray.remote(run_remote).options(
            num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1, max_retries=1, retry_exceptions=False)
        self._lock = threading.Lock()
        self._data: dict[Path, tuple[str, dict[str, Any]]] = {}  # data_dir -> (content key, name -> object ref)

    def capacity(self) -> int:
        """Trials the cluster can run at once: its GPUs (or CPUs on a CPU preset); SandboxError for none."""
        import ray

        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]  # untyped in ray
        count = int(resources.get(self.resource, 0))
        if count == 0:
            raise SandboxError(f"the Ray cluster has no {self.resource} for trials (its resources: "
                               f"{', '.join(f'{k} {v:g}' for k, v in sorted(resources.items()) if ':' not in k)}); "
                               f"start nodes with {self.resource}s (`ray start --address ... --num-"
                               f"{self.resource.lower()}s N`)")
        return count

    def placed(self, placement: Placement) -> RayRunner:
        return self  # Ray places each trial on a node and device of its choosing

    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome:
        import ray
        from ray.util.queue import Empty, Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        key, data = self._shipped_data(spec.data_dir)
        harness = {name: (spec.harness_dir / name).read_bytes() for name in spec.harness_files}
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        lines = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})  # lost only with arena's node
        ref = self.task.remote(self.backend_ref, replace(spec, compile_cache=None, trusted=False), harness,
                               key, data, lines)

        def drain() -> None:
            with contextlib.suppress(Empty):
                for batch in lines.get_nowait_batch(lines.qsize()):
                    for line in batch:
                        on_log(line)

        try:
            # a stopping loop cancels the task gently: the backend's own clean-up (killing the sandbox,
            # removing the container) runs on the node
            with registered(lambda: ray.cancel(ref)):
                while not ray.wait([ref], timeout=FLUSH_SECONDS)[0]:
                    drain()
            drain()
            try:
                outcome: Outcome = ray.get(ref)
                return outcome
            except ray.exceptions.TaskCancelledError:
                return Outcome(Status.CRASH, "cancelled: arena stopped")  # the loop is ending; never recorded
            except ray.exceptions.RayTaskError as e:  # raised by the backend on the node: its sandbox cannot run
                raise SandboxError(f"on a Ray node: {' '.join(str(e.cause or e).split())[:300]}") from None
            except ray.exceptions.RayError as e:  # the worker or node died, twice (Ray retried once)
                reason = f"lost on the Ray cluster, also when retried: {type(e).__name__}"
                on_log(f"[arena: {reason}]\n")
                return Outcome(Status.LOST, reason)
        finally:
            with contextlib.suppress(Exception):
                ray.kill(lines.actor)  # type: ignore[arg-type]  # a handle, typed as either in ray

    def _shipped_data(self, data_dir: Path) -> tuple[str, dict[str, Any]]:
        """The dataset's files in the object store, once per run, with a key naming their content."""
        import ray

        with self._lock:
            if data_dir not in self._data:
                names = sorted({name for names in PHASE_DATA.values() for name in names
                                if (data_dir / name).is_file()})
                digest = hashlib.sha256()
                refs = {}
                for name in names:
                    content = (data_dir / name).read_bytes()
                    digest.update(name.encode() + hashlib.sha256(content).digest())
                    refs[name] = ray.put(content)
                self._data[data_dir] = (digest.hexdigest()[:24], refs)
            return self._data[data_dir]


def node_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "autoresearch-arena" / "ray-data"))


def materialize(key: str, data: dict[str, Any]) -> Path:
    """The dataset on this node, written once (by whichever trial gets here first; renames make it atomic)."""
    import ray

    target = node_cache() / key
    if not all((target / name).is_file() for name in data):
        target.mkdir(parents=True, exist_ok=True)
        for name, ref in data.items():
            if not (target / name).is_file():
                fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
                with os.fdopen(fd, "wb") as f:
                    f.write(ray.get(ref))
                os.chmod(tmp, 0o644)  # read by the trial's own user in the sandbox
                os.replace(tmp, target / name)
    return target


class LineShipper:
    """Sends a trial's output lines to the head in batches: at least every FLUSH_SECONDS (a thread sees to
    it while the trial is quiet), and at once past FLUSH_LINES lines. A queue that is gone (arena's node
    lost) costs the output, never the trial."""

    def __init__(self, lines: Any):
        self.lines = lines
        self.batch: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.timer = threading.Thread(target=self._tick, daemon=True)
        self.timer.start()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.batch.append(line)
            if len(self.batch) >= FLUSH_LINES:
                self._send()

    def close(self) -> None:
        self.done.set()
        self.timer.join()
        with self.lock:
            self._send()

    def _tick(self) -> None:
        while not self.done.wait(FLUSH_SECONDS):
            with self.lock:
                self._send()

    def _send(self) -> None:
        if self.batch:
            with contextlib.suppress(Exception):
                self.lines.put(self.batch)
            self.batch = []


def run_remote(backend: TrialRunner, spec: TrialSpec, harness: dict[str, bytes], key: str, data: dict[str, Any],
               lines: Any) -> Outcome:
    """On a Ray node: the trial, run by the head's backend on the device Ray gave this task."""
    import ray

    ship = LineShipper(lines)
    gpus = ray.get_gpu_ids()
    placement = Placement(gpus=tuple(str(g) for g in gpus) if gpus else None)
    ship(f"=== on Ray node {ray.get_runtime_context().get_node_id()[:12]} ({socket.gethostname()}), worker pid "
         f"{os.getpid()}" + (f", GPU {','.join(placement.gpus or ())}" if gpus else "") + "\n")
    with tempfile.TemporaryDirectory(prefix="arena-ray-harness-") as tmp:
        for name, content in harness.items():
            (Path(tmp) / name).write_bytes(content)
        local = replace(spec, harness_dir=Path(tmp), data_dir=materialize(key, data))
        try:
            return backend.placed(placement).run(local, ship)
        finally:
            ship.close()
