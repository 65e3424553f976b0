"""cgroupfs v2 driver: one directory in the unified hierarchy.

Controllers are enabled in cgroup.subtree_control of every parent from the mount point down,
resources go to the unified files, freezing uses cgroup.freeze and cgroup.events, and device
rules become an eBPF program attached to the cgroup (see devices.py and _bpf.py).
"""

from __future__ import annotations

import os

from pyouki.cgroups import common as c
from pyouki.errors import ConfigError, PyoukiError


def enable_controllers(mountpoint: str, leaf: str, wanted: list[str] | None = None) -> None:
    """Enable controllers in cgroup.subtree_control of each directory from mountpoint down to leaf's parent.

    wanted=None enables everything each level offers, as runc does. Errors are ignored (a
    delegated parent with its own processes refuses with EBUSY): a controller that stays
    unavailable shows up later as a missing file, which set_resources reports with the field.
    """
    mountpoint = mountpoint.rstrip("/")
    rel = os.path.relpath(leaf, mountpoint)
    dirs = [mountpoint]
    if rel != ".":
        cur = mountpoint
        for part in rel.split("/")[:-1]:
            cur = os.path.join(cur, part)
            dirs.append(cur)
    else:
        return
    for d in dirs:
        try:
            avail = c.read_file(d, "cgroup.controllers").split()
            enabled = c.read_file(d, "cgroup.subtree_control").split()
        except PyoukiError:
            continue
        todo = [x for x in avail if (wanted is None or x in wanted) and x not in enabled]
        if not todo:
            continue
        try:
            c.write_file(d, "cgroup.subtree_control", " ".join("+" + x for x in todo), "linux.cgroupsPath")
        except ConfigError:
            for x in todo:
                try:
                    c.write_file(d, "cgroup.subtree_control", "+" + x, "linux.cgroupsPath")
                except ConfigError:
                    pass


def _num(v: int) -> str:
    return "max" if v == -1 else str(v)


class V2Manager:
    """A container's cgroup in a cgroup2 hierarchy mounted at mountpoint (the host root when unified)."""

    driver = "cgroupfs-v2"

    def __init__(self, path: str, mountpoint: str = c.CGROUP_ROOT):
        self.path = path
        self.mountpoint = mountpoint

    @classmethod
    def for_path(
        cls,
        cgroups_path: str,
        mountpoint: str | None = None,
        mounts: list[c.CgroupMount] | None = None,
        own: dict[str, str] | None = None,
    ) -> V2Manager:
        """Resolve cgroupsPath in the cgroup2 hierarchy (the one at mountpoint, default the first found)."""
        mounts = c.read_mounts() if mounts is None else mounts
        own = c.own_cgroups() if own is None else own
        for m in mounts:
            if m.fstype == "cgroup2" and (mountpoint is None or m.mountpoint == mountpoint.rstrip("/")):
                return cls(c.resolve_path(m.mountpoint, m.root, own.get("", "/"), cgroups_path), m.mountpoint)
        raise PyoukiError("no cgroup2 hierarchy is mounted" + (f" at {mountpoint}" if mountpoint else ""))

    def to_state(self) -> dict:
        """What state.json keeps to rebuild this manager."""
        return {"driver": self.driver, "path": self.path, "mountpoint": self.mountpoint}

    @classmethod
    def from_state(cls, d: dict) -> V2Manager:
        """Rebuild from to_state()."""
        return cls(d["path"], d.get("mountpoint", c.CGROUP_ROOT))

    # lifecycle ----------------------------------------------------------------------------

    def create(self) -> None:
        """Create the directory and enable every available controller in its parents."""
        c.mkdir_p(self.path)
        enable_controllers(self.mountpoint, self.path)

    def apply(self, pid: int) -> None:
        """Create the cgroup and move pid into it."""
        self.create()
        c.enter(self.path, pid)

    def add_task(self, pid: int) -> None:
        """Move pid into the existing cgroup (exec); creates nothing."""
        if not os.path.isdir(self.path):
            raise PyoukiError(f"failed to add pid {pid} to cgroup {self.path}: the container's cgroup is gone")
        c.enter(self.path, pid)

    def remove(self) -> None:
        """rmdir the cgroup and its children; absent is fine; kills nothing."""
        c.rmdir_tree(self.path)

    def pids(self) -> list[int]:
        """Every pid in the cgroup and its descendants."""
        out: list[int] = []
        for d in c.walk_dirs(self.path):
            out.extend(p for p in c.read_procs(d) if p not in out)
        return out

    def kill_all(self, sig: int) -> None:
        """SIGKILL through cgroup.kill when the kernel has it; otherwise freeze, signal each, thaw."""
        if sig == 9 and os.path.exists(os.path.join(self.path, "cgroup.kill")):  # SIGKILL (signal: 4 ms of enum)
            try:
                c.write_file(self.path, "cgroup.kill", "1", "cgroup.kill")
                return
            except ConfigError as e:
                raise PyoukiError(f"failed to kill cgroup {self.path}: {str(e).split(': ')[-1]}") from None
        c.signal_all_frozen(self, sig, os.path.exists(os.path.join(self.path, "cgroup.freeze")))

    # freezer ------------------------------------------------------------------------------

    def _freeze_to(self, want: str) -> None:
        verb = "freeze" if want == "1" else "thaw"
        if want == "0" and not os.path.isdir(self.path):
            # nothing left to thaw: systemd removes an emptied scope's cgroup (a paused container
            # killed with SIGKILL under --systemd-cgroup, before or while kill thaws it)
            return
        if not os.path.exists(os.path.join(self.path, "cgroup.freeze")):
            raise PyoukiError(f"cannot {verb} cgroup {self.path}: cgroup.freeze is not supported")
        try:
            c.write_file(self.path, "cgroup.freeze", want, "cgroup.freeze")
        except ConfigError as e:
            if want == "0" and not os.path.isdir(self.path):
                return
            raise PyoukiError(f"failed to {verb} cgroup {self.path}: {str(e).split(': ')[-1]}") from None
        ok = c.poll_until(lambda: c.read_kv(self.path, "cgroup.events").get("frozen") == int(want)
                          or (want == "0" and not os.path.isdir(self.path)), 5.0)
        if not ok:
            if want == "1":
                c.write_file(self.path, "cgroup.freeze", "0", "cgroup.freeze")
            raise PyoukiError(f"failed to {verb} cgroup {self.path}: not settled after 5 seconds")

    def freeze(self) -> None:
        """cgroup.freeze = 1, then wait for "frozen 1" in cgroup.events."""
        self._freeze_to("1")

    def thaw(self) -> None:
        """cgroup.freeze = 0, then wait for "frozen 0" in cgroup.events."""
        self._freeze_to("0")

    def state(self) -> str:
        """ "frozen" when cgroup.events says frozen 1, else "thawed"."""
        return "frozen" if c.read_kv(self.path, "cgroup.events").get("frozen") == 1 else "thawed"

    # resources ----------------------------------------------------------------------------

    def set_resources(self, resources: dict, field: str = "linux.resources") -> None:
        """Write linux.resources to the v2 files; ConfigError naming the JSON path on failure."""
        if not resources:
            return
        d = self.path
        if not os.path.isdir(d):
            self.create()
        if resources.get("cpu"):
            self._set_cpu(resources["cpu"], f"{field}.cpu")
        if resources.get("memory"):
            self._set_memory(resources["memory"], f"{field}.memory")
        if resources.get("pids"):
            limit = c.field_int(resources["pids"], "limit", f"{field}.pids")
            if limit is not None:
                self._write("pids.max", c.pids_max(limit), f"{field}.pids.limit")
        if resources.get("blockIO"):
            self._set_io(resources["blockIO"], f"{field}.blockIO")
        if resources.get("hugepageLimits"):
            self._set_hugetlb(resources["hugepageLimits"], f"{field}.hugepageLimits")
        net = resources.get("network")
        if net and (net.get("classID") or net.get("priorities")):
            raise ConfigError(f"{field}.network", "net_cls and net_prio are not available on cgroup v2")
        if resources.get("rdma"):
            from pyouki.cgroups.v1 import rdma_line

            for dev, lim in resources["rdma"].items():
                self._write("rdma.max", rdma_line(dev, lim, f"{field}.rdma.{dev}"), f"{field}.rdma.{dev}")
        if resources.get("devices") is not None:
            self._set_devices(resources["devices"], f"{field}.devices")
        unified = resources.get("unified")
        if unified:
            self._set_unified(unified, f"{field}.unified")

    def _write(self, name: str, value: str | int, field: str) -> None:
        """Write a file; a missing file means the controller is not enabled here: say which."""
        if not os.path.exists(os.path.join(self.path, name)):
            ctrl = name.split(".", 1)[0]
            raise ConfigError(
                field,
                f"failed to write {value} to {os.path.join(self.path, name)}: "
                f"no such file (is the {ctrl} controller enabled for this cgroup?)",
            )
        c.write_file(self.path, name, value, field)

    def _set_cpu(self, cpu: dict, f: str) -> None:
        shares = c.field_int(cpu, "shares", f, signed=False)
        quota = c.field_int(cpu, "quota", f)
        period = c.field_int(cpu, "period", f, signed=False)
        burst = c.field_int(cpu, "burst", f, signed=False)
        idle = c.field_int(cpu, "idle", f)
        for key in ("realtimeRuntime", "realtimePeriod"):
            if cpu.get(key):
                raise ConfigError(f"{f}.{key}", "realtime scheduling is not supported on cgroup v2")
        if quota and quota > 0 and burst and burst > quota:
            raise ConfigError(f"{f}.burst", f"must not be larger than quota ({burst} > {quota})")
        if idle is not None:
            if os.path.exists(os.path.join(self.path, "cpu.idle")):
                self._write("cpu.idle", idle, f"{f}.idle")
            elif idle != 0:
                raise ConfigError(f"{f}.idle", f"not supported: {self.path}/cpu.idle does not exist")
        if shares:
            self._write("cpu.weight", c.shares_to_weight(shares), f"{f}.shares")
        if quota or period:
            # An absent quota keeps the current one (runc would reset it to max here).
            cur_quota, _, cur_period = (
                c.read_file(self.path, "cpu.max").partition(" ")
                if os.path.exists(os.path.join(self.path, "cpu.max"))
                else ("max", "", "100000")
            )
            q = ("max" if quota < 0 else str(quota)) if quota else cur_quota
            p = str(period) if period else cur_period
            self._write("cpu.max", f"{q} {p}", f"{f}.quota" if quota else f"{f}.period")
        if burst is not None:
            self._write("cpu.max.burst", burst, f"{f}.burst")
        cpus, mems = cpu.get("cpus"), cpu.get("mems")
        if cpus:
            self._write("cpuset.cpus", cpus, f"{f}.cpus")
        if mems:
            self._write("cpuset.mems", mems, f"{f}.mems")

    def _set_memory(self, mem: dict, f: str) -> None:
        limit = c.field_int(mem, "limit", f) or 0
        swap = c.field_int(mem, "swap", f) or 0
        reservation = c.field_int(mem, "reservation", f)
        swappiness = c.field_int(mem, "swappiness", f)
        if swappiness is not None and swappiness != -1:
            raise ConfigError(f"{f}.swappiness", "not supported on cgroup v2")
        if mem.get("disableOOMKiller"):
            raise ConfigError(f"{f}.disableOOMKiller", "not supported on cgroup v2")
        if limit > 0 and mem.get("checkBeforeUpdate"):
            usage = c.read_int(self.path, "memory.current")
            if limit < usage:
                raise ConfigError(f"{f}.limit", f"new limit {limit} is below the current usage {usage}")
        try:
            swap_v2 = memory_swap_to_v2(swap, limit)
        except ValueError as e:
            raise ConfigError(f"{f}.swap", str(e)) from None
        swap_str = "" if swap_v2 == 0 else _num(swap_v2)
        if swap_v2 == 0 and swap > 0:
            swap_str = "0"  # limit == swap: no swap at all
        if swap_str:
            if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                c.write_file(self.path, "memory.swap.max", swap_str, f"{f}.swap")
            elif swap_str not in ("max", "0"):
                raise ConfigError(f"{f}.swap", f"swap limit not supported: no {self.path}/memory.swap.max")
        if limit:
            self._write("memory.max", _num(limit), f"{f}.limit")
        if reservation:
            self._write("memory.low", _num(reservation), f"{f}.reservation")

    def _set_io(self, bio: dict, f: str) -> None:
        weight = c.field_int(bio, "weight", f, signed=False)
        if bio.get("leafWeight"):
            raise ConfigError(f"{f}.leafWeight", "not supported on cgroup v2")
        bfq = os.path.exists(os.path.join(self.path, "io.bfq.weight"))
        if weight:
            if bfq:
                self._write("io.bfq.weight", weight, f"{f}.weight")
            else:
                self._write("io.weight", c.blkio_weight_to_io_weight(weight), f"{f}.weight")
        for i, wd in enumerate(bio.get("weightDevice") or []):
            fi = f"{f}.weightDevice[{i}]"
            if wd.get("leafWeight"):
                raise ConfigError(f"{fi}.leafWeight", "not supported on cgroup v2")
            if wd.get("weight"):
                dev = f"{int(wd['major'])}:{int(wd['minor'])}"
                if bfq:
                    self._write("io.bfq.weight", f"{dev} {int(wd['weight'])}", f"{fi}.weight")
                else:
                    w = c.blkio_weight_to_io_weight(int(wd["weight"]))
                    self._write("io.weight", f"{dev} {w}", f"{fi}.weight")
        for key, name in (
            ("throttleReadBpsDevice", "rbps"),
            ("throttleWriteBpsDevice", "wbps"),
            ("throttleReadIOPSDevice", "riops"),
            ("throttleWriteIOPSDevice", "wiops"),
        ):
            for i, td in enumerate(bio.get(key) or []):
                fi = f"{f}.{key}[{i}]"
                rate = c.field_int(td, "rate", fi, signed=False) or 0
                # rate 0 means "no limit" in runc's io.max translation.
                self._write("io.max", f"{int(td['major'])}:{int(td['minor'])} {name}={rate or 'max'}", fi)

    def _set_hugetlb(self, limits: list, f: str) -> None:
        from pyouki.cgroups.v1 import _page_size

        for i, hl in enumerate(limits):
            fi = f"{f}[{i}]"
            size = _page_size(hl, fi)
            limit = c.field_int(hl, "limit", fi, signed=False)
            if limit is None:
                raise ConfigError(f"{fi}.limit", "missing")
            if os.path.exists(os.path.join(self.path, f"hugetlb.{size}.rsvd.max")):
                c.write_file(self.path, f"hugetlb.{size}.rsvd.max", limit, f"{fi}.limit")
            self._write(f"hugetlb.{size}.max", limit, f"{fi}.limit")

    def _set_unified(self, unified: dict, f: str) -> None:
        for key, value in unified.items():
            fk = f"{f}.{key}"
            if "/" in key or key.startswith(".") or not key:
                raise ConfigError(fk, "invalid key: must name a file in the container's cgroup")
            if not isinstance(value, str):
                raise ConfigError(fk, f"expected a string value, got {value!r}")
            self._write(key, value, fk)

    def _set_devices(self, rules: list, f: str) -> None:
        from pyouki.cgroups.devices import apply_device_rules

        apply_device_rules(self.path, rules, f)

    # stats --------------------------------------------------------------------------------

    def stats(self) -> dict:
        """runc-shaped stats from the v2 files."""
        d = self.path
        out: dict = {"cpu": {}, "memory": {}, "pids": {}, "blkio": {}, "hugetlb": {}}
        st = c.read_kv(d, "cpu.stat")
        out["cpu"] = {
            "usage": {
                "total": st.get("usage_usec", 0) * 1000,
                "kernel": st.get("system_usec", 0) * 1000,
                "user": st.get("user_usec", 0) * 1000,
            },
            "throttling": {
                "periods": st.get("nr_periods", 0),
                "throttled_periods": st.get("nr_throttled", 0),
                "throttled_time": st.get("throttled_usec", 0) * 1000,
            },
        }
        if os.path.exists(os.path.join(d, "memory.current")):
            raw = c.read_kv(d, "memory.stat")
            cur, lim = c.read_int(d, "memory.current"), c.read_int(d, "memory.max")
            scur, slim = c.read_int(d, "memory.swap.current"), c.read_int(d, "memory.swap.max")
            out["memory"] = {
                "cache": raw.get("file", 0),
                "usage": {
                    "limit": lim if lim >= 0 else 0,
                    "usage": cur,
                    "max": c.read_int(d, "memory.peak"),
                    "failcnt": c.read_kv(d, "memory.events").get("max", 0),
                },
                "swap": {
                    "limit": (slim + lim) if slim >= 0 and lim >= 0 else 0,
                    "usage": scur + cur,
                    "max": 0,
                    "failcnt": c.read_kv(d, "memory.swap.events").get("max", 0),
                },
                "raw": raw,
            }
        if os.path.exists(os.path.join(d, "pids.current")):
            lim = c.read_int(d, "pids.max")
            out["pids"] = {"current": c.read_int(d, "pids.current"), "limit": max(lim, 0)}
        out["blkio"] = _io_stat(d)
        for size in c.host_page_sizes():
            if os.path.exists(os.path.join(d, f"hugetlb.{size}.current")):
                out["hugetlb"][size] = {
                    "usage": c.read_int(d, f"hugetlb.{size}.current"),
                    "max": 0,
                    "failcnt": c.read_kv(d, f"hugetlb.{size}.events").get("max", 0),
                }
        return out


def memory_swap_to_v2(swap: int, limit: int) -> int:
    """OCI memory+swap to v2 memory.swap.max (runc's ConvertMemorySwapToCgroupV2Value); 0 = unset."""
    if limit == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if limit in (0, -1):
        raise ValueError("unable to set swap limit without memory limit")
    if limit < 0:
        raise ValueError(f"invalid memory value: {limit}")
    if swap < limit:
        raise ValueError("memory+swap limit should be >= memory limit")
    return swap - limit


def _io_stat(d: str) -> dict:
    """io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...") in runc's blkio shape."""
    sb: list[dict] = []
    sv: list[dict] = []
    try:
        with open(os.path.join(d, "io.stat")) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = (int(x) for x in parts[0].split(":"))
        kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        keys = (("rbytes", "Read", sb), ("wbytes", "Write", sb), ("rios", "Read", sv), ("wios", "Write", sv))
        for key, op, lst in keys:
            if key in kv:
                lst.append({"major": major, "minor": minor, "op": op, "value": int(kv[key])})
    return {"ioServiceBytesRecursive": sb, "ioServicedRecursive": sv}
