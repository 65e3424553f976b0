"""systemd unit properties as typed D-Bus values: a Python dict in, an ``a(sv)`` body part out.

Pure logic, no jeepney import: jeepney represents a variant as ``(signature, value)``, so
``a(sv)`` is a list of ``(name, (signature, value))`` tuples, which is what this module builds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyouki.errors import PyoukiError

UINT64_MAX = 2**64 - 1
# systemd's USEC_INFINITY / CGROUP_LIMIT_MAX: "no limit" for every `t` limit below.
INFINITY = UINT64_MAX

# The D-Bus signature systemd expects for each property it accepts on a transient unit or
# in SetUnitProperties (src/core/dbus-cgroup.c, dbus-scope.c, dbus-unit.c, dbus-kill.c).
PROPERTY_TYPES: dict[str, str] = {
    # unit / scope
    "Description": "s",
    "Slice": "s",
    "PIDs": "au",
    "DefaultDependencies": "b",
    "CollectMode": "s",
    "Wants": "as",
    "Requires": "as",
    "BindsTo": "as",
    "After": "as",
    "Before": "as",
    "Conflicts": "as",
    "TimeoutStopUSec": "t",
    "RuntimeMaxUSec": "t",
    # kill
    "KillMode": "s",
    "KillSignal": "i",
    "SendSIGKILL": "b",
    # cgroup: delegation and accounting
    "Delegate": "b",
    "DelegateControllers": "as",
    "CPUAccounting": "b",
    "MemoryAccounting": "b",
    "IOAccounting": "b",
    "BlockIOAccounting": "b",
    "TasksAccounting": "b",
    # memory
    "MemoryMin": "t",
    "MemoryLow": "t",
    "MemoryHigh": "t",
    "MemoryMax": "t",
    "MemorySwapMax": "t",
    "MemoryLimit": "t",
    # pids
    "TasksMax": "t",
    # cpu
    "CPUWeight": "t",
    "StartupCPUWeight": "t",
    "CPUShares": "t",
    "CPUQuotaPerSecUSec": "t",
    "CPUQuotaPeriodUSec": "t",
    "AllowedCPUs": "ay",
    "AllowedMemoryNodes": "ay",
    # io
    "IOWeight": "t",
    "StartupIOWeight": "t",
    "BlockIOWeight": "t",
    # devices
    "DevicePolicy": "s",
    "DeviceAllow": "a(ss)",
}

# `t` properties where -1, None or "infinity" mean "no limit" (systemd's "infinity").
_INFINITY_OK = frozenset({
    "MemoryMin", "MemoryLow", "MemoryHigh", "MemoryMax", "MemorySwapMax", "MemoryLimit", "TasksMax",
    "CPUQuotaPerSecUSec", "TimeoutStopUSec", "RuntimeMaxUSec",
})


def parse_cpu_list(text: str, what: str = "cpu list") -> list[int]:
    """Parse a cpuset list such as ``"0-3,5"`` into sorted, distinct numbers."""
    numbers: set[int] = set()
    for chunk in text.split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        lo, dash, hi = chunk.partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            raise PyoukiError(f"invalid {what} {text!r}: {chunk!r} is not a number or range") from None
        if first < 0 or last < first:
            raise PyoukiError(f"invalid {what} {text!r}: bad range {chunk!r}")
        numbers.update(range(first, last + 1))
    return sorted(numbers)


def cpu_list_to_bitmask(text: str | Iterable[int], what: str = "cpu list") -> bytes:
    """Turn ``"0-3,5"`` (or a list of numbers) into systemd's ``ay`` bitmask.

    Byte 0 holds cpus 0-7 with cpu 0 in the lowest bit, as systemd's cpu_set_from_dbus reads
    it (runc reverses big.Int's bytes to get the same layout).
    """
    numbers = parse_cpu_list(text, what) if isinstance(text, str) else sorted(set(text))
    if not numbers:
        return b""
    mask = bytearray(numbers[-1] // 8 + 1)
    for n in numbers:
        if n < 0:
            raise PyoukiError(f"invalid {what}: negative number {n}")
        mask[n // 8] |= 1 << (n % 8)
    return bytes(mask)


def bitmask_to_cpu_list(mask: bytes) -> list[int]:
    """Inverse of cpu_list_to_bitmask: the numbers set in a systemd ``ay`` bitmask."""
    return [i * 8 + bit for i, byte in enumerate(mask) for bit in range(8) if byte & (1 << bit)]


def _bad(name: str, expected: str, value: Any) -> PyoukiError:
    return PyoukiError(f"systemd unit property {name}: expected {expected}, got {value!r}")


def _uint64(name: str, value: Any) -> int:
    if name in _INFINITY_OK and (value is None or value == -1 or value == "infinity"):
        return INFINITY
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise _bad(name, "an unsigned 64-bit integer", value)
    return value


def _string_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "a list of strings", value)
    return list(value)


def typed_value(name: str, value: Any) -> tuple[str, Any]:
    """One property's D-Bus variant, ``(signature, value)``, checked against PROPERTY_TYPES."""
    sig = PROPERTY_TYPES.get(name)
    if sig is None:
        raise PyoukiError(f"unknown systemd unit property {name!r}")
    converted: Any
    if sig == "t":
        converted = _uint64(name, value)
    elif sig == "b":
        if not isinstance(value, bool):
            raise _bad(name, "a boolean", value)
        converted = value
    elif sig == "s":
        if not isinstance(value, str):
            raise _bad(name, "a string", value)
        converted = value
    elif sig == "i":
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise _bad(name, "a 32-bit integer", value)
        converted = value
    elif sig == "au":
        try:
            converted = [int(p) for p in value]
        except (TypeError, ValueError):
            raise _bad(name, "a list of pids", value) from None
        if any(p <= 0 or p >= 2**32 for p in converted):
            raise _bad(name, "a list of pids", value)
    elif sig == "ay":
        if isinstance(value, bytes | bytearray):
            converted = bytes(value)
        elif isinstance(value, str) or isinstance(value, Iterable):
            converted = cpu_list_to_bitmask(value, f"{name} list")
        else:
            raise _bad(name, 'a cpu/node list such as "0-3,5"', value)
    elif sig == "as":
        converted = _string_list(name, value)
    elif sig == "a(ss)":
        try:
            converted = [(str(a), str(b)) for a, b in value]
        except (TypeError, ValueError):
            raise _bad(name, "a list of (device, access) pairs", value) from None
    else:  # pragma: no cover - PROPERTY_TYPES only holds the signatures above
        raise AssertionError(sig)
    return sig, converted


def typed_properties(props: Mapping[str, Any]) -> list[tuple[str, tuple[str, Any]]]:
    """A dict of unit properties as systemd's ``a(sv)``: ``[(name, (signature, value)), ...]``.

    An unknown name or a value of the wrong type raises PyoukiError naming the property.
    """
    return [(name, typed_value(name, value)) for name, value in props.items()]
