"""runc's -ENOSYS stub: the stub's logic run through a small cBPF interpreter (pure), then real
filters loaded by the kernel in forked children and in containers (syscalls newer than the
profile get ENOSYS)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner
from test_seccomp import USERS, errno_of, run_child

from pyouki import seccomp_enosys
from pyouki.seccomp import _plan, _pyseccomp, compile_filter

X86_64 = 0xC000003E
I386 = 0x40000003
AARCH64 = 0xC00000B7
FILTER = 0x7FFF0000  # what the program after the stub returns here: SECCOMP_RET_ALLOW
ENOSYS = 0x00050000 | errno.ENOSYS


def run_bpf(program: bytes, nr: int, arch: int) -> int:
    """Interpret the subset of classic BPF the stub uses over a struct seccomp_data."""
    insns = [struct.unpack_from("=HBBI", program, off) for off in range(0, len(program), 8)]
    data = {0: nr, 4: arch}
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = data[k]
        elif code == 0x06:  # ret k
            return k
        elif code == 0x05:  # ja k
            pc += k
        elif code in (0x15, 0x25, 0x45):  # jeq, jgt, jset
            hit = {0x15: acc == k, 0x25: acc > k, 0x45: bool(acc & k)}[code]
            pc += jt if hit else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def with_filter(stub: bytes) -> bytes:
    return stub + struct.pack("=HBBI", 0x06, 0, 0, FILTER)


def test_above_the_highest_known_gets_enosys() -> None:
    prog = with_filter(seccomp_enosys.stub({X86_64: (300, None)}))
    assert run_bpf(prog, 300, X86_64) == FILTER
    assert run_bpf(prog, 12, X86_64) == FILTER
    assert run_bpf(prog, 301, X86_64) == ENOSYS
    assert run_bpf(prog, 435, X86_64) == ENOSYS
    # x32 numbers (bit 30) are not compared with x86_64's maximum: the filter decides
    assert run_bpf(prog, 0x40000000 | 500, X86_64) == FILTER
    # another architecture goes straight into the filter
    assert run_bpf(prog, 1000, I386) == FILTER


def test_x32_and_each_architecture_have_their_own_maximum() -> None:
    prog = with_filter(seccomp_enosys.stub({X86_64: (300, 0x40000000 | 200), I386: (400, None),
                                            AARCH64: (100, None)}))
    assert run_bpf(prog, 301, X86_64) == ENOSYS
    assert run_bpf(prog, 0x40000000 | 200, X86_64) == FILTER
    assert run_bpf(prog, 0x40000000 | 201, X86_64) == ENOSYS
    assert run_bpf(prog, 400, I386) == FILTER and run_bpf(prog, 401, I386) == ENOSYS
    assert run_bpf(prog, 100, AARCH64) == FILTER and run_bpf(prog, 101, AARCH64) == ENOSYS


def test_no_maximum_no_stub() -> None:
    assert seccomp_enosys.stub({}) == b""
    assert seccomp_enosys.stub({X86_64: (None, None)}) == b""


def _allow_list(*extra: str) -> dict:
    # what a forked Python child needs after loading, and no syscall newer than exit_group
    names = ["read", "write", "close", "mmap", "munmap", "mprotect", "brk", "madvise", "rt_sigaction",
             "rt_sigprocmask", "futex", "getpid", "gettid", "exit", "exit_group", "fstat", "lseek", *extra]
    return {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]}


def _nr(name: str) -> int:
    lib = _pyseccomp()
    return int(lib.resolve_syscall(lib.Arch.NATIVE, name))


def _raw_syscall(nr: int) -> Callable[[], object]:
    libc = ctypes.CDLL(None, use_errno=True)

    def call() -> object:
        if libc.syscall(ctypes.c_long(nr), 0, 0, 0, 0) < 0:
            err = ctypes.get_errno()
            raise OSError(err, "")
        return None

    return call


@pytest.mark.parametrize("user", USERS)
def test_newer_syscalls_fail_with_enosys_under_an_old_profile(user: str) -> None:
    profile = _allow_list()
    highest = max(_nr(n) for n in profile["syscalls"][0]["names"])
    newer = _nr("faccessat2")  # Linux 5.8; glibc falls back to faccessat on ENOSYS only
    assert newer > highest
    f = compile_filter(profile)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        # a syscall the profile predates, one it knows but refuses, one no kernel has
        report(str(errno_of(_raw_syscall(newer))))
        report(str(errno_of(_raw_syscall(_nr("getppid")))))
        report(str(errno_of(_raw_syscall(1000))))

    child = run_child(body, user=user)
    assert child.exit_code == 0, child.output
    assert child.output.split() == [str(errno.ENOSYS), str(errno.EPERM), str(errno.ENOSYS)]


@pytest.mark.parametrize("user", USERS)
def test_a_profile_naming_the_syscall_keeps_its_default(user: str) -> None:
    """Once the profile knows faccessat2 (it lists a newer one), refusing it is deliberate: EPERM."""
    profile = _allow_list("faccessat2")  # the newest named, and not even the one refused below
    profile["syscalls"].append({"names": ["close_range"], "action": "SCMP_ACT_ERRNO"})
    f = compile_filter(profile)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(errno_of(_raw_syscall(_nr("pidfd_open")))))  # 434 < faccessat2's 439: the default

    child = run_child(body, user=user)
    assert child.exit_code == 0, child.output
    assert child.output.split() == [str(errno.EPERM)]


@pytest.mark.parametrize("profile", [
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]},
    {"defaultAction": "SCMP_ACT_LOG", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]},
    {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS,
     "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}]},
    {"defaultAction": "SCMP_ACT_TRACE", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}]},
], ids=["allow", "log", "errno-enosys", "trace"])
def test_no_stub_where_runc_adds_none(profile: dict) -> None:
    assert not _plan(profile, "linux.seccomp").enosys
    assert _plan(_allow_list(), "linux.seccomp").enosys
    assert _plan({"defaultAction": "SCMP_ACT_KILL_PROCESS"}, "linux.seccomp").enosys


SYSCALL_C = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        long r = syscall(atol(argv[i]), 0, 0, 0, 0, 0, 0);
        printf("%d\n", r < 0 ? errno : 0);
    }
    return 0;
}
"""


def test_in_a_container_newer_syscalls_get_enosys(runner: Runner, make_bundle: Callable[..., Bundle],
                                                  workdir: Path) -> None:
    """A tiny static program in the container calls syscalls by number under an old allow-list."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler to build the static test program")
    bundle = make_bundle()
    (workdir / "syscall.c").write_text(SYSCALL_C)
    program = bundle.rootfs / "syscall"
    subprocess.run(["cc", "-static", "-O1", "-o", str(program), str(workdir / "syscall.c")], check=True)
    if runner.owner:
        os.chown(program, *runner.owner)
    lib = _pyseccomp()
    # an allow-list of every syscall up to number 330 but getppid: older than faccessat2 (439)
    names = [lib.resolve_syscall(lib.Arch.NATIVE, nr).decode() for nr in range(331)]
    names = [n for n in names if n != "getppid"]
    # runc patches only the architectures a profile lists (engines' profiles list them); pyouki
    # patches the native one also when the list is empty (see the forked-child tests above)
    arch = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}[os.uname().machine]
    bundle.linux["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": [arch],
                               "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]}
    bundle.process["noNewPrivileges"] = True  # loaded just before execve: pyouki's own steps stay out of it
    bundle.set_args("/syscall", str(_nr("faccessat2")), str(_nr("getppid")), "1000")
    out = runner.run(runner.new_id(), bundle).ok().stdout.split()
    assert out == [str(errno.ENOSYS), str(errno.EPERM), str(errno.ENOSYS)]
