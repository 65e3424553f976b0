"""The cgroup manager interface every driver implements, and rebuilding a driver from state.json."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pyouki.errors import PyoukiError


@runtime_checkable
class CgroupManager(Protocol):
    """One container's cgroup(s): create, fill, limit, freeze, inspect, remove."""

    def apply(self, pid: int) -> None:
        """Create the cgroup(s) and move pid into them."""

    def set_resources(self, resources: dict, field: str = "linux.resources") -> None:
        """Write the OCI linux.resources limits; ConfigError naming the JSON path on failure."""

    def freeze(self) -> None:
        """Freeze every task in the cgroup and wait until the kernel says frozen."""

    def thaw(self) -> None:
        """Thaw the cgroup and wait until it is running again."""

    def state(self) -> str:
        """ "frozen" or "thawed"."""
        ...

    def pids(self) -> list[int]:
        """All pids in the container's cgroup and its descendants."""
        ...

    def stats(self) -> dict:
        """runc `events --stats` shaped data: cpu, memory, pids, blkio, hugetlb."""
        ...

    def kill_all(self, sig: int) -> None:
        """Send sig to every process in the cgroup (cgroup.kill for SIGKILL on v2 when present)."""

    def remove(self) -> None:
        """Remove the cgroup directories (kills nothing); idempotent."""

    def to_state(self) -> dict:
        """A JSON-able description persisted in state.json; from_state() rebuilds the manager."""
        ...


def manager_from_state(d: dict | None) -> CgroupManager | None:
    """Rebuild a manager from the dict that to_state() returned (None when the container has none)."""
    if not d:
        return None
    driver = d.get("driver")
    if driver == "cgroupfs-v1":
        from pyouki.cgroups.v1 import V1Manager

        return V1Manager.from_state(d)
    if driver == "cgroupfs-v2":
        from pyouki.cgroups.v2 import V2Manager

        return V2Manager.from_state(d)
    if driver == "systemd":
        from importlib import import_module

        try:
            systemd = import_module("pyouki.cgroups.systemd")  # written by the D-Bus work
        except ImportError:
            raise PyoukiError("systemd cgroup driver not available yet") from None
        return systemd.from_state(d)  # type: ignore[no-any-return]
    raise PyoukiError(f"unknown cgroup driver {driver!r} in container state")
