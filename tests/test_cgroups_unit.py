"""Pure logic of the cgroup drivers: conversions, parsing, path resolution (no root needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyouki.cgroups import common as c
from pyouki.cgroups.manager import manager_from_state
from pyouki.cgroups.v1 import V1Manager, rdma_line
from pyouki.cgroups.v2 import V2Manager, memory_swap_to_v2
from pyouki.errors import ConfigError, PyoukiError

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:50 / /proc rw - proc proc rw
"""

UNIFIED_MOUNTINFO = """\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
"""


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(0, 0), (2, 1), (1024, 39), (512, 20), (262144, 10000), (100, 4)],
)
def test_shares_to_weight_matches_runc(shares: int, weight: int) -> None:
    assert c.shares_to_weight(shares) == weight


@pytest.mark.parametrize(("w", "io"), [(0, 0), (10, 1), (1000, 10000), (500, 4950)])
def test_blkio_weight_to_io_weight(w: int, io: int) -> None:
    assert c.blkio_weight_to_io_weight(w) == io


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("", []), ("0", [0]), ("0-3,7", [0, 1, 2, 3, 7]), ("2-3", [2, 3]), (" 1 , 4-5 ", [1, 4, 5])],
)
def test_parse_cpu_list(text: str, cpus: list[int]) -> None:
    assert c.parse_cpu_list(text) == cpus


@pytest.mark.parametrize("bad", ["a", "1-", "3-1", "1,,2", "-1"])
def test_parse_cpu_list_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        c.parse_cpu_list(bad)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"allow": False, "access": "rwm"}, ("devices.deny", "a")),
        (
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            ("devices.allow", "c 1:3 rwm"),
        ),
        ({"allow": True, "type": "c", "major": 136, "access": "rw"}, ("devices.allow", "c 136:* rw")),
        ({"allow": False, "type": "b", "access": "m"}, ("devices.deny", "b *:* m")),
        ({"allow": True, "type": "b", "major": 8, "minor": 0}, ("devices.allow", "b 8:0 rwm")),
    ],
)
def test_device_rule_to_v1(rule: dict, expected: tuple[str, str]) -> None:
    assert c.device_rule_to_v1(rule) == expected


@pytest.mark.parametrize(
    "rule", [{"allow": True, "type": "x"}, {"allow": True, "type": "c", "access": "rwx"}]
)
def test_device_rule_rejects(rule: dict) -> None:
    with pytest.raises(ValueError):
        c.device_rule_to_v1(rule)


def test_page_sizes() -> None:
    assert c.parse_page_size("2MB") == 2 << 20
    assert c.parse_page_size("64KB") == 64 << 10
    assert c.parse_page_size("1GB") == 1 << 30
    assert c.page_size_name(2 << 20) == "2MB"
    assert c.page_size_name(1 << 30) == "1GB"
    assert c.page_size_name(64 << 10) == "64KB"
    with pytest.raises(ValueError):
        c.parse_page_size("2 megabytes")


def test_parse_mountinfo_and_mode() -> None:
    mounts = c.parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.mountpoint for m in mounts] == [
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
    ]
    assert mounts[0].controllers == ("cpu", "cpuacct")
    assert mounts[3].controllers == ("name=systemd",)
    assert mounts[4].fstype == "cgroup2"
    assert c.mode_from_mounts(mounts) == "hybrid"
    assert c.mode_from_mounts(mounts[:4]) == "v1"
    assert c.mode_from_mounts(c.parse_mountinfo(UNIFIED_MOUNTINFO)) == "unified"


def test_mountinfo_unescapes_spaces() -> None:
    text = r"41 31 0:38 / /mnt/my\040cg rw - cgroup2 cgroup2 rw" + "\n"
    assert c.parse_mountinfo(text)[0].mountpoint == "/mnt/my cg"


def test_parse_proc_cgroup() -> None:
    own = c.parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n9:name=systemd:/user.slice\n0::/x\n")
    assert own == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "name=systemd": "/user.slice", "": "/x"}


@pytest.mark.parametrize(
    ("mountpoint", "mroot", "own", "path", "expected"),
    [
        # absolute: relative to the mount point, whatever our own cgroup is
        ("/sys/fs/cgroup/memory", "/", "/process_api/x", "/pyouki/c1", "/sys/fs/cgroup/memory/pyouki/c1"),
        # relative: relative to our own cgroup
        (
            "/sys/fs/cgroup/memory",
            "/",
            "/process_api/x",
            "pyouki/c1",
            "/sys/fs/cgroup/memory/process_api/x/pyouki/c1",
        ),
        ("/sys/fs/cgroup", "/", "/", "c1", "/sys/fs/cgroup/c1"),
        # a mount whose root is a sub-cgroup (cgroup namespace or bind mount)
        ("/sys/fs/cgroup", "/user.slice", "/user.slice/u.scope", "c1", "/sys/fs/cgroup/u.scope/c1"),
        # .. cannot escape the hierarchy
        ("/sys/fs/cgroup", "/", "/", "/../../etc", "/sys/fs/cgroup/etc"),
        ("/sys/fs/cgroup", "/", "/a", "", "/sys/fs/cgroup/a"),
    ],
)
def test_resolve_path(mountpoint: str, mroot: str, own: str, path: str, expected: str) -> None:
    assert c.resolve_path(mountpoint, mroot, own, path) == expected


def test_v1_for_path_uses_every_hierarchy() -> None:
    mounts = c.parse_mountinfo(HYBRID_MOUNTINFO)
    own = {"cpu": "/", "cpuacct": "/", "cpuset": "/", "memory": "/mine", "name=systemd": "/", "": "/u"}
    m = V1Manager.for_path("sub", mounts, own)
    assert m.paths["cpu"] == m.paths["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/sub"
    assert m.paths["memory"] == "/sys/fs/cgroup/memory/mine/sub"
    assert m.paths["name=systemd"] == "/sys/fs/cgroup/systemd/sub"
    assert m.unified == "/sys/fs/cgroup/unified/u/sub"
    again = manager_from_state(m.to_state())
    assert isinstance(again, V1Manager) and again.paths == m.paths and again.unified == m.unified


def test_v2_state_round_trip() -> None:
    m = V2Manager.for_path("/pyouki/c1", mounts=c.parse_mountinfo(UNIFIED_MOUNTINFO), own={"": "/"})
    assert m.path == "/sys/fs/cgroup/pyouki/c1"
    again = manager_from_state(m.to_state())
    assert isinstance(again, V2Manager) and again.path == m.path and again.mountpoint == "/sys/fs/cgroup"


def test_v2_thaw_of_a_removed_cgroup_is_done(tmp_path: Path) -> None:
    """systemd removes a scope's cgroup once SIGKILL empties it: kill's thaw of a paused container
    must not fail (or wait 5 s) for it; the race itself is in test_podman_systemd and
    test_systemd_driver (kill_of_a_paused_container). Freezing a missing cgroup still fails."""
    gone = V2Manager(str(tmp_path / "libpod-x.scope"))
    gone.thaw()
    with pytest.raises(PyoukiError, match="cannot freeze cgroup .*libpod-x.scope"):
        gone.freeze()


def test_from_state_none_and_unknown() -> None:
    assert manager_from_state(None) is None
    with pytest.raises(PyoukiError, match="unknown cgroup driver"):
        manager_from_state({"driver": "nope"})


def test_memory_swap_to_v2() -> None:
    assert memory_swap_to_v2(0, -1) == -1
    assert memory_swap_to_v2(-1, 100) == -1
    assert memory_swap_to_v2(0, 100) == 0
    assert memory_swap_to_v2(300, 100) == 200
    assert memory_swap_to_v2(100, 100) == 0
    with pytest.raises(ValueError, match="without memory limit"):
        memory_swap_to_v2(300, 0)
    with pytest.raises(ValueError, match=">= memory limit"):
        memory_swap_to_v2(50, 100)


def test_rdma_line() -> None:
    assert (
        rdma_line("mlx4_0", {"hcaHandles": 2, "hcaObjects": 2000}, "f")
        == "mlx4_0 hca_handle=2 hca_object=2000"
    )
    assert rdma_line("mlx5_1", {"hcaHandles": 3}, "f") == "mlx5_1 hca_handle=3"
    with pytest.raises(ConfigError, match=r"^linux.resources.rdma.x: "):
        rdma_line("x", {}, "linux.resources.rdma.x")


def test_field_int_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^linux.resources.memory.limit: expected an integer"):
        c.field_int({"limit": "1G"}, "limit", "linux.resources.memory")
    assert c.field_int({}, "limit", "x") is None


def test_import_is_cheap() -> None:
    code = "import sys, pyouki.cgroups; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    for heavy in ("json", "subprocess", "typing", "logging", "ctypes", "dataclasses", "jeepney"):
        assert heavy not in loaded, heavy


def _emu(rules: list[dict]) -> tuple[bool, list[str]]:
    from pyouki.cgroups.devices import emulate

    allow, exc = emulate(rules)
    return allow, [repr(e) for e in exc]


def test_device_emulator_follows_v1_semantics() -> None:
    deny_all = {"allow": False, "access": "rwm"}
    assert _emu([]) == (True, [])
    assert _emu([deny_all]) == (False, [])
    rules = [
        deny_all,
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "w"},  # merged into one exception
        {"allow": True, "type": "c", "major": 136, "access": "rwm"},
        {"allow": False, "type": "c", "major": 136, "access": "m"},  # removes bits from the exact match
    ]
    assert _emu(rules) == (False, ["c 1:3 rw", "c 136:* rw"])
    # an "a" rule resets everything before it
    assert _emu([*rules, {"allow": True, "access": "rwm"}]) == (True, [])
    assert _emu([{"allow": False, "type": "b", "major": 8, "access": "w"}]) == (True, ["b 8:* w"])


def test_device_program_encoding() -> None:
    import struct

    from pyouki.cgroups.devices import build_program, emulate, program_for_rules

    prog = build_program(*emulate([{"allow": False, "access": "rwm"}]))
    # 6 prologue instructions, then "r0 = 0; exit"
    assert len(prog) == 8 * 8
    code, regs, off, imm = struct.unpack_from("<BBhi", prog, 6 * 8)
    assert (code, regs & 0xF, imm) == (0xB4, 0, 0)
    assert struct.unpack_from("<B", prog, 7 * 8)[0] == 0x95
    prog = build_program(*emulate([{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3}]))
    # block: jne type, jne major, jne minor, r0 = 1, exit (access rwm needs no check)
    assert len(prog) == (6 + 5 + 2) * 8
    code, regs, off, imm = struct.unpack_from("<BBhi", prog, 6 * 8)
    assert (code, regs & 0xF, off, imm) == (0x55, 2, 4, 2)  # if type != char skip the 4 remaining insns
    with pytest.raises(ConfigError) as exc:
        program_for_rules([{"allow": False}, {"allow": True, "type": "q"}], "linux.resources.devices")
    assert exc.value.field == "linux.resources.devices[1]"


def test_rootless_requested_fields_are_what_a_cgroup_must_apply() -> None:
    """What a rootless create without a cgroup refuses: cgroupsPath, then each limit with a
    value; device rules and empty objects are not limits (podman sends `resources: {}`)."""
    from pyouki.cgroups import requested

    assert requested(None, None) == []
    assert requested(None, {"devices": [{"allow": False, "access": "rwm"}], "memory": {}, "network": None,
                            "hugepageLimits": [], "cpu": {"shares": None}}) == []
    assert requested("/x", {"pids": {"limit": 42}, "memory": {"limit": -1}}) == [
        "linux.cgroupsPath", "linux.resources.pids", "linux.resources.memory"]
    with pytest.raises(PyoukiError, match=r"^linux\.resources\.pids: cannot be applied: no cgroup; "):
        from pyouki.cgroups import refuse_without_cgroup

        refuse_without_cgroup(requested(None, {"pids": {"limit": 1}}), "no cgroup")


def test_a_collected_systemd_scope_is_removed_without_its_driver(tmp_path: Path) -> None:
    """A systemd record's delete needs no D-Bus when its scope had CollectMode=inactive-or-failed
    (systemd unloads it, failed or not) and the scope's cgroup is gone: what cgroupfs left (v1's
    other hierarchies) is removed by rmdir. Anything else goes to the driver (StopUnit,
    ResetFailedUnit)."""
    from pyouki.record import remove_plain

    gone = str(tmp_path / "gone.scope")
    left = tmp_path / "cpu" / "x.scope"
    left.mkdir(parents=True)
    v1 = {"driver": "cgroupfs-v1", "paths": {"name=systemd": gone, "cpu": str(left)}}
    record = {"driver": "systemd", "unit": "pyouki-x.scope", "slice": "system.slice", "collect": True, "fs": v1}
    assert remove_plain(record) is True
    assert not left.exists()
    v2 = {"driver": "cgroupfs-v2", "path": gone}
    assert remove_plain(dict(record, fs=v2)) is True
    still = tmp_path / "still.scope"
    still.mkdir()
    assert remove_plain(dict(record, fs={"driver": "cgroupfs-v2", "path": str(still)})) is False  # stop it first
    assert still.exists()
    assert remove_plain(dict(record, collect=False, fs=v2)) is False  # may be loaded, failed: reset it
    assert remove_plain(dict(record, unit="pyouki-x.slice", fs=v2)) is False  # a slice is stopped
    assert remove_plain(dict(record, fs=None)) is False
