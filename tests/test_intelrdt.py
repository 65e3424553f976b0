"""linux.intelRdt (config-linux.md): a container's resctrl group, schemata and MON group.

This machine has no resctrl filesystem, so the real containers check the spec's error; the
group and schemata rules run as pure logic against a plain directory laid out like a resctrl
mount (the kernel makes a group's files on mkdir; here the test makes the ones it reads).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo

from pyouki.errors import ConfigError
from pyouki.intelrdt import Rdt, check, find_mount, mismatches, schema_lines

# --- pure logic --------------------------------------------------------------------------------


def test_schema_lines_follow_the_spec_order() -> None:
    rdt = {"schemata": ["L2:0=f", "MB:0=20"], "memBwSchema": "MB:0=70", "l3CacheSchema": "L3:0=7f0;1=1f"}
    assert schema_lines(rdt) == ["L3:0=7f0;1=1f", "MB:0=70", "L2:0=f", "MB:0=20"]
    assert schema_lines({"closID": "x"}) == []


@pytest.mark.parametrize("rdt, field", [
    ({"memBwSchema": "L3:0=1"}, "linux.intelRdt.memBwSchema"),
    ({"l3CacheSchema": "L3:0=1\nMB:0=1"}, "linux.intelRdt.l3CacheSchema"),
    ({"schemata": ["L3:0=1", "x\ny"]}, "linux.intelRdt.schemata[1]"),
    ({"closID": "a/b"}, "linux.intelRdt.closID"),
    ({"closID": ".."}, "linux.intelRdt.closID"),
    ({"closID": "mon_groups"}, "linux.intelRdt.closID"),
    ({"enableMonitoring": "yes"}, "linux.intelRdt.enableMonitoring"),
    ({"enableCMT": True}, "linux.intelRdt.enableCMT"),
])
def test_check_names_the_field(rdt: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        check(rdt)
    assert e.value.field == field


def test_mismatches_compare_each_domain_as_the_kernel_prints_it() -> None:
    existing = "    L3:0=7f0;1=01f\n    MB:0= 20;1= 70\n"
    assert mismatches(existing, ["L3:0=7f0;1=1f", "MB:0=20;1=70"]) == []
    assert mismatches(existing, ["L3:1=1f"]) == []  # a subset of the domains
    assert mismatches(existing, ["L3:0=ff", "MB:1=70", "L2:0=f"]) == ["L3:0=ff", "L2:0=f"]


def _group(root: Path, name: str, schemata: str = "L3:0=7ff\n") -> Path:
    """A group as the kernel lays it out (what the test's directory lacks by itself)."""
    g = root / name if name != "/" else root
    (g / "mon_groups").mkdir(parents=True, exist_ok=True)
    (g / "schemata").write_text(schemata)
    return g


def test_without_closid_the_group_is_the_containers_and_goes_with_it(tmp_path: Path) -> None:
    rdt = Rdt.apply(str(tmp_path), {"l3CacheSchema": "L3:0=f", "memBwSchema": "MB:0=50",
                                    "schemata": ["L2:0=3"]}, "ctr1")
    group = tmp_path / "ctr1"
    assert rdt.group == str(group) and rdt.created and rdt.mon is None
    assert (group / "schemata").read_text() == "L3:0=f\nMB:0=50\nL2:0=3\n"
    rdt.add_task(4242)
    assert (group / "tasks").read_text() == "4242"
    (group / "schemata").unlink()
    (group / "tasks").unlink()  # kernfs files vanish with the directory; a test dir's do not
    Rdt.from_state(json.loads(json.dumps(rdt.to_state()))).remove()
    assert not group.exists()


def test_an_existing_closid_is_checked_never_written_nor_removed(tmp_path: Path) -> None:
    group = _group(tmp_path, "gold", "    L3:0=0f0\n    MB:0=30\n")
    rdt = Rdt.apply(str(tmp_path), {"closID": "gold", "l3CacheSchema": "L3:0=f0"}, "ctr1")
    assert rdt.group == str(group) and not rdt.created
    with pytest.raises(ConfigError, match="^linux.intelRdt: the existing resctrl group .*/gold does not match "
                                          "'MB:0=40'$"):
        Rdt.apply(str(tmp_path), {"closID": "gold", "memBwSchema": "MB:0=40"}, "ctr1")
    assert (group / "schemata").read_text() == "    L3:0=0f0\n    MB:0=30\n"
    rdt.remove()
    assert group.exists()


def test_a_closid_without_schemas_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^linux.intelRdt.closID: no resctrl group .*/missing: without a schema"):
        Rdt.apply(str(tmp_path), {"closID": "missing"}, "ctr1")
    assert not (tmp_path / "missing").exists()
    # with a schema it is made, but not removed: closID names a group that outlives containers
    rdt = Rdt.apply(str(tmp_path), {"closID": "new", "schemata": ["L3:0=3"]}, "ctr1")
    assert rdt.created and (tmp_path / "new" / "schemata").read_text() == "L3:0=3\n"


def test_root_closid_is_the_default_group(tmp_path: Path) -> None:
    _group(tmp_path, "/")
    rdt = Rdt.apply(str(tmp_path), {"closID": "/", "enableMonitoring": True}, "ctr1")
    assert rdt.group == str(tmp_path) and not rdt.created
    assert rdt.mon == str(tmp_path / "mon_groups" / "ctr1") and Path(rdt.mon).is_dir()
    rdt.add_task(77)
    assert (tmp_path / "tasks").read_text() == "77" and (tmp_path / "mon_groups/ctr1/tasks").read_text() == "77"
    (tmp_path / "mon_groups/ctr1/tasks").unlink()
    rdt.remove()
    assert not (tmp_path / "mon_groups" / "ctr1").exists() and tmp_path.exists()


def test_a_failed_mon_group_undoes_the_group(tmp_path: Path) -> None:
    # the new group has no mon_groups here (the kernel would make it): the MON group cannot be made
    with pytest.raises(ConfigError, match="^linux.intelRdt.enableMonitoring: failed to create the MON group"):
        Rdt.apply(str(tmp_path), {"enableMonitoring": True}, "ctr2")
    assert not (tmp_path / "ctr2").exists()


def test_find_mount_reads_the_fstype(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:5 / /sys rw - sysfs sysfs rw\n"
                    "40 22 0:33 / /sys/fs/resctrl rw,relatime shared:20 - resctrl resctrl rw\n")
    assert find_mount(str(info)) == "/sys/fs/resctrl"
    info.write_text("22 1 0:5 / /sys rw - sysfs sysfs rw\n")
    assert find_mount(str(info)) is None


def test_delete_of_a_killed_create_removes_its_resctrl_group(tmp_path: Path) -> None:
    """A create killed after it made the group leaves only creating.bin to say so: delete of the
    unrecorded directory removes the group with the rest (it would stay for good otherwise)."""
    from pyouki.lifecycle import delete
    from pyouki.state import Container

    resctrl, root = tmp_path / "resctrl", tmp_path / "state"
    resctrl.mkdir()
    root.mkdir(mode=0o700)
    rdt = Rdt.apply(str(resctrl), {"l3CacheSchema": "L3:0=f"}, "ctr1")
    (resctrl / "ctr1" / "schemata").unlink()  # kernfs files vanish with the directory; a test dir's do not
    container = Container(str(root), "ctr1").make_dir()
    container.save_creating({"cgroup": None, "intel_rdt": rdt.to_state()})
    container.unlock()
    delete(str(root), "ctr1", force=True)
    assert not (resctrl / "ctr1").exists()
    assert not (root / "ctr1").exists()


# --- real containers: this machine has no resctrl ---------------------------------------------


def test_create_without_resctrl_is_the_specs_error(runtime: RuntimeInfo, runner: Runner,
                                                   make_bundle: Callable[..., Bundle]) -> None:
    if find_mount() is not None:
        pytest.skip("resctrl is mounted here: the error case cannot happen")
    b = make_bundle()
    b.linux["intelRdt"] = {"closID": "guaranteed_group", "schemata": ["L3:0=7f0"]}
    b.write()
    r = runner.create(runner.new_id(), b)
    assert r.returncode != 0, r
    if runtime.is_pyouki:
        assert r.stderr.startswith("pyouki: linux.intelRdt: no resctrl filesystem is mounted"), r
        assert len(r.stderr.splitlines()) == 1
    assert runner.state_entries() == [] and runner.leftover_pids() == []


@pytest.mark.parametrize("mode", ["root"])
def test_features_lists_intel_rdt(runner: Runner) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    assert doc["linux"]["intelRdt"] == {"enabled": True, "schemata": True, "monitoring": True}


def test_update_flags_are_checked() -> None:
    from pyouki.errors import PyoukiError
    from pyouki.update import rdt_from_flags

    assert rdt_from_flags({"l3_cache_schema": "L3:0=f", "mem_bw_schema": "MB:0=50", "memory": "1m"}) == \
        {"l3CacheSchema": "L3:0=f", "memBwSchema": "MB:0=50"}
    assert rdt_from_flags({"l3_cache_schema": None, "mem_bw_schema": ""}) == {}
    with pytest.raises(PyoukiError, match="^invalid value for --mem-bw-schema: 'L3:0=f' does not start with MB:$"):
        rdt_from_flags({"mem_bw_schema": "L3:0=f"})


def test_update_without_resctrl_says_so(runtime: RuntimeInfo, runner: Runner,
                                        make_bundle: Callable[..., Bundle]) -> None:
    if find_mount() is not None:
        pytest.skip("resctrl is mounted here: the error case cannot happen")
    b = make_bundle(args=("sleep", "1000"))
    cid = runner.new_id()
    runner.create(cid, b).ok()
    r = runner.cmd("update", "--l3-cache-schema", "L3:0=f", cid)
    assert r.returncode != 0, r
    if runtime.is_pyouki:
        assert r.stderr.startswith("pyouki: --l3-cache-schema: no resctrl filesystem is mounted"), r
    runner.delete(cid, "--force").ok()
