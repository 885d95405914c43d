"""The seccomp program itself, run by a small interpreter of the classic BPF it is made of, for every
architecture it covers (the sandbox tests run it for real, but only on this machine's)."""

from __future__ import annotations

import errno
import struct

import pytest

from sandbox.seccomp import (
    AARCH64,
    ARCH_OFFSET,
    ARG0_OFFSET,
    ARG2_OFFSET,
    ARM,
    I386,
    JEQ_K,
    JSET_K,
    LD_W_ABS,
    NR_OFFSET,
    RET_K,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    X32_BIT,
    X86_64,
    sandbox_filter,
)

MADV_DONTNEED, MADV_COLD, MADV_PAGEOUT, MADV_HUGEPAGE = 4, 20, 21, 14
# the calls the filter is for, by their numbers in the kernel's tables: {architecture: {name: number}}
NUMBERS = {
    X86_64: {"add_key": 248, "keyctl": 250, "request_key": 249, "fadvise64": 221, "readahead": 187,
             "preadv2": 327, "pwritev2": 328, "io_uring_setup": 425, "cachestat": 451, "mincore": 27,
             "process_madvise": 440, "sched_setaffinity": 203, "madvise": 28, "read": 0, "mmap": 9,
             "clone": 56, "unshare": 272, "clone3": 435},
    I386: {"add_key": 286, "keyctl": 288, "request_key": 287, "fadvise64": 250, "fadvise64_64": 272, "readahead": 225,
           "preadv2": 378, "pwritev2": 379, "io_uring_setup": 425, "cachestat": 451, "mincore": 218,
           "process_madvise": 440, "sched_setaffinity": 241, "madvise": 219, "read": 3, "mmap": 90,
           "clone": 120, "unshare": 310, "clone3": 435},
    AARCH64: {"add_key": 217, "keyctl": 219, "request_key": 218, "fadvise64": 223, "readahead": 213,
              "preadv2": 286, "pwritev2": 287, "io_uring_setup": 425, "cachestat": 451, "mincore": 232,
              "process_madvise": 440, "sched_setaffinity": 122, "madvise": 233, "read": 63, "mmap": 222,
              "clone": 220, "unshare": 97, "clone3": 435},
    ARM: {"add_key": 309, "keyctl": 311, "request_key": 310, "fadvise64": 270, "readahead": 225,  # arm_fadvise64_64
          "preadv2": 392, "pwritev2": 393, "io_uring_setup": 425, "cachestat": 451, "mincore": 219,
          "process_madvise": 440, "sched_setaffinity": 241, "madvise": 220, "read": 3, "mmap": 192,
          "clone": 120, "unshare": 337, "clone3": 435},
}
X32 = {name: X32_BIT | number for name, number in NUMBERS[X86_64].items()}
X32.update(preadv2=X32_BIT | 546, pwritev2=X32_BIT | 547)  # x32 has its own numbers for these two
EPERM, ENOSYS = SECCOMP_RET_ERRNO | errno.EPERM, SECCOMP_RET_ERRNO | errno.ENOSYS
EXPECTED = {"add_key": EPERM, "keyctl": EPERM, "request_key": EPERM, "fadvise64": EPERM, "fadvise64_64": EPERM,
            "readahead": EPERM, "preadv2": ENOSYS, "pwritev2": ENOSYS, "io_uring_setup": ENOSYS, "cachestat": ENOSYS,
            "mincore": EPERM, "process_madvise": ENOSYS, "read": SECCOMP_RET_ALLOW, "mmap": SECCOMP_RET_ALLOW,
            "clone3": ENOSYS}
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, THREAD = 0x20000, 0x10000000, 0x20000000, 0x3D0F00  # THREAD: pthread's


def run_filter(program: bytes, arch: int, nr: int, advice: int = 0, flags: int = 0) -> int:
    """What the kernel would do with the call: the program's return value for this `struct seccomp_data`
    (`flags` its first argument, `advice` its third)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, flags, 0, advice, 0, 0, 0)
    assert len(data) == 64 and struct.unpack_from("<I", data, ARG2_OFFSET)[0] == advice & 0xFFFFFFFF
    assert struct.unpack_from("<I", data, ARG0_OFFSET)[0] == flags & 0xFFFFFFFF
    instructions = [struct.unpack_from("HBBI", program, at) for at in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        if code == LD_W_ABS:
            accumulator = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == JEQ_K:
            pc += 1 + (jt if accumulator == k else jf)
        elif code == JSET_K:
            pc += 1 + (jt if accumulator & k else jf)
        else:
            assert code == RET_K, f"instruction {code:#x} at {pc}"
            return k


@pytest.mark.parametrize("arch, numbers", [(X86_64, NUMBERS[X86_64]), (X86_64, X32), (I386, NUMBERS[I386]),
                                           (AARCH64, NUMBERS[AARCH64]), (ARM, NUMBERS[ARM])],
                         ids=["x86_64", "x32", "i386", "aarch64", "arm"])
def test_each_call_gets_its_answer_on_every_architecture(arch, numbers):
    assert (NR_OFFSET, ARCH_OFFSET) == (0, 4)
    for pinned in (False, True):
        program = sandbox_filter(pinned)
        for name, number in numbers.items():
            if name in EXPECTED:
                assert run_filter(program, arch, number) == EXPECTED[name], name
        affinity = run_filter(program, arch, numbers["sched_setaffinity"])
        assert affinity == (EPERM if pinned else SECCOMP_RET_ALLOW)
        for advice, answer in ((MADV_PAGEOUT, EPERM), (MADV_COLD, EPERM), (MADV_DONTNEED, SECCOMP_RET_ALLOW),
                               (MADV_HUGEPAGE, SECCOMP_RET_ALLOW), (MADV_PAGEOUT | 1 << 32, EPERM)):
            assert run_filter(program, arch, numbers["madvise"], advice) == answer, advice
        for call in ("clone", "unshare"):  # a user namespace, alone or with others, fails; any other flags run
            for flags, answer in ((CLONE_NEWUSER, EPERM), (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID, EPERM),
                                  (CLONE_NEWNS, SECCOMP_RET_ALLOW), (THREAD, SECCOMP_RET_ALLOW),
                                  (0, SECCOMP_RET_ALLOW)):
                assert run_filter(program, arch, numbers[call], flags=flags) == answer, (call, hex(flags))
        checked = {number for name, number in numbers.items() if EXPECTED.get(name) != SECCOMP_RET_ALLOW}
        base = numbers["read"] & X32_BIT
        checked |= {numbers["clone"], numbers["unshare"]}
        for nr in set(range(base, base + 1000)) - checked:  # no other call is touched, whatever its arguments
            assert run_filter(program, arch, nr, MADV_PAGEOUT, CLONE_NEWUSER) == SECCOMP_RET_ALLOW, nr
