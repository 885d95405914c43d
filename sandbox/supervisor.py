"""The first process of every phase sandbox: runs the harness, measures it from outside, and ends it.

    python3 supervisor.py --deadline SECONDS [--user UID:GID] [--sandboxed] [--memory BYTES] [--disk PATH]...
                          [--processes-limited] [--seccomp FILE] -- COMMAND...

Standard library only, and no trial code ever runs in this process. It starts COMMAND with its output
on a pipe, relays its lines (each cut at MAX_LINE_BYTES) as they come up to RELAY_BYTES or RELAY_LINES, then
keeps only the last ones and relays those when the phase ends, and takes the time of the first ARENA_READY line
(printed by the harness before it imports any trial code). When COMMAND exits, or at the deadline,
every other process of the phase is killed (with --sandboxed, every process of its pid namespace;
unisolated, every descendant), so nothing the trial started outlives the phase. Then it prints one line of its own:

    ARENA_PHASE {"exit_code": 0, "signal": null, "ready": 2.1, "end": 35.0, "deadline": false,
                 "max_rss_kb": ..., "gpu_peak_bytes": ..., "memory_exceeded": false, "disk": null,
                 "failed_to_start": null}

with times in seconds since it started. `failed_to_start` says why COMMAND could not be started (a user, a
limit or the filter the kernel refused; it then never ran). `max_rss_kb` is the largest resident set of any
process of the phase, as the kernel counted it; `gpu_peak_bytes` the most GPU memory in use beyond what was in use at
its start, sampled five times a second through NVML (null without an NVIDIA driver). With --memory, the
resident memory of all the phase's processes together is read ten times a second, with, in a sandbox,
the files in its own tmpfs mounts (/tmp, /dev, /dev/shm) and its System V shared memory; past BYTES the
whole phase is killed at once and `memory_exceeded` says so (pages that processes share, or map from
those files, count once per process and once per file: the count errs on the side of the host). Only a line
printed by a supervisor that then exits with code 0 counts, and nothing of the trial is alive by then to
print after it.

Each --disk PATH is a directory the phase may write to on the host's disk. Once a second the files under
them are added up (blocks in use, each file at least one block): past what was there at the start plus
half the space their file systems had free then, or past MAX_FILES files, or where files cannot be counted (a
directory it cannot read, a path past PATH_MAX), the phase is killed at once and `disk` says "exceeded". A file
deleted and held open is in no directory; it shows in the file system's free space, and a file system down to a
twentieth of its free space or free inodes at the start ends the phase too, whoever filled it (`disk` "full"):
the host's disk never fills.

As root (in a container, or under bubblewrap run by root) it hands COMMAND to `--user` and keeps only
the rights to kill it and to read any directory (to count files in those the trial locked); otherwise
COMMAND runs as the same user, and the supervisor makes itself
non-dumpable so the trial can neither trace it nor read its memory. With --seccomp, FILE holds a classic BPF
seccomp program (sandbox/seccomp.py) that COMMAND and everything it starts run under, on top of any filter the
sandbox already has: the supervisor itself is not filtered.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import resource
import select
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

READY_LINE = b"ARENA_READY"
PHASE_PREFIX = "ARENA_PHASE "
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
BPF_INSTRUCTION_BYTES = 8
MAX_PROCESSES = 4096  # of a phase: a fork bomb fails here instead of taking the host's pids
OOM_SCORE_ADJ = 1000
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MEMORY_CHECK_SECONDS = 0.1
DISK_CHECK_SECONDS = 1.0
FULL_FRACTION = 20  # a file system down to 1/20 of its free space at the phase's start is full
MAX_FILES = 200_000  # in a phase's writable directories (a compile cache holds a few thousand)
BLOCK_BYTES = 4096
MAX_LINE_BYTES = 64 << 10  # of a line relayed; the rest of a longer one is dropped (arena reads whole lines)
LINE_CUT = b" [arena: line cut]"
# Relayed as it comes; past either, only the last lines, when the phase ends. Reading a flood costs arena (and
# Docker's engine) CPU that neighbouring trials share, holds this process in writes while it should watch, and
# keeps Docker's log reader behind the container's end; below arena's 32 MB log limit, so the log shows the end.
RELAY_BYTES, RELAY_LINES = 16 << 20, 200_000
TAIL_LINES, TAIL_BYTES = 2000, 1 << 20  # what is held back past the relay limits: how the phase ended


def prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def install_filter(program: bytes) -> None:
    """Put this process, and all it will start, under the seccomp `program`; OSError if the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # what an unprivileged process needs to add a filter
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(error)}")
    fprog = SockFprog(len(program) // BPF_INSTRUCTION_BYTES, program)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"the kernel refused the seccomp filter: {os.strerror(error)}")


@dataclass(frozen=True)
class Options:
    deadline: float
    user: tuple[int, int] | None
    sandboxed: bool
    memory: int | None
    disks: tuple[str, ...]
    processes_limited: bool  # a cgroup of the phase's own holds it to MAX_PROCESSES
    seccomp: bytes | None  # the filter COMMAND runs under
    command: list[str]


def parse(argv: list[str]) -> Options:
    if "--" not in argv:
        sys.exit("usage: supervisor.py --deadline SECONDS [--user UID:GID] [--sandboxed] [--memory BYTES] "
                 "[--disk PATH]... [--processes-limited] [--seccomp FILE] -- COMMAND...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    user = None
    if "--user" in options:
        uid, gid = options[options.index("--user") + 1].split(":")
        user = (int(uid), int(gid))
    memory = int(options[options.index("--memory") + 1]) if "--memory" in options else None
    disks = tuple(options[i + 1] for i, option in enumerate(options) if option == "--disk")
    seccomp = None
    if "--seccomp" in options:
        with open(options[options.index("--seccomp") + 1], "rb") as f:
            seccomp = f.read()
    return Options(float(options[options.index("--deadline") + 1]), user, "--sandboxed" in options, memory, disks,
                   "--processes-limited" in options, seccomp, command)


def start(options: Options) -> tuple[int, int, str | None]:
    """Fork COMMAND with its output on a pipe: as --user, under its limits and filter. Its pid, the pipe, and
    why it could not be started (told on a pipe that its exec closes, so no trial code can write there)."""
    command, user = options.command, options.user
    read_end, write_end = os.pipe()
    failed_read, failed_write = os.pipe()  # both close on exec
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            for fd in (read_end, write_end, failed_read):
                os.close(fd)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(OOM_SCORE_ADJ))  # short of memory, the kernel picks trial code before arena
            if user is not None:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            if not options.processes_limited:  # the user's limit, counted over the host: the best without a cgroup
                # after setuid: set before, a user already at it (other trials' threads) would fail the exec
                hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
                limit = MAX_PROCESSES if hard == resource.RLIM_INFINITY else min(MAX_PROCESSES, hard)
                resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
            if options.seccomp is not None:  # last: the calls above need nothing it denies, and the trial runs next
                install_filter(options.seccomp)
            os.execvp(command[0], command)
        except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
            # short of processes, memory or files for the moment (trials may have used them up): the trial's
            # crash, as its own fork would be; anything else is the sandbox's
            transient = isinstance(e, OSError) and e.errno in (errno.EAGAIN, errno.ENOMEM, errno.ENFILE, errno.EMFILE)
            with contextlib.suppress(BaseException):
                os.write(2 if transient else failed_write, f"cannot start {command[0]}: {e}"[:1000].encode())
        os._exit(127)
    os.close(write_end)
    os.close(failed_write)
    with os.fdopen(failed_read, "rb") as failed:  # until the exec, or the child's end
        failure = failed.read().decode(errors="replace")
    return pid, read_end, failure or None


def parents() -> dict[int, int]:
    """Every process we can see, to its parent's pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            found[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return found


def children() -> list[int]:
    """Our child processes; as a subreaper, every orphaned descendant becomes one of them."""
    mine = os.getpid()
    return [pid for pid, parent in parents().items() if parent == mine]


def resident_bytes(sandboxed: bool) -> int:
    """The resident memory of the phase's processes together: every process of our pid namespace but ourselves
    and its init (sandboxed), or our descendants (unisolated)."""
    me = os.getpid()
    tree = parents()
    if sandboxed:
        phase = [pid for pid in tree if pid not in (me, 1)]
    else:
        phase, frontier = [], [me]
        while frontier:
            parent = frontier.pop()
            below = [pid for pid, ppid in tree.items() if ppid == parent]
            phase += below
            frontier += below
    total = 0
    for pid in phase:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_BYTES
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


PRIVATE_TMPFS = ("/tmp", "/dev", "/dev/shm")  # in a sandbox, file systems in memory that only this phase sees


def in_memory_files_bytes() -> int:
    """Memory a sandboxed phase holds outside its processes' resident sets: files in its own tmpfs
    mounts (each counted once) and its IPC namespace's System V shared memory."""
    total, seen = 0, set()
    for mount in PRIVATE_TMPFS:
        try:
            device, usage = os.stat(mount).st_dev, os.statvfs(mount)
        except OSError:
            continue
        if device not in seen:
            seen.add(device)
            total += (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    try:
        with open("/proc/sysvipc/shm") as f:
            header, *segments = f.read().splitlines()
        column = header.split().index("rss")
        total += sum(int(line.split()[column]) for line in segments)
    except (OSError, ValueError, IndexError):
        pass
    return total


def memory_in_use(sandboxed: bool) -> int:
    """What --memory limits: the processes' resident memory and, in a sandbox, its in-memory files."""
    return resident_bytes(sandboxed) + (in_memory_files_bytes() if sandboxed else 0)


def kill_everything_else(sandboxed: bool) -> None:
    """SIGKILL the rest of the phase: in our own pid namespace every process we may signal (kill(-1)
    spares only ourselves and PID 1); otherwise, unisolated, only our descendants."""
    if sandboxed:
        with contextlib.suppress(ProcessLookupError):  # nothing else was left
            os.kill(-1, signal.SIGKILL)
        return
    for pid in children():
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)


def gpu_keys(env: Mapping[str, str]) -> list[int | str] | None:
    """The phase's GPUs as NVML finds them (None: every GPU): bubblewrap names them by UUID; else the entries of
    CUDA_VISIBLE_DEVICES, each an index (NVML numbers GPUs in PCI order, as the phase's env) or a UUID."""
    uuids: list[int | str] = [u for u in env.get("ARENA_GPU_UUIDS", "").split(",") if u]
    if uuids:
        return uuids
    if "CUDA_VISIBLE_DEVICES" not in env:
        return None
    visible = [entry.strip() for entry in env["CUDA_VISIBLE_DEVICES"].split(",") if entry.strip()]
    return [int(entry) if entry.isdecimal() else entry for entry in visible]


class GpuMemory:
    """Peak memory in use on the GPUs the phase may use, read through NVML (ctypes, no package); nothing
    when there is no NVIDIA driver. A GPU runs one trial at a time, so what it uses is the trial's."""

    class Info(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self) -> None:
        self.handles: list[ctypes.c_void_p] = []
        self.base = 0
        self.peak: int | None = None
        try:
            self.nvml = ctypes.CDLL("libnvidia-ml.so.1")
            count = ctypes.c_uint()
            if self.nvml.nvmlInit_v2() or self.nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)):
                return
        except (OSError, AttributeError):
            return  # no driver: a CPU phase
        keys = gpu_keys(os.environ)
        for key in range(count.value) if keys is None else keys:
            handle = ctypes.c_void_p()
            found = (self.nvml.nvmlDeviceGetHandleByUUID(key.encode(), ctypes.byref(handle)) if isinstance(key, str)
                     else self.nvml.nvmlDeviceGetHandleByIndex_v2(key, ctypes.byref(handle)))
            if found == 0:
                self.handles.append(handle)
        if self.handles:
            self.base = self.used()
            self.peak = 0

    def used(self) -> int:
        total = 0
        for handle in self.handles:
            info = self.Info()
            if self.nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info)) == 0:
                total += info.used
        return total

    def sample(self) -> None:
        if self.peak is not None:
            self.peak = max(self.peak, self.used() - self.base)


class DiskGuard:
    """The phase's writable directories: what their files take, against half the space free at the start;
    and their file systems' free space and free inodes, against a twentieth of each."""

    def __init__(self, paths: tuple[str, ...]):
        self.paths = paths
        self.floors: dict[str, tuple[int, int]] = {}  # a path on each file system -> its (bytes, inodes) floor
        devices = set()
        for path in paths:
            with contextlib.suppress(OSError):  # not there: nothing to write to
                device = os.stat(path).st_dev
                if device not in devices:
                    devices.add(device)
                    free, inodes = free_space(path)
                    self.floors[path] = (free // FULL_FRACTION, inodes // FULL_FRACTION)
        # what arena staged there (a copy of the compile cache) is not the phase's writing
        share = min((floor for floor, _ in self.floors.values()), default=0) * FULL_FRACTION // 2
        self.allowance = share + (written(paths) or 0)

    def verdict(self) -> str | None:
        """"exceeded": the phase's files took more than its share, or hid from the count; "full": a file system
        is nearly out of space or inodes."""
        if self.floors and written(self.paths, self.allowance) is None:
            return "exceeded"
        for path, floors in self.floors.items():
            with contextlib.suppress(OSError):
                if any(free < floor for free, floor in zip(free_space(path), floors, strict=True)):
                    return "full"
        return None


def written(paths: tuple[str, ...], allowance: float = math.inf) -> int | None:
    """The disk space the files under `paths` take (each at least a block; hard links count each time), or
    None once it passes `allowance`, there are more than MAX_FILES of them, or a directory cannot be listed:
    a path past PATH_MAX, or one a supervisor that is not root may not read (files there would go uncounted)."""
    total, files, pending = 0, 0, list(paths)
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone meanwhile: nothing
        except OSError:
            return None
        try:
            with entries:
                for entry in entries:
                    files += 1
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    total += max(info.st_blocks * 512, BLOCK_BYTES)
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(entry.path)
                    if total > allowance or files > MAX_FILES:
                        return None
        except OSError:  # a name past PATH_MAX, a directory that cannot be read: its files would go uncounted
            return None
    return total


def free_space(path: str) -> tuple[int, int]:
    """Bytes and inodes free to a user that is not root (inodes: 0 where the file system sets no count)."""
    usage = os.statvfs(path)
    return usage.f_bavail * usage.f_frsize, usage.f_favail if usage.f_files else 0


class HeldBack:
    """The output past the relay limits: its last lines, and a count of those left out."""

    def __init__(self) -> None:
        self.lines: deque[bytes] = deque()
        self.bytes = 0
        self.partial = b""  # a line not ended yet (at most MAX_LINE_BYTES, cut by Watch.bounded)
        self.left_out_lines = self.left_out_bytes = 0

    def add(self, data: bytes) -> None:
        *ended, self.partial = (self.partial + data).split(b"\n")
        for line in ended:
            self.lines.append(line + b"\n")
            self.bytes += len(line) + 1
        while len(self.lines) > TAIL_LINES or self.bytes > TAIL_BYTES:
            line = self.lines.popleft()
            self.bytes -= len(line)
            self.left_out_lines += 1
            self.left_out_bytes += len(line)

    def release(self) -> bytes:
        """A line that says what was left out, then the last lines (nothing if nothing was held back)."""
        if not (self.lines or self.partial):
            return b""
        notice = (f"\n[arena: {self.left_out_lines} lines ({self.left_out_bytes / 2**20:.1f} MB) of output left out "
                  f"after the first {RELAY_BYTES >> 20} MB or {RELAY_LINES:,} lines; the last {len(self.lines)} "
                  "follow]\n")
        return notice.encode() + b"".join(self.lines) + self.partial


CONTINUED = threading.Event()  # set by SIGCONT: the supervisor had been stopped


class Watch:
    """The phase as the supervisor sees it: output relayed, the ready line timed, processes reaped."""

    def __init__(self, child: int, pipe: int, origin: float, gpu: GpuMemory, memory: int | None, sandboxed: bool,
                 disk: DiskGuard):
        self.child, self.pipe, self.origin, self.gpu = child, pipe, origin, gpu
        self.memory, self.sandboxed, self.disk_guard = memory, sandboxed, disk
        self.memory_exceeded = False
        self.stopped = False  # a process of the phase stopped the supervisor (SIGSTOP), halting its limits
        self.disk: str | None = None
        self.next_check = self.next_disk_check = 0.0
        self.out = sys.stdout.buffer
        self.ready: float | None = None
        self.end: float | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.max_rss = 0
        self.failed_to_start: str | None = None  # the phase's sandbox, not its trial, is at fault
        self.pending = b""  # the tail of the last chunk, so a ready line split across two reads is found
        self.line_bytes = 0  # of the line being relayed, so far
        self.relayed = self.relayed_lines = 0
        self.held = HeldBack()
        self.open = True

    def now(self) -> float:
        return time.monotonic() - self.origin

    def relay(self, timeout: float) -> None:
        readable, _, _ = select.select([self.pipe], [], [], timeout)
        if not readable:
            return
        chunk = os.read(self.pipe, 1 << 16)
        if not chunk:
            self.open = False
            return
        if self.ready is None and READY_LINE in self.pending + chunk:
            self.ready = self.now()
        self.pending = (self.pending + chunk)[-len(READY_LINE):]
        head, rest = self.within_limits(self.bounded(chunk))
        if rest:
            self.held.add(rest)
        if head:
            self.out.write(head)
            self.out.flush()

    def within_limits(self, data: bytes) -> tuple[bytes, bytes]:
        """`data` split into what may still be relayed now and what is past the limits (from a line's start
        where the line limit falls in it; the byte limit is passed by at most one chunk)."""
        if self.relayed >= RELAY_BYTES or self.relayed_lines >= RELAY_LINES:
            return b"", data
        room, ended, cut = RELAY_LINES - self.relayed_lines, data.count(b"\n"), len(data)
        if ended > room:
            cut = 0
            for _ in range(room):
                cut = data.index(b"\n", cut) + 1
        self.relayed += cut
        self.relayed_lines += min(room, ended)
        return data[:cut], data[cut:]

    def bounded(self, chunk: bytes) -> bytes:
        """`chunk` with each line cut at MAX_LINE_BYTES: a line with no end could fill arena's memory."""
        parts = chunk.split(b"\n")
        kept = bytearray()
        for number, part in enumerate(parts):
            kept += part[:max(MAX_LINE_BYTES - self.line_bytes, 0)]
            self.line_bytes += len(part)
            if number < len(parts) - 1:  # the line ends here
                kept += (LINE_CUT if self.line_bytes > MAX_LINE_BYTES else b"") + b"\n"
                self.line_bytes = 0
        return bytes(kept)

    def check_memory(self) -> None:
        """Past the memory limit, end the phase now: every process of it, the harness first."""
        if self.memory is None or self.memory_exceeded or self.end is not None or self.now() < self.next_check:
            return
        self.next_check = self.now() + MEMORY_CHECK_SECONDS
        if memory_in_use(self.sandboxed) > self.memory:
            self.memory_exceeded = True
            self.stop()

    def check_stopped(self) -> None:
        """Continued after a stop: a SIGSTOP, which no process can ignore, came from the phase (arena sends none;
        without root it runs as our user). The limits were not watched meanwhile: end the phase now."""
        if CONTINUED.is_set() and not self.stopped and self.end is None:
            self.stopped = True
            self.stop()

    def check_disk(self) -> None:
        """Past the phase's share of the disk, or with the disk nearly full, end it now."""
        if self.disk is not None or self.end is not None or self.now() < self.next_disk_check:
            return
        self.next_disk_check = self.now() + DISK_CHECK_SECONDS
        self.disk = self.disk_guard.verdict()
        if self.disk is not None:
            self.stop()

    def stop(self) -> None:
        """Every process of the phase, the harness first."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, signal.SIGKILL)
        kill_everything_else(self.sandboxed)

    def reaped(self, pid: int, status: int, usage: resource.struct_rusage) -> None:
        self.max_rss = max(self.max_rss, usage.ru_maxrss)
        if pid == self.child:
            self.end = self.now()
            if os.WIFEXITED(status):
                self.exit_code = os.WEXITSTATUS(status)
            else:
                self.signal = os.WTERMSIG(status)

    def reap(self) -> None:
        """Collect whatever has exited: the harness, and orphans passed to us."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped(pid, status, usage)

    def report(self, deadline: bool) -> str:
        return PHASE_PREFIX + json.dumps({"exit_code": self.exit_code, "signal": self.signal, "ready": self.ready,
                                          "end": self.end, "deadline": deadline, "max_rss_kb": self.max_rss,
                                          "gpu_peak_bytes": self.gpu.peak, "memory_exceeded": self.memory_exceeded,
                                          "disk": self.disk, "failed_to_start": self.failed_to_start,
                                          "stopped": self.stopped})


def main(argv: list[str]) -> int:
    options = parse(argv)
    origin = time.monotonic()
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the trial come to us, so we reap and count them
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTSTP, signal.SIGTTIN,
                signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCONT, lambda signum, frame: CONTINUED.set())
    gpu = GpuMemory()  # before the harness starts: what the GPUs already use is not the trial's
    disk = DiskGuard(options.disks)
    deadline, sandboxed = options.deadline, options.sandboxed
    child, pipe, failure = start(options)
    watch = Watch(child, pipe, origin, gpu, options.memory, sandboxed, disk)
    watch.failed_to_start = failure
    tick = 0.2 if options.memory is None else MEMORY_CHECK_SECONDS
    hit_deadline = False
    while watch.open or watch.end is None:
        remaining = deadline - watch.now()
        if remaining <= 0:
            hit_deadline = True
            break
        if watch.open:
            watch.relay(min(remaining, tick))
        else:
            time.sleep(0.05)
        watch.gpu.sample()
        watch.check_stopped()
        watch.check_memory()
        watch.check_disk()
        watch.reap()
        if watch.end is not None:
            kill_everything_else(sandboxed)  # the harness is done: whatever it left behind goes now
    while True:  # killed processes' own children come to us in turn, until none is left
        kill_everything_else(sandboxed)
        try:
            watch.reaped(*os.wait4(-1, 0))
        except ChildProcessError:
            break
    watch.out.write(watch.held.release() + ("\n" + watch.report(hit_deadline) + "\n").encode())
    watch.out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
