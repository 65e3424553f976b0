"""cgroupfs v2 driver against the real kernel, as far as this host allows.

On the host tier (cgroup v1 hybrid) the cgroup2 hierarchy at /sys/fs/cgroup/unified only has the
hugetlb controller: creation, joining, pids, freeze, cgroup.kill, hugetlb limits, the unified map
and removal are tested there. Memory/cpu/pids/io enforcement needs a pure v2 host and is covered by
the qemu VM tier; those tests skip here with the reason. On a unified host the same tests run
against /sys/fs/cgroup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from pyouki.cgroups import detect_mode
from pyouki.cgroups.common import read_mounts
from pyouki.cgroups.manager import manager_from_state
from pyouki.cgroups.v2 import V2Manager, enable_controllers
from pyouki.errors import ConfigError, PyoukiError


def _cgroup2_mount() -> str | None:
    for m in read_mounts():
        if m.fstype == "cgroup2" and m.root == "/":
            return m.mountpoint
    return None


MOUNT = _cgroup2_mount()

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
    pytest.mark.skipif(MOUNT is None, reason="no cgroup2 hierarchy mounted"),
]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _controllers() -> list[str]:
    assert MOUNT
    return _read(os.path.join(MOUNT, "cgroup.controllers")).split()


@pytest.fixture(scope="module", autouse=True)
def _restore_root_subtree() -> Iterator[None]:
    """The driver enables controllers in the root's subtree_control; put it back as we found it."""
    assert MOUNT
    path = os.path.join(MOUNT, "cgroup.subtree_control")
    before = _read(path).split()
    yield
    for ctrl in _read(path).split():
        if ctrl not in before:
            try:
                with open(path, "w") as f:
                    f.write("-" + ctrl)
            except OSError:
                pass  # still in use by another cgroup (a concurrent run): leave it


class Box:
    """A sleeping process and its v2 manager, torn down by the fixture."""

    def __init__(self, proc: subprocess.Popen, mgr: V2Manager, top: str):
        self.proc, self.mgr, self.top = proc, mgr, top

    def file(self, name: str) -> str:
        return _read(os.path.join(self.mgr.path, name))


@pytest.fixture
def box() -> Iterator[Box]:
    assert MOUNT
    top = f"/pyouki-test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(["sleep", "60"])
    mgr = V2Manager.for_path(f"{top}/c1", mountpoint=MOUNT)
    try:
        yield Box(proc, mgr, top)
    finally:
        try:
            mgr.thaw()
        except PyoukiError:
            pass
        proc.kill()
        proc.wait()
        mgr.remove()
        parent = os.path.join(MOUNT, top.lstrip("/"))
        if os.path.isdir(parent):
            os.rmdir(parent)
        assert not os.path.exists(parent)


def test_detect_mode_sees_cgroup2() -> None:
    assert detect_mode() in ("hybrid", "unified")


def test_apply_pids_and_nested_remove(box: Box) -> None:
    m, pid = box.mgr, box.proc.pid
    m.apply(pid)
    assert str(pid) in box.file("cgroup.procs").split()
    assert f"0::{box.top}/c1" in _read(f"/proc/{pid}/cgroup").splitlines()
    assert m.pids() == [pid]
    # A child cgroup (e.g. made by the container itself) is still the container's: pids and remove see it.
    sub = os.path.join(m.path, "sub")
    os.mkdir(sub)
    with open(os.path.join(sub, "cgroup.procs"), "w") as f:
        f.write(str(pid))
    assert m.pids() == [pid]
    box.proc.kill()
    box.proc.wait()
    m.remove()
    assert not os.path.exists(m.path)
    m.remove()  # idempotent


def test_parents_get_controllers(box: Box) -> None:
    assert MOUNT
    box.mgr.apply(box.proc.pid)
    parent = os.path.dirname(box.mgr.path)
    avail = set(_controllers())
    assert set(_read(os.path.join(MOUNT, "cgroup.subtree_control")).split()) >= avail
    assert set(_read(os.path.join(parent, "cgroup.subtree_control")).split()) >= avail
    # the leaf holds the process, so nothing is enabled below it (no-internal-process rule)
    assert box.file("cgroup.subtree_control") == ""


def test_enable_controllers_is_limited_to_the_wanted_ones(box: Box) -> None:
    assert MOUNT
    parent = os.path.dirname(box.mgr.path)
    os.makedirs(box.mgr.path)
    enable_controllers(MOUNT, box.mgr.path, ["no-such-controller"])
    assert _read(os.path.join(parent, "cgroup.subtree_control")) == ""


def test_freeze_and_thaw(box: Box) -> None:
    m = box.mgr
    m.apply(box.proc.pid)
    if not os.path.exists(os.path.join(m.path, "cgroup.freeze")):
        pytest.skip("kernel has no cgroup2 freezer")
    assert m.state() == "thawed"
    m.freeze()
    assert m.state() == "frozen"
    assert "frozen 1" in box.file("cgroup.events").splitlines()
    assert box.file("cgroup.freeze") == "1"
    m.thaw()
    assert m.state() == "thawed"
    assert "frozen 0" in box.file("cgroup.events").splitlines()
    again = manager_from_state(m.to_state())
    assert isinstance(again, V2Manager) and again.pids() == [box.proc.pid]


def test_cgroup_kill(box: Box) -> None:
    m = box.mgr
    m.apply(box.proc.pid)
    if not os.path.exists(os.path.join(m.path, "cgroup.kill")):
        pytest.skip("kernel has no cgroup.kill")
    m.kill_all(signal.SIGKILL)
    assert box.proc.wait(timeout=10) == -signal.SIGKILL


def test_kill_all_other_signal(box: Box) -> None:
    box.mgr.apply(box.proc.pid)
    box.mgr.kill_all(signal.SIGTERM)
    assert box.proc.wait(timeout=10) == -signal.SIGTERM
    assert box.mgr.state() == "thawed"


def test_hugetlb_limits_and_unified_map(box: Box) -> None:
    if "hugetlb" not in _controllers():
        pytest.skip("no hugetlb controller in cgroup2")
    m = box.mgr
    m.apply(box.proc.pid)
    m.set_resources({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]})
    assert box.file("hugetlb.2MB.max") == str(4 << 20)
    if os.path.exists(os.path.join(m.path, "hugetlb.2MB.rsvd.max")):
        assert box.file("hugetlb.2MB.rsvd.max") == str(4 << 20)
    m.set_resources({"unified": {"hugetlb.2MB.max": "8388608"}})
    assert box.file("hugetlb.2MB.max") == "8388608"
    st = m.stats()
    assert st["hugetlb"]["2MB"] == {"usage": 0, "max": 0, "failcnt": 0}
    assert st["cpu"]["usage"]["total"] >= 0


@pytest.mark.parametrize(
    ("resources", "field", "text"),
    [
        ({"unified": {"../escape": "1"}}, "linux.resources.unified.../escape", "invalid key"),
        ({"unified": {"no.such.file": "1"}}, "linux.resources.unified.no.such.file", "no such file"),
        (
            {"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]},
            "linux.resources.hugepageLimits[0].pageSize",
            "3MB",
        ),
        (
            {"cpu": {"realtimeRuntime": 1000}},
            "linux.resources.cpu.realtimeRuntime",
            "not supported on cgroup v2",
        ),
        ({"memory": {"swappiness": 10}}, "linux.resources.memory.swappiness", "not supported on cgroup v2"),
        ({"memory": {"disableOOMKiller": True}}, "linux.resources.memory.disableOOMKiller", "cgroup v2"),
        ({"memory": {"limit": 0, "swap": 100}}, "linux.resources.memory.swap", "without memory limit"),
        ({"blockIO": {"leafWeight": 10}}, "linux.resources.blockIO.leafWeight", "not supported on cgroup v2"),
        ({"network": {"classID": 1}}, "linux.resources.network", "not available on cgroup v2"),
    ],
)
def test_invalid_field_is_named(box: Box, resources: dict, field: str, text: str) -> None:
    box.mgr.apply(box.proc.pid)
    with pytest.raises(ConfigError) as exc:
        box.mgr.set_resources(resources)
    assert exc.value.field == field
    assert text in str(exc.value) and "\n" not in str(exc.value)


# Opens a path per stdin line and answers "ok" or "err <errno>": the device filter's view of it.
OPENER = r"""
import os, sys
for line in sys.stdin:
    path, mode = line.split()
    try:
        os.close(os.open(path, os.O_RDONLY if mode == "r" else os.O_WRONLY))
        print("ok", flush=True)
    except OSError as e:
        print("err", e.errno, flush=True)
"""


def test_device_filter_is_enforced() -> None:
    """The eBPF device program really decides opens (the v1 devices cgroup still allows all here)."""
    import sys

    from pyouki.cgroups import _bpf

    assert MOUNT
    top = f"/pyouki-test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    mgr = V2Manager.for_path(f"{top}/c1", mountpoint=MOUNT)

    def try_open(path: str, mode: str) -> str:
        assert proc.stdin and proc.stdout
        proc.stdin.write(f"{path} {mode}\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        mgr.apply(proc.pid)
        assert try_open("/dev/null", "w") == "ok"
        mgr.set_resources(
            {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},
                ]
            }
        )
        assert try_open("/dev/null", "w") == "ok"
        assert try_open("/dev/zero", "r") == "ok"
        assert try_open("/dev/zero", "w") == "err 1"
        assert try_open("/dev/full", "r") == "err 1"
        assert _bpf.attached_program_count(mgr.path) == 1
        # update: the new program replaces the old one (still exactly one attached)
        mgr.set_resources(
            {
                "devices": [
                    {"allow": True, "access": "rwm"},
                    {"allow": False, "type": "c", "major": 1, "minor": 3},
                ]
            }
        )
        assert try_open("/dev/null", "r") == "err 1"
        assert try_open("/dev/full", "r") == "ok"
        assert _bpf.attached_program_count(mgr.path) == 1
    finally:
        proc.kill()
        proc.wait()
        mgr.remove()
        os.rmdir(os.path.join(MOUNT, top.lstrip("/")))


@pytest.mark.parametrize(
    ("resources", "field", "ctrl"),
    [
        ({"memory": {"limit": 64 << 20}}, "linux.resources.memory.limit", "memory"),
        ({"pids": {"limit": 10}}, "linux.resources.pids.limit", "pids"),
        ({"cpu": {"shares": 512}}, "linux.resources.cpu.shares", "cpu"),
        ({"cpu": {"quota": 50000, "period": 100000}}, "linux.resources.cpu.quota", "cpu"),
        ({"cpu": {"cpus": "0"}}, "linux.resources.cpu.cpus", "cpuset"),
        ({"blockIO": {"weight": 100}}, "linux.resources.blockIO.weight", "io"),
        ({"rdma": {"mlx4_0": {"hcaHandles": 1}}}, "linux.resources.rdma.mlx4_0", "rdma"),
    ],
)
def test_missing_controller_is_named(box: Box, resources: dict, field: str, ctrl: str) -> None:
    if ctrl in _controllers():
        pytest.skip(f"{ctrl} is available in cgroup2 here; enforcement is tested in the VM tier")
    box.mgr.apply(box.proc.pid)
    with pytest.raises(ConfigError) as exc:
        box.mgr.set_resources(resources)
    assert exc.value.field == field
    assert f"is the {ctrl} controller enabled" in str(exc.value)


@pytest.mark.skipif(
    MOUNT is not None and "memory" not in _controllers(),
    reason="memory, cpu and pids are bound to cgroup v1 on this host; v2 enforcement is the qemu VM tier",
)
def test_memory_cpu_pids_written(box: Box) -> None:
    m = box.mgr
    m.apply(box.proc.pid)
    m.set_resources(
        {
            "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
            "pids": {"limit": 100},
            "unified": {"memory.high": "50000000"},
        }
    )
    assert box.file("memory.max") == str(64 << 20)
    assert box.file("memory.low") == str(32 << 20)
    if os.path.exists(os.path.join(m.path, "memory.swap.max")):
        assert box.file("memory.swap.max") == str(64 << 20)
    assert box.file("memory.high") == "50000000"
    assert box.file("cpu.weight") == "39"
    assert box.file("cpu.max") == "50000 100000"
    assert box.file("pids.max") == "100"
    m.set_resources({"cpu": {"period": 200000}})
    assert box.file("cpu.max") == "50000 200000"  # the quota is kept
