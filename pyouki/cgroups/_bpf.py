"""The bpf(2) commands the v2 device filter needs: attribute layouts here, the syscall in pyouki.syscalls.

BPF_PROG_LOAD a BPF_PROG_TYPE_CGROUP_DEVICE program, BPF_PROG_QUERY what is attached already,
BPF_PROG_ATTACH the new one and BPF_PROG_DETACH the old ones: the runc sequence, so an update
never leaves the container without a filter.
"""

from __future__ import annotations

import ctypes
import os
import struct

BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_ATTR_SIZE = 128  # larger than the members we use; the kernel accepts a zero tail

def _bpf(cmd: int, attr: ctypes.Array) -> int:
    from pyouki import syscalls  # the one kernel boundary

    return syscalls.bpf(cmd, attr, _ATTR_SIZE)


def _attr(fmt: str, *values: object) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def load_device_program(insns: bytes) -> int:
    """BPF_PROG_LOAD; returns the program fd. The verifier log is added to the error on failure."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(4096)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf
    attr = _attr(
        "<IIQQIIQ",
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(insns) // 8,
        ctypes.addressof(code),
        ctypes.addressof(lic),
        1,
        len(log),
        ctypes.addressof(log),
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        detail = log.value.decode(errors="replace").strip().splitlines()
        if detail:
            raise OSError(e.errno, f"{e.strerror} ({detail[-1]})") from None
        raise


def query_device_programs(cgroup_fd: int) -> tuple[list[int], int]:
    """Ids of the device programs attached to the cgroup, and their attach flags."""
    ids = (ctypes.c_uint32 * 64)()
    # target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    attr = _attr("<IIIIQI", cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), len(ids))
    _bpf(BPF_PROG_QUERY, attr)
    flags, count = struct.unpack_from("<I", attr, 12)[0], struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count]), flags


def _prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _attr("<I", prog_id))


def attach_device_program(cgroup_dir: str, insns: bytes) -> None:
    """Load insns and make it the only device program on cgroup_dir (old ones detached after)."""
    prog_fd = load_device_program(insns)
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            old_ids, old_flags = query_device_programs(cg_fd)
            if len(old_ids) == 1 and not old_flags & BPF_F_ALLOW_MULTI:
                # A single non-multi program (e.g. from another runtime): attaching without flags replaces it.
                _bpf(BPF_PROG_ATTACH, _attr("<IIII", cg_fd, prog_fd, BPF_CGROUP_DEVICE, 0))
                return
            _bpf(BPF_PROG_ATTACH, _attr("<IIII", cg_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI))
            # With several programs the kernel ANDs their verdicts, so removing the old ones only
            # after the new one is in place never lets an access through that either would deny.
            for pid in old_ids:
                old_fd = _prog_fd_by_id(pid)
                try:
                    _bpf(BPF_PROG_DETACH, _attr("<IIII", cg_fd, old_fd, BPF_CGROUP_DEVICE, 0))
                finally:
                    os.close(old_fd)
        finally:
            os.close(cg_fd)
    finally:
        os.close(prog_fd)  # the attachment holds its own reference


def attached_program_count(cgroup_dir: str) -> int:
    """How many device programs are attached to cgroup_dir (for checks and tests)."""
    cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return len(query_device_programs(cg_fd)[0])
    finally:
        os.close(cg_fd)
