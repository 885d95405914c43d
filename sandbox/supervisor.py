"""The first process of every phase sandbox: runs the harness, measures it from outside, and ends it.

    python3 supervisor.py --deadline SECONDS [--user UID:GID] [--sandboxed] -- COMMAND...

Standard library only, and no trial code ever runs in this process. It starts COMMAND with its output
on a pipe, relays every line, and takes the time of the first ARENA_READY line (printed by the harness
before it imports any trial code). When COMMAND exits, or at the deadline, every other process of the
phase is killed (with --sandboxed, every process of its pid namespace; unisolated, every descendant), so
nothing the trial started outlives the phase. Then it prints one line of its own:

    ARENA_PHASE {"exit_code": 0, "signal": null, "ready": 2.1, "end": 35.0, "deadline": false, "max_rss_kb": ...}

with times in seconds since it started. `max_rss_kb` is the largest resident set of any process of the
phase, as the kernel counted it. Only a line printed by a supervisor that then exits with code 0 counts,
and nothing of the trial is alive by then to print after it.

As root (in a container, or under bubblewrap run by root) it hands COMMAND to `--user` and keeps only
the right to kill it; otherwise COMMAND runs as the same user, and the supervisor makes itself
non-dumpable so the trial can neither trace it nor read its memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import time

READY_LINE = b"ARENA_READY"
PHASE_PREFIX = "ARENA_PHASE "
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def parse(argv: list[str]) -> tuple[float, tuple[int, int] | None, bool, list[str]]:
    if "--" not in argv:
        sys.exit("usage: supervisor.py --deadline SECONDS [--user UID:GID] [--sandboxed] -- COMMAND...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    deadline = float(options[options.index("--deadline") + 1])
    user = None
    if "--user" in options:
        uid, gid = options[options.index("--user") + 1].split(":")
        user = (int(uid), int(gid))
    return deadline, user, "--sandboxed" in options, command


def start(command: list[str], user: tuple[int, int] | None) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.close(read_end)
            os.close(write_end)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            if user is not None:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            os.execvp(command[0], command)
        except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
            os.write(2, f"supervisor: cannot start {command[0]}: {e}\n".encode())
        os._exit(127)
    os.close(write_end)
    return pid, read_end


def children() -> list[int]:
    """Our child processes; as a subreaper, every orphaned descendant becomes one of them."""
    mine = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            if stat[stat.rindex(")") + 2:].split()[1] == mine:
                found.append(int(entry))
    return found


def kill_everything_else(sandboxed: bool) -> None:
    """SIGKILL the rest of the phase: in our own pid namespace every process we may signal (kill(-1)
    spares only ourselves and PID 1); otherwise, unisolated, only our descendants."""
    if sandboxed:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing else was left
        return
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    deadline, user, sandboxed, command = parse(argv)
    origin = time.monotonic()
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the trial come to us, so we reap and count them
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    child, pipe = start(command, user)
    out = sys.stdout.buffer
    ready = end = None
    exit_code = killed_by = None
    hit_deadline = False
    max_rss = 0
    pending = b""
    open_pipe = True
    while open_pipe or end is None:
        remaining = deadline - (time.monotonic() - origin)
        if remaining <= 0:
            hit_deadline = True
            break
        if open_pipe:
            readable, _, _ = select.select([pipe], [], [], min(remaining, 0.2))
            if readable:
                chunk = os.read(pipe, 1 << 16)
                if not chunk:
                    open_pipe = False
                else:
                    if ready is None and READY_LINE in pending + chunk:
                        ready = time.monotonic() - origin
                    pending = (pending + chunk)[-len(READY_LINE):]
                    out.write(chunk)
                    out.flush()
        else:
            time.sleep(0.05)
        while True:  # reap what has exited: the harness, and orphans passed to us
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            max_rss = max(max_rss, usage.ru_maxrss)
            if pid == child:
                end = time.monotonic() - origin
                if os.WIFEXITED(status):
                    exit_code = os.WEXITSTATUS(status)
                else:
                    killed_by = os.WTERMSIG(status)
        if end is not None:
            kill_everything_else(sandboxed)  # the harness is done: whatever it left behind goes now
    while True:  # killed processes' own children come to us in turn, until none is left
        kill_everything_else(sandboxed)
        try:
            _, _, usage = os.wait4(-1, 0)
            max_rss = max(max_rss, usage.ru_maxrss)
        except ChildProcessError:
            break
    report = {"exit_code": exit_code, "signal": killed_by, "ready": ready, "end": end,
              "deadline": hit_deadline, "max_rss_kb": max_rss}
    out.write(("\n" + PHASE_PREFIX + json.dumps(report) + "\n").encode())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
