"""cgroupfs v1 driver against the real kernel (host tier: cgroup v1 hybrid, root).

Each test runs a real process in a fresh cgroup /pyouki-test-<uuid>/c1 in every hierarchy, writes
limits through the driver and reads them back from /sys/fs/cgroup/<controller>/...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from pyouki.cgroups import detect_mode, make_manager
from pyouki.cgroups.manager import manager_from_state
from pyouki.cgroups.v1 import V1Manager
from pyouki.errors import ConfigError, PyoukiError

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create v1 cgroups"),
    pytest.mark.skipif(detect_mode() == "unified", reason="host has no cgroup v1 hierarchies"),
]

UNIFIED = "/sys/fs/cgroup/unified"

# A child that reports once it has allocated (and touched) 24 MiB *after* joining the cgroup:
# v1 memcg charges new pages to the task's current cgroup, so usage becomes non-zero.
ALLOC = (
    "import sys\n"
    "sys.stdin.readline()\n"
    "b = bytearray(24 << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "print('ok', flush=True)\n"
    "sys.stdin.readline()\n"
)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _block_device() -> tuple[str, str, str]:
    """(name, "major:minor", active scheduler) of a real disk (not loop/ram/zram)."""
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith(("loop", "ram", "zram")):
            continue
        try:
            sched = _read(f"/sys/block/{name}/queue/scheduler")
        except OSError:
            continue
        active = sched.split("[", 1)[1].split("]", 1)[0] if "[" in sched else sched
        return name, _read(f"/sys/block/{name}/dev"), active
    pytest.skip("no block device to throttle")


@pytest.fixture(scope="module", autouse=True)
def _restore_unified_subtree() -> Iterator[None]:
    """hugepageLimits enable hugetlb in the hybrid cgroup2 root; put it back as we found it."""
    path = os.path.join(UNIFIED, "cgroup.subtree_control")
    before = _read(path).split() if os.path.exists(path) else None
    yield
    if before is None:
        return
    for ctrl in _read(path).split():
        if ctrl not in before:
            try:
                with open(path, "w") as f:
                    f.write("-" + ctrl)
            except OSError:
                pass  # another cgroup still uses it (a concurrent run): leave it


class Box:
    """A running process and its v1 manager; everything is torn down by the fixture."""

    def __init__(self, proc: subprocess.Popen, mgr: V1Manager, top: str):
        self.proc, self.mgr, self.top = proc, mgr, top

    def file(self, ctrl: str, name: str) -> str:
        return _read(os.path.join(self.mgr.paths[ctrl], name))


def _make_box(argv: list[str], stdin: int | None = None) -> Iterator[Box]:
    top = f"/pyouki-test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, text=True)
    mgr = V1Manager.for_path(f"{top}/c1")
    box = Box(proc, mgr, top)
    try:
        yield box
    finally:
        # Thaw first: a frozen task cannot die, and a cgroup with tasks cannot be removed.
        try:
            mgr.thaw()
        except PyoukiError:
            pass
        proc.kill()
        proc.wait()
        mgr.remove()
        for d in set(mgr.paths.values()) | {mgr.unified or ""}:
            if d:
                try:
                    os.rmdir(os.path.dirname(d))
                except FileNotFoundError:
                    pass
        leftovers = [p for p in (os.path.dirname(d) for d in mgr.paths.values()) if os.path.exists(p)]
        assert not leftovers, leftovers


@pytest.fixture
def box() -> Iterator[Box]:
    yield from _make_box(["sleep", "60"])


@pytest.fixture
def membox() -> Iterator[Box]:
    yield from _make_box([sys.executable, "-I", "-S", "-c", ALLOC], stdin=subprocess.PIPE)


def test_host_is_hybrid() -> None:
    assert detect_mode() in ("hybrid", "v1")


def test_apply_puts_pid_everywhere(box: Box) -> None:
    box.mgr.apply(box.proc.pid)
    cg = _read(f"/proc/{box.proc.pid}/cgroup")
    for ctrl in ("memory", "pids", "freezer", "cpu", "cpuset", "devices", "blkio", "name=systemd"):
        if ctrl in box.mgr.paths:
            assert str(box.proc.pid) in box.file(ctrl, "cgroup.procs").split(), ctrl
    assert f"{box.top}/c1" in cg
    if box.mgr.unified:
        assert f"0::{box.top}/c1" in cg.splitlines()
    # cpuset: cpus/mems were copied down from the parent, otherwise the kernel refuses tasks
    assert box.file("cpuset", "cpuset.cpus") == _read("/sys/fs/cgroup/cpuset/cpuset.cpus")
    assert box.mgr.pids() == [box.proc.pid]


def test_every_supported_resource_is_written(box: Box) -> None:
    m = box.mgr
    m.apply(box.proc.pid)
    name, dev, _ = _block_device()
    maj, mnr = (int(x) for x in dev.split(":"))
    # The parent needs realtime budget before a child can get some (the kernel checks the ratio).
    with open(os.path.join(os.path.dirname(m.paths["cpu"]), "cpu.rt_runtime_us"), "w") as f:
        f.write("10000")
    res = {
        "memory": {
            "limit": 64 << 20,
            "reservation": 32 << 20,
            "swap": 128 << 20,
            "swappiness": 10,
            "disableOOMKiller": True,
            "kernel": -1,
            "kernelTCP": -1,
        },
        "cpu": {
            "shares": 512,
            "quota": 50000,
            "period": 100000,
            "burst": 10000,
            "realtimeRuntime": 4000,
            "realtimePeriod": 500000,
            "cpus": "0",
            "mems": "0",
            "idle": 0,
        },
        "pids": {"limit": 100},
        "blockIO": {
            "weight": 500,
            "throttleReadBpsDevice": [{"major": maj, "minor": mnr, "rate": 1 << 20}],
            "throttleWriteBpsDevice": [{"major": maj, "minor": mnr, "rate": 2 << 20}],
            "throttleReadIOPSDevice": [{"major": maj, "minor": mnr, "rate": 100}],
            "throttleWriteIOPSDevice": [{"major": maj, "minor": mnr, "rate": 300}],
        },
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": True, "type": "c", "major": 136, "access": "rw"},
        ],
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
    }
    m.set_resources(res)
    assert box.file("memory", "memory.limit_in_bytes") == str(64 << 20)
    assert box.file("memory", "memory.soft_limit_in_bytes") == str(32 << 20)
    assert box.file("memory", "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert box.file("memory", "memory.swappiness") == "10"
    assert "oom_kill_disable 1" in box.file("memory", "memory.oom_control")
    assert box.file("cpu", "cpu.shares") == "512"
    assert box.file("cpu", "cpu.cfs_quota_us") == "50000"
    assert box.file("cpu", "cpu.cfs_period_us") == "100000"
    assert box.file("cpu", "cpu.cfs_burst_us") == "10000"
    assert box.file("cpu", "cpu.rt_runtime_us") == "4000"
    assert box.file("cpu", "cpu.rt_period_us") == "500000"
    assert box.file("cpu", "cpu.idle") == "0"
    assert box.file("cpuset", "cpuset.cpus") == "0"
    assert box.file("cpuset", "cpuset.mems") == "0"
    assert box.file("pids", "pids.max") == "100"
    weight_file = (
        "blkio.weight"
        if os.path.exists(os.path.join(m.paths["blkio"], "blkio.weight"))
        else "blkio.bfq.weight"
    )
    assert box.file("blkio", weight_file).split()[-1] == "500"
    assert box.file("blkio", "blkio.throttle.read_bps_device") == f"{dev} {1 << 20}"
    assert box.file("blkio", "blkio.throttle.write_bps_device") == f"{dev} {2 << 20}"
    assert box.file("blkio", "blkio.throttle.read_iops_device") == f"{dev} 100"
    assert box.file("blkio", "blkio.throttle.write_iops_device") == f"{dev} 300"
    assert box.file("devices", "devices.list").splitlines() == ["c 1:3 rwm", "c 136:* rw"]
    assert m.unified
    assert _read(os.path.join(m.unified, "hugetlb.2MB.max")) == str(4 << 20)

    # update: raise memory above the current memsw (swap must be written first), then lower both
    m.set_resources({"memory": {"limit": 256 << 20, "swap": 512 << 20}, "pids": {"limit": -1}})
    assert box.file("memory", "memory.limit_in_bytes") == str(256 << 20)
    assert box.file("memory", "memory.memsw.limit_in_bytes") == str(512 << 20)
    assert box.file("pids", "pids.max") == "max"
    m.set_resources({"memory": {"limit": 16 << 20, "swap": 32 << 20}, "cpu": {"idle": 1}})
    assert box.file("memory", "memory.limit_in_bytes") == str(16 << 20)
    assert box.file("memory", "memory.memsw.limit_in_bytes") == str(32 << 20)
    assert box.file("cpu", "cpu.idle") == "1"
    # lowering quota below the current burst needs the burst written first
    m.set_resources({"cpu": {"quota": 5000, "burst": 2000}})
    assert (box.file("cpu", "cpu.cfs_quota_us"), box.file("cpu", "cpu.cfs_burst_us")) == ("5000", "2000")
    m.set_resources({"cpu": {"quota": 80000, "burst": 60000}})
    assert (box.file("cpu", "cpu.cfs_quota_us"), box.file("cpu", "cpu.cfs_burst_us")) == ("80000", "60000")
    m.set_resources({"memory": {"limit": -1, "disableOOMKiller": False}})
    assert int(box.file("memory", "memory.limit_in_bytes")) > 1 << 60
    assert int(box.file("memory", "memory.memsw.limit_in_bytes")) > 1 << 60
    assert "oom_kill_disable 0" in box.file("memory", "memory.oom_control")


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"blockIO": {"leafWeight": 300}}, "linux.resources.blockIO.leafWeight"),
        (
            {"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "leafWeight": 300}]}},
            "linux.resources.blockIO.weightDevice[0].leafWeight",
        ),
        ({"network": {"classID": 1048577}}, "linux.resources.network.classID"),
        (
            {"network": {"priorities": [{"name": "lo", "priority": 5}]}},
            "linux.resources.network.priorities[0]",
        ),
        ({"rdma": {"mlx4_0": {"hcaHandles": 2}}}, "linux.resources.rdma"),
        ({"unified": {"memory.high": "1000000"}}, "linux.resources.unified"),
        ({"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]}, "linux.resources.hugepageLimits[0].pageSize"),
        ({"memory": {"swappiness": 200}}, "linux.resources.memory.swappiness"),
        ({"memory": {"limit": 100 << 20, "swap": 50 << 20}}, "linux.resources.memory.swap"),
        ({"memory": {"limit": "lots"}}, "linux.resources.memory.limit"),
        ({"memory": {"useHierarchy": False}}, "linux.resources.memory.useHierarchy"),
        ({"cpu": {"cpus": "0-999"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"cpus": "zero"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"quota": 1000, "burst": 5000}}, "linux.resources.cpu.burst"),
        ({"cpu": {"shares": 1}}, "linux.resources.cpu.shares"),
        ({"devices": [{"allow": True, "type": "x"}]}, "linux.resources.devices[0]"),
    ],
)
def test_unsupported_or_invalid_field_is_named(box: Box, resources: dict, field: str) -> None:
    box.mgr.apply(box.proc.pid)
    with pytest.raises(ConfigError) as exc:
        box.mgr.set_resources(resources)
    msg = str(exc.value)
    assert exc.value.field == field, msg
    assert msg.startswith(field + ": ") and "\n" not in msg and not msg.endswith(".")
    rest = msg[len(field) + 2 :]
    assert rest and rest[0] == rest[0].lower()  # one line starting lowercase after the field


def test_per_device_weight_needs_bfq(box: Box) -> None:
    name, dev, sched = _block_device()
    if sched == "bfq":
        pytest.skip(f"{name} uses bfq: per-device weights are supported here")
    box.mgr.apply(box.proc.pid)
    major, minor = (int(x) for x in dev.split(":"))
    with pytest.raises(ConfigError) as exc:
        box.mgr.set_resources(
            {"blockIO": {"weightDevice": [{"major": major, "minor": minor, "weight": 300}]}}
        )
    assert exc.value.field == "linux.resources.blockIO.weightDevice[0].weight"
    assert "weight_device" in str(exc.value)


def test_memory_limit_below_usage(membox: Box) -> None:
    m, proc = membox.mgr, membox.proc
    assert proc.stdin and proc.stdout
    m.apply(proc.pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ok"
    usage = int(membox.file("memory", "memory.usage_in_bytes"))
    assert usage >= 24 << 20
    with pytest.raises(ConfigError) as exc:
        m.set_resources({"memory": {"limit": 1 << 20, "checkBeforeUpdate": True}})
    assert exc.value.field == "linux.resources.memory.limit"
    assert "below the current usage" in str(exc.value)
    # Without the check the kernel refuses too (no swap to push the pages to): still a named error.
    if _read("/proc/swaps").count("\n") == 0:
        with pytest.raises(ConfigError) as exc:
            m.set_resources({"memory": {"limit": 1 << 20}})
        assert exc.value.field == "linux.resources.memory.limit"
        assert "current usage" in str(exc.value)
    st = m.stats()
    assert st["memory"]["usage"]["usage"] >= 24 << 20
    assert st["memory"]["usage"]["max"] >= st["memory"]["usage"]["usage"]
    assert st["memory"]["raw"]["rss"] + st["memory"]["raw"].get("shmem", 0) > 0


def test_freeze_and_thaw(box: Box) -> None:
    m, pid = box.mgr, box.proc.pid
    m.apply(pid)
    assert m.state() == "thawed"
    m.freeze()
    assert m.state() == "frozen"
    assert box.file("freezer", "freezer.state") == "FROZEN"
    status = dict(line.split(":\t", 1) for line in _read(f"/proc/{pid}/status").splitlines() if ":\t" in line)
    assert status["State"].split()[0] in ("D", "T")  # frozen tasks sleep uninterruptibly in the refrigerator
    m.freeze()  # idempotent
    m.thaw()
    assert m.state() == "thawed"
    assert box.file("freezer", "freezer.state") == "THAWED"
    status = dict(line.split(":\t", 1) for line in _read(f"/proc/{pid}/status").splitlines() if ":\t" in line)
    assert status["State"].split()[0] == "S"


def test_stats_shape(box: Box) -> None:
    m = box.mgr
    m.apply(box.proc.pid)
    m.set_resources({"pids": {"limit": 50}, "memory": {"limit": 128 << 20}})
    m.set_resources({"hugepageLimits": [{"pageSize": "2MB", "limit": 2 << 20}]})
    st = m.stats()
    assert set(st) >= {"cpu", "memory", "pids", "blkio", "hugetlb"}
    assert st["pids"] == {"current": 1, "limit": 50}
    assert st["memory"]["usage"]["limit"] == 128 << 20
    assert st["cpu"]["usage"]["total"] >= 0 and len(st["cpu"]["usage"]["percpu"]) == os.cpu_count()
    assert set(st["cpu"]["throttling"]) == {"periods", "throttled_periods", "throttled_time"}
    assert st["hugetlb"]["2MB"]["usage"] == 0 and st["hugetlb"]["2MB"]["failcnt"] == 0


def test_kill_all_and_remove(box: Box) -> None:
    m = box.mgr
    m.apply(box.proc.pid)
    m.kill_all(signal.SIGKILL)
    assert box.proc.wait(timeout=10) == -signal.SIGKILL
    m.remove()
    for d in m.paths.values():
        assert not os.path.exists(d), d
    assert m.unified and not os.path.exists(m.unified)
    m.remove()  # idempotent
    assert m.pids() == []


def test_state_round_trip(box: Box) -> None:
    box.mgr.apply(box.proc.pid)
    again = manager_from_state(box.mgr.to_state())
    assert isinstance(again, V1Manager)
    assert again.pids() == [box.proc.pid]
    again.freeze()
    assert box.mgr.state() == "frozen"
    again.thaw()


def test_make_manager_on_this_host() -> None:
    top = f"/pyouki-test-{uuid.uuid4().hex[:12]}"
    m = make_manager(f"{top}/c1", "c1", rootless=False, systemd=False)
    assert isinstance(m, V1Manager)
    assert m.paths["memory"] == f"/sys/fs/cgroup/memory{top}/c1"
    default = make_manager(None, "abc", rootless=False, systemd=False)
    assert isinstance(default, V1Manager) and default.paths["pids"] == "/sys/fs/cgroup/pids/pyouki/abc"
    # rootless on a v1/hybrid host: no cgroups at all (like runc)
    assert make_manager(None, "abc", rootless=True, systemd=False) is None
    with pytest.raises(PyoukiError, match="systemd form"):
        make_manager("system.slice:pyouki:abc", "abc", rootless=False, systemd=False)
    # nothing was created by just making managers
    assert not os.path.exists(f"/sys/fs/cgroup/memory{top}")
