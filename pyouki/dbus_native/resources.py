"""OCI ``linux.resources`` to systemd unit properties, with runc's conversions.

Pure logic. Fields the systemd driver cannot express are reported by their JSON path so the
caller either applies them another way (e.g. inside the delegated cgroup) or fails naming them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pyouki.cgroups.common import blkio_weight_to_io_weight, pids_max
from pyouki.cgroups.common import shares_to_weight as cpu_shares_to_weight
from pyouki.dbus_native.properties import INFINITY, parse_cpu_list

__all__ = ["blkio_weight_to_io_weight", "cpu_shares_to_weight"]  # the conversions are the cgroupfs driver's
from pyouki.errors import ConfigError

PREFIX = "linux.resources"
# runc's default CFS period, used to turn a quota without a period into a per-second quota.
DEFAULT_CPU_PERIOD = 100_000

# Fields translated below, by path relative to linux.resources.
SUPPORTED = frozenset({
    "memory.limit", "memory.reservation", "memory.swap", "pids.limit", "cpu.shares", "cpu.quota",
    "cpu.period", "cpu.cpus", "cpu.mems", "blockIO.weight",
})


def cpu_quota_per_sec(quota: int, period: int) -> int:
    """CPUQuotaPerSecUSec for a CFS quota/period pair, as runc computes it.

    systemd stores the quota as a whole percentage of a cpu, so a fractional percent is
    rounded up to the next 10 ms per second; a negative quota is "no limit".
    """
    if quota <= 0:
        return INFINITY
    per_sec = quota * 1_000_000 // (period or DEFAULT_CPU_PERIOD)
    if per_sec % 10_000:
        per_sec = (per_sec // 10_000 + 1) * 10_000
    return per_sec


def memory_swap_to_v2(swap: int, memory: int) -> int:
    """OCI ``memory.swap`` (memory+swap, v1 semantics) to v2 ``memory.swap.max`` (swap alone); -1 = max."""
    if memory == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if memory in (0, -1):
        raise ConfigError(f"{PREFIX}.memory.swap", "cannot set a swap limit without a memory limit")
    if swap < memory:
        raise ConfigError(f"{PREFIX}.memory.swap",
                          f"memory+swap limit {swap} is below the memory limit {memory}")
    return swap - memory


def _is_set(value: Any) -> bool:
    """Absent, null, false, empty lists/objects request nothing."""
    return value is not None and value is not False and value != [] and value != {}


def set_fields(resources: Mapping[str, Any]) -> list[str]:
    """The leaf paths (relative to linux.resources) that request something, e.g. ``memory.limit``.

    Lists and the ``unified`` map count as one leaf each.
    """
    paths: list[str] = []
    for key, value in resources.items():
        if not _is_set(value):
            continue
        if isinstance(value, Mapping) and key != "unified":
            paths += [f"{key}.{sub}" for sub, v in value.items() if _is_set(v)]
        else:
            paths.append(key)
    return paths


def unsupported_fields(resources: Mapping[str, Any]) -> list[str]:
    """Full JSON paths of the set fields the systemd driver cannot express as unit properties."""
    return [f"{PREFIX}.{p}" for p in set_fields(resources) if p not in SUPPORTED]


def _skipped(path: str, skip: Collection[str]) -> bool:
    return any(path == s or path.startswith(s + ".") for s in skip)


def _int(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{PREFIX}.{path}", f"expected an integer, got {value!r}")
    return value


def resources_to_properties(resources: Mapping[str, Any], skip: Collection[str] = ()) -> dict[str, Any]:
    """Unit properties (for ``properties.typed_properties``) that apply linux.resources.

    skip holds paths relative to linux.resources (``"devices"``, ``"memory.swappiness"``) the
    caller applies some other way; any other field without a systemd property raises
    ConfigError naming its JSON path. Zero means "unset" as in runc, except ``pids.limit``
    (0 is a valid limit, per the runtime spec).
    """
    for path in set_fields(resources):
        if path not in SUPPORTED and not _skipped(path, skip):
            raise ConfigError(f"{PREFIX}.{path}", "not supported by the systemd cgroup driver")

    props: dict[str, Any] = {}
    memory = resources.get("memory") or {}
    limit = _int("memory.limit", memory.get("limit") or 0)
    if limit:
        props["MemoryMax"] = INFINITY if limit < 0 else limit
    reservation = _int("memory.reservation", memory.get("reservation") or 0)
    if reservation:
        props["MemoryLow"] = INFINITY if reservation < 0 else reservation
    swap = _int("memory.swap", memory.get("swap") or 0)
    if swap or limit == -1:
        v2_swap = memory_swap_to_v2(swap, limit)
        # swap == limit gives 0: no swap at all, which must be set, not left as "unset"
        if v2_swap or swap:
            props["MemorySwapMax"] = INFINITY if v2_swap < 0 else v2_swap

    pids = resources.get("pids") or {}
    if pids.get("limit") is not None:
        tasks = _int("pids.limit", pids["limit"])
        value = pids_max(tasks)  # what the cgroupfs drivers write: 0 is a limit of 1
        props["TasksMax"] = INFINITY if value == "max" else int(value)

    cpu = resources.get("cpu") or {}
    shares = _int("cpu.shares", cpu.get("shares") or 0)
    if shares:
        if not 2 <= shares <= 262144:
            raise ConfigError(f"{PREFIX}.cpu.shares", f"{shares} is outside 2..262144")
        props["CPUWeight"] = cpu_shares_to_weight(shares)
    quota = _int("cpu.quota", cpu.get("quota") or 0)
    period = _int("cpu.period", cpu.get("period") or 0)
    if period:
        props["CPUQuotaPeriodUSec"] = period
    if quota or period:
        props["CPUQuotaPerSecUSec"] = cpu_quota_per_sec(quota, period)
    for field, prop in (("cpus", "AllowedCPUs"), ("mems", "AllowedMemoryNodes")):
        text = cpu.get(field)
        if text:
            if not isinstance(text, str):
                raise ConfigError(f"{PREFIX}.cpu.{field}", f"expected a list such as \"0-3,5\", got {text!r}")
            try:
                props[prop] = parse_cpu_list(text)
            except Exception as e:
                raise ConfigError(f"{PREFIX}.cpu.{field}", str(e)) from None

    weight = _int("blockIO.weight", (resources.get("blockIO") or {}).get("weight") or 0)
    if weight:
        if not 10 <= weight <= 1000:
            raise ConfigError(f"{PREFIX}.blockIO.weight", f"{weight} is outside 10..1000")
        props["IOWeight"] = blkio_weight_to_io_weight(weight)
    return props
