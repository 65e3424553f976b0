"""The OCI `linux.seccomp` filter: validate the config, build it with libseccomp, install it.

Two steps, because the container's init runs in two worlds:

* `compile_filter()` runs before `pivot_root`, while the host's Python and libraries are still
  reachable: it validates the config, loads libseccomp (through pyseccomp), builds the filter
  and has libseccomp generate the BPF program.  Nothing changes in the kernel yet.
* `SeccompFilter.load()` runs last, just before `execve`: one seccomp(2) call with the program
  and flags prepared in advance (no import, no dlopen, no file).  Unlike libseccomp's
  seccomp_load it never sets no_new_privs: that is `process.noNewPrivileges`' business.

`validate()` is the pure-logic half of `compile_filter()`; `create` calls it in the parent to fail
early without loading libseccomp at all.

Semantics follow runc: unknown syscall names are skipped, a rule whose action equals the default
action is skipped, `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE` return EPERM unless `errnoRet` says otherwise,
and conditions that share an argument index become one rule per condition (OR), while conditions
on distinct indexes stay in one rule (AND).
"""

from __future__ import annotations

import os
import sys

from pyouki.errors import ConfigError, PyoukiError, reason

# typing costs ~1.5 ms to import and is only needed by the type checker here (annotations are
# strings thanks to the __future__ import); mypy treats any TYPE_CHECKING name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

__all__ = ["SeccompFilter", "compile_filter", "validate"]

# Action values are the kernel's SECCOMP_RET_* ABI, which libseccomp's SCMP_ACT_* use unchanged;
# defining them here lets validate() work without loading libseccomp.
_ACT_KILL_THREAD = 0x00000000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_NOTIFY = 0x7FC00000
_ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_NOTIFY": _ACT_NOTIFY,
}
# The actions whose 16-bit return data is an errno (ERRNO) or a tracer message (TRACE).
_ACTIONS_WITH_DATA = (_ACT_ERRNO, _ACT_TRACE)
_EPERM = 1
_MAX_ACTION_DATA = 0xFFFF

# enum scmp_compare in seccomp.h.
_OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}


def _audit_arch(machine: int, bits64: bool, little_endian: bool, extra: int = 0) -> int:
    """Return the AUDIT_ARCH_* value (linux/audit.h) that libseccomp uses as SCMP_ARCH_*."""
    return machine | (0x80000000 if bits64 else 0) | (0x40000000 if little_endian else 0) | extra


_MIPS_N32 = 0x20000000  # __AUDIT_ARCH_CONVENTION_MIPS64_N32
# ELF machine numbers: 386=3, 68K=4, MIPS=8, PARISC=15, PPC=20, PPC64=21, S390=22, ARM=40, SH=42,
# X86_64=62, AARCH64=183, RISCV=243, LOONGARCH=258.
_ARCHES: dict[str, int] = {
    "SCMP_ARCH_X86": _audit_arch(3, False, True),
    "SCMP_ARCH_X86_64": _audit_arch(62, True, True),
    "SCMP_ARCH_X32": _audit_arch(62, False, True),
    "SCMP_ARCH_ARM": _audit_arch(40, False, True),
    "SCMP_ARCH_AARCH64": _audit_arch(183, True, True),
    "SCMP_ARCH_LOONGARCH64": _audit_arch(258, True, True),
    "SCMP_ARCH_M68K": _audit_arch(4, False, False),
    "SCMP_ARCH_MIPS": _audit_arch(8, False, False),
    "SCMP_ARCH_MIPS64": _audit_arch(8, True, False),
    "SCMP_ARCH_MIPS64N32": _audit_arch(8, True, False, _MIPS_N32),
    "SCMP_ARCH_MIPSEL": _audit_arch(8, False, True),
    "SCMP_ARCH_MIPSEL64": _audit_arch(8, True, True),
    "SCMP_ARCH_MIPSEL64N32": _audit_arch(8, True, True, _MIPS_N32),
    "SCMP_ARCH_PPC": _audit_arch(20, False, False),
    "SCMP_ARCH_PPC64": _audit_arch(21, True, False),
    "SCMP_ARCH_PPC64LE": _audit_arch(21, True, True),
    "SCMP_ARCH_S390": _audit_arch(22, False, False),
    "SCMP_ARCH_S390X": _audit_arch(22, True, False),
    "SCMP_ARCH_SH": _audit_arch(42, False, True),
    "SCMP_ARCH_SHEB": _audit_arch(42, False, False),
    "SCMP_ARCH_PARISC": _audit_arch(15, False, False),
    "SCMP_ARCH_PARISC64": _audit_arch(15, True, False),
    "SCMP_ARCH_RISCV64": _audit_arch(243, True, True),
}

# enum scmp_filter_attr in seccomp.h.
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_ATTR_CTL_OPTIMIZE = 8
# Each flag: the libseccomp attribute (set to check libseccomp and the kernel support it) and
# the SECCOMP_FILTER_FLAG_* bit load() passes to seccomp(2).
_FLAGS: dict[str, tuple[int, int]] = {
    "SECCOMP_FILTER_FLAG_TSYNC": (_ATTR_CTL_TSYNC, 1 << 0),
    "SECCOMP_FILTER_FLAG_LOG": (_ATTR_CTL_LOG, 1 << 1),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (_ATTR_CTL_SSB, 1 << 2),
}
_SECCOMP_SET_MODE_FILTER = 1
_BPF_INSN_SIZE = 8  # sizeof(struct sock_filter)
_BPF_MAXINSNS = 4096  # the kernel's limit for one filter
# Flags libseccomp 2.5 has no attribute for: the kernel bit alone, probed in the kernel by
# _kernel_accepts(). WAIT_KILLABLE_RECV (Linux 5.19) only means something with a listener.
_KERNEL_ONLY_FLAGS: dict[str, int] = {"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 1 << 5}
_FLAG_TSYNC = 1 << 0
_FLAG_NEW_LISTENER = 1 << 3  # seccomp(2) returns the notify fd; set for any SCMP_ACT_NOTIFY rule
_FLAG_TSYNC_ESRCH = 1 << 4  # with TSYNC, the kernel refuses NEW_LISTENER unless this is set too
_FLAG_WAIT_KILLABLE_RECV = 1 << 5
# The syscalls init makes between loading a filter with a listener and handing the listener fd to
# the runtime (pyouki.seccomp_notify): notified, they would wait for a listener that cannot have
# the fd yet. runc refuses `write` for the same reason.
_NOT_NOTIFIABLE = ("write", "sendmsg")
_ENOSYS = 38

_MAX_ARGS = 6  # a syscall has at most six arguments
_UINT32_MAX = 0xFFFFFFFF
_UINT64_MAX = 0xFFFFFFFFFFFFFFFF
# Like runc: the binary-tree optimisation pays off for long rule lists, and libseccomp <= 2.5.4
# misbehaves with it on an empty one.
_OPTIMIZE_MIN_RULES = 32

_NR_SCMP_ERROR = -1  # what seccomp_syscall_resolve_name returns for an unknown name
_EEXIST = 17
_EACCES = 13

# (index, op, value, valueTwo)
_Cond = tuple[int, int, int, int]


class _Rule:
    """One `syscalls[]` entry after validation: names, action value and condition groups."""

    __slots__ = ("field", "names", "action", "cond_groups")

    def __init__(self, field: str, names: list[str], action: int, cond_groups: list[list[_Cond]]) -> None:
        self.field = field
        self.names = names
        self.action = action
        # Each group is one libseccomp rule; an empty list of groups never happens (no args means
        # one empty group, an unconditional rule).
        self.cond_groups = cond_groups


class _Plan:
    """A validated `linux.seccomp`: everything libseccomp needs, as plain numbers."""

    __slots__ = ("field", "default_action", "arches", "attrs", "kernel_flags", "rules", "enosys")

    def __init__(
        self,
        field: str,
        default_action: int,
        arches: list[tuple[str, int]],
        attrs: list[int],
        kernel_flags: int,
        rules: list[_Rule],
        enosys: bool = False,
    ) -> None:
        self.field = field
        self.default_action = default_action
        self.arches = arches
        self.attrs = attrs
        self.kernel_flags = kernel_flags
        self.rules = rules
        # runc's -ENOSYS stub: syscalls newer than the profile's newest get ENOSYS (seccomp_enosys)
        self.enosys = enosys


def _is_uint(value: Any, maximum: int) -> bool:
    """Tell whether a JSON value is an integer in [0, maximum] (bools are not integers in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def _list_of(value: Any, field: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(field, f"must be an array of {what}")
    return value


def _action(name: Any, errno_ret: Any, field: str, errno_field: str) -> int:
    """Turn an action name and its optional errnoRet into a libseccomp action value."""
    if not isinstance(name, str):
        raise ConfigError(field, "must be a string")
    if name not in _ACTIONS:
        raise ConfigError(field, f'unknown action "{name}"')
    action = _ACTIONS[name]
    if errno_ret is None:
        # The spec and runc both default the return data to EPERM.
        return action | _EPERM if action in _ACTIONS_WITH_DATA else action
    if not _is_uint(errno_ret, _UINT32_MAX):
        raise ConfigError(errno_field, "must be an unsigned 32-bit integer")
    if action not in _ACTIONS_WITH_DATA:
        raise ConfigError(errno_field, f'is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not "{name}"')
    if errno_ret > _MAX_ACTION_DATA:
        # seccomp carries 16 bits of return data: a larger value would be silently truncated.
        raise ConfigError(errno_field, f"{errno_ret} does not fit in 16 bits")
    return action | errno_ret


def _conditions(args: Any, field: str) -> list[list[_Cond]]:
    """Validate `args` and group the conditions into libseccomp rules, the way runc does."""
    conds: list[_Cond] = []
    for i, arg in enumerate(_list_of(args, field, "objects")):
        afield = f"{field}[{i}]"
        if not isinstance(arg, dict):
            raise ConfigError(afield, "must be an object")
        for key in ("index", "value", "op"):
            if key not in arg:
                raise ConfigError(f"{afield}.{key}", "is required")
        index = arg["index"]
        if not _is_uint(index, _UINT32_MAX):
            raise ConfigError(f"{afield}.index", "must be an unsigned integer")
        if index >= _MAX_ARGS:
            raise ConfigError(f"{afield}.index", f"{index} is out of range (a syscall has 6 arguments: 0-5)")
        value = arg["value"]
        if not _is_uint(value, _UINT64_MAX):
            raise ConfigError(f"{afield}.value", "must be an unsigned 64-bit integer")
        value_two = arg.get("valueTwo", 0)
        if not _is_uint(value_two, _UINT64_MAX):
            raise ConfigError(f"{afield}.valueTwo", "must be an unsigned 64-bit integer")
        op = arg["op"]
        if not isinstance(op, str):
            raise ConfigError(f"{afield}.op", "must be a string")
        if op not in _OPERATORS:
            raise ConfigError(f"{afield}.op", f'unknown operator "{op}"')
        # For SCMP_CMP_MASKED_EQ, value is the mask and valueTwo the expected value, which is the
        # order libseccomp's datum_a/datum_b expect.
        conds.append((index, _OPERATORS[op], value, value_two))
    if not conds:
        return [[]]
    indexes = [c[0] for c in conds]
    if len(set(indexes)) != len(indexes):
        # libseccomp refuses two conditions on one argument in a rule; runc then adds one rule per
        # condition, so the conditions are ORed instead of ANDed.
        return [[c] for c in conds]
    return [conds]


def _plan(seccomp: Any, field: str) -> _Plan:
    """Validate a `linux.seccomp` object and reduce it to a `_Plan`."""
    if not isinstance(seccomp, dict):
        raise ConfigError(field, "must be an object")
    if "defaultAction" not in seccomp:
        raise ConfigError(f"{field}.defaultAction", "is required")
    default_action = _action(
        seccomp["defaultAction"],
        seccomp.get("defaultErrnoRet"),
        f"{field}.defaultAction",
        f"{field}.defaultErrnoRet",
    )

    arches: list[tuple[str, int]] = []
    afield = f"{field}.architectures"
    for i, arch in enumerate(_list_of(seccomp.get("architectures", []), afield, "strings")):
        if not isinstance(arch, str):
            raise ConfigError(f"{afield}[{i}]", "must be a string")
        if arch not in _ARCHES:
            raise ConfigError(f"{afield}[{i}]", f'unknown architecture "{arch}"')
        arches.append((arch, _ARCHES[arch]))

    attrs: list[int] = []
    kernel_flags = 0
    ffield = f"{field}.flags"
    for i, flag in enumerate(_list_of(seccomp.get("flags", []), ffield, "strings")):
        if not isinstance(flag, str):
            raise ConfigError(f"{ffield}[{i}]", "must be a string")
        if flag in _KERNEL_ONLY_FLAGS:
            kernel_flags |= _KERNEL_ONLY_FLAGS[flag]
            continue
        if flag not in _FLAGS:
            raise ConfigError(f"{ffield}[{i}]", f'unknown flag "{flag}"')
        attrs.append(_FLAGS[flag][0])
        kernel_flags |= _FLAGS[flag][1]

    for key in ("listenerPath", "listenerMetadata"):
        if key in seccomp and not isinstance(seccomp[key], str):
            raise ConfigError(f"{field}.{key}", "must be a string")
    if "listenerMetadata" in seccomp and "listenerPath" not in seccomp:
        raise ConfigError(f"{field}.listenerMetadata", "must not be set without listenerPath")

    rules: list[_Rule] = []
    sfield = f"{field}.syscalls"
    for i, call in enumerate(_list_of(seccomp.get("syscalls", []), sfield, "objects")):
        cfield = f"{sfield}[{i}]"
        if not isinstance(call, dict):
            raise ConfigError(cfield, "must be an object")
        if "names" not in call:
            raise ConfigError(f"{cfield}.names", "is required")
        names = _list_of(call["names"], f"{cfield}.names", "strings")
        if not names:
            raise ConfigError(f"{cfield}.names", "must contain at least one syscall name")
        for j, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{cfield}.names[{j}]", "must be a non-empty string")
        if "action" not in call:
            raise ConfigError(f"{cfield}.action", "is required")
        action = _action(call["action"], call.get("errnoRet"), f"{cfield}.action", f"{cfield}.errnoRet")
        if action == _ACT_NOTIFY:
            for j, name in enumerate(names):
                if name in _NOT_NOTIFIABLE:
                    raise ConfigError(f"{cfield}.names[{j}]", f'SCMP_ACT_NOTIFY cannot be used for "{name}": the '
                                      "runtime needs it to hand the listener its fd")
        groups = _conditions(call.get("args", []), f"{cfield}.args")
        rules.append(_Rule(cfield, list(names), action, groups))
    kernel_flags = _notify_flags(seccomp, field, default_action, rules, kernel_flags)
    return _Plan(field, default_action, arches, attrs, kernel_flags, rules, _wants_enosys(seccomp, default_action))


def _notify_flags(seccomp: dict[str, Any], field: str, default_action: int, rules: list[_Rule], flags: int) -> int:
    """The SCMP_ACT_NOTIFY checks; returns flags with NEW_LISTENER when a rule notifies.

    Both halves are errors, never silently dropped: a notify rule without a listener to answer
    it (its syscalls would fail with ENOSYS), and a listenerPath without any notify rule (the
    agent would never hear from the container).
    """
    if default_action == _ACT_NOTIFY:
        # runc's rule: every syscall, the runtime's own included, would wait for the listener
        raise ConfigError(f"{field}.defaultAction", "SCMP_ACT_NOTIFY cannot be the default action")
    notify = any(rule.action == _ACT_NOTIFY for rule in rules)
    if notify and not seccomp.get("listenerPath"):
        raise ConfigError(f"{field}.listenerPath", "is required when a rule uses SCMP_ACT_NOTIFY")
    if "listenerPath" in seccomp and not notify:
        raise ConfigError(f"{field}.listenerPath", "is set but no rule uses SCMP_ACT_NOTIFY")
    if flags & _FLAG_WAIT_KILLABLE_RECV and not notify:
        i = seccomp["flags"].index("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")
        raise ConfigError(f"{field}.flags[{i}]", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a rule with "
                          "SCMP_ACT_NOTIFY")
    if notify:
        flags |= _FLAG_NEW_LISTENER
        if flags & _FLAG_TSYNC:
            flags |= _FLAG_TSYNC_ESRCH
    return flags


def _wants_enosys(seccomp: dict[str, Any], default_action: int) -> bool:
    """runc's rule for its -ENOSYS stub: only under a default action that refuses (a permissive one
    lets new syscalls through anyway; a tracer handles them itself), and unless the default errno
    already is ENOSYS."""
    permissive = (_ACTIONS["SCMP_ACT_ALLOW"], _ACTIONS["SCMP_ACT_LOG"])
    if default_action in permissive or default_action & 0xFFFF0000 == _ACT_TRACE:
        return False
    return seccomp.get("defaultErrnoRet") != _ENOSYS


def validate(seccomp: dict[str, Any], field: str = "linux.seccomp") -> None:
    """Check a `linux.seccomp` config object without loading libseccomp.

    Raises ConfigError naming the JSON path of the first bad value.  Whatever passes here can
    still fail in `compile_filter()` only for reasons of the host (libseccomp or kernel too old
    for an architecture, action or flag).
    """
    _plan(seccomp, field)


def _find_library(name: str) -> str | None:
    """Stand-in for ctypes.util.find_library while pyseccomp is imported: soname by convention."""
    return {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}.get(name)


def _pyseccomp() -> ModuleType:
    """Import pyseccomp, loading libseccomp.so.2 by soname instead of searching for it.

    pyseccomp resolves its libraries at import time with ctypes.util.find_library, which imports
    subprocess/tempfile/shutil and runs `ldconfig -p` (tens of milliseconds per container).  It
    offers no other way to choose the library, so, for the duration of the import only, a tiny
    stand-in `ctypes.util` module answers the sonames directly; the dynamic loader then finds
    them through ld.so.cache as it does for any program.  The previous state is restored.
    """
    module = sys.modules.get("pyseccomp")
    if module is not None:
        return module
    import ctypes
    import types

    stub = types.ModuleType("ctypes.util")
    stub.find_library = _find_library  # type: ignore[attr-defined]
    saved_module = sys.modules.get("ctypes.util")
    saved_attr = ctypes.__dict__.get("util")
    sys.modules["ctypes.util"] = stub
    ctypes.util = stub  # type: ignore[attr-defined]
    try:
        import pyseccomp
    except OSError as err:
        raise PyoukiError(f"failed to load libseccomp.so.2: {err}") from err
    finally:
        if saved_module is None:
            del sys.modules["ctypes.util"]
        else:
            sys.modules["ctypes.util"] = saved_module
        if saved_attr is None:
            del ctypes.util  # type: ignore[attr-defined]
        else:
            ctypes.util = saved_attr  # type: ignore[attr-defined]
    return pyseccomp


def _sock_fprog(bpf: bytes) -> tuple[Any, Any]:
    """Build a struct sock_fprog for bpf; return it with the buffer that must outlive it."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(bpf, len(bpf))
    return SockFprog(len(bpf) // _BPF_INSN_SIZE, ctypes.addressof(buf)), buf


class SeccompFilter:
    """A seccomp BPF program generated by libseccomp, ready to be installed with `load()`.

    `bpf` (the raw struct sock_filter array) and `flags` (SECCOMP_FILTER_FLAG_* bits) are all
    the kernel needs: the program is generated here, before pivot_root, so that `load()` is a
    single seccomp(2) call through objects prepared in advance.
    """

    def __init__(self, bpf: bytes, flags: int, seccomp_nr: int, skipped: list[str], rules: int) -> None:
        import ctypes

        self.loaded = False
        # with SCMP_ACT_NOTIFY rules: where load() hands the listener fd (see pyouki.seccomp_notify)
        self.handover: Any = None
        self.bpf = bpf
        self.flags = flags
        self.seccomp_nr = seccomp_nr  # the native seccomp(2) syscall number
        self.skipped = skipped  # syscall names libseccomp does not know, skipped like runc does
        self.rules = rules  # libseccomp rules added (one per name and condition group)
        self._prog, self._buf = _sock_fprog(bpf)
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._args = (
            ctypes.c_long(seccomp_nr),
            ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
            ctypes.c_uint(flags),
            ctypes.byref(self._prog),
        )
        self._get_errno = ctypes.get_errno

    @property
    def notify(self) -> bool:
        """True when a rule uses SCMP_ACT_NOTIFY: loading returns a listener fd to hand over."""
        return bool(self.flags & _FLAG_NEW_LISTENER)

    def load(self) -> None:
        """Install the filter into the calling process with seccomp(SECCOMP_SET_MODE_FILTER).

        Needs no_new_privs set or CAP_SYS_ADMIN in the process's user namespace; the filter does
        not set no_new_privs itself (that is `process.noNewPrivileges`' job).  Imports nothing,
        opens nothing: safe to call after pivot_root, just before execve.  A second call does
        nothing (a filter with a listener is loaded early, while the runtime still listens).
        With SCMP_ACT_NOTIFY rules the listener fd goes straight to `handover` (seccomp_notify).
        """
        if self.loaded:
            return
        res = self._syscall(*self._args)
        if res >= 0:
            self.loaded = True
        if res >= 0 and self.notify:
            if self.handover is None:  # a caller that prepared no way to the runtime
                os.close(res)
                raise PyoukiError("linux.seccomp: no runtime to hand the seccomp listener fd to")
            self.handover.send(res)
            return
        if res == 0:
            return
        if res > 0:  # SECCOMP_FILTER_FLAG_TSYNC: the id of a thread that could not be synced
            raise PyoukiError(f"failed to load seccomp filter: thread {res} could not be synchronised")
        err = self._get_errno()
        hint = " (needs no_new_privs or CAP_SYS_ADMIN)" if err == _EACCES else ""
        raise PyoukiError(f"failed to load seccomp filter: {os.strerror(err).lower()}{hint}")


_CACHE_FORMAT = 2  # 2: the -ENOSYS stub


def _libseccomp_version() -> str:
    """Return libseccomp's version (e.g. "2.5.4") without importing pyseccomp."""
    import ctypes

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as err:
        raise PyoukiError(f"failed to load libseccomp.so.2: {err}") from None
    lib.seccomp_version.restype = ctypes.POINTER(Version)
    version = lib.seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


def _cache_key(seccomp: dict[str, Any]) -> str:
    """Everything the generated program depends on: the profile, libseccomp and the kernel."""
    import json

    uname = os.uname()
    return json.dumps(
        [_CACHE_FORMAT, _libseccomp_version(), uname.release, uname.machine, seccomp],
        sort_keys=True,
        separators=(",", ":"),
    )


def _cache_path(cache_dir: str, key: str) -> str:
    import zlib

    # crc32 only spreads entries over file names; the full key stored in the file decides a hit.
    return os.path.join(cache_dir, f"seccomp-{zlib.crc32(key.encode()):08x}.bpf")


def _cache_read(path: str, key: str) -> SeccompFilter | None:
    """Return the filter cached at path for key, or None (missing, stale, or not trustworthy)."""
    import json

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        # The cache decides what the container may do: only trust a file nobody else can write.
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        data = f.read()
    header, _, bpf = data.partition(b"\n")  # JSON escapes newlines, so the header is one line
    try:
        meta = json.loads(header)
        if meta["key"] != key or len(bpf) != meta["insns"] * _BPF_INSN_SIZE:
            return None
        return SeccompFilter(bpf, meta["flags"], meta["nr"], meta["skipped"], meta["rules"])
    except (ValueError, KeyError, TypeError):
        return None


def _cache_write(path: str, key: str, filt: SeccompFilter) -> None:
    """Store filt at path atomically; the cache only saves time, so failures are ignored."""
    import json

    meta = {
        "key": key,
        "flags": filt.flags,
        "nr": filt.seccomp_nr,
        "skipped": filt.skipped,
        "rules": filt.rules,
        "insns": len(filt.bpf) // _BPF_INSN_SIZE,
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(meta).encode() + b"\n" + filt.bpf)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def compile_filter(
    seccomp: dict[str, Any], field: str = "linux.seccomp", *, cache_dir: str | None = None
) -> SeccompFilter:
    """Validate the config object and build the libseccomp filter in memory (no kernel change yet).

    Called in the container's init before pivot_root, so libseccomp is loaded here.  Raises
    ConfigError naming the JSON path (e.g. `linux.seccomp.syscalls[3].action: unknown action
    "SCMP_ACT_FOO"`), or when libseccomp or the kernel refuses an architecture, flag or rule.

    With cache_dir (a directory only the caller can write, e.g. under the state root), the
    generated program is kept there, keyed by the profile, libseccomp's version and the kernel:
    a hit skips pyseccomp and libseccomp's generation (~20 ms for docker's default profile).
    """
    plan = _plan(seccomp, field)
    if cache_dir is None:
        return _compile(plan, seccomp, field)
    key = _cache_key(seccomp)
    path = _cache_path(cache_dir, key)
    cached = _cache_read(path, key)
    if cached is not None:
        return cached
    filt = _compile(plan, seccomp, field)
    _cache_write(path, key, filt)
    return filt


def _compile(plan: _Plan, seccomp: dict[str, Any], field: str) -> SeccompFilter:
    """Build plan with libseccomp and generate its BPF program."""
    lib = _pyseccomp()
    try:
        lib_filter = lib.SyscallFilter(plan.default_action)
    except OSError as err:
        raise ConfigError(f"{field}.defaultAction", f"rejected by libseccomp: {reason(err)}") from None
    for i, (name, arch) in enumerate(plan.arches):
        try:
            lib_filter.add_arch(arch)
        except OSError as err:
            if err.errno == _EEXIST:  # the native architecture is always there
                continue
            raise ConfigError(
                f"{field}.architectures[{i}]", f'architecture "{name}" not supported by libseccomp'
            ) from None

    for i, flag in enumerate(seccomp.get("flags") or []):
        bit = _KERNEL_ONLY_FLAGS.get(flag, 0)
        if bit and not _kernel_accepts(bit | _FLAG_NEW_LISTENER, lib.resolve_syscall(lib.Arch.NATIVE, "seccomp")):
            raise ConfigError(f"{field}.flags[{i}]", f'flag "{flag}" not supported by the kernel')

    for i, attr in enumerate(plan.attrs):
        try:
            lib_filter.set_attr(attr, 1)
        except OSError as err:
            flag = seccomp["flags"][i]
            message = f'flag "{flag}" not supported by libseccomp or the kernel: {reason(err)}'
            raise ConfigError(f"{field}.flags[{i}]", message) from None

    if sum(len(rule.names) for rule in plan.rules) > _OPTIMIZE_MIN_RULES:
        try:
            lib_filter.set_attr(_ATTR_CTL_OPTIMIZE, 2)
        except OSError:
            pass  # an older libseccomp: the filter is only slower, not different

    resolve = lib.resolve_syscall
    native = lib.Arch.NATIVE
    arg_cls = lib.Arg
    skipped: list[str] = []
    added = 0
    for rule in plan.rules:
        if rule.action == plan.default_action:
            continue  # libseccomp refuses a rule that repeats the default action
        for name in rule.names:
            nr = resolve(native, name)
            if nr == _NR_SCMP_ERROR:
                skipped.append(name)  # unknown to this libseccomp: runc skips it too
                continue
            for group in rule.cond_groups:
                try:
                    lib_filter.add_rule(rule.action, nr, *(arg_cls(*cond) for cond in group))
                except OSError as err:
                    raise ConfigError(
                        rule.field, f'failed to add seccomp rule for syscall "{name}": {reason(err)}'
                    ) from None
                added += 1

    seccomp_nr = resolve(native, "seccomp")
    if seccomp_nr < 0:
        raise PyoukiError("failed to resolve the seccomp syscall number")
    # Generate the BPF program now (the costly part: ~10 ms for docker's profile on three
    # architectures) rather than in load(), which runs after pivot_root.
    with os.fdopen(os.memfd_create("pyouki-seccomp", os.MFD_CLOEXEC), "w+b") as out:
        try:
            lib_filter.export_bpf(out)
        except OSError as err:
            raise PyoukiError(f"failed to generate the seccomp filter: {reason(err)}") from None
        out.seek(0)
        bpf = out.read()
    if plan.enosys:
        bpf = _enosys_stub(plan, lib) + bpf
    insns = len(bpf) // _BPF_INSN_SIZE
    if insns > _BPF_MAXINSNS:
        # The kernel would refuse it with a bare EINVAL at load time, after pivot_root.
        raise ConfigError(
            field, f"the filter has {insns} instructions, more than the kernel's {_BPF_MAXINSNS}"
        )
    return SeccompFilter(bpf, plan.kernel_flags, seccomp_nr, skipped, added)


def _kernel_accepts(flags: int, nr: int) -> bool:
    """Whether seccomp(2) (syscall nr) knows these filter flags: with no program it fails EFAULT
    once the flags pass its check, EINVAL before (libseccomp probes the same way)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    res = libc.syscall(ctypes.c_long(nr), ctypes.c_uint(_SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags), None)
    return res < 0 and ctypes.get_errno() == 14  # EFAULT


def _enosys_stub(plan: _Plan, lib: ModuleType) -> bytes:
    """runc's -ENOSYS stub for the filter's architectures (see pyouki.seccomp_enosys).

    The maximum is taken over every name of every rule, as runc does. runc covers only the listed
    `architectures` (none listed: no stub); the native one is covered here as well, since the
    filter always contains it and an old profile without the list needs the fallback as much.
    """
    from pyouki import seccomp_enosys

    names = {name for rule in plan.rules for name in rule.names}
    tokens = {lib.system_arch(), *(arch for _, arch in plan.arches)}
    maxima: dict[int, tuple[int | None, int | None]] = {}
    for token in tokens:
        highest = max((nr for nr in (lib.resolve_syscall(token, n) for n in names) if nr >= 0), default=None)
        x32 = token == _ARCHES["SCMP_ARCH_X32"]
        native = seccomp_enosys.AUDIT_ARCH_X86_64 if x32 else token
        plain, x32_max = maxima.get(native, (None, None))
        maxima[native] = (plain, highest) if x32 else (highest, x32_max)
    return seccomp_enosys.stub(maxima)
