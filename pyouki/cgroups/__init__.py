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
    from pyouki.cgroups.systemd import SystemdCgroup
    from pyouki.cgroups.v2 import V2Manager


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
    if d.get("lenient"):
        # a cgroup pyouki chose by itself for a rootless container: its failures stay warnings
        inner = manager_from_state({k: v for k, v in d.items() if k != "lenient"})
        return _Lenient(inner, str(d["lenient"])) if inner is not None else None
    driver = d.get("driver")
    if driver == "cgroupfs-v1":
        from pyouki.cgroups.v1 import V1Manager

        return V1Manager.from_state(d)
    if driver == "cgroupfs-v2":
        from pyouki.cgroups.v2 import V2Manager

        return V2Manager.from_state(d)
    if driver == "systemd":
        from pyouki.cgroups.systemd import from_state

        return from_state(d)
    raise PyoukiError(f"unknown cgroup driver {driver!r} in container state")


def frozen_from_state(d: dict) -> bool:
    """Whether the cgroup that to_state() described is frozen, read straight from its file.

    `state`, `start`, `kill` and `delete` ask this of every container: rebuilding a manager would
    import the driver modules (~3 ms). Anything other than a plain cgroupfs v1/v2 record (or one
    of those under a systemd unit or a lenient rootless wrapper) goes through the manager.
    """
    from pyouki.record import frozen_plain

    frozen = frozen_plain(d)
    if frozen is not None:
        return frozen
    if d.get("driver") == "systemd" and d.get("fs"):
        d = d["fs"]
    manager = manager_from_state(d)
    return manager is not None and manager.state() == "frozen"


def remove_from_state(d: dict) -> None:
    """Remove the cgroup that to_state() described, as manager_from_state(d).remove() does.

    `delete` does this for every container: a plain rmdir of each directory is all it takes when
    the container made no child cgroups, without importing a driver (~2 ms). Anything else (a
    child cgroup, an error, another driver) goes through the manager, which reports it.
    """
    from pyouki.record import remove_plain

    if not remove_plain(d):
        manager = manager_from_state(d)
        if manager is not None:
            manager.remove()


def detect_mode(root: str = "/sys/fs/cgroup") -> str:
    """ "unified" (cgroup2 at root), "hybrid" (v1 controllers plus a cgroup2 mount) or "v1"."""
    from pyouki.cgroups.common import mode_from_mounts, read_mounts

    return mode_from_mounts(read_mounts(), root)


def _debug(msg: str) -> None:
    from pyouki import log

    log.debug(msg)


def make_manager(
    cgroups_path: str | None, container_id: str, *, rootless: bool, systemd: bool, resources: dict | None = None
) -> CgroupManager | None:
    """The manager for a new container, or None when it runs without cgroups (rootless, no delegation).

    cgroupfs: an absolute cgroupsPath is relative to each hierarchy's root, a relative one to the
    caller's own cgroup; none means /pyouki/<id> (rootful). Rootless on a unified host without
    --systemd-cgroup, see _rootless_manager: a user scope when a user manager answers, else a
    child of the caller's own cgroup when that is delegated, else no cgroup. Running without one
    is refused (PyoukiError naming the field) when the config asks for a cgroupsPath or for
    limits in resources (linux.resources), as runc refuses it: a dropped limit is never silent.
    """
    if systemd:
        from pyouki.cgroups.systemd import make_manager

        return make_manager(cgroups_path, container_id, rootless=rootless)

    from pyouki.cgroups import common as c

    mounts = c.read_mounts()
    mode = c.mode_from_mounts(mounts)
    if rootless and mode == "unified":
        return _rootless_manager(cgroups_path, container_id, mounts, requested(cgroups_path, resources))
    if _systemd_form(cgroups_path):
        # "slice:prefix:name" is the systemd form; cgroupfs would make a directory with colons in it.
        raise PyoukiError(f"cgroupsPath {cgroups_path!r} is in systemd form; use --systemd-cgroup")
    if rootless:
        # v1 delegation is not safe and runc ignores cgroups for rootless on v1: so do we.
        why = f"rootless on a cgroup v1 ({mode}) host, whose cgroups are not delegated to users"
        refuse_without_cgroup(requested(cgroups_path, resources), why, V1_HINT)
        _debug(f"rootless on a {mode} cgroup host: running without cgroups")
        return None
    own = c.own_cgroups()
    path = cgroups_path or f"/pyouki/{container_id}"
    if mode == "unified":
        from pyouki.cgroups.v2 import V2Manager

        return V2Manager.for_path(path, c.CGROUP_ROOT, mounts, own)
    from pyouki.cgroups.v1 import V1Manager

    return V1Manager.for_path(path, mounts, own)


# How to get what a rootless config asked for, in the refusal (see refuse_without_cgroup).
V2_HINT = ("run it in a delegated cgroup (a systemd user session: --systemd-cgroup, or "
           "systemd-run --user --scope -p Delegate=yes pyouki ...) or remove it from the config")
V1_HINT = ("rootless cgroups need a cgroup v2 host (systemd.unified_cgroup_hierarchy=1) with a delegated "
           "cgroup (a systemd user session), or remove it from the config")


def requested(cgroups_path: str | None, resources: dict | None) -> list[str]:
    """What a config asks of cgroups, as JSON paths: linux.cgroupsPath, then each resource with a
    value (devices excepted: a rootless container's device rules are not cgroup limits, runc
    skips them too)."""
    fields = ["linux.cgroupsPath"] if cgroups_path else []
    for key, value in (resources or {}).items():
        if key == "devices" or value is None or value == {} or value == []:
            continue
        if isinstance(value, dict) and all(v is None for v in value.values()):
            continue
        fields.append(f"linux.resources.{key}")
    return fields


def refuse_without_cgroup(fields: list[str], why: str, hint: str = V2_HINT) -> None:
    """A rootless container about to run without a cgroup: fail if the config asked for one or
    for limits (runc: "cannot set memory limit: container could not join or create cgroup")."""
    if fields:
        raise PyoukiError(f"{fields[0]}: cannot be applied: {why}; {hint}")


def _systemd_form(cgroups_path: str | None) -> bool:
    return bool(cgroups_path) and ":" in str(cgroups_path) and not str(cgroups_path).startswith("/")


def _rootless_manager(cgroups_path: str | None, container_id: str, mounts: list[CgroupMount],
                      fields: list[str]) -> CgroupManager | None:
    """Rootless on a unified host without --systemd-cgroup: the first of these that works.

    1. a transient user scope (Delegate=yes) from the user manager, when one answers; only for
       the default or a systemd-form cgroupsPath, which is all the systemd driver understands;
    2. a child of the caller's own cgroup when that is writable (delegated, e.g. a podman scope);
    3. no cgroup, as runc does for rootless without delegation, when the config (fields) asks
       for no cgroupsPath and no limits; else the create fails naming the first.
    See _Lenient for what may still fail later.
    """
    if not cgroups_path or _systemd_form(cgroups_path):
        scope = _user_scope(cgroups_path, container_id)
        if scope is not None:
            return _Lenient(scope, f"systemd user scope {scope.unit}", fields)
        if cgroups_path:
            raise PyoukiError(f"cgroupsPath {cgroups_path!r} is in systemd form, and no systemd user manager "
                              f"answers; use --systemd-cgroup to see why")
    own_child = _own_cgroup_child(cgroups_path, container_id, mounts)
    if not isinstance(own_child, str):
        return _Lenient(own_child, f"cgroup {own_child.path}", fields)
    refuse_without_cgroup(fields, own_child)
    return None


def _user_scope(cgroups_path: str | None, container_id: str) -> SystemdCgroup | None:
    """The systemd driver on the user manager, or None (debug logged) when none answers quickly.

    The sockets are stat()ed first: a login without a user manager costs no connect at all.
    """
    import stat

    from pyouki.dbus_native.address import user_endpoints

    def _present(path: str) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            return False

    endpoints = [e.address for e in user_endpoints() if e.abstract or _present(e.path)]
    if not endpoints:
        _debug("rootless: no systemd user manager socket (DBUS_SESSION_BUS_ADDRESS, $XDG_RUNTIME_DIR/bus, "
               "$XDG_RUNTIME_DIR/systemd/private)")
        return None
    from pyouki.cgroups import systemd as sd
    from pyouki.dbus_native.systemd import SystemdManager

    slice_, unit = sd.parse_cgroups_path(cgroups_path, container_id, True)
    try:
        # short: this is a guess that may fall back, not an explicit --systemd-cgroup
        conn = SystemdManager.connect(user=True, timeout=min(sd.TIMEOUT, CONNECT_TIMEOUT))
    except PyoukiError as e:
        _debug(f"rootless: not using the systemd user manager: {e}")
        return None
    conn.timeout = sd.TIMEOUT  # calls after the connect get the driver's usual bound
    _debug(f"rootless: using the systemd user manager at {conn.conn.endpoint.address}")
    return sd.SystemdCgroup(unit, slice_, user=True, rootless=True, systemd=conn)


# Seconds to reach the user manager before falling back; a live one answers in milliseconds.
CONNECT_TIMEOUT = 2.0


def _own_cgroup_child(cgroups_path: str | None, container_id: str, mounts: list[CgroupMount]) -> V2Manager | str:
    """A cgroup under the caller's own, when that is delegated to us; otherwise why not (debug logged).

    The caller's own cgroup always holds the caller (and often its shell or an engine's
    monitor), so the kernel's no-internal-process rule refuses to enable the domain
    controllers (memory, io) in its cgroup.subtree_control (EBUSY); threaded ones (pids, cpu)
    may still be enabled. runc would move on and fail at the first limit; crun ignores it.
    We do not move the caller's processes into a sibling leaf to free the parent: they are not
    ours (the user's shell, conmon), they may fork while we move them, and whoever delegated the
    cgroup (podman, systemd) expects them where it put them. So the container gets a child
    cgroup with the controllers the kernel lets us enable: it is still tracked, frozen, listed
    and killed through it, and a limit whose controller is missing fails create (_Lenient).
    """
    from pyouki.cgroups import common as c
    from pyouki.cgroups.v2 import V2Manager

    root = next((m for m in mounts if m.fstype == "cgroup2" and m.mountpoint == c.CGROUP_ROOT), None)
    if root is None:
        return "rootless and no cgroup2 file system at /sys/fs/cgroup"
    if cgroups_path and cgroups_path.startswith("/"):
        target = c.resolve_path(root.mountpoint, root.root, "/", cgroups_path)
        anc = target
        while not os.path.isdir(anc):
            anc = os.path.dirname(anc)
        if not _writable(anc):
            _debug(f"rootless and {anc} is not writable: running without cgroups")
            return f"rootless and {anc} is not delegated to this user"
        return V2Manager(target, root.mountpoint)
    own_dir = c.resolve_path(root.mountpoint, root.root, c.own_cgroups().get("", "/"), "")
    if not _writable(own_dir):
        _debug(f"rootless and {own_dir} is not delegated to us: running without cgroups")
        return f"rootless and {own_dir} is not delegated to this user"
    _debug(f"rootless: the container's cgroup is a child of our own delegated cgroup {own_dir}")
    return V2Manager(os.path.join(own_dir, c.clean_path(cgroups_path or container_id)), root.mountpoint)


def _writable(d: str) -> bool:
    """A delegated cgroup: we may create children and move processes (cgroup.procs writable)."""
    return os.access(d, os.W_OK) and os.access(os.path.join(d, "cgroup.procs"), os.W_OK)


class _Lenient:
    """A rootless cgroup pyouki chose by itself: when the config asks for nothing of it, its
    failures do not fail create.

    runc ignores cgroup errors for a rootless container that asks for no cgroupsPath and no
    limits; so does pyouki on these automatic paths, with a line in the log: a cgroup that cannot
    be made leaves the container without one. When the config asked for a cgroupsPath or limits
    (fields), that is an error, and so is any limit that cannot be written: like runc, never a
    requested limit silently dropped. An explicit --systemd-cgroup does not come through here.
    """

    def __init__(self, inner: CgroupManager, what: str, fields: list[str] | None = None) -> None:
        self.inner: CgroupManager | None = inner
        self.what = what
        self.fields = fields or []

    def _get(self) -> CgroupManager:
        if self.inner is None:
            raise PyoukiError(f"the container has no cgroup ({self.what} could not be used)")
        return self.inner

    def apply(self, pid: int) -> None:
        """Put pid in the cgroup; on failure, run without one."""
        inner = self._get()
        try:
            inner.apply(pid)
        except PyoukiError as e:
            refuse_without_cgroup(self.fields, f"rootless and {self.what} cannot be used ({e})")
            _warn(f"rootless: cannot use {self.what}, running without cgroups: {e}")
            self.inner = None
            try:
                inner.remove()
            except PyoukiError as e2:
                _debug(f"rootless: removing {self.what}: {e2}")

    def add_task(self, pid: int) -> None:
        """Move pid (an exec'd process) into the cgroup; on failure it stays outside, as runc does
        for rootless containers."""
        if self.inner is None:
            return
        try:
            self.inner.add_task(pid)
        except PyoukiError as e:
            _warn(f"rootless: the process stays outside {self.what}: {e}")

    def set_resources(self, resources: dict, field: str = "linux.resources") -> None:
        """Each resource on its own, so the error names the one whose controller is missing."""
        if self.inner is None:
            fields = [f.replace("linux.resources", field, 1) for f in requested(None, resources)]
            refuse_without_cgroup(fields, f"rootless and {self.what} could not be used")
            return
        for key, value in resources.items():
            if value is None or value == {} or value == []:
                continue
            try:
                self.inner.set_resources({key: value}, field)
            except PyoukiError as e:
                detail = str(e).removeprefix(f"{field}.{key}: ")
                raise PyoukiError(f"{field}.{key}: cannot be applied in {self.what} (rootless): {detail}; "
                                  f"the delegated cgroup must offer the controller in cgroup.controllers "
                                  f"and hold no process itself, or remove the limit") from None

    def freeze(self) -> None:
        """Freeze the cgroup."""
        self._get().freeze()

    def thaw(self) -> None:
        """Thaw the cgroup."""
        self._get().thaw()

    def state(self) -> str:
        """ "frozen" or "thawed"."""
        return self._get().state()

    def pids(self) -> list[int]:
        """Pids in the cgroup (none without one)."""
        return self.inner.pids() if self.inner is not None else []

    def stats(self) -> dict:
        """Stats from the cgroup."""
        return self._get().stats()

    def kill_all(self, sig: int) -> None:
        """Signal everything in the cgroup."""
        self._get().kill_all(sig)

    def remove(self) -> None:
        """Remove the cgroup, if one was made."""
        if self.inner is not None:
            self.inner.remove()

    def to_state(self) -> dict:
        """The real driver's state marked lenient (rebuilt as such by manager_from_state); empty
        (no cgroup) when it was dropped."""
        if self.inner is None:
            return {}
        return dict(self.inner.to_state(), lenient=self.what)


def _warn(msg: str) -> None:
    from pyouki import log

    log.warning(msg)
