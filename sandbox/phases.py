"""What a phase of a trial sees, described once for every backend.

Every sandbox, whatever runs it, shows a phase the same tree and nothing else of the host:

    /trial        read-only: the harness files (fresh copies, hash-checked), supervisor.py, and the
                  run.json that arena wrote (in Docker, seccomp.bpf too: the supervisor's filter);
                  the train phase also gets the trial's train.py
    /trial/out    the phase's own output directory, the only writable place besides a private /tmp
    /trial/in     eval phase only, read-only: the exported model, copied out of the train phase
    /data         read-only, one file each: train.bin and meta.json for the train phase;
                  val.bin, token_bytes.npy and meta.json for the eval phase
    /cache        train phase only, writable: a private copy of the run's trusted compile cache

A phase is staged in a fresh host directory (`Phase.root`) under a neutral temporary name, so even
the mount table shows no path of the user's. Data files are hard links there when the dataset lives on
the same filesystem (otherwise they are mounted from where they are).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.outcome import Reported

TRIAL = "/trial"
OUT = "/trial/out"
IN = "/trial/in"
DATA = "/data"
CACHE = "/cache"
SUPERVISOR = Path(__file__).with_name("supervisor.py")
SECCOMP_FILE = "seccomp.bpf"
PHASE_DATA = {"train": ("train.bin", "meta.json"),
              "eval": ("val.bin", "token_bytes.npy", "meta.json")}
MODEL_FILES = ("graph.json", "weights.safetensors")  # what crosses from the train phase to the eval phase
MAX_MODEL_BYTES = 64 << 30
MAX_STATS_BYTES = 1 << 16
NOBODY = 65534
# a root supervisor's: hand over, count the phase's files (in directories the trial took its permissions from
# too), then end it; the trial's user has none of them
SUPERVISOR_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_READ_SEARCH")
OUTER_GRACE_SECONDS = 30.0  # past a phase's own deadline: when the backend ends the whole sandbox itself
GPU_UUIDS_ENV = "ARENA_GPU_UUIDS"  # the phase's GPUs, for the supervisor's memory count (see supervisor.py)
MEMORY_LIMIT_ENV = "ARENA_MEMORY_LIMIT"  # the phase's memory limit in bytes, for train_template/memory_check.py


MEMORY_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}  # as docker reads --memory


def memory_bytes(text: str) -> int:
    """'64g', '512m', '1.5g' or plain bytes, in bytes; SandboxError in one line otherwise."""
    cleaned = text.strip().lower().removesuffix("b")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:].isalpha() else (cleaned, "")
    try:
        value = float(number) * MEMORY_UNITS[unit]
    except (ValueError, KeyError):
        value = 0.0
    if not 2**20 <= value < math.inf:
        raise SandboxError(f"memory size {text!r} is not one: write a number with a unit, e.g. 64g or 512m "
                           "(at least 1m)")
    return int(value)


def harness_hash(directory: Path, files: tuple[str, ...]) -> str:
    """One digest over the harness files, recorded with every result and checked before every phase."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes())
    return digest.hexdigest()[:16]


def sandbox_user() -> tuple[int, int]:
    """Who trial code runs as: the user running arena, but never root (root's arena hands trials to nobody)."""
    uid, gid = os.getuid(), os.getgid()
    return (uid, gid) if uid != 0 else (NOBODY, NOBODY)


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    writable: bool = False


@dataclass
class Phase:
    """One staged phase: its host directory, what it mounts where, and how to start it."""
    name: str                       # "train" or "eval"
    root: Path
    deadline: float                 # seconds the supervisor lets the phase run, from its start
    data_files: dict[str, Path] = field(default_factory=dict)  # name in /data -> host file
    env: dict[str, str] = field(default_factory=dict)
    memory_limit: int | None = None  # bytes all its processes may hold together, enforced by the supervisor
    processes_limited: bool = False  # its own cgroup (Docker's or arena's) limits its processes, not a user-wide rlimit
    filtered: bool = False  # the supervisor puts the harness under the seccomp program in SECCOMP_FILE

    @property
    def trial_dir(self) -> Path:
        return self.root / "trial"

    @property
    def out_dir(self) -> Path:
        return self.trial_dir / "out"

    @property
    def in_dir(self) -> Path:
        return self.trial_dir / "in"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def kill_after(self) -> float:
        """Seconds after which the backend ends the sandbox itself, should its supervisor not have."""
        return self.deadline + OUTER_GRACE_SECONDS

    def filter_harness(self, program: bytes) -> None:
        """Have the supervisor start the harness, and so every process of the trial, under the seccomp
        `program` (for a sandbox that cannot install arena's filter itself: Docker)."""
        path = self.trial_dir / SECCOMP_FILE
        path.write_bytes(program)
        path.chmod(0o644)  # as stage() leaves every file of /trial, whatever the umask
        self.filtered = True

    def mounts(self) -> list[Mount]:
        mounts = [Mount(self.trial_dir, TRIAL), Mount(self.out_dir, OUT, writable=True)]
        if self.name == "eval":
            mounts.append(Mount(self.in_dir, IN))
        mounts += [Mount(source, f"{DATA}/{name}") for name, source in self.data_files.items()]
        if self.cache_dir.exists():
            mounts.append(Mount(self.cache_dir, CACHE, writable=True))
        return mounts

    def harness_args(self, paths: PathMap) -> list[str]:
        args = ["harness.py", self.name, "--config", "run.json", "--data", paths(DATA), "--out", paths(OUT)]
        return args + (["--in", paths(IN)] if self.name == "eval" else [])

    def command(self, python: str, user: tuple[int, int] | None, paths: PathMap,
                python_args: list[str] | None = None) -> list[str]:
        """The supervisor, which runs `python` on the harness (or on `python_args`, a check of the sandbox
        itself) as `user` when it starts as root; in a sandbox of its own (not unisolated) it ends every
        process of its pid namespace at the end."""
        head = [python, paths(f"{TRIAL}/supervisor.py"), "--deadline", f"{self.deadline:.1f}"]
        head += ["--user", f"{user[0]}:{user[1]}"] if user else []
        head += ["--sandboxed"] if paths.sandboxed else []
        head += ["--memory", str(self.memory_limit)] if self.memory_limit is not None else []
        head += ["--processes-limited"] if self.processes_limited else []
        head += ["--seccomp", paths(f"{TRIAL}/{SECCOMP_FILE}")] if self.filtered else []
        for mount in self.mounts():
            head += ["--disk", paths(mount.target)] if mount.writable else []
        return [*head, "--", python, *(python_args or self.harness_args(paths))]

    def phase_env(self, paths: PathMap) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
               "HOME": "/tmp", "TMPDIR": "/tmp", "USER": "arena", "LANG": "C.UTF-8", **self.env}
        if self.memory_limit is not None:
            env.setdefault(MEMORY_LIMIT_ENV, str(self.memory_limit))
        if self.cache_dir.exists():
            env.update(TORCHINDUCTOR_CACHE_DIR=paths(f"{CACHE}/inductor"), TRITON_CACHE_DIR=paths(f"{CACHE}/triton"))
        return env


class PathMap:
    """Where an in-sandbox path lies for the process that runs the phase: itself inside a sandbox, or
    its host path when a phase runs unisolated."""

    def __init__(self, phase: Phase | None = None):
        self.phase = phase
        self.sandboxed = phase is None

    def __call__(self, inside: str) -> str:
        if self.phase is None:
            return inside
        for prefix, host in ((OUT, self.phase.out_dir), (IN, self.phase.in_dir), (TRIAL, self.phase.trial_dir),
                             (DATA, self.phase.root / "data"), (CACHE, self.phase.cache_dir)):
            if inside == prefix or inside.startswith(prefix + "/"):
                return str(host) + inside[len(prefix):]
        return inside


def copy_harness(harness_dir: Path, files: tuple[str, ...], expected_hash: str, dest: Path) -> None:
    """Fresh harness files for one phase; a copy whose hash differs from the run's stops everything."""
    for name in files:
        shutil.copyfile(harness_dir / name, dest / name)
    found = harness_hash(dest, files)
    if found != expected_hash:
        raise SandboxError(f"the harness files in {harness_dir} (hash {found}) differ from this run's (hash "
                           f"{expected_hash}); reinstall the arena version that started the run, or start a new run")


def install_supervisor(dest: Path) -> None:
    shutil.copyfile(SUPERVISOR, dest / "supervisor.py")


def bare_phase(root: Path, deadline: float, owner: tuple[int, int]) -> Phase:
    """A train phase with only its supervisor and out directory: for checks of a sandbox, with no trial."""
    phase = Phase("train", root, deadline)
    make_dir(phase.trial_dir)
    install_supervisor(phase.trial_dir)
    make_dir(phase.out_dir, owner)
    return phase


def link_data(data_dir: Path, names: tuple[str, ...], dest: Path) -> dict[str, Path]:
    """Hard links to the dataset files a phase may read, or the files themselves across filesystems."""
    dest.mkdir()
    files = {}
    for name in names:
        source = data_dir / name
        if not source.is_file():
            raise SandboxError(f"{source} is missing; run `arena prepare` again")
        try:
            os.link(source, dest / name)
            files[name] = dest / name
        except OSError:  # another filesystem: mount the file where it is (an unisolated phase follows a link)
            (dest / name).symlink_to(source)
            files[name] = source
    return files


def open_for_reading(path: Path, limit: int) -> int:
    """A descriptor of `path` only if it is a regular file no larger than `limit` (never a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file of at most {limit:,} bytes")
    return fd


def copy_model(train_out: Path, dest: Path) -> None:
    """Carry the exported model into the eval phase's /trial/in; raises OSError when it is missing or odd.

    A hard link where the two share a file system (every process of the train phase is gone by now, so
    nothing can change the file): a copy would cost the host a second model's worth of disk, and write out
    in full every hole of a sparse file whose stated size is far beyond the disk it takes."""
    for name in MODEL_FILES:
        fd = open_for_reading(train_out / name, MAX_MODEL_BYTES)
        with os.fdopen(fd, "rb") as source:
            try:
                # the regular file just checked: no process of the phase is left to swap it meanwhile (linking
                # /proc/self/fd/N instead fails across the mounts of some hosts)
                os.link(train_out / name, dest / name, follow_symlinks=False)
            except OSError:
                with open(dest / name, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)


def read_reported(train_out: Path) -> Reported:
    """The numbers the trial's own process reported (train_stats.json): shown, never trusted."""
    try:
        with os.fdopen(open_for_reading(train_out / "train_stats.json", MAX_STATS_BYTES), "rb") as f:
            raw = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {printable(key): printable(value) if isinstance(value, str) else value for key, value in raw.items()
            if isinstance(key, str) and len(key) < 40 and plain(value)}


# Terminal control characters (all but tab and newline; C1 too): what a trial prints or reports reaches the
# terminal, the live view, replay, the ledger's reasons and the next LLM prompt, where an escape sequence could
# draw a fake result line, retitle the window or write to the clipboard.
# C0 and C1 controls, and what terminals and viewers take for line breaks or for a change of text direction
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with each control character (line and paragraph separators, direction overrides) replaced by
    U+FFFD."""
    return CONTROL_CHARACTERS.sub("\ufffd", text)


def plain(value: object) -> bool:
    """A value of a trial's report arena may show and compute with: a short string, or a number no larger
    than a float holds exactly (10**400 would raise where a rate is computed from it), never inf or nan."""
    if value is None or (isinstance(value, str) and len(value) < 100):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= 2**53
    return isinstance(value, float) and math.isfinite(value) and abs(value) <= 2.0**53


def make_dir(path: Path, owner: tuple[int, int] | None = None, mode: int = 0o755) -> Path:
    """A directory with `mode`; owned by `owner` (the trial's user) when that is given and we may chown."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None and os.getuid() == 0:
        os.chown(path, *owner)
    return path


def copy_cache(compile_cache: Path, dest: Path, owner: tuple[int, int]) -> None:
    """A private, writable copy of the run's trusted compile cache (empty when there is none yet)."""
    if compile_cache.is_dir():
        shutil.copytree(compile_cache, dest, symlinks=True)
    make_dir(dest, owner)
    if os.getuid() == 0:
        for path in dest.rglob("*"):
            os.lchown(path, *owner)


def promote_cache(phase: Phase, compile_cache: Path) -> None:
    """Make a trusted phase's compile cache the run's: later trials start from a copy of it."""
    if not phase.cache_dir.is_dir():
        return
    fresh = compile_cache.with_name(compile_cache.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(phase.cache_dir, fresh, symlinks=True)
    old = compile_cache.with_name(compile_cache.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if compile_cache.exists():
        compile_cache.rename(old)
    fresh.rename(compile_cache)
    shutil.rmtree(old, ignore_errors=True)
