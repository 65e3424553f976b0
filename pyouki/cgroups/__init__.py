"""Cgroup managers: detect the host's layout and build the driver for a container.

Cheap to import: the drivers are imported only when a manager is made or rebuilt.

    mgr = make_manager(cfg_linux.get("cgroupsPath"), cid, rootless=..., systemd=...)
    if mgr: mgr.apply(pid); mgr.set_resources(cfg_linux.get("resources") or {})
    state["cgroup"] = mgr.to_state() if mgr else None
    ...
    mgr = manager_from_state(state.get("cgroup"))
"""

from __future__ import annotations

import os

from pyouki.errors import PyoukiError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from pyouki.cgroups.common import CgroupMount
    from pyouki.cgroups.manager import CgroupManager


def __getattr__(name: str) -> object:
    # CgroupManager is a typing.Protocol; importing typing costs ~2 ms, so only do it on demand.
    if name == "CgroupManager":
        from pyouki.cgroups import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'pyouki.cgroups' has no attribute {name!r}")


__all__ = ["CgroupManager", "detect_mode", "make_manager", "manager_from_state"]


def manager_from_state(d: dict | None) -> CgroupManager | None:
    """Rebuild a manager from the dict that to_state() returned (None when the container has none).

    Here rather than in manager.py: state/kill/delete call it on every container, and manager.py
    imports typing for its Protocol.
    """
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


def detect_mode(root: str = "/sys/fs/cgroup") -> str:
    """ "unified" (cgroup2 at root), "hybrid" (v1 controllers plus a cgroup2 mount) or "v1"."""
    from pyouki.cgroups.common import mode_from_mounts, read_mounts

    return mode_from_mounts(read_mounts(), root)


def _debug(msg: str) -> None:
    from pyouki import log

    log.debug(msg)


def make_manager(
    cgroups_path: str | None, container_id: str, *, rootless: bool, systemd: bool
) -> CgroupManager | None:
    """The manager for a new container, or None when it runs without cgroups (rootless, no delegation).

    cgroupfs: an absolute cgroupsPath is relative to each hierarchy's root, a relative one to the
    caller's own cgroup; none means /pyouki/<id> (rootful) or, rootless with a delegated cgroup2
    cgroup, a child <id> of the caller's own cgroup.
    """
    if systemd:
        from importlib import import_module

        try:
            sd = import_module("pyouki.cgroups.systemd")  # provided by the D-Bus work
        except ImportError:
            raise PyoukiError("systemd cgroup driver not available yet") from None
        return sd.make_manager(cgroups_path, container_id, rootless=rootless)  # type: ignore[no-any-return]

    from pyouki.cgroups import common as c

    if cgroups_path is not None and ":" in cgroups_path and not cgroups_path.startswith("/"):
        # "slice:prefix:name" is the systemd form; cgroupfs would make a directory with colons in it.
        raise PyoukiError(f"cgroupsPath {cgroups_path!r} is in systemd form; use --systemd-cgroup")
    mounts = c.read_mounts()
    mode = c.mode_from_mounts(mounts)
    own = c.own_cgroups()
    if rootless:
        return _rootless_manager(cgroups_path, container_id, mode, mounts, own)
    path = cgroups_path or f"/pyouki/{container_id}"
    if mode == "unified":
        from pyouki.cgroups.v2 import V2Manager

        return V2Manager.for_path(path, c.CGROUP_ROOT, mounts, own)
    from pyouki.cgroups.v1 import V1Manager

    return V1Manager.for_path(path, mounts, own)


def _rootless_manager(
    cgroups_path: str | None, container_id: str, mode: str, mounts: list[CgroupMount], own: dict[str, str]
) -> CgroupManager | None:
    from pyouki.cgroups import common as c

    if mode != "unified":
        # v1 delegation is not safe and runc ignores cgroups for rootless on v1: so do we.
        _debug(f"rootless on a {mode} cgroup host: running without cgroups")
        return None
    root = next((m for m in mounts if m.fstype == "cgroup2" and m.mountpoint == c.CGROUP_ROOT), None)
    if root is None:
        return None
    own_dir = c.resolve_path(root.mountpoint, root.root, own.get("", "/"), "")
    if not _writable(own_dir):
        _debug(f"rootless and {own_dir} is not delegated to us: running without cgroups")
        return None
    from pyouki.cgroups.v2 import V2Manager

    if cgroups_path and cgroups_path.startswith("/"):
        target = c.resolve_path(root.mountpoint, root.root, "/", cgroups_path)
        anc = target
        while not os.path.isdir(anc):
            anc = os.path.dirname(anc)
        if not _writable(anc):
            _debug(f"rootless and {anc} is not writable: running without cgroups")
            return None
        return V2Manager(target, root.mountpoint)
    return V2Manager(os.path.join(own_dir, c.clean_path(cgroups_path or container_id)), root.mountpoint)


def _writable(d: str) -> bool:
    """A delegated cgroup: we may create children and move processes (cgroup.procs writable)."""
    return os.access(d, os.W_OK) and os.access(os.path.join(d, "cgroup.procs"), os.W_OK)
