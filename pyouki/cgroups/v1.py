"""cgroupfs v1 driver: one directory per mounted controller hierarchy (also for hybrid hosts).

On a hybrid host the container also joins the cgroup2 hierarchy (like runc), which is where the
hugetlb controller lives on such a host: hugepageLimits are written there when v1 has no hugetlb.
"""

from __future__ import annotations

import os
import time

from pyouki.cgroups import common as c
from pyouki.errors import ConfigError, PyoukiError

# Joined in this order; cpuset first so its cpus/mems are ready before any task lands anywhere.
_ORDER = (
    "cpuset cpu cpuacct memory devices freezer blkio pids hugetlb net_cls net_prio perf_event rdma misc"
).split()


def _debug(msg: str) -> None:
    import logging  # lazily: logging costs a few ms and is only needed on rare paths

    logging.getLogger("pyouki.cgroups").debug(msg)


class V1Manager:
    """A container's cgroups on a cgroup v1 (or hybrid) host.

    paths maps each mounted controller ("cpu", "memory", "name=systemd", ...) to the container's
    directory in that hierarchy; co-mounted controllers map to the same directory. unified is the
    container's directory in the hybrid cgroup2 mount, or None.
    """

    driver = "cgroupfs-v1"

    def __init__(self, paths: dict[str, str], unified: str | None = None, unified_root: str | None = None):
        self.paths = dict(paths)
        self.unified = unified
        self.unified_root = unified_root

    # construction -------------------------------------------------------------------------

    @classmethod
    def for_path(
        cls,
        cgroups_path: str,
        mounts: list[c.CgroupMount] | None = None,
        own: dict[str, str] | None = None,
    ) -> V1Manager:
        """Resolve cgroupsPath in every mounted v1 hierarchy (and the hybrid cgroup2 one)."""
        mounts = c.read_mounts() if mounts is None else mounts
        own = c.own_cgroups() if own is None else own
        paths: dict[str, str] = {}
        unified = unified_root = None
        for m in mounts:
            if m.fstype == "cgroup2":
                if unified is None and m.mountpoint.startswith(c.CGROUP_ROOT + "/"):
                    unified_root = m.mountpoint
                    unified = c.resolve_path(m.mountpoint, m.root, own.get("", "/"), cgroups_path)
                continue
            for ctrl in m.controllers:
                if ctrl not in paths:
                    paths[ctrl] = c.resolve_path(m.mountpoint, m.root, own.get(ctrl, "/"), cgroups_path)
        if not paths:
            raise PyoukiError("no cgroup v1 controllers are mounted")
        return cls(paths, unified, unified_root)

    def to_state(self) -> dict:
        """What state.json keeps to rebuild this manager."""
        return {
            "driver": self.driver,
            "paths": dict(self.paths),
            "unified": self.unified,
            "unified_root": self.unified_root,
        }

    @classmethod
    def from_state(cls, d: dict) -> V1Manager:
        """Rebuild from to_state()."""
        return cls(d["paths"], d.get("unified"), d.get("unified_root"))

    # helpers ------------------------------------------------------------------------------

    def _dirs(self) -> list[str]:
        seen: list[str] = []
        for ctrl in sorted(self.paths, key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER)):
            d = self.paths[ctrl]
            if d not in seen:
                seen.append(d)
        return seen

    def _dir(self, ctrl: str, field: str) -> str:
        d = self.paths.get(ctrl)
        if d is None:
            raise ConfigError(field, f"the {ctrl} cgroup controller is not mounted on this host")
        return d

    def _main_dir(self) -> str:
        for ctrl in ("freezer", "devices", "pids", "memory", "cpu"):
            if ctrl in self.paths:
                return self.paths[ctrl]
        return self._dirs()[0]

    # lifecycle ----------------------------------------------------------------------------

    def apply(self, pid: int) -> None:
        """Create the cgroup in each hierarchy and move pid into all of them."""
        for ctrl, d in sorted(self.paths.items(), key=lambda kv: kv[0] != "cpuset"):
            c.mkdir_p(d)
            if ctrl == "cpuset":
                _cpuset_fill_from_parents(d)
        if self.unified:
            c.mkdir_p(self.unified)
        for d in self._dirs() + ([self.unified] if self.unified else []):
            c.enter(d, pid)

    def add_task(self, pid: int) -> None:
        """Move pid into the container's existing cgroups (exec); creates nothing."""
        main = self._main_dir()
        if not os.path.isdir(main):
            raise PyoukiError(f"failed to add pid {pid} to cgroup {main}: the container's cgroup is gone")
        for d in self._dirs() + ([self.unified] if self.unified else []):
            if os.path.isdir(d):  # a hierarchy without the container's cgroup is skipped, as runc does
                c.enter(d, pid)

    def remove(self) -> None:
        """rmdir every directory; absent ones are fine; kills nothing."""
        errors = []
        for d in self._dirs() + ([self.unified] if self.unified else []):
            try:
                c.rmdir_tree(d)
            except PyoukiError as e:
                errors.append(str(e))
        if errors:
            raise PyoukiError(errors[0])

    def pids(self) -> list[int]:
        """Every pid in the container's cgroup and its child cgroups."""
        out: list[int] = []
        for d in c.walk_dirs(self._main_dir()):
            out.extend(p for p in c.read_procs(d) if p not in out)
        return out

    def kill_all(self, sig: int) -> None:
        """Signal all processes; freeze first so none can fork in between (runc does the same)."""
        c.signal_all_frozen(self, sig, "freezer" in self.paths and os.path.isdir(self.paths["freezer"]))

    # freezer ------------------------------------------------------------------------------

    def freeze(self) -> None:
        """freezer.state = FROZEN, re-written until the kernel reports FROZEN (bounded)."""
        d = self.paths.get("freezer")
        if d is None:
            raise PyoukiError("cannot freeze: the freezer cgroup controller is not mounted")
        deadline = time.monotonic() + 5.0
        i = 0
        while time.monotonic() < deadline:
            if i % 50 == 49:
                # A task stuck in vfork or a D state sometimes needs a thaw/freeze cycle (runc does this).
                c.write_file(d, "freezer.state", "THAWED", "freezer")
                time.sleep(0.01)
            try:
                c.write_file(d, "freezer.state", "FROZEN", "freezer")
            except ConfigError as e:
                raise PyoukiError(f"failed to freeze cgroup {d}: {str(e).split(': ')[-1]}") from None
            if c.read_file(d, "freezer.state") == "FROZEN":
                return
            time.sleep(min(0.0001 * (i + 1), 0.01))
            i += 1
        c.write_file(d, "freezer.state", "THAWED", "freezer")
        raise PyoukiError(f"failed to freeze cgroup {d}: still freezing after 5 seconds")

    def thaw(self) -> None:
        """freezer.state = THAWED and wait until it reads back THAWED."""
        d = self.paths.get("freezer")
        if d is None:
            raise PyoukiError("cannot thaw: the freezer cgroup controller is not mounted")
        try:
            c.write_file(d, "freezer.state", "THAWED", "freezer")
        except ConfigError as e:
            raise PyoukiError(f"failed to thaw cgroup {d}: {str(e).split(': ')[-1]}") from None
        if not c.poll_until(lambda: c.read_file(d, "freezer.state") == "THAWED", 5.0):
            raise PyoukiError(f"failed to thaw cgroup {d}: still frozen after 5 seconds")

    def state(self) -> str:
        """ "frozen" when freezer.state says FROZEN, else "thawed"."""
        d = self.paths.get("freezer")
        if d is None:
            return "thawed"
        try:
            return "frozen" if c.read_file(d, "freezer.state") == "FROZEN" else "thawed"
        except PyoukiError:
            return "thawed"

    # resources ----------------------------------------------------------------------------

    def set_resources(self, resources: dict, field: str = "linux.resources") -> None:
        """Write linux.resources to the v1 files; ConfigError naming the JSON path on failure."""
        if not resources:
            return
        if resources.get("unified"):
            raise ConfigError(f"{field}.unified", "cannot be used with cgroup v1 controllers")
        if resources.get("cpu"):
            self._set_cpu(resources["cpu"], f"{field}.cpu")
        if resources.get("memory"):
            self._set_memory(resources["memory"], f"{field}.memory")
        if resources.get("pids"):
            self._set_pids(resources["pids"], f"{field}.pids")
        if resources.get("blockIO"):
            self._set_blkio(resources["blockIO"], f"{field}.blockIO")
        if resources.get("hugepageLimits"):
            self._set_hugetlb(resources["hugepageLimits"], f"{field}.hugepageLimits")
        if resources.get("network"):
            self._set_network(resources["network"], f"{field}.network")
        if resources.get("rdma"):
            self._set_rdma(resources["rdma"], f"{field}.rdma")
        if resources.get("devices") is not None:
            self._set_devices(resources["devices"], f"{field}.devices")

    def _set_cpu(self, cpu: dict, f: str) -> None:
        shares = c.field_int(cpu, "shares", f, signed=False)
        quota = c.field_int(cpu, "quota", f)
        period = c.field_int(cpu, "period", f, signed=False)
        burst = c.field_int(cpu, "burst", f, signed=False)
        rt_runtime = c.field_int(cpu, "realtimeRuntime", f)
        rt_period = c.field_int(cpu, "realtimePeriod", f, signed=False)
        idle = c.field_int(cpu, "idle", f)
        if quota and quota > 0 and burst and burst > quota:
            raise ConfigError(f"{f}.burst", f"must not be larger than quota ({burst} > {quota})")
        if any(v for v in (shares, quota, period, burst, rt_runtime, rt_period)) or idle is not None:
            d = self._dir("cpu", f)
            if shares:
                c.write_file(d, "cpu.shares", shares, f"{f}.shares")
                got = c.read_int(d, "cpu.shares")
                # The kernel clamps silently; runc reports the clamp instead of pretending success.
                if got < shares:
                    raise ConfigError(f"{f}.shares", f"the maximum allowed cpu-shares is {got}")
                if got > shares:
                    raise ConfigError(f"{f}.shares", f"the minimum allowed cpu-shares is {got}")
            if burst is not None and not os.path.exists(os.path.join(d, "cpu.cfs_burst_us")):
                raise ConfigError(f"{f}.burst", f"not supported by this kernel: no {d}/cpu.cfs_burst_us")
            # burst must stay <= quota: lowering both needs burst first, raising both quota first.
            if burst is not None and quota and 0 < quota < burst_now(d):
                c.write_file(d, "cpu.cfs_burst_us", burst, f"{f}.burst")
                burst = None
            _write_pair(
                d, ("cpu.cfs_period_us", period, f"{f}.period"), ("cpu.cfs_quota_us", quota, f"{f}.quota")
            )
            if burst is not None:
                c.write_file(d, "cpu.cfs_burst_us", burst, f"{f}.burst")
            if idle is not None:
                if os.path.exists(os.path.join(d, "cpu.idle")):
                    c.write_file(d, "cpu.idle", idle, f"{f}.idle")
                elif idle != 0:
                    raise ConfigError(f"{f}.idle", f"not supported by this kernel: {d}/cpu.idle missing")
            if rt_period or rt_runtime:
                for name, val in (("cpu.rt_period_us", rt_period), ("cpu.rt_runtime_us", rt_runtime)):
                    if val and not os.path.exists(os.path.join(d, name)):
                        key = "realtimePeriod" if "period" in name else "realtimeRuntime"
                        raise ConfigError(f"{f}.{key}", f"not supported by this kernel: {d}/{name} missing")
                _write_pair(
                    d,
                    ("cpu.rt_period_us", rt_period, f"{f}.realtimePeriod"),
                    ("cpu.rt_runtime_us", rt_runtime, f"{f}.realtimeRuntime"),
                )
        cpus, mems = cpu.get("cpus"), cpu.get("mems")
        if cpus or mems:
            d = self._dir("cpuset", f)
            if cpus:
                _check_list(cpus, f"{f}.cpus")
                c.write_file(d, "cpuset.cpus", cpus, f"{f}.cpus")
            if mems:
                _check_list(mems, f"{f}.mems")
                c.write_file(d, "cpuset.mems", mems, f"{f}.mems")

    def _set_memory(self, mem: dict, f: str) -> None:
        limit = c.field_int(mem, "limit", f)
        swap = c.field_int(mem, "swap", f)
        reservation = c.field_int(mem, "reservation", f)
        swappiness = c.field_int(mem, "swappiness", f)
        oom_disable = mem.get("disableOOMKiller")
        for key in ("kernel", "kernelTCP"):
            if mem.get(key) is not None:
                # Deprecated in the spec and removed from the kernel's v1 memcg; runc ignores them too.
                _debug(f"{f}.{key} is deprecated and ignored")
        use_hierarchy = mem.get("useHierarchy")
        if not (limit or swap or reservation or oom_disable or use_hierarchy is not None) and swappiness in (
            None,
            -1,
        ):
            return
        d = self._dir("memory", f)
        has_memsw = os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes"))
        if limit and limit > 0 and mem.get("checkBeforeUpdate"):
            usage = c.read_int(d, "memory.usage_in_bytes")
            if limit < usage:
                raise ConfigError(f"{f}.limit", f"new limit {limit} is below the current usage {usage}")
        if limit == -1 and not swap and has_memsw:
            swap = -1  # "unlimited memory" means unlimited memory+swap too (runc)
        if swap and not has_memsw:
            raise ConfigError(
                f"{f}.swap", f"swap limit not supported by this kernel: no {d}/memory.memsw.limit_in_bytes"
            )
        if limit and swap and limit > 0 and swap > 0 and swap < limit:
            raise ConfigError(f"{f}.swap", f"memory+swap limit {swap} is below the memory limit {limit}")
        # memsw must stay >= limit at every step, so the write order depends on the direction.
        swap_first = bool(limit and swap and (swap == -1 or c.read_int(d, "memory.limit_in_bytes") < swap))
        if swap_first and swap:
            c.write_file(d, "memory.memsw.limit_in_bytes", swap, f"{f}.swap")
        if limit:
            self._write_mem_limit(d, limit, f"{f}.limit")
        if swap and not swap_first:
            c.write_file(d, "memory.memsw.limit_in_bytes", swap, f"{f}.swap")
        if reservation:
            c.write_file(d, "memory.soft_limit_in_bytes", reservation, f"{f}.reservation")
        if oom_disable is not None:
            if not isinstance(oom_disable, bool):
                raise ConfigError(f"{f}.disableOOMKiller", f"expected a boolean, got {oom_disable!r}")
            cur = c.read_kv(d, "memory.oom_control").get("oom_kill_disable", 0)
            if oom_disable or cur:
                c.write_file(d, "memory.oom_control", int(oom_disable), f"{f}.disableOOMKiller")
        if swappiness is not None and swappiness != -1:
            if not 0 <= swappiness <= 100:
                raise ConfigError(f"{f}.swappiness", f"invalid value {swappiness} (valid range is 0-100)")
            c.write_file(d, "memory.swappiness", swappiness, f"{f}.swappiness")
        if use_hierarchy is not None:
            c.write_file(d, "memory.use_hierarchy", int(bool(use_hierarchy)), f"{f}.useHierarchy")

    @staticmethod
    def _write_mem_limit(d: str, limit: int, f: str) -> None:
        try:
            c.write_file(d, "memory.limit_in_bytes", limit, f)
        except ConfigError as e:
            usage, peak = c.read_int(d, "memory.usage_in_bytes"), c.read_int(d, "memory.max_usage_in_bytes")
            if "busy" in str(e):
                raise ConfigError(
                    f, f"unable to set memory limit to {limit} (current usage: {usage}, peak usage: {peak})"
                ) from None
            raise

    def _set_pids(self, pids: dict, f: str) -> None:
        limit = c.field_int(pids, "limit", f)
        if limit is None:
            return
        d = self._dir("pids", f)
        c.write_file(d, "pids.max", c.pids_max(limit), f"{f}.limit")

    def _set_blkio(self, bio: dict, f: str) -> None:
        weight = c.field_int(bio, "weight", f, signed=False)
        leaf = c.field_int(bio, "leafWeight", f, signed=False)
        wanted = (
            weight
            or leaf
            or any(
                bio.get(k)
                for k in (
                    "weightDevice",
                    "throttleReadBpsDevice",
                    "throttleWriteBpsDevice",
                    "throttleReadIOPSDevice",
                    "throttleWriteIOPSDevice",
                )
            )
        )
        if not wanted:
            return
        d = self._dir("blkio", f)
        # CFQ's blkio.weight is gone from modern kernels; BFQ offers blkio.bfq.weight instead.
        if os.path.exists(os.path.join(d, "blkio.weight")):
            wfile, wdfile = "blkio.weight", "blkio.weight_device"
        else:
            wfile, wdfile = "blkio.bfq.weight", "blkio.bfq.weight_device"
        if weight:
            _require(d, wfile, f"{f}.weight")
            c.write_file(d, wfile, weight, f"{f}.weight")
        if leaf:
            _require(d, "blkio.leaf_weight", f"{f}.leafWeight")
            c.write_file(d, "blkio.leaf_weight", leaf, f"{f}.leafWeight")
        for i, wd in enumerate(bio.get("weightDevice") or []):
            fi = f"{f}.weightDevice[{i}]"
            dev = _majmin(wd, fi)
            if wd.get("weight"):
                _require(d, wdfile, f"{fi}.weight")
                c.write_file(d, wdfile, f"{dev} {int(wd['weight'])}", f"{fi}.weight")
            if wd.get("leafWeight"):
                _require(d, "blkio.leaf_weight_device", f"{fi}.leafWeight")
                line = f"{dev} {int(wd['leafWeight'])}"
                c.write_file(d, "blkio.leaf_weight_device", line, f"{fi}.leafWeight")
        for key, fname in (
            ("throttleReadBpsDevice", "blkio.throttle.read_bps_device"),
            ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device"),
            ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device"),
            ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device"),
        ):
            for i, td in enumerate(bio.get(key) or []):
                fi = f"{f}.{key}[{i}]"
                _require(d, fname, fi)
                rate = c.field_int(td, "rate", fi, signed=False)
                c.write_file(d, fname, f"{_majmin(td, fi)} {rate or 0}", f"{fi}.rate")

    def _set_hugetlb(self, limits: list, f: str) -> None:
        v1dir = self.paths.get("hugetlb")
        for i, hl in enumerate(limits):
            fi = f"{f}[{i}]"
            size = _page_size(hl, fi)
            limit = c.field_int(hl, "limit", fi, signed=False)
            if limit is None:
                raise ConfigError(f"{fi}.limit", "missing")
            if v1dir:
                _require(v1dir, f"hugetlb.{size}.limit_in_bytes", f"{fi}.pageSize")
                if os.path.exists(os.path.join(v1dir, f"hugetlb.{size}.rsvd.limit_in_bytes")):
                    c.write_file(v1dir, f"hugetlb.{size}.rsvd.limit_in_bytes", limit, f"{fi}.limit")
                c.write_file(v1dir, f"hugetlb.{size}.limit_in_bytes", limit, f"{fi}.limit")
                continue
            # Hybrid host: the hugetlb controller may be bound to the cgroup2 hierarchy instead.
            if not (self.unified and self.unified_root):
                raise ConfigError(fi, "the hugetlb cgroup controller is not mounted on this host")
            from pyouki.cgroups.v2 import enable_controllers

            if "hugetlb" not in c.read_file(self.unified_root, "cgroup.controllers").split():
                raise ConfigError(fi, "the hugetlb cgroup controller is not available on this host")
            c.mkdir_p(self.unified)
            enable_controllers(self.unified_root, self.unified, ["hugetlb"])
            _require(self.unified, f"hugetlb.{size}.max", f"{fi}.pageSize")
            if os.path.exists(os.path.join(self.unified, f"hugetlb.{size}.rsvd.max")):
                c.write_file(self.unified, f"hugetlb.{size}.rsvd.max", limit, f"{fi}.limit")
            c.write_file(self.unified, f"hugetlb.{size}.max", limit, f"{fi}.limit")

    def _set_network(self, net: dict, f: str) -> None:
        classid = c.field_int(net, "classID", f, signed=False)
        if classid:
            d = self._dir("net_cls", f"{f}.classID")
            c.write_file(d, "net_cls.classid", classid, f"{f}.classID")
        for i, prio in enumerate(net.get("priorities") or []):
            fi = f"{f}.priorities[{i}]"
            d = self._dir("net_prio", fi)
            c.write_file(d, "net_prio.ifpriomap", f"{prio.get('name')} {int(prio.get('priority', 0))}", fi)

    def _set_rdma(self, rdma: dict, f: str) -> None:
        d = self._dir("rdma", f)
        for dev, lim in rdma.items():
            c.write_file(d, "rdma.max", rdma_line(dev, lim, f"{f}.{dev}"), f"{f}.{dev}")

    def _set_devices(self, rules: list, f: str) -> None:
        d = self._dir("devices", f)
        lines: list[tuple[str, str, str]] = []
        for i, rule in enumerate(rules):
            try:
                fname, line = c.device_rule_to_v1(rule)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{f}[{i}]", str(e)) from None
            lines.append((fname, line, f"{f}[{i}]"))
        # Deny everything first so the result is exactly the listed rules applied in order.
        c.write_file(d, "devices.deny", "a", f)
        for fname, line, fi in lines:
            c.write_file(d, fname, line, fi)

    # stats --------------------------------------------------------------------------------

    def stats(self) -> dict:
        """runc-shaped stats from the v1 files."""
        out: dict = {"cpu": {}, "memory": {}, "pids": {}, "blkio": {}, "hugetlb": {}}
        cpuacct = self.paths.get("cpuacct")
        if cpuacct:
            hz = os.sysconf("SC_CLK_TCK")
            st = c.read_kv(cpuacct, "cpuacct.stat")
            out["cpu"]["usage"] = {
                "total": c.read_int(cpuacct, "cpuacct.usage"),
                "percpu": _ints(cpuacct, "cpuacct.usage_percpu"),
                "percpu_kernel": _ints(cpuacct, "cpuacct.usage_percpu_sys"),
                "percpu_user": _ints(cpuacct, "cpuacct.usage_percpu_user"),
                "kernel": st.get("system", 0) * 1_000_000_000 // hz,
                "user": st.get("user", 0) * 1_000_000_000 // hz,
            }
        cpu = self.paths.get("cpu")
        if cpu:
            st = c.read_kv(cpu, "cpu.stat")
            out["cpu"]["throttling"] = {
                "periods": st.get("nr_periods", 0),
                "throttled_periods": st.get("nr_throttled", 0),
                "throttled_time": st.get("throttled_time", 0),
            }
        mem = self.paths.get("memory")
        if mem:
            raw = c.read_kv(mem, "memory.stat")

            def entry(prefix: str) -> dict:
                return {
                    "limit": c.read_int(mem, f"{prefix}.limit_in_bytes"),
                    "usage": c.read_int(mem, f"{prefix}.usage_in_bytes"),
                    "max": c.read_int(mem, f"{prefix}.max_usage_in_bytes"),
                    "failcnt": c.read_int(mem, f"{prefix}.failcnt"),
                }

            out["memory"] = {
                "cache": raw.get("cache", 0),
                "usage": entry("memory"),
                "swap": entry("memory.memsw"),
                "kernel": entry("memory.kmem"),
                "kernelTCP": entry("memory.kmem.tcp"),
                "raw": raw,
                "use_hierarchy": c.read_int(mem, "memory.use_hierarchy") == 1,
            }
        pids = self.paths.get("pids")
        if pids:
            lim = c.read_int(pids, "pids.max")
            out["pids"] = {"current": c.read_int(pids, "pids.current"), "limit": max(lim, 0)}
        blkio = self.paths.get("blkio")
        if blkio:
            bfq = os.path.exists(os.path.join(blkio, "blkio.bfq.io_service_bytes_recursive"))
            prefix = "blkio.bfq" if bfq else "blkio.throttle"
            out["blkio"] = {
                "ioServiceBytesRecursive": _blkio_entries(blkio, f"{prefix}.io_service_bytes_recursive"),
                "ioServicedRecursive": _blkio_entries(blkio, f"{prefix}.io_serviced_recursive"),
            }
        hdir = self.paths.get("hugetlb")
        for size in c.host_page_sizes():
            if hdir:
                out["hugetlb"][size] = {
                    "usage": c.read_int(hdir, f"hugetlb.{size}.usage_in_bytes"),
                    "max": c.read_int(hdir, f"hugetlb.{size}.max_usage_in_bytes"),
                    "failcnt": c.read_int(hdir, f"hugetlb.{size}.failcnt"),
                }
            else:
                # Hybrid host: hugetlb lives in cgroup2 (zeros when the controller is not enabled there).
                u = self.unified or ""
                out["hugetlb"][size] = {
                    "usage": c.read_int(u, f"hugetlb.{size}.current") if u else 0,
                    "max": 0,
                    "failcnt": c.read_kv(u, f"hugetlb.{size}.events").get("max", 0) if u else 0,
                }
        return out


# module helpers ---------------------------------------------------------------------------


def _cpuset_fill_from_parents(leaf: str) -> None:
    """A new v1 cpuset has empty cpus/mems and refuses tasks: copy them down from the parents."""
    chain = []
    d = leaf
    while os.path.exists(os.path.join(os.path.dirname(d), "cpuset.cpus")):
        chain.append(d)
        d = os.path.dirname(d)
    for d in reversed(chain):
        parent = os.path.dirname(d)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not c.read_file(d, name):
                c.write_file(d, name, c.read_file(parent, name), "linux.cgroupsPath")


def burst_now(d: str) -> int:
    """The current cpu.cfs_burst_us (0 when the kernel has none)."""
    return c.read_int(d, "cpu.cfs_burst_us")


def _write_pair(d: str, first: tuple[str, int | None, str], second: tuple[str, int | None, str]) -> None:
    """Write two interdependent files (period/quota, rt period/runtime).

    The kernel may refuse the first with EINVAL until the second is set; then write the second and
    retry the first, as runc does.
    """
    (n1, v1, f1), (n2, v2, f2) = first, second
    retry = False
    if v1:
        try:
            c.write_file(d, n1, v1, f1)
        except ConfigError as e:
            if not v2 or "invalid argument" not in str(e):
                raise
            retry = True
    if v2:
        c.write_file(d, n2, v2, f2)
    if retry and v1:
        c.write_file(d, n1, v1, f1)


def _check_list(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a string, got {value!r}")
    try:
        c.parse_cpu_list(value)
    except ValueError as e:
        raise ConfigError(field, str(e)) from None


def _require(d: str, name: str, field: str) -> None:
    if not os.path.exists(os.path.join(d, name)):
        raise ConfigError(field, f"not supported on this host: {os.path.join(d, name)} does not exist")


def _majmin(entry: dict, field: str) -> str:
    major, minor = entry.get("major"), entry.get("minor")
    if not isinstance(major, int) or not isinstance(minor, int) or isinstance(major, bool):
        raise ConfigError(field, "major and minor are required integers")
    return f"{major}:{minor}"


def _page_size(hl: dict, field: str) -> str:
    raw = hl.get("pageSize")
    if not isinstance(raw, str):
        raise ConfigError(f"{field}.pageSize", f'expected a string such as "2MB", got {raw!r}')
    try:
        size = c.page_size_name(c.parse_page_size(raw))
    except ValueError as e:
        raise ConfigError(f"{field}.pageSize", str(e)) from None
    if size not in c.host_page_sizes():
        raise ConfigError(f"{field}.pageSize", f"huge page size {raw} is not supported by this host")
    return size


def rdma_line(dev: str, lim: dict, field: str) -> str:
    """One rdma.max line: "mlx4_0 hca_handle=2 hca_object=2000"."""
    if not isinstance(lim, dict):
        raise ConfigError(field, f"expected an object, got {lim!r}")
    parts = [dev]
    h, o = lim.get("hcaHandles"), lim.get("hcaObjects")
    if h is None and o is None:
        raise ConfigError(field, "at least one of hcaHandles and hcaObjects is required")
    if h is not None:
        parts.append(f"hca_handle={int(h)}")
    if o is not None:
        parts.append(f"hca_object={int(o)}")
    return " ".join(parts)


def _ints(d: str, name: str) -> list[int]:
    try:
        with open(os.path.join(d, name)) as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []


def _blkio_entries(d: str, name: str) -> list[dict]:
    out = []
    try:
        with open(os.path.join(d, name)) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 3 or ":" not in parts[0]:
                    continue
                major, minor = parts[0].split(":")
                out.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
    except (OSError, ValueError):
        pass
    return out
