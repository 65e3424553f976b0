"""systemd cgroup driver: a transient unit asked for over D-Bus, managed through cgroupfs after.

The container gets a transient scope (``Delegate=yes``) from the system manager (rootful) or
the user manager (rootless). What systemd can express as unit properties (memory, pids, cpu
weight/quota/cpus/mems, io weight) is set with SetUnitProperties, so systemd knows and keeps
the limits, and refused when the manager has no cgroup v2 controller to enforce it (systemd
would accept it and enforce nothing); everything else (device rules, hugetlb, unified keys, io
throttles...) is written through cgroupfs into the unit's cgroup by the v1/v2 driver, which
also serves freeze/thaw, pids, stats and kill. cgroupsPath is runc's ``slice:prefix:name``.

jeepney is imported only when this driver talks to systemd; rebuilding it from state.json for
``state``/``kill``/``pause`` needs no D-Bus at all.
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

if TYPE_CHECKING:
    from pyouki.cgroups.manager import CgroupManager
    from pyouki.dbus_native.systemd import SystemdManager

PREFIX = "pyouki"
SLICE_INTERFACE = "org.freedesktop.systemd1.Slice"
# Bounds every D-Bus call and job wait; generous because systemd under emulation (TCG) takes
# ~0.35 s per job, yet a dead or hung bus still fails in seconds, not forever.
TIMEOUT = float(os.environ.get("PYOUKI_SYSTEMD_TIMEOUT") or 10.0)


def _debug(msg: str) -> None:
    from pyouki import log

    log.debug(msg)


# -- cgroupsPath --------------------------------------------------------------------------------

def parse_cgroups_path(cgroups_path: str | None, container_id: str, rootless: bool) -> tuple[str, str]:
    """(slice, unit) for runc's ``slice:prefix:name``; the default is ``system.slice:pyouki:ID``
    (``user.slice`` rootless). A name ending in ``.slice`` is itself the unit (a slice)."""
    default_slice = "user.slice" if rootless else "system.slice"
    if not cgroups_path:
        return default_slice, f"{PREFIX}-{container_id}.scope"
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise ConfigError("linux.cgroupsPath", f"expected \"slice:prefix:name\" for systemd cgroups, "
                          f"got {cgroups_path!r}")
    slice_, prefix, name = parts
    slice_ = slice_ or default_slice
    if not slice_.endswith(".slice") or "/" in slice_:
        raise ConfigError("linux.cgroupsPath", f"invalid slice {slice_!r}: must be a unit name ending in .slice")
    if not name or "/" in name:
        raise ConfigError("linux.cgroupsPath", f"invalid name {name!r} in {cgroups_path!r}")
    if name.endswith(".slice"):
        return slice_, name
    return slice_, f"{prefix}-{name}.scope" if prefix else f"{name}.scope"


def split_resources(resources: dict, rootless: bool) -> tuple[dict, dict]:
    """(unit properties, the rest of linux.resources for cgroupfs).

    Rootless, device rules are dropped as runc does: loading a BPF device filter needs
    privileges a user lacks, and the container's user namespace already keeps it from devices.
    """
    from pyouki.dbus_native.resources import SUPPORTED, resources_to_properties, set_fields

    rest: dict = {}
    for key, value in resources.items():
        if key == "devices" and rootless:
            continue
        if isinstance(value, dict) and key != "unified":
            sub = {k: v for k, v in value.items() if f"{key}.{k}" not in SUPPORTED and v is not None}
            if key == "memory" and value.get("checkBeforeUpdate") and value.get("limit"):
                # the check compares the new limit with memory.current: the v2 driver does it
                sub["limit"] = value["limit"]
            if sub:
                rest[key] = sub
        elif value is not None and key not in ("cpu", "memory", "pids", "blockIO"):
            rest[key] = value
    # fields without a unit property are applied through cgroupfs (or dropped, above)
    skip = [p for p in set_fields(resources) if p not in SUPPORTED]
    props = resources_to_properties(resources, skip=skip)
    return props, rest


# -- the driver ---------------------------------------------------------------------------------

class SystemdCgroup:
    """One container's transient unit, and the cgroupfs driver for the unit's cgroup."""

    driver = "systemd"

    def __init__(self, unit: str, slice: str, user: bool, rootless: bool,
                 fs: CgroupManager | None = None, systemd: SystemdManager | None = None) -> None:
        self.unit = unit
        self.slice = slice
        self.user = user  # the user manager (session bus) rather than the system manager
        self.rootless = rootless
        self.fs = fs  # known once the unit exists (its ControlGroup)
        self._systemd = systemd
        # the scope was made with CollectMode=inactive-or-failed: see apply
        self.collect = False

    # D-Bus ----------------------------------------------------------------------------------

    def systemd(self) -> SystemdManager:
        """The connection to the manager, opened on first use (bounded by TIMEOUT)."""
        if self._systemd is None:
            from pyouki.dbus_native.systemd import SystemdManager

            self._systemd = SystemdManager.connect(user=self.user, timeout=TIMEOUT)
        return self._systemd

    def close(self) -> None:
        """Close the D-Bus connection if one is open."""
        if self._systemd is not None:
            self._systemd.close()
            self._systemd = None

    @property
    def is_slice(self) -> bool:
        """A cgroupsPath name ending in .slice asks for a slice, not a scope."""
        return self.unit.endswith(".slice")

    def _control_group(self) -> str:
        from pyouki.dbus_native import messages

        iface = SLICE_INTERFACE if self.is_slice else messages.SCOPE_INTERFACE
        path = str(self.systemd().get_unit_property(self.unit, iface, "ControlGroup") or "")
        if not path.startswith("/"):
            raise PyoukiError(f"systemd unit {self.unit} has no cgroup")
        return path

    # lifecycle ------------------------------------------------------------------------------

    def apply(self, pid: int) -> None:
        """Start the transient unit holding pid and find its cgroup.

        A scope gets the pid from systemd (``PIDs``); a slice cannot hold processes through
        D-Bus, so the pid is written into its cgroup as runc does.
        """
        sd = self.systemd()
        description = f"pyouki container {self.unit.rsplit('.', 1)[0]}"
        if self.is_slice:
            sd.start_transient_unit(self.unit, {"Description": description, "Wants": [self.slice],
                                                "DefaultDependencies": False}, timeout=TIMEOUT)
        else:
            # CollectMode=inactive-or-failed: systemd unloads the scope once its cgroup is empty
            # even when it failed (an OOM kill, a stop that timed out), so the name is free again
            # and delete of a stopped container needs no D-Bus at all (pyouki.record.remove_plain):
            # the podman path's delete stays on pyouki.cli.hot. runc keeps a failed scope until
            # its delete resets it; the outcome for the next create is the same.
            def scope(properties: dict | None = None) -> None:
                sd.start_transient_scope(self.unit, slice=self.slice, pids=[pid], delegate=True,
                                         description=description, timeout=TIMEOUT, properties=properties)

            try:
                scope({"CollectMode": "inactive-or-failed"})
                self.collect = True
            except PyoukiError as e:
                if "CollectMode" not in str(e):
                    raise
                _debug(f"systemd refuses CollectMode (before v236): {e}")
                scope()
        try:
            # Where the kernel put the pid is the scope's cgroup as this process sees it (also
            # inside a cgroup namespace), and costs no D-Bus round trip; a slice asks systemd.
            path = None if self.is_slice else _pid_cgroup(pid)
            self.fs = fs_manager(path or self._control_group())
            if self.is_slice or not _is_unified():
                # v1: put the pid in the hierarchies systemd does not manage too, as runc does
                self.fs.apply(pid)
        except BaseException:
            self.remove()
            raise
        _debug(f"container cgroup is {self.unit} ({self.fs.to_state()})")

    def add_task(self, pid: int) -> None:
        """Move pid into the existing unit's cgroup (exec): never StartTransientUnit again.

        Through cgroupfs first (no D-Bus round trip); where the caller may not move the process
        there (rootless: the common ancestor of its own cgroup and the scope is root's), systemd
        attaches it to the delegated scope.
        """
        try:
            self._fs().add_task(pid)
        except PyoukiError as e:
            if self.is_slice:
                raise
            _debug(f"{e}; asking systemd to attach it to {self.unit}")
            try:
                self.systemd().attach_processes(self.unit, [pid])
            except PyoukiError as e2:
                raise PyoukiError(f"{e} ({e2})") from None

    def set_resources(self, resources: dict, field: str = "linux.resources") -> None:
        """Unit properties through SetUnitProperties, the rest through the unit's cgroup files."""
        if not resources:
            return
        props, rest = split_resources(resources, self.rootless)
        if props:
            self._check_controllers(props, field)
            self.systemd().set_properties(self.unit, props)
        if rest:
            self._fs().set_resources(rest, field)

    def _check_controllers(self, props: dict, field: str) -> None:
        """Refuse a unit property whose cgroup v2 controller the manager cannot use.

        systemd accepts MemoryMax= and the like for a controller it was never given (a host
        keeping it on cgroup v1, a user manager without that delegation) and enforces nothing:
        the limit would be dropped silently. runc fails there too (it also writes the cgroup
        file, which is missing). Before SetUnitProperties, so a refused update changes nothing.
        v1 hierarchies are systemd's own business and are not checked.
        """
        fs = self._fs().to_state()
        if fs.get("driver") != "cgroupfs-v2":
            return
        found = _manager_controllers(str(fs["path"]), str(fs["mountpoint"]), self.user)
        if found is None:
            return
        where, available = found
        missing = unenforced(props, available)
        if missing:
            leaf, controller = missing
            who = "the systemd user manager" if self.user else "systemd"
            raise ConfigError(f"{field}.{leaf}", f"the {controller} controller is not available to {who} "
                                                 f"({where}/cgroup.controllers: "
                                                 f"{' '.join(sorted(available)) or 'none'}): "
                                                 f"the limit cannot be enforced")

    def _fs(self) -> CgroupManager:
        if self.fs is None:
            self.fs = fs_manager(self._control_group())
        return self.fs

    def remove(self) -> None:
        """StopUnit (waiting for its job) and ResetFailedUnit, as runc's Destroy, then remove what
        cgroupfs left.

        The unit is usually gone already: systemd collects a scope once its last process exits,
        and removes its cgroup. A scope that failed (an OOM kill, a stop that timed out) has no
        cgroup either but stays loaded, "failed", until reset, unless it was made with
        CollectMode=inactive-or-failed (see apply: then delete does not come here at all,
        pyouki.record.remove_plain does what is left). So when the scope's cgroup is gone
        there is nothing to stop, and ResetFailedUnit alone (no error for a collected unit) is
        what delete needs: 2 round trips (Hello, ResetFailedUnit) instead of 5 and a job wait
        (AddMatch, Subscribe, StopUnit). If the manager is unreachable then, that is no error.
        """
        stopped = not self.is_slice and self._unit_cgroup_gone()
        try:
            sd = self.systemd()
        except PyoukiError:
            if self.fs is None or not self._cgroup_exists():
                _debug(f"systemd unreachable; {self.unit} is gone already")
                return
            raise
        if not stopped:
            sd.stop_unit(self.unit, timeout=TIMEOUT)
        sd.reset_failed(self.unit)
        if self.fs is not None:
            self.fs.remove()

    def _unit_cgroup_gone(self) -> bool:
        """Whether the unit's own cgroup (in the hierarchy systemd manages) is known and gone."""
        from pyouki.record import unit_cgroup

        path = unit_cgroup(self.fs.to_state()) if self.fs is not None else None
        return path is not None and not os.path.isdir(path)

    def _cgroup_exists(self) -> bool:
        state = self.fs.to_state() if self.fs is not None else {}
        return any(os.path.isdir(p) for p in _state_paths(state))

    # everything else is cgroupfs ------------------------------------------------------------

    def freeze(self) -> None:
        """Freeze through the unit's cgroup (cgroup.freeze or the v1 freezer)."""
        self._fs().freeze()

    def thaw(self) -> None:
        """Thaw through the unit's cgroup."""
        self._fs().thaw()

    def state(self) -> str:
        """ "frozen" or "thawed", from the unit's cgroup."""
        return self._fs().state()

    def pids(self) -> list[int]:
        """Every pid in the unit's cgroup and below."""
        return self._fs().pids()

    def stats(self) -> dict:
        """runc-shaped stats from the unit's cgroup."""
        return self._fs().stats()

    def kill_all(self, sig: int) -> None:
        """Signal every process in the unit's cgroup."""
        self._fs().kill_all(sig)

    def to_state(self) -> dict:
        """What state.json keeps: the unit, which manager, and the cgroupfs driver's own state."""
        return {"driver": self.driver, "unit": self.unit, "slice": self.slice, "user": self.user,
                "rootless": self.rootless, "fs": self.fs.to_state() if self.fs is not None else None,
                "collect": self.collect}


# Each unit property resources_to_properties sets: (its field under linux.resources, the cgroup v2
# controller that enforces it). In the order of the fields in the spec, the quota before its
# period: a quota with a period is named by the quota (a period alone by itself).
ENFORCED_BY = {
    "MemoryMax": ("memory.limit", "memory"), "MemoryLow": ("memory.reservation", "memory"),
    "MemorySwapMax": ("memory.swap", "memory"), "TasksMax": ("pids.limit", "pids"),
    "CPUWeight": ("cpu.shares", "cpu"), "CPUQuotaPerSecUSec": ("cpu.quota", "cpu"),
    "CPUQuotaPeriodUSec": ("cpu.period", "cpu"), "AllowedCPUs": ("cpu.cpus", "cpuset"),
    "AllowedMemoryNodes": ("cpu.mems", "cpuset"), "IOWeight": ("blockIO.weight", "io"),
}


def unenforced(props: dict, available: set[str]) -> tuple[str, str] | None:
    """(field, controller) of the first property in props (in ENFORCED_BY's order) that asks for a
    limit no controller in available enforces; None if all are enforced. "infinity" (-1: no
    limit) needs no controller: without one there is no limit, which is what it asks for."""
    from pyouki.dbus_native.properties import INFINITY

    for prop, (leaf, controller) in ENFORCED_BY.items():
        if prop in props and props[prop] != INFINITY and controller not in available:
            return leaf, controller
    return None


def _manager_controllers(path: str, mountpoint: str, user: bool) -> tuple[str, set[str]] | None:
    """(the manager's own cgroup, the controllers it may enable there) for the unit cgroup at path:
    the hierarchy's root for the system manager, ``user@UID.service`` for a user manager, and
    its cgroup.controllers. None when that cgroup cannot be found or read (nothing to check)."""
    root = mountpoint.rstrip("/")
    if user:
        parts = path.split("/")
        at = next((i for i, part in enumerate(parts) if part.startswith("user@") and part.endswith(".service")),
                  None)
        if at is None:
            return None
        root = "/".join(parts[:at + 1])
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            return root, set(f.read().split())
    except OSError:
        return None


def _state_paths(state: dict) -> list[str]:
    paths = [state.get("path"), state.get("unified"), *(state.get("paths") or {}).values()]
    return [p for p in paths if p]


def _pid_cgroup(pid: int) -> str | None:
    """pid's cgroup in the unified hierarchy, else in systemd's named v1 one; None if unknown."""
    from pyouki.cgroups.common import parse_proc_cgroup

    try:
        with open(f"/proc/{pid}/cgroup") as f:
            cgroups = parse_proc_cgroup(f.read())
    except OSError:
        return None
    path = cgroups.get("name=systemd") or cgroups.get("")
    return path if path and path != "/" else None


def _is_unified() -> bool:
    from pyouki.cgroups import detect_mode

    return detect_mode() == "unified"


def fs_manager(control_group: str) -> CgroupManager:
    """The cgroupfs driver for a unit's ControlGroup (a path from the hierarchy's root)."""
    from pyouki.cgroups import common as c

    mounts = c.read_mounts()
    if c.mode_from_mounts(mounts) == "unified":
        from pyouki.cgroups.v2 import V2Manager

        return V2Manager.for_path(control_group, c.CGROUP_ROOT, mounts)
    from pyouki.cgroups.v1 import V1Manager

    return V1Manager.for_path(control_group, mounts)


def make_manager(cgroups_path: str | None, container_id: str, *, rootless: bool) -> SystemdCgroup:
    """The systemd driver for a new container, connected now so a missing manager fails before
    anything is forked: the user manager when rootless, else the system manager."""
    slice_, unit = parse_cgroups_path(cgroups_path, container_id, rootless)
    mgr = SystemdCgroup(unit, slice_, user=rootless, rootless=rootless)
    mgr.systemd()
    return mgr


def from_state(d: dict) -> SystemdCgroup:
    """Rebuild the driver from to_state(); no D-Bus until something needs systemd."""
    fs = None
    if d.get("fs"):
        from pyouki.cgroups import manager_from_state  # not manager.py's: that imports typing

        fs = manager_from_state(d["fs"])
    cgroup = SystemdCgroup(d["unit"], d["slice"], bool(d.get("user")), bool(d.get("rootless")), fs)
    cgroup.collect = bool(d.get("collect"))
    return cgroup
