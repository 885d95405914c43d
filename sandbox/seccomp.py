"""The seccomp filter of every bubblewrap sandbox: calls that would reach past the sandbox fail with EPERM.

- The kernel's keyrings (`add_key`, `keyctl`, `request_key`) belong to a user, not to a namespace: a key a
  trial's process adds outlives its phase and arena itself, and any later trial run as the same user reads
  it, a channel from trial to trial that no directory or process cleanup closes. Docker's default filter
  refuses these calls too.
- Pinning a worker's sandbox to its share of the cores (sandbox/workers.py) is only advice to the kernel
  until the trial is kept from changing it: a trial that widened its affinity would train on its
  neighbours' cores, gaining steps and costing them theirs. Under bubblewrap there is no cgroup to hold it
  (Docker's cpuset is one), so a pinned sandbox's filter fails `sched_setaffinity` as well.

The program is classic BPF over `struct seccomp_data` (nr at offset 0, arch at 4): for each architecture
a trial's process could make the call in (x86-64, its x32 numbers, i386 through int 0x80, aarch64, 32-bit
arm), the calls' numbers fail; every other call is allowed. `bwrap --seccomp FD` installs it.
"""

from __future__ import annotations

import os
import struct

LD_W_ABS = 0x20     # BPF_LD | BPF_W | BPF_ABS: A = the 32-bit word at offset k of seccomp_data
JEQ_K = 0x15        # BPF_JMP | BPF_JEQ | BPF_K: jump jt if A == k, else jf
JA = 0x05           # BPF_JMP | BPF_JA: jump k
RET_K = 0x06        # BPF_RET | BPF_K: return k
NR_OFFSET, ARCH_OFFSET = 0, 4
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1

X32_BIT = 0x40000000
X86_64, I386, AARCH64, ARM = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028  # AUDIT_ARCH_*; x32 shares x86-64's
SCHED_SETAFFINITY = {X86_64: (203, X32_BIT | 203), I386: (241,), AARCH64: (122,), ARM: (241,)}  # arch -> numbers
KEYRING = {  # add_key, request_key, keyctl
    X86_64: (248, 249, 250, X32_BIT | 248, X32_BIT | 249, X32_BIT | 250),
    I386: (286, 287, 288), AARCH64: (217, 218, 219), ARM: (309, 310, 311)}


def deny_program(denied: dict[int, tuple[int, ...]]) -> bytes:
    """The filter: EPERM for the listed calls of each architecture, everything else allowed."""
    code: list[tuple[str, int, int]] = [("ld", ARCH_OFFSET, 0)]
    for arch, numbers in denied.items():
        code.append(("arch", arch, 1 + len(numbers) + 1))  # not this architecture: skip its block
        code.append(("ld", NR_OFFSET, 0))
        code += [("deny", number, 0) for number in numbers]
        code.append(("allow", 0, 0))
    allow, deny = len(code), len(code) + 1
    program = b""
    for index, (op, k, skip) in enumerate(code):
        if op == "ld":
            program += struct.pack("HBBI", LD_W_ABS, 0, 0, k)
        elif op == "arch":
            program += struct.pack("HBBI", JEQ_K, 0, skip, k)
        elif op == "deny":
            program += struct.pack("HBBI", JEQ_K, deny - index - 1, 0, k)
        else:
            program += struct.pack("HBBI", JA, 0, 0, allow - index - 1)
    program += struct.pack("HBBI", RET_K, 0, 0, SECCOMP_RET_ALLOW)
    program += struct.pack("HBBI", RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)
    return program


def sandbox_filter_fd(pinned: bool) -> int:
    """A file descriptor holding the filter (with `pinned`, affinity changes fail too), positioned at its start,
    for `bwrap --seccomp FD`; the caller closes it once bwrap has started."""
    denied = {arch: numbers + (SCHED_SETAFFINITY[arch] if pinned else ()) for arch, numbers in KEYRING.items()}
    fd = os.memfd_create("arena-seccomp", 0)
    os.write(fd, deny_program(denied))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
