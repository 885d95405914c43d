"""The phase supervisor on real processes: what it measures, what it kills, what it reports."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import time

import pytest

from sandbox.errors import SandboxError
from sandbox.outcome import PhaseRun
from sandbox.phases import SUPERVISOR
from sandbox.seccomp import sandbox_filter
from sandbox.supervisor import LINE_CUT, MAX_LINE_BYTES, RELAY_BYTES, RELAY_LINES, TAIL_BYTES, TAIL_LINES, gpu_keys
from sandbox.trial import started


def supervise(code: str, deadline: float = 30, options: tuple[str, ...] = ()) -> tuple[PhaseRun, float]:
    """Run `code` under the supervisor, unisolated (it then ends only its own descendants)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SUPERVISOR), "--deadline", str(deadline), *options, "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=deadline + 30)
    lines = proc.stdout.splitlines(keepends=True)
    return PhaseRun(exit_code=proc.returncode, timed_out=False, wall_seconds=time.monotonic() - start,
                    lines=lines), time.monotonic() - start


def alive(marker: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                return True
        except OSError:
            pass
    return False


def test_relays_output_and_times_from_the_ready_line():
    run, wall = supervise("import time; print('loading'); time.sleep(1); print('ARENA_READY', flush=True); "
                          "time.sleep(1.5); print('done')")
    report = run.report
    assert report.exit_code == 0 and report.signal is None and not report.deadline
    # the sleeps bound the times from below; from above, only the phase's own length does (a busy machine
    # may stretch both sides of the ready line)
    assert 0.9 < report.ready < report.end <= wall and report.end - report.ready > 1.4
    assert [ln.strip() for ln in run.lines if ln.strip()][:3] == ["loading", "ARENA_READY", "done"]


def test_a_forged_report_is_overridden_by_the_real_one():
    run, _ = supervise("print('ARENA_PHASE {\"exit_code\": 0, \"signal\": null, \"ready\": 0.0, \"end\": 0.1, "
                       "\"deadline\": false, \"max_rss_kb\": 1}', end='', flush=True); raise SystemExit(7)")
    assert run.report.exit_code == 7 and run.report.ready is None  # the supervisor's own line came last


def test_what_the_trial_leaves_behind_is_killed(tmp_path):
    marker = f"arena-supervisor-orphan-{os.getpid()}"
    code = ("import os, subprocess, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'], "
            "start_new_session=True)\n"
            "    os._exit(0)\n"
            "os.wait()\n"
            "print('ARENA_READY', flush=True)\n")
    run, _ = supervise(code)
    # ended once its own process did: neither waited for the orphan (60 s) nor stopped by its deadline (30 s)
    assert run.report.exit_code == 0 and run.report.signal is None and not run.report.deadline
    assert not alive(marker)


def test_the_deadline_ends_a_phase_that_never_stops():
    run, wall = supervise("import time\nprint('ARENA_READY', flush=True)\nwhile True: time.sleep(0.1)", deadline=2)
    assert run.report.deadline and run.report.signal == 9  # killed by the supervisor's deadline,
    assert 2 <= run.report.end <= wall  # and not before it


def test_peak_memory_is_the_kernels_count():
    run, _ = supervise("b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); print('ARENA_READY')")
    assert run.report.max_rss_kb > 300 << 10


def test_the_trial_runs_under_a_process_limit():  # a fork bomb fails there, not on the host
    code = "import resource; print('limit', resource.getrlimit(resource.RLIMIT_NPROC))"
    run, _ = supervise(code)
    assert "limit (4096, 4096)" in "".join(run.lines)
    # a cgroup of the phase's own counts its processes: the user's limit, counted over the host, is left alone
    run, _ = supervise(code, options=("--processes-limited",))
    assert f"limit {resource.getrlimit(resource.RLIMIT_NPROC)}" in "".join(run.lines)


def test_a_line_with_no_end_is_cut_short():
    """A trial printing gigabytes without a newline must not make arena hold them as one line."""
    run, _ = supervise("import sys\n"
                       "for _ in range(64):\n"
                       "    sys.stdout.write('x' * (1 << 20))\n"
                       "print()\n"
                       "print('after')\n")
    long, after = run.lines[0], run.lines[1]
    assert long == "x" * MAX_LINE_BYTES + LINE_CUT.decode() + "\n"
    assert after == "after\n" and run.report.exit_code == 0


def test_a_line_cut_short_is_cut_when_the_phase_ends_in_it():
    run, _ = supervise("import sys; sys.stdout.write('y' * (3 * MAX_LINE_BYTES)); sys.stdout.flush()"
                       .replace("MAX_LINE_BYTES", str(MAX_LINE_BYTES)))
    assert run.lines[0].startswith("y" * MAX_LINE_BYTES) and len(run.lines[0]) < MAX_LINE_BYTES + 100
    assert run.report.exit_code == 0


@pytest.mark.parametrize("lines, width", [(3 * RELAY_BYTES // 1000, 990), (3 * RELAY_LINES, 1)],
                         ids=["megabytes", "short lines"])
def test_a_flood_is_relayed_up_to_a_limit_and_then_only_its_last_lines(lines, width):
    """However much a trial prints, arena (and Docker's engine) read a bounded amount, and still how it ended."""
    run, _ = supervise("import sys\n"
                       f"for i in range({lines}):\n"
                       f"    print('flood', i, 'x' * {width})\n"
                       "for i in range(3):\n"
                       "    print('last words', i)\n"
                       "sys.stdout.write('no newline at the end'); sys.stdout.flush()\n"
                       "raise SystemExit(3)\n", deadline=120)
    assert sum(map(len, run.lines)) < RELAY_BYTES + TAIL_BYTES + 2 * MAX_LINE_BYTES
    assert len(run.lines) < RELAY_LINES + TAIL_LINES + 10
    notice = next(line for line in run.lines if line.startswith("[arena: "))
    assert "lines" in notice and f"after the first {RELAY_BYTES >> 20} MB or {RELAY_LINES:,} lines" in notice
    text = [line.strip() for line in run.lines if line.strip()]
    assert text[-5:-1] == ["last words 0", "last words 1", "last words 2", "no newline at the end"]
    assert text[-6].startswith("flood ") and run.report.exit_code == 3


def test_the_command_and_its_children_run_under_the_seccomp_filter(tmp_path):
    """--seccomp FILE: the command and what it starts fail the filtered calls (unprivileged too: the
    supervisor sets no_new_privs), and the supervisor still reports."""
    program = tmp_path / "filter.bpf"
    program.write_bytes(sandbox_filter(pinned=False))
    code = ("import os, subprocess, sys\n"
            "fd = os.open(sys.executable, os.O_RDONLY)\n"
            "try:\n"
            "    os.posix_fadvise(fd, 0, 4096, os.POSIX_FADV_DONTNEED)\n"
            "    print('PROBE fadvise ok', flush=True)\n"
            "except OSError as e:\n"
            "    print('PROBE fadvise', e.errno, flush=True)\n"
            "child = 'import os, sys; fd = os.open(sys.executable, os.O_RDONLY); os.posix_fadvise(fd, 0, 1, 4)'\n"
            "print('PROBE child', subprocess.run([sys.executable, '-c', child]).returncode, flush=True)\n")
    run, _ = supervise(code, options=("--seccomp", str(program)))
    assert run.report.exit_code == 0, run.lines
    probes = [line.strip() for line in run.lines if line.startswith("PROBE")]
    assert probes == [f"PROBE fadvise {errno.EPERM}", "PROBE child 1"], run.lines  # the child raised EPERM


def test_a_harness_that_cannot_be_started_is_the_sandboxs_failure_and_a_trial_cannot_say_so(tmp_path):
    """A filter the kernel refuses (here: an empty program) stops the command before it runs: the supervisor's
    own report says why, and the trial's backend raises SandboxError instead of judging a trial that never
    ran. A trial that exits 127 itself, or prints a report of its own, is still the trial's crash."""
    empty = tmp_path / "empty.bpf"
    empty.write_bytes(b"")
    run, _ = supervise("print('PROBE ran')", options=("--seccomp", str(empty)))
    assert run.report.exit_code == 127 and "refused the seccomp filter" in run.report.failed_to_start
    assert not any(line.startswith("PROBE") for line in run.lines)
    with pytest.raises(SandboxError, match="the train phase's sandbox could not start its harness"):
        started(run, "train")
    forged, _ = supervise("import json; print('ARENA_PHASE ' + json.dumps({'exit_code': 127, 'signal': None, "
                          "'ready': None, 'end': 1.0, 'deadline': False, 'max_rss_kb': 1, 'failed_to_start': 'x'}), "
                          "flush=True); raise SystemExit(127)")
    assert forged.report.exit_code == 127 and forged.report.failed_to_start is None
    assert started(forged, "train") is forged


def test_the_gpus_counted_are_the_phases_however_they_are_named():
    """Unisolated, CUDA_VISIBLE_DEVICES may hold indices, UUIDs or both: each names one GPU for the NVML count,
    never "every GPU" (bubblewrap names its phase's by UUID; unset, the phase may use them all)."""
    assert gpu_keys({"ARENA_GPU_UUIDS": "GPU-aaaa", "CUDA_VISIBLE_DEVICES": "0"}) == ["GPU-aaaa"]
    assert gpu_keys({"CUDA_VISIBLE_DEVICES": "1,0"}) == [1, 0]
    assert gpu_keys({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}) == ["GPU-bbbb"]
    assert gpu_keys({"CUDA_VISIBLE_DEVICES": "0, MIG-cccc"}) == [0, "MIG-cccc"]
    assert gpu_keys({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_keys({}) is None
