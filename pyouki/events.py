"""`events`: a container's resource statistics and OOM notifications, as runc prints them.

One JSON object per line: `{"type":"stats","id":ID,"data":{...}}` every interval (once with
--stats) and `{"type":"oom","id":ID}` when the kernel's OOM killer hit the container. The data is
runc's types.Stats shape (cpu, cpuset, memory, pids, blkio, hugetlb, intel_rdt,
network_interfaces).
"""

from __future__ import annotations

import os
import sys
import time

from pyouki.errors import PyoukiError
from pyouki.jsonout import dumps
from pyouki.lifecycle import cgroup_manager, load

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyouki.state import Container

# Go's time.ParseDuration units, in nanoseconds
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_interval(text: str) -> float:
    """Seconds from a Go duration ("5s", "100ms", "1m30s", "1.5h"); must be greater than zero."""
    s = text.strip()
    total = 0.0
    i = 0
    if not s:
        raise PyoukiError(f"--interval: invalid duration {text!r}")
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        number, unit = s[i:j], s[j:k]
        if not number or number == "." or unit not in _UNITS:
            raise PyoukiError(f"--interval: invalid duration {text!r} (use e.g. 5s, 500ms, 1m)")
        total += float(number) * _UNITS[unit]
        i = k
    if total <= 0:
        raise PyoukiError("--interval: duration must be greater than 0")
    return total / 1e9


def stats_event(container_id: str, manager) -> dict:  # type: ignore[no-untyped-def]
    """runc's stats event for the container."""
    data = manager.stats()
    data.setdefault("cpuset", cpuset_stats(manager))
    data.setdefault("intel_rdt", {})
    data.setdefault("network_interfaces", None)
    return {"type": "stats", "id": container_id, "data": data}


_CPUSET_V1 = ("cpu_exclusive", "mem_hardwall", "mem_exclusive", "memory_migrate", "memory_spread_page",
              "memory_spread_slab", "memory_pressure", "sched_load_balance", "sched_relax_domain_level")


def cpuset_stats(manager) -> dict:  # type: ignore[no-untyped-def]
    """runc's cpuset section: the cpus and memory nodes in use (v1 adds its flag files)."""
    from pyouki.cgroups import common as c

    d = manager.to_state()
    flags: tuple[str, ...]
    if d.get("driver") == "cgroupfs-v1":
        directory, suffix, flags = (d.get("paths") or {}).get("cpuset"), "", _CPUSET_V1
    else:
        directory, suffix, flags = d.get("path"), ".effective", ()
    if not directory or not os.path.isdir(directory):
        return {}
    out: dict = {}
    for key in ("cpus", "mems"):
        try:
            out[key] = c.parse_cpu_list(c.read_file(directory, f"cpuset.{key}{suffix}"))
        except (PyoukiError, ValueError):
            continue
    for name in flags:
        out[name] = c.read_int(directory, f"cpuset.{name}")
    return out


def oom_kills(manager) -> int:  # type: ignore[no-untyped-def]
    """How many times the OOM killer acted in the container's memory cgroup (v1 or v2)."""
    d = manager.to_state()
    paths = []
    if d.get("driver") == "cgroupfs-v1":
        memory = (d.get("paths") or {}).get("memory")
        if memory:
            paths.append(os.path.join(memory, "memory.oom_control"))
    elif d.get("path"):
        paths.append(os.path.join(d["path"], "memory.events"))
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def events(root: str, container_id: str, interval: float, stats_only: bool) -> None:
    """Print the stats once (stats_only), or stats every interval and OOM events until it stops."""
    for event in event_stream(root, container_id, interval, stats_only):
        _emit(event)


def event_stream(root: str, container_id: str, interval: float, stats_only: bool) -> Iterator[dict]:
    """The events `events` prints, as dicts: checked now, produced as the iterator is consumed."""
    container = load(root, container_id)
    container.require_live("get events of")
    manager = cgroup_manager(container, "get events of")
    return _stream(container, manager, interval, stats_only)


def _stream(container: Container, manager, interval: float,  # type: ignore[no-untyped-def]
            stats_only: bool) -> Iterator[dict]:
    container_id = container.id
    if stats_only:
        yield stats_event(container_id, manager)
        return
    ooms = oom_kills(manager)
    while True:
        yield stats_event(container_id, manager)
        deadline = time.monotonic() + interval
        while True:
            now_ooms = oom_kills(manager)
            if now_ooms > ooms:
                ooms = now_ooms
                yield {"type": "oom", "id": container_id}
            if not container.alive():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # a short tick so an OOM is reported promptly, not only at the next interval
            time.sleep(min(left, 0.25))


def _emit(event: dict) -> None:
    sys.stdout.write(dumps(event) + "\n")
    sys.stdout.flush()
