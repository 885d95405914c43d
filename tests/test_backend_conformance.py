"""What every backend must do (tests/backends.py lists them): classify an ok trial, a crash, running out of
memory, a timeout and a diverged loss alike; end every process a phase started; stream a phase's output
line by line as it comes; and, unless it is unisolated, confine the phase (tests/escape_probe.py probes
it from inside).

The trials are tiny train.py files that print, crash, allocate or loop rather than train; the cheating
trials a confined backend must withstand are in test_reward_hacks.py."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sandbox import Backend, Placement, Status
from sandbox.outcome import phase_failure, summary
from sandbox.phases import OUTER_GRACE_SECONDS, bare_phase
from sandbox.trial import TRIAL_DIR_PREFIX, PhaseOutput
from tests.backends import BACKENDS, LIMITED, memory_cgroups, pids_cgroups
from tests.confinement import (
    assert_confined,
    fake_dataset,
    listening,
    parse_probe,
    probe_spec,
    staged_probe_phase,
    survivors,
)
from tests.trial_helpers import make_spec, run, tiny_train

pytestmark = pytest.mark.slow  # real sandboxes, each phase a Python that imports torch: seconds a test
BUDGET = 2.0


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param(request)


def test_ok(backend, stdlib_dataset):
    outcome, streamed = run(backend, make_spec(stdlib_dataset, tiny_train("""
        next(ctx.batches(1))
        ctx.log_step(0, 7.0)
        time.sleep(ctx.time_budget)
        return Uniform(ctx.vocab_size)
    """), budget=BUDGET))
    assert outcome.status is Status.OK, outcome.reason + "\n" + outcome.log_tail
    assert math.isfinite(outcome.val_bpb) and outcome.val_bpb > 0
    result = outcome.result
    assert result["work_seconds"] >= BUDGET and result["peak_memory_gb"] > 0  # the supervisor's count
    assert result["reported"]["steps"] == 1
    assert summary(outcome).startswith(f"---\nval_bpb:          {outcome.val_bpb:.6f}\n")
    # both phases reach on_log, in order: the train phase's lines, then the eval phase's
    assert streamed.index("step=0 ") < streamed.index("=== eval phase\n") < streamed.index("ARENA_EVAL ")


def test_crash(backend, stdlib_dataset):
    outcome, _ = run(backend, make_spec(stdlib_dataset, tiny_train("raise RuntimeError('boom from train.py')")))
    assert outcome.status is Status.CRASH
    assert "exited with code 1" in outcome.reason and "boom from train.py" in outcome.reason
    assert "Traceback (most recent call last)" in outcome.log_tail


STOPPERS = {
    "continued": "os.kill(supervisor, signal.SIGCONT)",
    "left-stopped": "pass",
    "stopped-again-and-again": "while True: os.kill(supervisor, signal.SIGSTOP)",  # after each SIGCONT at once
}


@pytest.mark.parametrize("then", STOPPERS.values(), ids=STOPPERS.keys())
def test_a_trial_that_stops_its_supervisor_is_ended(backend, stdlib_dataset, then):
    """SIGSTOP cannot be ignored: a trial of the supervisor's own user (arena not root, or unisolated) can halt
    the watch on its memory and disk, and continue it before the end, or never, or stop it again each time it
    is continued. The supervisor notices a SIGCONT and ends the phase, and arena ends one whose supervisor it
    finds stopped; where the trial runs as another user the signal is refused."""
    outcome, streamed = run(backend, make_spec(stdlib_dataset, tiny_train(f"""
        import os, signal
        supervisor = os.getppid()
        try:
            os.kill(supervisor, signal.SIGSTOP)
        except PermissionError:
            raise SystemExit("PROBE refused")
        time.sleep(0.5)  # here the trial would take what the supervisor would refuse
        {then}
        time.sleep(60)
        return Uniform(ctx.vocab_size)
    """), budget=BUDGET, cap=200))
    assert outcome.status is Status.CRASH, outcome.reason + "\n" + outcome.log_tail
    if "PROBE refused" not in streamed:
        assert outcome.reason == ("train phase stopped its supervisor (SIGSTOP), which watches its memory and disk, "
                                  "and was ended")
        assert outcome.train_wall_seconds < 60  # ended at once, not at its deadline


def test_oom(backend, stdlib_dataset):
    """More memory than the machine can give: refused at once, whatever the backend's own limit."""
    outcome, _ = run(backend, make_spec(stdlib_dataset, tiny_train("bytearray(1 << 50)")))
    assert outcome.status is Status.OOM, outcome.reason + "\n" + outcome.log_tail
    assert outcome.reason == "train phase ran out of memory"


@pytest.mark.parametrize("make_backend", LIMITED)
def test_past_the_memory_limit_is_oom_in_seconds(make_backend, request, stdlib_dataset):
    """Two processes, each under the limit and together over it: the trial ends as oom as soon as the pages are
    taken, not at its deadline, on every backend (the supervisor's count locally, the cgroup's in Docker)."""
    outcome, _ = run(make_backend(request), make_spec(stdlib_dataset, tiny_train("""
        import os
        child = os.fork()
        hog = [b"x" * (64 << 20) for _ in range(14)]  # 900 MB in each of the two, every page written
        print("PROBE hogging", flush=True)
        if child:  # a kernel OOM kill (Docker) takes one of the two: the harness does not outlive it
            os.waitpid(child, 0)
            raise SystemExit("the other process was killed")
        time.sleep(120)
    """), budget=BUDGET, cap=200))
    assert outcome.status is Status.OOM, outcome.reason + "\n" + outcome.log_tail
    assert "went over the trial's memory limit" in outcome.reason  # whichever ended it: supervisor or kernel
    assert outcome.train_wall_seconds < 60  # the deadline is minutes away: the limit ended it
    assert outcome.result is None


IN_MEMORY_FILES = {
    "tmpfs": """
        for where in ("/tmp", "/dev/shm"):  # files in the sandbox's tmpfs mounts: memory, in no process's RSS;
            with open(f"{where}/hoard", "wb") as f:  # half in each, either alone under the limit
                for _ in range(16):
                    f.write(b"x" * (64 << 20))
    """,
    "sysv": """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
        libc.shmat.argtypes, libc.shmat.restype = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int], ctypes.c_void_p
        segment = libc.shmget(0, 2 << 30, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        for chunk in range(8):  # an eighth at a time, then detached: no process ever holds more than that
            address = libc.shmat(segment, None, 0)
            assert segment >= 0 and address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
            ctypes.memset(address + chunk * (256 << 20), 1, 256 << 20)
            libc.shmdt(ctypes.c_void_p(address))
    """,
    "memfd": """
        import os
        hoard = os.memfd_create("hoard")  # memory in no file system the supervisor can see and in no process
        for _ in range(32):
            os.write(hoard, b"x" * (64 << 20))
    """,
}


@pytest.mark.parametrize("make_backend", [p for p in LIMITED if p.id != "none"])  # none: the host's /tmp
@pytest.mark.parametrize("hoard", IN_MEMORY_FILES)
def test_memory_held_in_files_counts_against_the_limit(hoard, make_backend, request, stdlib_dataset):
    """2 GiB held outside any process's resident set, in a tmpfs file, System V shared memory or a memfd never
    mapped, against a 1.5 GiB limit: oom in seconds, as if the processes held it. Only the kernel sees a
    memfd's pages: locally that takes a memory cgroup, which needs root."""
    if hoard == "memfd" and "bwrap" in request.node.callspec.id and not memory_cgroups():
        pytest.skip("no memory cgroup can be made here (arena runs without root or a delegated cgroup)")
    outcome, _ = run(make_backend(request), make_spec(stdlib_dataset, tiny_train(IN_MEMORY_FILES[hoard] + """
        print("PROBE hoarded", flush=True)
        time.sleep(120)
    """), budget=BUDGET, cap=200))
    assert outcome.status is Status.OOM, outcome.reason + "\n" + outcome.log_tail
    assert outcome.train_wall_seconds < 60
    assert outcome.result is None


@pytest.mark.parametrize("make_backend", LIMITED)
def test_a_compiled_step_that_cannot_fit_is_oom_before_its_kernels(make_backend, request, stdlib_dataset):
    """torch.compile'd, the step would keep 2 GiB of activations against a 1.5 GiB limit: the harness's
    compile-time memory check ends it as oom while Inductor has built nothing (it has no C++ compiler to build
    with), each backend handing the check its limit."""
    outcome, _ = run(make_backend(request), make_spec(stdlib_dataset, tiny_train("""
        import torch._inductor.config
        torch._inductor.config.cpp.cxx = ("no-such-compiler",)
        model = torch.nn.Sequential(torch.nn.Linear(64, 65536), torch.nn.ReLU(), torch.nn.Linear(65536, 1))
        torch.compile(model)(torch.randn(8192, 64)).sum().backward()
    """), budget=BUDGET))
    assert outcome.status is Status.OOM, outcome.reason + "\n" + outcome.log_tail
    assert "out of memory before compiling: one forward pass keeps 2,048 MiB" in outcome.log_tail
    assert "arena's compile-time memory check" in outcome.log_tail


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MiB file system of its own with 20,000 inodes, for a phase to fill."""
    if os.getuid() != 0:
        pytest.skip("mounting a small file system takes root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=20000", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


LEVELS = "/".join(["d" * 200] * 12)  # 2,412 characters: two of these are past PATH_MAX (4,096)
FILL_WAYS = {  # where the phase goes to fill the disk
    "file": "os.chdir('out')",
    "locked-dir": "os.mkdir('out/locked'); os.chdir('out/locked'); os.chmod('.', 0o300)",  # unlistable, still writable
    "deep-path": f"os.chdir('out')\nfor _ in range(2):\n    os.makedirs('{LEVELS}'); os.chdir('{LEVELS}')",
}


@pytest.mark.parametrize("how, hidden, mib, verdict, reason", [
    ("file", False, 200, "exceeded", "wrote more than half the disk space free at its start"),
    ("file", True, 248, "full", "the disk holding its output was nearly full"),  # deleted, held open: in no directory
    ("locked-dir", False, 200, "exceeded", "wrote more than half the disk space free at its start"),
    ("deep-path", False, 200, "exceeded", "wrote more than half the disk space free at its start"),
], ids=["file", "deleted-file", "locked-dir", "deep-path"])
def test_a_phase_that_fills_the_disk_is_stopped(backend, small_disk, how, hidden, mib, verdict, reason):
    """A phase's files past half the free space of its output's disk (256 MiB) end it within seconds, also in a
    directory it took every permission from or at a path too long to list; a file it deleted and holds open is
    in no directory, and the disk's free space ends it before the disk fills."""
    unlink = "os.unlink('fill')" if hidden else "pass"
    code = ("import os, time\n"
            f"{FILL_WAYS[how]}\n"
            "f = open('fill', 'wb')\n"
            f"{unlink}\n"
            f"for _ in range({mib // 8}):\n"
            "    f.write(b'x' * (8 << 20))\n"
            "f.flush()\n"
            "print('PROBE filled', flush=True)\n"
            "time.sleep(120)\n")
    run = backend.run_phase(bare_phase(small_disk / "phase", 100, backend.owner), PhaseOutput(lambda line: None),
                            ["-c", code])
    assert run.report is not None and run.report.disk == verdict, run.lines
    assert run.report.end is not None and run.report.end < 60  # stopped, not ended by its deadline
    status, why = phase_failure("train", run)
    assert status is Status.CRASH and reason in why


def test_a_private_directory_is_counted_not_stopped(backend, small_disk):
    """A directory only its owner may read (mkdtemp's 0700, as compile caches make) is counted like any other."""
    code = ("import os, tempfile, time\n"
            "with open(os.path.join(tempfile.mkdtemp(dir='out'), 'kernel.so'), 'wb') as f:\n"
            "    f.write(b'x' * (1 << 20))\n"
            "time.sleep(2.5)\n")  # the files are counted once a second
    run = backend.run_phase(bare_phase(small_disk / "phase", 100, backend.owner), PhaseOutput(lambda line: None),
                            ["-c", code])
    assert run.report is not None and run.report.exit_code == 0 and run.report.disk is None, run.lines


def test_a_phase_that_uses_up_the_inodes_is_stopped(backend, small_disk):
    """Files hidden from the count (here: 19,500 empty ones, under the 200,000 a phase may have, in a directory
    it locked) still take the file system's inodes: below a twentieth of those free at the start, it ends."""
    code = ("import os, time\n"
            "os.mkdir('out/locked'); os.chdir('out/locked')\n"
            "for i in range(19_500):\n"
            "    open(str(i), 'wb').close()\n"
            "os.chmod('.', 0)\n"
            "print('PROBE filled', flush=True)\n"
            "time.sleep(120)\n")
    run = backend.run_phase(bare_phase(small_disk / "phase", 100, backend.owner), PhaseOutput(lambda line: None),
                            ["-c", code])
    assert run.report is not None and run.report.disk == "full", run.lines
    assert run.report.end is not None and run.report.end < 60


def test_a_tree_deeper_than_python_can_recurse_goes_with_its_trial(backend, stdlib_dataset):
    """Trial code shapes the trial's directory: 3,000 levels (Python's rmtree recurses once per level and gives
    up near 1,000) with a directory it took every permission from. The directory goes with the trial, and the
    next trial on the host runs."""
    def trial_dirs() -> set[str]:
        return {path.name for path in Path(tempfile.gettempdir()).glob(f"{TRIAL_DIR_PREFIX}*")}

    before = trial_dirs()
    outcome, _ = run(backend, make_spec(stdlib_dataset, tiny_train("""
        import os
        fd = os.open("out", os.O_RDONLY)
        for _ in range(3000):
            os.mkdir("level", dir_fd=fd)
            deeper = os.open("level", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        os.chmod("out/level", 0)
        raise SystemExit("PROBE tree made")
    """), budget=BUDGET))
    # stopped as a tree too deep to count, or ended by itself first: either way, gone afterwards
    assert outcome.status is Status.CRASH, outcome.reason + "\n" + outcome.log_tail
    assert trial_dirs() <= before
    outcome, _ = run(backend, make_spec(stdlib_dataset, tiny_train("raise SystemExit('PROBE next')"), budget=BUDGET))
    assert "PROBE next" in outcome.reason, outcome.reason


def test_timeout(backend, stdlib_dataset):
    spec = make_spec(stdlib_dataset, tiny_train("""
        print("PROBE looping", flush=True)
        while True:
            pass
    """), budget=1, cap=1, export_grace=10)  # a deadline well past the harness's start-up (a torch import)
    outcome, _ = run(backend, spec)
    assert outcome.status is Status.TIMEOUT, outcome.reason
    assert spec.train_deadline <= outcome.train_wall_seconds < spec.train_deadline + OUTER_GRACE_SECONDS
    assert "PROBE looping" in outcome.log_tail


def test_nan(backend, stdlib_dataset):
    outcome, _ = run(backend, make_spec(stdlib_dataset, tiny_train("ctx.log_step(0, float('nan'))")))
    assert outcome.status is Status.NAN and "loss diverged" in outcome.reason


def test_a_phase_can_use_multiprocessing(backend):
    """Its locks and pools are POSIX semaphores in /dev/shm, as are Inductor's parallel compile workers': the
    trial's user can make them (bubblewrap's own /dev/shm is its creator's, root's when arena is root)."""
    run = backend.check("from concurrent.futures import ProcessPoolExecutor\n"
                        "with ProcessPoolExecutor(2) as pool:\n"
                        "    print('PROBE', sum(pool.map(abs, [-1, -2])), flush=True)\n")
    assert run.report is not None and run.report.exit_code == 0, "".join(run.lines)[-2000:]
    assert "PROBE 3" in "".join(run.lines)


def test_nothing_outlives_a_phase(backend, tmp_path):
    """Not even a daemon in a session of its own, unisolated too."""
    marker = f"arena-survivor-{os.getpid()}-{backend.isolation}-daemon"
    code = ("import os, subprocess, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)  # {marker}'], "
            "start_new_session=True)\n"
            "    os._exit(0)\n"
            "os.wait()\n")
    run = backend.run_phase(bare_phase(tmp_path / "phase", 60, backend.owner), PhaseOutput(lambda line: None),
                            ["-c", code])
    assert run.report is not None and run.report.exit_code == 0
    assert survivors(marker) == []


def test_isolation(backend, tmp_path, monkeypatch):
    if backend.isolation == "none":
        pytest.skip("isolation none confines nothing, and the probe would really attack the host")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-probe-secret")
    data = fake_dataset(tmp_path)
    phase = staged_probe_phase(tmp_path / "phase", data, backend.owner)
    marker = f"arena-survivor-{os.getpid()}-{backend.isolation}-probe"
    with listening() as port:
        spec = probe_spec(tmp_path, data, port, marker)
        run = backend.run_phase(phase, PhaseOutput(lambda line: None), ["escape_probe.py", json.dumps(spec)])
    found = parse_probe(list(run.lines))
    assert_confined(found, data, backend.owner[0])
    if backend.owner[0] != os.getuid():
        assert found["kill_init"] != "ok"  # another user than arena's may not signal the sandbox's first process
    assert run.report is not None and run.report.exit_code == 0
    assert (phase.out_dir / "probe").read_text() == "probe"
    assert survivors(marker) == []  # the daemon the probe left ended with the phase
    assert data.joinpath("train.bin").read_text() == "train.bin"


def test_a_phase_holding_all_the_processes_it_may_starves_no_phase_beside_it(backend, tmp_path):
    """Trials run as the same user; a limit on that user's processes (RLIMIT_NPROC, counted over the host)
    would let one trial holding them all keep the trial beside it from starting a thread. Each phase's own
    cgroup (Docker's, or arena's where it may make one) counts its processes alone."""
    if backend.isolation == "none":
        pytest.skip("isolation none confines nothing")
    if backend.isolation == "bwrap" and not pids_cgroups():
        pytest.skip("no pids cgroup can be made here: the trial user's process limit is all there is")
    hog = ("import os, threading, time\n"
           "stop = threading.Event()\nthreads = []\n"
           "try:\n"
           "    for _ in range(4096):\n"
           "        threads.append(threading.Thread(target=stop.wait, daemon=True))\n"
           "        threads[-1].start()\n"
           "except RuntimeError:\n"
           "    pass\n"
           "print('PROBE holding', len(threads), flush=True)\n"
           "while not os.path.exists('out/stop'):\n"
           "    time.sleep(0.1)\n")
    beside = ("import threading\n"
              "stop = threading.Event()\n"
              "threads = [threading.Thread(target=stop.wait) for _ in range(64)]\n"
              "for thread in threads:\n    thread.start()\n"  # all 64 alive at once
              "print('PROBE started', len(threads), flush=True)\n"
              "stop.set()\n")
    holding, hog_lines = threading.Event(), []

    def hog_output(line: str) -> None:
        hog_lines.append(line)
        if line.startswith("PROBE holding"):
            holding.set()

    hog_phase = bare_phase(tmp_path / "hog", 120, backend.owner)
    hogging = threading.Thread(target=backend.run_phase, args=(hog_phase, PhaseOutput(hog_output), ["-c", hog]))
    hogging.start()
    try:
        assert holding.wait(90), hog_lines
        lines: list[str] = []
        backend.run_phase(bare_phase(tmp_path / "beside", 60, backend.owner), PhaseOutput(lines.append),
                          ["-c", beside])
    finally:
        (hog_phase.out_dir / "stop").write_text("")
        hogging.join()
    assert any(line.startswith("PROBE holding") and int(line.split()[2]) > 1000 for line in hog_lines), hog_lines
    assert "PROBE started 64\n" in lines, lines


def probes(backend, tmp_path, code: str) -> list[str]:
    """The PROBE lines `python -c code` prints in an empty phase of `backend`, which must exit 0."""
    lines: list[str] = []
    run = backend.run_phase(bare_phase(tmp_path / "phase", 60, backend.owner), PhaseOutput(lines.append),
                            ["-c", code])
    assert run.report is not None and run.report.exit_code == 0, lines
    return [line.strip() for line in lines if line.startswith("PROBE")]


KEYRING_CALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl


def test_a_phase_has_no_keyring_to_leave_a_key_in(backend, tmp_path):
    """The kernel's keyrings belong to a user, not to a namespace: a key a trial added would outlive its
    sandbox, for the next trial run as the same user to read. Every call on them fails (EPERM)."""
    if backend.isolation == "none":
        pytest.skip("isolation none confines nothing")
    if platform.machine() not in KEYRING_CALLS:
        pytest.skip(f"the keyring calls' numbers on {platform.machine()} are not in this test")
    add_key, keyctl = KEYRING_CALLS[platform.machine()]
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.syscall.restype = ctypes.c_long\n"
            f"added = libc.syscall({add_key}, b'user', b'arena-probe', b'x', ctypes.c_size_t(1), ctypes.c_int(-4))\n"
            "print('PROBE add_key', added, ctypes.get_errno(), flush=True)\n"
            f"found = libc.syscall({keyctl}, ctypes.c_int(0), ctypes.c_int(-4), ctypes.c_int(0))\n"  # GET_KEYRING_ID
            "print('PROBE keyctl', found, ctypes.get_errno(), flush=True)\n")
    assert probes(backend, tmp_path, code) == [f"PROBE add_key -1 {errno.EPERM}", f"PROBE keyctl -1 {errno.EPERM}"]


def test_a_phase_cannot_make_a_user_namespace(backend, tmp_path):
    """Root in a user namespace of its own would put a trial in reach of kernel code only root may call: that
    fails (EPERM), while threads, processes and a mount namespace alone are still made."""
    if backend.isolation == "none":
        pytest.skip("isolation none confines nothing")
    code = ("import ctypes, os, subprocess, sys, threading\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('PROBE userns', libc.unshare(0x10000000), ctypes.get_errno(), flush=True)\n"
            "print('PROBE userns+mount', libc.unshare(0x10020000), ctypes.get_errno(), flush=True)\n"
            "thread = threading.Thread(target=print, args=('PROBE thread',), kwargs={'flush': True})\n"
            "thread.start(); thread.join()\n"
            "print('PROBE child', subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True,"
            " text=True).stdout.strip(), flush=True)\n")
    assert probes(backend, tmp_path, code) == [f"PROBE userns -1 {errno.EPERM}", f"PROBE userns+mount -1 {errno.EPERM}",
                                                "PROBE thread", "PROBE child 42"]


def test_a_phase_cannot_drop_or_probe_the_shared_page_cache(backend, tmp_path):
    """Every sandbox reads the same files through one page cache: dropping chosen pages of one (fadvise
    DONTNEED, madvise PAGEOUT or COLD) and asking which are cached without reading them (preadv2 RWF_NOWAIT,
    mincore) would pass bits from trial to trial; madvise's everyday advices still work. All fail in every
    confined sandbox (Docker's default filter allows them: arena's comes on top)."""
    if backend.isolation == "none":
        pytest.skip("isolation none confines nothing")
    code = ("import ctypes, mmap, os, sys\n"
            "fd = os.open(sys.executable, os.O_RDONLY)\n"
            "mapped = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def mincore():\n"
            "    page = mmap.mmap(-1, 4096)\n"
            "    if libc.mincore(ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(page))), 4096,\n"
            "                    ctypes.create_string_buffer(1)):\n"
            "        raise OSError(ctypes.get_errno(), 'mincore')\n"
            "for name, call in [('fadvise', lambda: os.posix_fadvise(fd, 0, 4096, os.POSIX_FADV_DONTNEED)),\n"
            "                   ('pageout', lambda: mapped.madvise(21)), ('cold', lambda: mapped.madvise(20)),\n"
            "                   ('dontneed', lambda: mapped.madvise(mmap.MADV_DONTNEED)), ('mincore', mincore),\n"
            "                   ('nowait', lambda: os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT))]:\n"
            "    try:\n"
            "        call()\n"
            "        print('PROBE', name, 'ok', flush=True)\n"
            "    except OSError as e:\n"
            "        print('PROBE', name, e.errno, flush=True)\n"
            "print('PROBE read', len(os.pread(fd, 4096, 0)), flush=True)\n")  # plain reads are untouched
    # ENOSYS from the filter; glibc's preadv2 turns it into ENOTSUP when flags are given
    dropped = [f"PROBE {name} {errno.EPERM}" for name in ("fadvise", "pageout", "cold")]
    found = probes(backend, tmp_path, code)
    assert found in ([*dropped, "PROBE dontneed ok", f"PROBE mincore {errno.EPERM}", f"PROBE nowait {code}",
                      "PROBE read 4096"] for code in (errno.ENOSYS, errno.ENOTSUP)), found


def test_log_streaming(backend, tmp_path):
    """Each line reaches the sink when it is printed, not when the phase ends."""
    arrivals: list[tuple[float, str]] = []
    code = "import time; print('PROBE first', flush=True); time.sleep(2); print('PROBE second', flush=True)"
    run = backend.run_phase(bare_phase(tmp_path / "phase", 60, backend.owner),
                            PhaseOutput(lambda line: arrivals.append((time.monotonic(), line))), ["-c", code])
    assert run.report is not None and run.report.exit_code == 0
    probes = [(at, line) for at, line in arrivals if line.startswith("PROBE")]
    assert [line for _, line in probes] == ["PROBE first\n", "PROBE second\n"]
    assert probes[1][0] - probes[0][0] > 1.5
    assert arrivals[-1][1].startswith("ARENA_PHASE ")  # the supervisor's report comes last


def test_a_pinned_phase_stays_on_its_cores(backend, tmp_path):
    """A worker's sandbox runs on its share of the cores, and trial code cannot widen it onto a neighbour's
    (bubblewrap: a seccomp filter; Docker: the container's cpuset)."""
    if backend.isolation == "none":
        pytest.skip("isolation none confines nothing: pinning there is advice")
    code = ("import os\nprint('PROBE before', sorted(os.sched_getaffinity(0)))\n"
            "try:\n    os.sched_setaffinity(0, range(os.cpu_count() or 1))\nexcept OSError as e:\n"
            "    print('PROBE refused', e.errno)\nprint('PROBE after', sorted(os.sched_getaffinity(0)))\n")
    found = probes(backend.placed(Placement(cores=(0,))), tmp_path, code)
    assert found[0] == "PROBE before [0]" and found[-1] == "PROBE after [0]", found  # refused, or cut to its cpuset
