"""The seccomp filter of every confined sandbox: calls that would reach past the sandbox fail.

- The kernel's keyrings (`add_key`, `keyctl`, `request_key`) belong to a user, not to a namespace: a key a
  trial's process adds outlives its phase and arena itself, and any later trial run as the same user reads
  it, a channel from trial to trial that no directory or process cleanup closes.
- The page cache is the kernel's too: the calls that drop chosen pages of a shared file or ask which are
  cached fail (below). Docker's default filter allows them.
- A user namespace of its own would make a trial root inside it, in reach of kernel code (mounts,
  netfilter, ...) that only root can otherwise call: `unshare` and `clone` with CLONE_NEWUSER fail, and
  `clone3`, whose flags sit in a struct no filter can read, fails with ENOSYS, on which glibc falls back
  to `clone` (as under Docker's default filter). bubblewrap's --disable-userns does the same only when
  arena is not root.
- Pinning a worker's sandbox to its share of the cores (sandbox/workers.py) is only advice to the kernel
  until the trial is kept from changing it: a trial that widened its affinity would train on its
  neighbours' cores, gaining steps and costing them theirs. Under bubblewrap there is no cgroup to hold it
  (Docker's cpuset is one), so a pinned sandbox's filter fails `sched_setaffinity` as well.

The program is classic BPF over `struct seccomp_data` (nr at offset 0, arch at 4): for each architecture
a trial's process could make the call in (x86-64, its x32 numbers, i386 through int 0x80, aarch64, 32-bit
arm), the calls' numbers fail with their errno; every other call is allowed. `bwrap --seccomp FD` installs it
for every process of a bubblewrap sandbox; in a Docker container, where Docker's own filter cannot be
replaced without copying its profile, the supervisor installs it for the harness and all it starts, on top
of Docker's (seccomp filters stack: a call fails if either filter fails it).
"""

from __future__ import annotations

import errno
import os
import struct

LD_W_ABS = 0x20     # BPF_LD | BPF_W | BPF_ABS: A = the 32-bit word at offset k of seccomp_data
JEQ_K = 0x15        # BPF_JMP | BPF_JEQ | BPF_K: jump jt if A == k, else jf
JSET_K = 0x45       # BPF_JMP | BPF_JSET | BPF_K: jump jt if A & k, else jf
RET_K = 0x06        # BPF_RET | BPF_K: return k
NR_OFFSET, ARCH_OFFSET = 0, 4
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

X32_BIT = 0x40000000
X86_64, I386, AARCH64, ARM = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028  # AUDIT_ARCH_*; x32 shares x86-64's
Calls = dict[int, dict[int, int]]  # architecture -> {a call's number there: the errno it fails with}


def failing(numbers: dict[int, tuple[int, ...]], error: int) -> Calls:
    return {arch: dict.fromkeys(found, error) for arch, found in numbers.items()}


SCHED_SETAFFINITY = failing({X86_64: (203, X32_BIT | 203), I386: (241,), AARCH64: (122,), ARM: (241,)}, errno.EPERM)
KEYRING = failing({  # add_key, request_key, keyctl
    X86_64: (248, 249, 250, X32_BIT | 248, X32_BIT | 249, X32_BIT | 250),
    I386: (286, 287, 288), AARCH64: (217, 218, 219), ARM: (309, 310, 311)}, errno.EPERM)
# The page cache is the kernel's, shared by every sandbox: a trial that drops chosen pages of a file all trials
# read (fadvise DONTNEED) and a later one that asks which are cached without reading them (preadv2 RWF_NOWAIT,
# cachestat) pass bits between trials. These calls fail; their callers fall back (ENOSYS: preadv2 without
# flags becomes preadv in glibc). Timing a read still tells a cached page from one on disk, but without
# dropping pages a trial can only set bits, and memory pressure clears them all.
PAGE_CACHE_HINTS = failing({  # readahead, fadvise64 (and i386's fadvise64_64, arm's arm_fadvise64_64)
    X86_64: (187, 221, X32_BIT | 187, X32_BIT | 221), I386: (225, 250, 272), AARCH64: (213, 223), ARM: (225, 270)},
    errno.EPERM)
PAGE_CACHE_PROBES = failing({  # preadv2, pwritev2, io_uring_setup, cachestat
    X86_64: (327, 328, 425, 451, X32_BIT | 546, X32_BIT | 547, X32_BIT | 425, X32_BIT | 451),
    I386: (378, 379, 425, 451), AARCH64: (286, 287, 425, 451), ARM: (392, 393, 425, 451)}, errno.ENOSYS)
PAGE_CACHE_RESIDENCY = failing({  # mincore: which pages of a mapping are cached
    X86_64: (27, X32_BIT | 27), I386: (218,), AARCH64: (232,), ARM: (219,)}, errno.EPERM)
PROCESS_MADVISE = failing({  # madvise on another process's memory (so with any advice, PAGEOUT too)
    X86_64: (440, X32_BIT | 440), I386: (440,), AARCH64: (440,), ARM: (440,)}, errno.ENOSYS)
# madvise itself is everyday work (malloc, torch), but two of its advices reclaim a mapped file's pages from the
# page cache: a trial that owns the dataset's files (arena not run as root) could drop chosen pages with them.
MADVISE = {X86_64: (28, X32_BIT | 28), I386: (219,), AARCH64: (233,), ARM: (220,)}
MADV_COLD, MADV_PAGEOUT = 20, 21
ARG0_OFFSET = 16  # the low word of args[0] in seccomp_data (every architecture here is little-endian)
ARG2_OFFSET = 32  # and of args[2]
# clone and unshare, whose first argument holds the namespace flags on every architecture here
NEW_NAMESPACES = {X86_64: (56, 272, X32_BIT | 56, X32_BIT | 272), I386: (120, 310), AARCH64: (220, 97), ARM: (120, 337)}
CLONE_NEWUSER = 0x10000000
CLONE3 = failing({X86_64: (435, X32_BIT | 435), I386: (435,), AARCH64: (435,), ARM: (435,)}, errno.ENOSYS)


def merged(*sets: Calls) -> Calls:
    calls: Calls = {}
    for each in sets:
        for arch, numbers in each.items():
            calls.setdefault(arch, {}).update(numbers)
    return calls


def instruction(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def deny_program(denied: Calls) -> bytes:
    """The filter: each listed call of each architecture fails with its errno, as do clone and unshare with
    CLONE_NEWUSER and madvise with MADV_COLD or MADV_PAGEOUT (EPERM); everything else is allowed."""
    program = instruction(LD_W_ABS, ARCH_OFFSET)
    for arch, numbers in denied.items():
        block = instruction(LD_W_ABS, NR_OFFSET)
        for number, error in numbers.items():
            block += instruction(JEQ_K, number, jf=1)  # not this call: skip its return
            block += instruction(RET_K, SECCOMP_RET_ERRNO | error)
        for number in NEW_NAMESPACES.get(arch, ()):
            block += instruction(JEQ_K, number, jf=4)  # not this call: past its four instructions
            block += instruction(LD_W_ABS, ARG0_OFFSET)  # its flags
            block += instruction(JSET_K, CLONE_NEWUSER, jf=1)
            block += instruction(RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
            block += instruction(RET_K, SECCOMP_RET_ALLOW)  # other flags (A no longer holds the call's number)
        for number in MADVISE.get(arch, ()):
            block += instruction(JEQ_K, number, jf=6)  # not madvise: past its six instructions
            block += instruction(LD_W_ABS, ARG2_OFFSET)  # its advice
            for advice in (MADV_COLD, MADV_PAGEOUT):
                block += instruction(JEQ_K, advice, jf=1)
                block += instruction(RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
            block += instruction(RET_K, SECCOMP_RET_ALLOW)  # another advice (A no longer holds the call's number)
        block += instruction(RET_K, SECCOMP_RET_ALLOW)
        program += instruction(JEQ_K, arch, jf=len(block) // 8) + block  # another architecture: skip this block
    return program + instruction(RET_K, SECCOMP_RET_ALLOW)


def sandbox_filter(pinned: bool) -> bytes:
    """The filter (with `pinned`, affinity changes fail too)."""
    return deny_program(merged(KEYRING, PAGE_CACHE_HINTS, PAGE_CACHE_PROBES, PAGE_CACHE_RESIDENCY, PROCESS_MADVISE,
                               CLONE3, SCHED_SETAFFINITY if pinned else {}))


def sandbox_filter_fd(pinned: bool) -> int:
    """A file descriptor holding `sandbox_filter(pinned)`, positioned at its start, for `bwrap --seccomp FD`;
    the caller closes it once bwrap has started."""
    fd = os.memfd_create("arena-seccomp", 0)
    os.write(fd, sandbox_filter(pinned))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
