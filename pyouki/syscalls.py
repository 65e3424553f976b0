"""The kernel boundary: the few Linux syscalls that Python 3.11's stdlib lacks, through ctypes.

Every wrapper raises OSError carrying errno, so callers can add context (what, where) and
turn it into one line for the user. Nothing here decides policy.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# namespaces (linux/sched.h)
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_I_VERSION = 1 << 23
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# x86_64 and aarch64 syscall numbers for what libc may not export
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "keyctl": 250, "bpf": 321, "close_range": 436, "openat2": 437,
               "mount_setattr": 442, "sched_setattr": 314, "ioprio_set": 251, "set_mempolicy": 238,
               "open_tree": 428, "move_mount": 429},
    "aarch64": {"pivot_root": 41, "keyctl": 219, "bpf": 280, "close_range": 436, "openat2": 437,
                "mount_setattr": 442, "sched_setattr": 274, "ioprio_set": 30, "set_mempolicy": 237,
                "open_tree": 428, "move_mount": 429},
}
CLOSE_RANGE_CLOEXEC = 4
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
MOUNT_ATTR_IDMAP = 0x100000
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _machine() -> str:
    """The architecture this interpreter runs as. Not uname's: under a 32-bit personality
    (linux.personality LINUX32 is set before the container's last syscalls; `setarch i686 pyouki`)
    uname says i686 while the syscall numbers stay x86_64's."""
    import sys

    multiarch = getattr(sys.implementation, "_multiarch", "")  # "x86_64-linux-gnu"
    return multiarch.split("-")[0] if multiarch else os.uname().machine


def _nr(name: str) -> int:
    machine = _machine()
    try:
        return _SYSCALLS[machine][name]
    except KeyError:
        raise OSError(38, f"{name}(2) number unknown for {machine}") from None  # ENOSYS


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2))."""
    _check(_libc.unshare(ctypes.c_int(flags)))


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that fd refers to (setns(2))."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2)."""
    if _libc.mount.argtypes is None:  # typed once: no ctypes wrapper objects per call (once per mount)
        _libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)))


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)))


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2), by number: glibc has no wrapper."""
    _check(_libc.syscall(ctypes.c_long(_nr("pivot_root")), _b(new_root), _b(put_old)))


def bpf(cmd: int, attr: ctypes.Array, size: int) -> int:
    """bpf(2) with a prepared union bpf_attr buffer (see pyouki.cgroups._bpf for the commands)."""
    return _check(_libc.syscall(ctypes.c_long(_nr("bpf")), ctypes.c_int(cmd), attr, ctypes.c_uint(size)))


def set_link_up(name: str) -> None:
    """Bring a network interface up (SIOCGIFFLAGS/SIOCSIFFLAGS): the loopback of a new network
    namespace, as runc does. ioctls on a plain socket: netlink (pyroute2) costs ~150 ms to import."""
    import fcntl
    import struct

    fd = _check(_libc.socket(ctypes.c_int(2), ctypes.c_int(2 | os.O_CLOEXEC), ctypes.c_int(0)))  # AF_INET, DGRAM
    try:
        request = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(fd, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(fd, 0x8914, struct.pack("16sH22x", name.encode(), flags | 1))  # SIOCSIFFLAGS, IFF_UP
    finally:
        os.close(fd)


def join_session_keyring(name: str) -> None:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, name): a new session keyring for this process."""
    _check(_libc.syscall(ctypes.c_long(_nr("keyctl")), ctypes.c_int(1), _b(name)))


def sethostname(name: str) -> None:
    """sethostname(2) in the current UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))))


def setdomainname(name: str) -> None:
    """setdomainname(2) in the current UTS namespace."""
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) for options python-prctl does not cover (ambient capabilities, subreaper...)."""
    return _check(
        _libc.prctl(
            ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4), ctypes.c_ulong(arg5),
        )
    )


def get_child_subreaper() -> bool:
    """Whether this process is a child subreaper (prctl PR_GET_CHILD_SUBREAPER)."""
    value = ctypes.c_int(0)
    _check(_libc.prctl(ctypes.c_int(PR_GET_CHILD_SUBREAPER), ctypes.byref(value), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)))
    return bool(value.value)


# ioctl(pidfd, PIDFD_GET_INFO) (Linux 6.15): struct pidfd_info, its first 64 bytes (VER0)
PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11  # _IOWR(PIDFS_IOCTL_MAGIC, 11, 64 bytes)
PIDFD_INFO_EXIT = 0x08


def pidfd_exit_status(pidfd: int) -> int | None:
    """The wait status of a reaped process, from a pidfd opened before it was reaped; None while it
    has not been reaped (or on a kernel before 6.15, which does not keep it)."""
    import fcntl
    import struct

    info = bytearray(64)
    struct.pack_into("Q", info, 0, PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, info)
    except OSError:
        return None  # ENOTTY/EINVAL: an older kernel; ESRCH: gone without exit information
    if not struct.unpack_from("Q", info, 0)[0] & PIDFD_INFO_EXIT:
        return None
    return int(struct.unpack_from("i", info, 60)[0])  # exit_code, after 16 + 11 * 4 bytes


def close_range(first: int, flags: int = 0, last: int = 0xFFFFFFFF) -> None:
    """close_range(2): close the fds first..last, or with CLOSE_RANGE_CLOEXEC mark them close-on-exec."""
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("close_range")), ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags),
        )
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_call: list = []  # [syscall(2) typed for openat2, its number], made on first use


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open path relative to dirfd under the given RESOLVE_* restrictions.

    Called once per mount and masked path: through a prototype typed once (the integer arguments
    pass as in a variadic call), which halves ctypes' per-call cost (7 to 3.5 us, bench/scale).
    """
    if not _openat2_call:
        proto = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.POINTER(_OpenHow), ctypes.c_size_t, use_errno=True)
        _openat2_call[:] = [proto(("syscall", _libc)), _nr("openat2")]
    call, nr = _openat2_call
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(call(nr, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(_OpenHow)))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int, attr_clr: int = 0, recursive: bool = True) -> None:
    """mount_setattr(2): change flags of the mount at path (and below it when recursive)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("mount_setattr")), ctypes.c_int(-100), _b(path),
            ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def mount_setattr_fd(mount_fd: int, propagation: int = 0, recursive: bool = False) -> None:
    """mount_setattr(2) on the mount mount_fd names (a detached one too): its propagation type."""
    attr = _MountAttr(0, 0, propagation, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("mount_setattr")), ctypes.c_int(mount_fd), b"",
            ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def fstatfs_type(fd: int) -> int:
    """The f_type (filesystem magic, e.g. PROC_SUPER_MAGIC) of the filesystem holding fd (fstatfs(2))."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit; f_type comes first
    _check(_libc.fstatfs(ctypes.c_int(fd), buf))
    return ctypes.c_ulong.from_buffer(buf).value  # f_type is a word: long on every Linux ABI


def personality(persona: int) -> None:
    """personality(2): set the execution domain (kept across execve)."""
    _libc.personality.restype = ctypes.c_int
    _check(_libc.personality(ctypes.c_ulong(persona)))


class SchedAttr(ctypes.Structure):
    """struct sched_attr (linux/sched/types.h), SCHED_ATTR_SIZE_VER1: with the utilization clamps."""

    _fields_ = [
        ("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32),
    ]


def sched_setattr(attr: SchedAttr) -> None:
    """sched_setattr(2) for the calling thread (pid 0), by number: glibc before 2.41 has no wrapper."""
    attr.size = ctypes.sizeof(attr)
    _check(_libc.syscall(ctypes.c_long(_nr("sched_setattr")), ctypes.c_int(0), ctypes.byref(attr), ctypes.c_uint(0)))


IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13


def ioprio_set(ioprio: int) -> None:
    """ioprio_set(2) for the calling process (IOPRIO_WHO_PROCESS, 0), by number: glibc has no wrapper."""
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("ioprio_set")), ctypes.c_int(IOPRIO_WHO_PROCESS), ctypes.c_int(0), ctypes.c_int(ioprio)
        )
    )


def open_tree_clone(path: str, recursive: bool) -> int:
    """open_tree(OPEN_TREE_CLONE): a detached copy of the mount tree at path (the mount alone, or
    with its submounts when recursive), as a close-on-exec fd for mount_setattr and move_mount."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(ctypes.c_long(_nr("open_tree")), ctypes.c_int(-100), _b(path), ctypes.c_uint(flags)))


def mount_setattr_idmap(mount_fd: int, userns_fd: int, recursive: bool) -> None:
    """mount_setattr(MOUNT_ATTR_IDMAP) on a detached mount: its ids are mapped through userns_fd's maps."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("mount_setattr")), ctypes.c_int(mount_fd), b"",
            ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def set_mempolicy(mode: int, nodes: list[int]) -> None:
    """set_mempolicy(2) for the calling thread: mode (with its MPOL_F_* flags) over the given
    NUMA nodes (an empty list passes no node mask). By number: it is libnuma's, not glibc's."""
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    words = (max(nodes) // bits + 1) if nodes else 0
    mask = (ctypes.c_ulong * max(words, 1))()
    for node in nodes:
        mask[node // bits] |= 1 << (node % bits)
    # maxnode counts one more than the bits the kernel reads (a historical off-by-one it keeps)
    maxnode = words * bits + 1 if nodes else 0
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("set_mempolicy")), ctypes.c_int(mode), mask if nodes else None, ctypes.c_ulong(maxnode)
        )
    )


def move_mount_fd(mount_fd: int, target_fd: int) -> None:
    """move_mount(2) of the mount that mount_fd names onto the file that target_fd names (no paths)."""
    _check(
        _libc.syscall(
            ctypes.c_long(_nr("move_mount")), ctypes.c_int(mount_fd), b"", ctypes.c_int(target_fd), b"",
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        )
    )
