"""Device rules on cgroup v2: an eBPF cgroup-device program generated from the OCI rules.

The OCI rules keep their cgroup v1 meaning: they are first run through a small emulator of the
v1 devices controller (default allow/deny plus exceptions, "a" resets everything), and the result
becomes a BPF_PROG_TYPE_CGROUP_DEVICE program, as runc and crun do. Generation is pure and
unit-tested; loading and attaching live in _bpf.py.
"""

from __future__ import annotations

import struct

from pyouki.errors import ConfigError

# What runc (1.1's AllowedDevices) always allows after the config's rules: creating any node (a
# CAP_MKNOD container may mknod; opening stays denied), the default devices, ptys and /dev/net/tun.
DEFAULT_RULES = tuple(
    {"allow": True, "type": t, "major": ma, "minor": mi, "access": acc}
    for t, ma, mi, acc in (("c", -1, -1, "m"), ("b", -1, -1, "m"),
                           ("c", 1, 3, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 7, "rwm"), ("c", 5, 0, "rwm"),
                           ("c", 1, 5, "rwm"), ("c", 1, 9, "rwm"), ("c", 136, -1, "rwm"), ("c", 5, 2, "rwm"),
                           ("c", 10, 200, "rwm"))
)


def device_rules(linux: dict) -> list[dict]:
    """The device cgroup's rules: linux.resources.devices, then runc's default allow list.

    linux.devices only creates nodes: it grants no access (an engine that wants a device usable
    says so in resources.devices, as podman and docker do), so a deny there keeps it unopenable.
    """
    rules = list(((linux.get("resources") or {}).get("devices")) or [])
    return rules + [dict(r) for r in DEFAULT_RULES]


# struct bpf_cgroup_dev_ctx { u32 access_type /* (access << 16) | type */; u32 major; u32 minor; }
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE


class Exception_:
    """One exception of the v1 devices model: type "b"/"c", major/minor (None = any), access bits."""

    __slots__ = ("dtype", "major", "minor", "access")

    def __init__(self, dtype: str, major: int | None, minor: int | None, access: int):
        self.dtype, self.major, self.minor, self.access = dtype, major, minor, access

    def key(self) -> tuple[str, int | None, int | None]:
        return (self.dtype, self.major, self.minor)

    def __repr__(self) -> str:
        acc = "".join(
            ch for ch, bit in (("r", ACC_READ), ("w", ACC_WRITE), ("m", ACC_MKNOD)) if self.access & bit
        )
        maj = "*" if self.major is None else self.major
        mnr = "*" if self.minor is None else self.minor
        return f"{self.dtype} {maj}:{mnr} {acc}"


def _access(s: str | None) -> int:
    bits = 0
    for ch in s or "rwm":
        if ch not in _ACCESS_BITS:
            raise ValueError(f"invalid device access {s!r}")
        bits |= _ACCESS_BITS[ch]
    return bits


def _num(v: object) -> int | None:
    if v is None or v == -1:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"invalid device number {v!r}")
    return v


def emulate(rules: list[dict]) -> tuple[bool, list[Exception_]]:
    """Apply OCI rules in order with v1 semantics; return (default_allow, exceptions).

    The cgroup starts allowing everything (like a fresh v1 devices cgroup). Type "a" switches the
    default and drops all exceptions; other rules add or remove access on an exact exception.
    """
    default_allow = True
    exc: list[Exception_] = []
    for rule in rules:
        dtype = rule.get("type") or "a"
        if dtype not in ("a", "b", "c"):
            raise ValueError(f"invalid device type {dtype!r}")
        allow = bool(rule.get("allow"))
        acc = _access(rule.get("access"))
        major, minor = _num(rule.get("major")), _num(rule.get("minor"))
        if dtype == "a":
            default_allow, exc = allow, []
            continue
        adding = allow != default_allow  # an exception to the default
        match = next((e for e in exc if e.key() == (dtype, major, minor)), None)
        if adding:
            if match:
                match.access |= acc
            else:
                exc.append(Exception_(dtype, major, minor, acc))
        elif match:
            match.access &= ~acc
            if not match.access:
                exc.remove(match)
    return default_allow, exc


# eBPF encoding -----------------------------------------------------------------------------

R0, R1, R2, R3, R4, R5 = range(6)
_LDXW = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_AND32_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RSH32_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_MOV32_K = 0xB4  # BPF_ALU | BPF_MOV | BPF_K
_MOV32_X = 0xBC  # BPF_ALU | BPF_MOV | BPF_X
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_EXIT = 0x95  # BPF_JMP | BPF_EXIT


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def build_program(default_allow: bool, exceptions: list[Exception_]) -> bytes:
    """The eBPF program (raw instructions) deciding each device access.

    Prologue loads type into R2, access into R3, major into R4, minor into R5. Each exception is a
    block that jumps to the next block on mismatch and otherwise returns the opposite of the
    default; the program ends returning the default. In default-deny mode an exception grants an
    access when the request is a subset of its bits; in default-allow mode it refuses a request
    that touches any of its bits (the v1 kernel's partial match).
    """
    out = [
        _insn(_LDXW, R2, R1, 0),
        _insn(_AND32_K, R2, imm=0xFFFF),
        _insn(_LDXW, R3, R1, 0),
        _insn(_RSH32_K, R3, imm=16),
        _insn(_LDXW, R4, R1, 4),
        _insn(_LDXW, R5, R1, 8),
    ]
    verdict = 0 if default_allow else 1
    for e in exceptions:
        block: list[tuple[int, int, int, int]] = []  # (code, dst, src, imm); jumps go to the next block
        block.append((_JNE_K, R2, 0, DEV_BLOCK if e.dtype == "b" else DEV_CHAR))
        if default_allow:
            block.append((_MOV32_X, R1, R3, 0))
            block.append((_AND32_K, R1, 0, e.access))
            block.append((_JEQ_K, R1, 0, 0))
        elif e.access != _ALL:
            block.append((_MOV32_X, R1, R3, 0))
            block.append((_AND32_K, R1, 0, e.access))
            block.append((_JNE_X, R1, R3, 0))
        if e.major is not None:
            block.append((_JNE_K, R4, 0, e.major))
        if e.minor is not None:
            block.append((_JNE_K, R5, 0, e.minor))
        block.append((_MOV32_K, R0, 0, verdict))
        block.append((_EXIT, 0, 0, 0))
        n = len(block)
        for i, (code, dst, src, imm) in enumerate(block):
            if code in (_JNE_K, _JNE_X, _JEQ_K):
                # Jump to the first instruction after this block: offset counts from the next insn.
                out.append(_insn(code, dst, src, n - i - 1, imm))
            else:
                out.append(_insn(code, dst, src, 0, imm))
    out.append(_insn(_MOV32_K, R0, imm=1 if default_allow else 0))
    out.append(_insn(_EXIT))
    return b"".join(out)


def program_for_rules(rules: list[dict], field: str) -> bytes:
    """Emulate and encode OCI device rules; ConfigError naming the rule on invalid input."""
    for i, rule in enumerate(rules):
        try:
            emulate([rule])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{field}[{i}]", str(e)) from None
    default_allow, exc = emulate(rules)
    return build_program(default_allow, exc)


def apply_device_rules(cgroup_dir: str, rules: list, field: str) -> None:
    """Load the program for rules and attach it to the cgroup, replacing the one pyouki attached before."""
    prog = program_for_rules(rules, field)
    from pyouki.cgroups import _bpf

    try:
        _bpf.attach_device_program(cgroup_dir, prog)
    except OSError as e:
        from pyouki.cgroups.common import strerror

        raise ConfigError(
            field, f"failed to attach the device filter to {cgroup_dir}: {strerror(e)}"
        ) from None
