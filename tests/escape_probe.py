"""What a trial can reach from inside a phase sandbox: every attempt below must fail where it should.

Standard library only, so it runs under any interpreter, and it is a real attack, not a simulation:
the tests run it as a phase's command, on every backend (tests/test_backend_conformance.py) and as an
unprivileged user (tests/test_isolation.py).

    python escape_probe.py '{"paths": [...], "host_dirs": {"/usr": [dev, inode], ...}, "secrets": [...],
                             "port": 12345, "marker": "..."}'

prints one line `PROBE {json}` of findings.
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys

PR_ATTACH = 16  # PTRACE_ATTACH


def attempt(action) -> str:
    """'ok' when the action succeeded, else the error it met."""
    try:
        action()
        return "ok"
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        return f"{type(e).__name__}: {e}"


def write(path: str) -> None:
    with open(path, "w") as f:
        f.write("probe")


def connect(host: str, port: int) -> None:
    socket.create_connection((host, port), timeout=3).close()


def ptrace(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(PR_ATTACH, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(64)


def same_as_the_hosts(path: str, identity: list[int]) -> bool:
    """Whether `path` here is the host's own directory (same device and inode), not one the sandbox made."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return [info.st_dev, info.st_ino] == identity


def leave_a_survivor(marker: str) -> None:
    """A process in its own session that tries to outlive the phase (the test looks for it afterwards)."""
    if os.fork() == 0:
        os.setsid()
        subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(120)  # {marker}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os._exit(0)
    _, status = os.wait()
    # the survivor was started: a test that finds none afterwards proves the sandbox ended it, not that it never ran
    assert status == 0, f"the process that starts the survivor failed (wait status {status})"


def probe(spec: dict) -> dict:
    parent = os.getppid()
    found = {
        "uid": os.getuid(), "euid": os.geteuid(),
        "caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0],
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "internet": attempt(lambda: connect("1.1.1.1", 53)),
        "host_loopback": attempt(lambda: connect("127.0.0.1", spec["port"])) if spec.get("port") else None,
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "host_pid_visible": os.path.exists(f"/proc/{spec['host_pid']}") if spec.get("host_pid") else None,
        "paths_visible": [p for p in spec.get("paths", []) if os.path.exists(p)],
        "host_dirs_shown": sorted(p for p, identity in spec.get("host_dirs", {}).items()
                                  if same_as_the_hosts(p, identity)),
        "write_usr": attempt(lambda: write("/usr/probe")),
        "write_etc": attempt(lambda: write("/etc/probe")),
        "write_trial": attempt(lambda: write("/trial/harness.py")),
        "write_data": attempt(lambda: write("/data/meta.json")) if os.path.isdir("/data") else None,
        "write_out": attempt(lambda: write("/trial/out/probe")),
        "write_tmp": attempt(lambda: write("/tmp/probe")),
        "sysctl": attempt(lambda: write("/proc/sys/kernel/core_pattern")),
        "parent_environ": attempt(lambda: read(f"/proc/{parent}/environ")),
        "parent_mem": attempt(lambda: read(f"/proc/{parent}/mem")),
        "ptrace_parent": attempt(lambda: ptrace(parent)),
        "kill_init": attempt(lambda: os.kill(1, signal.SIGKILL)),
        "env_secrets": [s for s in spec.get("secrets", []) if any(s in v for v in os.environ.values())],
        "mount_sources": [line.split()[3] for line in open("/proc/self/mountinfo")],
    }
    if spec.get("marker"):
        leave_a_survivor(spec["marker"])
    return found


if __name__ == "__main__":
    print("PROBE " + json.dumps(probe(json.loads(sys.argv[1]))), flush=True)
