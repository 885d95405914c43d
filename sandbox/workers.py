"""Running several trials at once: where each worker's trials run (Placement), and ending every sandbox
still running when arena stops (LiveSandboxes).

Each worker of the loop is a thread that runs one trial at a time on its placement: one GPU, or a share of
the CPU cores. The sandboxes themselves are child processes or containers; the thread only waits on them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxError


@dataclass(frozen=True)
class Placement:
    """Where one worker's trials run: these GPUs (None: what the backend sees) and these CPU cores
    (None: all of them)."""
    gpus: tuple[str, ...] | None = None
    cores: tuple[int, ...] | None = None
    name: str | None = None  # what the status shows when the device is not known here (a Ray node's)

    def label(self) -> str:
        if self.name:
            return self.name
        if self.gpus:
            return "gpu " + ",".join(self.gpus)
        if self.cores:  # a share need not be a range: hyperthread siblings sit together (by_physical_core)
            return ("cpu " if len(self.cores) == 1 else "cpus ") + ",".join(map(str, self.cores))
        return "-"


def cpu_placements(workers: int) -> list[Placement]:
    """`workers` placements that split this process's cores into contiguous, disjoint shares (one worker:
    all cores, unpinned). Raises SandboxError when there are fewer cores than workers."""
    if workers == 1:
        return [Placement()]
    cores = by_physical_core(sorted(os.sched_getaffinity(0)))
    if workers > len(cores):
        raise SandboxError(f"--workers {workers} on a CPU preset needs a core per worker, and this machine gives "
                           f"arena {len(cores)}; use --workers {len(cores)} or fewer")
    share, extra = divmod(len(cores), workers)
    placements, start = [], 0
    for index in range(workers):
        size = share + (1 if index < extra else 0)
        placements.append(Placement(cores=tuple(cores[start:start + size])))
        start += size
    return placements


def by_physical_core(cores: list[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> list[int]:
    """`cores` with hyperthread siblings side by side (Linux often numbers them i and i + N/2), so that
    contiguous shares hold whole physical cores instead of halves of every one."""
    def siblings(core: int) -> list[int]:
        try:
            return cpu_list((sysfs / f"cpu{core}" / "topology" / "thread_siblings_list").read_text())
        except OSError:
            return [core]

    ordered: list[int] = []
    for core in cores:
        ordered += [c for c in siblings(core) if c in cores and c not in ordered]
    return ordered + [c for c in cores if c not in ordered]


def cpu_list(text: str) -> list[int]:
    """The kernel's list of CPUs, e.g. "0-3,8", as numbers."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


@dataclass(frozen=True)
class NvidiaGpu:
    """A GPU as nvidia-smi lists it."""
    index: str
    uuid: str
    bus_id: str
    memory_gb: float | None  # None where nvidia-smi gives no size


@functools.cache
def nvidia_gpus() -> tuple[NvidiaGpu, ...]:
    """This machine's GPUs as nvidia-smi lists them. Raises SandboxError when it cannot tell (no NVIDIA driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise SandboxError("trials on GPUs are placed by nvidia-smi's GPU ids, and nvidia-smi is not on this "
                           "machine's PATH; install the NVIDIA driver's tools, or use a CPU preset")
    try:
        listing = subprocess.run([smi, "--query-gpu=index,uuid,pci.bus_id,memory.total",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError) as e:
        raise SandboxError(f"nvidia-smi could not list the GPUs ({e}); check the NVIDIA driver, or use a CPU "
                           "preset") from None
    gpus = []
    for line in listing.splitlines():
        row = [field.strip() for field in line.split(",")]
        if len(row) == 4 and all(row[:3]):
            mib = row[3]  # MiB; "[N/A]" on some boards
            gpus.append(NvidiaGpu(row[0], row[1], row[2], int(mib) * 2**20 / 1e9 if mib.isdigit() else None))
    return tuple(gpus)


def gpu_memory_gb(gpus: list[str]) -> float:
    """The smallest total memory, in GB, of the GPUs named (nvidia-smi indices or UUIDs); SandboxError when
    nvidia-smi cannot say."""
    try:
        listed = nvidia_gpus()
    except SandboxError as e:
        raise SandboxError(f"{e}; or give the GPUs' memory with --device-memory GB") from None
    sizes = {key: gpu.memory_gb for gpu in listed for key in (gpu.index, gpu.uuid)}
    found = [size for gpu in gpus if (size := sizes.get(gpu)) is not None]
    if not found:
        raise SandboxError(f"nvidia-smi lists no memory size for GPU {','.join(gpus)}; give it with --device-memory GB")
    return min(found)


def gpu_ids() -> dict[str, str]:
    """Each GPU's nvidia-smi index and UUID, to its UUID; SandboxError without nvidia-smi."""
    return {key: gpu.uuid for gpu in nvidia_gpus() for key in (gpu.index, gpu.uuid)}


def gpu_placements(gpus: list[str], workers: int | None, known: dict[str, str]) -> list[Placement]:
    """One placement per listed GPU (`known`: gpu_ids()); raises SandboxError for an unknown GPU, one listed
    twice (by index and UUID too), or a worker count that is not one per GPU."""
    missing = [gpu for gpu in gpus if gpu not in known]
    if missing:
        indices = sorted((g for g in known if g.isdigit()), key=int)
        raise SandboxError(f"--gpus {','.join(gpus)}: no GPU {', '.join(missing)} on this machine (it has "
                           f"{', '.join(indices) or 'none'}); list GPUs nvidia-smi shows")
    if len({known[gpu] for gpu in gpus}) != len(gpus):
        raise SandboxError(f"--gpus {','.join(gpus)} lists a GPU twice; each worker needs a GPU of its own")
    if workers is not None and workers != len(gpus):
        raise SandboxError(f"--workers {workers} with --gpus {','.join(gpus)}: a worker runs on each listed GPU; "
                           f"list {workers} GPUs or leave --workers out")
    return [Placement(gpus=(gpu,)) for gpu in gpus]


@contextlib.contextmanager
def pinned_to(cores: tuple[int, ...] | None) -> Iterator[None]:
    """Pin the calling thread to `cores` while a child is started: Linux keeps affinity per thread, and a child
    inherits its starting thread's, so only the sandbox started here runs on those cores."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class LiveSandboxes:
    """The sandboxes one loop has running, each with a way to end it. When the loop stops (Ctrl-C, SIGTERM,
    an error) it ends them all, and any sandbox a worker starts after that is ended as it registers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kills: dict[int, Callable[[], None]] = {}
        self._next = 0
        self.closed = False

    @contextlib.contextmanager
    def holding(self, kill: Callable[[], None]) -> Iterator[None]:
        with self._lock:
            key, self._next = self._next, self._next + 1
            self._kills[key] = kill
            closed = self.closed
        if closed:
            kill()
        try:
            yield
        finally:
            with self._lock:
                self._kills.pop(key, None)

    def end_all(self) -> None:
        with self._lock:
            self.closed = True
            kills = list(self._kills.values())
        for kill in kills:
            with contextlib.suppress(Exception):  # it may have ended on its own just now
                kill()


_live: ContextVar[LiveSandboxes | None] = ContextVar("arena_live_sandboxes", default=None)


@contextlib.contextmanager
def collected_by(live: LiveSandboxes) -> Iterator[None]:
    """Register every sandbox started in this thread (in this context) with `live`."""
    token = _live.set(live)
    try:
        yield
    finally:
        _live.reset(token)


@contextlib.contextmanager
def registered(kill: Callable[[], None]) -> Iterator[None]:
    """A sandbox that `kill` ends, registered with the loop that started it (if one collects them)."""
    live = _live.get()
    if live is None:
        yield
        return
    with live.holding(kill):
        yield
