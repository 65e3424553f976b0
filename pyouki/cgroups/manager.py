"""The cgroup manager interface every driver implements, and rebuilding a driver from state.json."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CgroupManager(Protocol):
    """One container's cgroup(s): create, fill, limit, freeze, inspect, remove."""

    def apply(self, pid: int) -> None:
        """Create the cgroup(s) with pid as their first task (create: the container's init)."""

    def add_task(self, pid: int) -> None:
        """Move pid into the existing cgroup(s), creating nothing (exec joins a running container)."""

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
    """Rebuild a manager from its to_state() dict; lives in pyouki.cgroups (no typing import there)."""
    from pyouki.cgroups import manager_from_state as rebuild

    return rebuild(d)
