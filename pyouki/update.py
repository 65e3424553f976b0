"""`update`: change the resource limits of a running container, from runc's flags or from a
LinuxResources JSON document (`--resources FILE`, or `-` for standard input as the containerd shim
sends it).

Like runc, a zero or empty value means "unchanged" (the shim and docker send every field, most of
them zero), `-1` means unlimited, and the device rules are not touched by an update.
"""

from __future__ import annotations

import re

from pyouki import log
from pyouki.errors import PyoukiError, reason
from pyouki.lifecycle import cgroup_manager, load

# docker's units.RAMInBytes: a number, an optional binary unit (k, m, g, t, p), optional "i"/"b".
_RAM = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# dest -> (flag, section, key, kind); kind "u"/"u16" unsigned, "i" signed, "mem" bytes with units or -1,
# "s" a string
FLAGS: dict[str, tuple[str, str, str, str]] = {
    "blkio_weight": ("--blkio-weight", "blockIO", "weight", "u16"),
    "cpu_period": ("--cpu-period", "cpu", "period", "u"),
    "cpu_quota": ("--cpu-quota", "cpu", "quota", "i"),
    "cpu_share": ("--cpu-share", "cpu", "shares", "u"),
    "cpu_rt_period": ("--cpu-rt-period", "cpu", "realtimePeriod", "u"),
    "cpu_rt_runtime": ("--cpu-rt-runtime", "cpu", "realtimeRuntime", "i"),
    "cpuset_cpus": ("--cpuset-cpus", "cpu", "cpus", "s"),
    "cpuset_mems": ("--cpuset-mems", "cpu", "mems", "s"),
    "memory": ("--memory", "memory", "limit", "mem"),
    "memory_reservation": ("--memory-reservation", "memory", "reservation", "mem"),
    "memory_swap": ("--memory-swap", "memory", "swap", "mem"),
    "kernel_memory": ("--kernel-memory", "memory", "kernel", "mem"),
    "kernel_memory_tcp": ("--kernel-memory-tcp", "memory", "kernelTCP", "mem"),
    "pids_limit": ("--pids-limit", "pids", "limit", "i"),
}
# values that mean "leave as it is" when they are zero or empty (runc's update semantics)
_UNCHANGED_IF_ZERO = {
    "memory": ("limit", "reservation", "swap", "kernel", "kernelTCP"),
    "cpu": ("shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "cpus", "mems"),
    "blockIO": ("weight", "leafWeight"),
    "pids": ("limit",),
}


def ram_in_bytes(text: str) -> int:
    """Bytes from "67108864", "64m", "1.5g", "512KiB" (binary units, as docker and runc read them)."""
    m = _RAM.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _parse(flag: str, kind: str, text: str) -> int | str:
    if kind == "s":
        return text
    try:
        if kind == "mem":
            return -1 if text == "-1" else ram_in_bytes(text)
        value = int(text, 10)
    except ValueError:
        what = "size" if kind == "mem" else "number"
        raise PyoukiError(f"invalid value for {flag}: {text!r} is not a valid {what}") from None
    if kind in ("u", "u16") and value < 0:
        raise PyoukiError(f"invalid value for {flag}: {text!r} must not be negative")
    if kind == "u16" and value > 0xFFFF:
        raise PyoukiError(f"invalid value for {flag}: {text!r} is out of range")
    return value


def resources_from_flags(options: dict) -> dict:
    """A LinuxResources dict from update's flags (only those given)."""
    rdt_from_flags(options)  # checked with the others, applied by update()
    resources: dict = {}
    for dest, (flag, section, key, kind) in FLAGS.items():
        text = options.get(dest)
        if text is None or text == "":
            continue
        resources.setdefault(section, {})[key] = _parse(flag, kind, str(text))
    return resources


def rdt_from_flags(options: dict) -> dict:
    """The Intel RDT schemas of --l3-cache-schema and --mem-bw-schema (only those given), checked."""
    rdt = {}
    for dest, flag, key, prefix in (("l3_cache_schema", "--l3-cache-schema", "l3CacheSchema", ""),
                                    ("mem_bw_schema", "--mem-bw-schema", "memBwSchema", "MB:")):
        text = options.get(dest)
        if text:
            if "\n" in text or not text.startswith(prefix):
                raise PyoukiError(f"invalid value for {flag}: {text!r}" + (f" does not start with {prefix}"
                                                                           if prefix else " has a newline"))
            rdt[key] = text
    return rdt


def read_resources(path: str) -> dict:
    """The LinuxResources JSON document in path ("-": standard input)."""
    import json
    import sys

    where = "standard input" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise PyoukiError(f"--resources: failed to read {where}: {reason(e)}") from None
    try:
        resources = json.loads(data) if data.strip() else {}
    except ValueError as e:
        raise PyoukiError(f"--resources: failed to parse {where}: {str(e)[:1].lower()}{str(e)[1:]}") from None
    if not isinstance(resources, dict):
        raise PyoukiError(f"--resources: {where} does not hold a LinuxResources object")
    return resources


def effective(resources: dict) -> dict:
    """The changes an update makes: zero/empty values and device rules dropped (runc semantics)."""
    out: dict = {}
    for section, value in resources.items():
        if section == "devices":
            if value:
                log.debug("update: linux.resources.devices ignored (device rules are fixed at create)")
            continue
        if value is None:
            continue
        if section in _UNCHANGED_IF_ZERO and isinstance(value, dict):
            value = {k: v for k, v in value.items()
                     if v is not None and not (k in _UNCHANGED_IF_ZERO[section] and v in (0, ""))}
            if not value:
                continue
        out[section] = value
    return out


def update(root: str, container_id: str, resources: dict, rdt: dict | None = None) -> None:
    """Apply resources to the container's cgroup, and rdt (l3CacheSchema/memBwSchema) to its resctrl
    group; errors name the field (linux.resources.memory.limit)."""
    container = load(root, container_id).lock()
    try:
        container.require_live("update")
        if rdt:
            from pyouki.intelrdt import update_container

            update_container(container, rdt)
            if not resources:
                return
        manager = cgroup_manager(container, "update")
        changes = effective(resources)
        for key in ("kernel", "kernelTCP"):
            if key in changes.get("memory", {}):
                log.warning(f"linux.resources.memory.{key}: kernel memory settings are ignored")
        if changes:
            manager.set_resources(changes, "linux.resources")
    finally:
        container.unlock()
    log.debug(f"container {container_id} updated")
