"""runc's -ENOSYS stub for seccomp filters: syscalls newer than the profile fail with ENOSYS.

An allow-list profile written before a syscall existed (clone3, faccessat2, close_range...) makes
it fail with the default action's errno, typically EPERM, and glibc only falls back to the older
syscall on ENOSYS: programs break under old profiles. runc therefore prepends a few cBPF
instructions to libseccomp's program: per architecture of the filter, a syscall number above the
highest one the profile names returns ENOSYS, anything else goes on into the filter. This module
builds that stub (pure logic: numbers in, bytes out); pyouki.seccomp decides when it applies.

x86_64 and x32 share AUDIT_ARCH_X86_64 and differ by bit 30 of the syscall number, so that
architecture compares each mode with its own maximum (or leaves a mode it has none for to the
filter, which applies its bad-architecture action), like runc.
"""

from __future__ import annotations

import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
RET_ENOSYS = 0x00050000 | 38  # SECCOMP_RET_ERRNO | ENOSYS

# classic BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGT_K = 0x25
_JSET_K = 0x45
_JA = 0x05
_RET_K = 0x06
# struct seccomp_data: nr at 0, arch at 4
_OFF_NR = 0
_OFF_ARCH = 4

_END = -1  # placeholder target: the first instruction after the stub (libseccomp's filter)

# (code, jt, jf, k); a JA whose k is _END is resolved once the stub's length is known
_Insn = tuple[int, int, int, int]


def _limit(maximum: int) -> list[_Insn]:
    """nr > maximum returns ENOSYS, anything else continues into the filter."""
    return [(_JGT_K, 0, 1, maximum), (_RET_K, 0, 0, RET_ENOSYS), (_JA, 0, 0, _END)]


def _section(arch: int, plain: int | None, x32: int | None) -> list[_Insn]:
    """The instructions for one native architecture, entered with the arch loaded in A."""
    body: list[_Insn] = [(_LD_W_ABS, 0, 0, _OFF_NR)]
    if arch == AUDIT_ARCH_X86_64:
        plain_part = _limit(plain) if plain is not None else [(_JA, 0, 0, _END)]
        x32_part = _limit(x32) if x32 is not None else [(_JA, 0, 0, _END)]
        body += [(_JSET_K, len(plain_part), 0, X32_SYSCALL_BIT)] + plain_part + x32_part
    else:
        assert plain is not None
        body += _limit(plain)
    # not this architecture: skip the body, on to the next section
    return [(_JEQ_K, 0, len(body), arch)] + body


def stub(maxima: dict[int, tuple[int | None, int | None]]) -> bytes:
    """The stub as struct sock_filter bytes, to prepend to a filter's program.

    maxima maps an AUDIT_ARCH_* value to (highest syscall number of its plain mode, highest of its
    x32 mode, bit 30 included); None where the profile names none. Empty maxima: no stub.
    """
    insns: list[_Insn] = []
    for arch, (plain, x32) in sorted(maxima.items()):
        if plain is None and x32 is None:
            continue
        insns += _section(arch, plain, x32)
    if not insns:
        return b""
    insns.insert(0, (_LD_W_ABS, 0, 0, _OFF_ARCH))
    out = []
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code == _JA and k == _END:
            k = len(insns) - (pc + 1)
        out.append(struct.pack("=HBBI", code, jt, jf, k))
    return b"".join(out)
