"""The systemd cgroup driver (pyouki/cgroups/systemd.py): logic, dead buses, and a real systemd.

- pure logic: cgroupsPath parsing, the split of linux.resources between unit properties
  and cgroupfs, and which cgroup v2 controller each property needs;
- host: ``--systemd-cgroup`` with a dead or hung bus fails in bounded time with one clear
  line and leaves nothing behind (no systemd needed);
- nspawn tier: real pyouki containers with ``--systemd-cgroup`` inside a booted Debian
  (tests/systemd/check_driver.py), rootful on the system bus and rootless as a user logged in
  through PAM on the user bus: the unit is read back over D-Bus, the container's init is in
  the scope's cgroup, exec/ps/pause/freeze/kill join it, ``delete`` removes it. nspawn's cgroup
  v2 tree has no controllers (this host keeps them on v1), so systemd would take MemoryMax=
  and enforce nothing: a limit is refused naming its field, at create (nothing left behind)
  and at update (the unit unchanged). Limits as unit properties, enforced: tests/vm/.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Bundle, Result, Runner, assert_failed_cleanly, load_by_path, marked_pids

from pyouki.cgroups.systemd import ENFORCED_BY, _manager_controllers, parse_cgroups_path, split_resources, unenforced
from pyouki.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
TEST_UID = 1000


def _load_nspawn() -> Any:
    return load_by_path("pyouki_tests_nspawn", "tests/systemd/nspawn.py")


nspawn = _load_nspawn()


# -- pure logic -------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "rootless", "expected"), [
    (None, False, ("system.slice", "pyouki-c1.scope")),
    (None, True, ("user.slice", "pyouki-c1.scope")),
    ("", False, ("system.slice", "pyouki-c1.scope")),
    ("machine.slice:libpod:abc", False, ("machine.slice", "libpod-abc.scope")),
    (":crio:abc", True, ("user.slice", "crio-abc.scope")),
    ("system.slice::abc", False, ("system.slice", "abc.scope")),
    ("system.slice:ignored:pods-x.slice", False, ("system.slice", "pods-x.slice")),
])
def test_cgroups_path_like_runc(path: str | None, rootless: bool, expected: tuple[str, str]) -> None:
    assert parse_cgroups_path(path, "c1", rootless) == expected


@pytest.mark.parametrize("path", ["/pyouki/c1", "system.slice:c1", "a:b:c:d", "system:p:c1",
                                  "system.slice:p:", "system.slice:p:a/b"])
def test_bad_cgroups_path_names_the_field(path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_cgroups_path(path, "c1", False)
    assert str(e.value).startswith("linux.cgroupsPath: ")
    assert "\n" not in str(e.value)


def test_resources_split_between_properties_and_cgroupfs() -> None:
    devices = [{"allow": False, "access": "rwm"}]
    resources = {
        "memory": {"limit": 64 * MiB, "swappiness": 10},
        "pids": {"limit": 42},
        "cpu": {"shares": 1024, "quota": 50_000, "period": 100_000, "burst": 1000},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"memory.high": "max"},
        "devices": devices,
    }
    props, rest = split_resources(resources, rootless=False)
    assert props == {"MemoryMax": 64 * MiB, "TasksMax": 42, "CPUWeight": 39, "CPUQuotaPeriodUSec": 100_000,
                     "CPUQuotaPerSecUSec": 500_000, "IOWeight": 4950}
    assert rest == {"memory": {"swappiness": 10}, "cpu": {"burst": 1000},
                    "blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
                    "hugepageLimits": [{"pageSize": "2MB", "limit": 0}], "unified": {"memory.high": "max"},
                    "devices": devices}


def test_swap_equal_to_memory_means_no_swap() -> None:
    props, rest = split_resources({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}}, rootless=False)
    assert props == {"MemoryMax": 32 * MiB, "MemorySwapMax": 0}
    assert rest == {}


def test_rootless_drops_device_rules_like_runc() -> None:
    props, rest = split_resources({"pids": {"limit": 7}, "devices": [{"allow": False, "access": "rwm"}]},
                                  rootless=True)
    assert props == {"TasksMax": 7}
    assert rest == {}


def test_check_before_update_goes_to_cgroupfs_with_the_limit() -> None:
    props, rest = split_resources({"memory": {"limit": 8 * MiB, "checkBeforeUpdate": True}}, rootless=True)
    assert props == {"MemoryMax": 8 * MiB}
    assert rest == {"memory": {"checkBeforeUpdate": True, "limit": 8 * MiB}}


ALL_PROPERTIES = {
    "memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 128 * MiB},
    "pids": {"limit": 42},
    "cpu": {"shares": 512, "quota": 50_000, "period": 100_000, "cpus": "0", "mems": "0"},
    "blockIO": {"weight": 500},
}


def test_every_unit_property_has_its_field_and_controller() -> None:
    """A property resources_to_properties learns to set must say which controller enforces it."""
    props, rest = split_resources(ALL_PROPERTIES, rootless=False)
    assert rest == {}
    assert props.keys() == ENFORCED_BY.keys()
    assert {field for field, _ in ENFORCED_BY.values()} == {
        "memory.limit", "memory.reservation", "memory.swap", "pids.limit", "cpu.shares", "cpu.quota",
        "cpu.period", "cpu.cpus", "cpu.mems", "blockIO.weight"}


@pytest.mark.parametrize(("resources", "available", "expected"), [
    (ALL_PROPERTIES, {"cpuset", "cpu", "io", "memory", "pids"}, None),
    (ALL_PROPERTIES, set(), ("memory.limit", "memory")),
    (ALL_PROPERTIES, {"memory"}, ("pids.limit", "pids")),
    (ALL_PROPERTIES, {"memory", "pids"}, ("cpu.shares", "cpu")),
    (ALL_PROPERTIES, {"memory", "pids", "cpu"}, ("cpu.cpus", "cpuset")),
    (ALL_PROPERTIES, {"memory", "pids", "cpu", "cpuset"}, ("blockIO.weight", "io")),
    ({"memory": {"reservation": MiB}}, {"pids"}, ("memory.reservation", "memory")),
    ({"cpu": {"quota": 20_000, "period": 50_000}}, {"pids"}, ("cpu.quota", "cpu")),  # what --cpus sets
    ({"cpu": {"period": 50_000}}, {"pids"}, ("cpu.period", "cpu")),  # the field given, not the quota
    ({"cpu": {"mems": "0"}}, {"cpu"}, ("cpu.mems", "cpuset")),
    ({"pids": {"limit": 0}}, set(), ("pids.limit", "pids")),  # 0 is a limit (of one task)
    # -1 asks for no limit: without the controller there is none, nothing is dropped
    ({"memory": {"limit": -1}, "pids": {"limit": -1}, "cpu": {"quota": -1}}, set(), None),
    ({"memory": {"limit": -1}, "pids": {"limit": 9}}, set(), ("pids.limit", "pids")),
    # zero is "unset" for these (no property at all), as in runc
    ({"memory": {"limit": 0}, "cpu": {"shares": 0, "quota": 0}}, set(), None),
])
def test_unenforced_names_the_first_field_without_its_controller(
        resources: dict[str, Any], available: set[str], expected: tuple[str, str] | None) -> None:
    props, _ = split_resources(resources, rootless=True)
    assert unenforced(props, available) == expected


def test_manager_controllers_of_the_system_and_user_managers(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    user = root / "user.slice/user-1000.slice/user@1000.service"
    (user / "user.slice/pyouki-c1.scope").mkdir(parents=True)
    (root / "system.slice/pyouki-c2.scope").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (user / "cgroup.controllers").write_text("memory pids\n")
    (user / "user.slice/cgroup.controllers").write_text("\n")  # what the manager enabled, not the limit
    scope = f"{user}/user.slice/pyouki-c1.scope"
    # the system manager: the hierarchy's root
    assert _manager_controllers(f"{root}/system.slice/pyouki-c2.scope", f"{root}/", False) == (
        str(root), {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"})
    # a user manager: its user@UID.service, whatever it enabled below
    assert _manager_controllers(scope, str(root), True) == (str(user), {"memory", "pids"})
    (user / "cgroup.controllers").write_text("")
    assert _manager_controllers(scope, str(root), True) == (str(user), set())
    # nothing to check against: no user@ cgroup (a user manager in a container), or unreadable
    assert _manager_controllers(f"{root}/app.slice/pyouki-c1.scope", str(root), True) is None
    (root / "cgroup.controllers").unlink()
    assert _manager_controllers(f"{root}/system.slice/pyouki-c2.scope", str(root), False) is None


def test_rebuilding_from_state_imports_no_dbus() -> None:
    """state/kill/pause rebuild the driver per call: that must not pay for jeepney."""
    code = """
import sys
from pyouki.cgroups import manager_from_state
m = manager_from_state({"driver": "systemd", "unit": "pyouki-x.scope", "slice": "system.slice",
                        "user": False, "rootless": False,
                        "fs": {"driver": "cgroupfs-v2", "path": "/nonexistent/x", "mountpoint": "/nonexistent"}})
print(type(m).__name__, m.to_state()["unit"], "jeepney" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.stdout.split() == ["SystemdCgroup", "pyouki-x.scope", "False"], res.stderr


# -- dead and hung buses on the host -----------------------------------------------------------

def _dead_socket(path: Path) -> str:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: connection refused
    os.chmod(path, 0o777)
    return str(path)


def _create_systemd(runner: Runner, cid: str, bundle: Bundle, env: dict[str, str]) -> Result:
    if cid not in runner.ids:
        runner.ids.append(cid)
    return runner.cmd("--systemd-cgroup", "create", "--bundle", str(bundle.path), cid, env=env, timeout=60)


def _assert_nothing_left(runner: Runner, cid: str) -> None:
    assert not (runner.state_root / cid).exists()
    assert marked_pids(runner.mark) == []


@pytest.mark.parametrize("mode", ["rootless"])
def test_dead_user_bus_fails_cleanly(runner: Runner, bundle: Bundle) -> None:
    dead = _dead_socket(runner.workdir / "dead-bus")
    env = dict(runner.env(), DBUS_SESSION_BUS_ADDRESS=f"unix:path={dead}")
    cid = runner.new_id("deadbus")
    res = _create_systemd(runner, cid, bundle, env)
    assert_failed_cleanly(runner.runtime, res)
    assert res.stderr.strip() == (
        f"pyouki: failed to connect to the systemd user manager at unix:path={dead}: connection refused "
        f"(also tried unix:path={runner.xdg}/systemd/private: no such file or directory)")
    _assert_nothing_left(runner, cid)


@pytest.mark.parametrize("mode", ["rootless"])
def test_hung_user_bus_times_out_cleanly(runner: Runner, bundle: Bundle) -> None:
    hung = runner.workdir / "hung-bus"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(hung))
    os.chmod(hung, 0o777)
    server.listen(8)  # connects complete in the kernel; nobody ever answers
    try:
        env = dict(runner.env(), DBUS_SESSION_BUS_ADDRESS=f"unix:path={hung}", PYOUKI_SYSTEMD_TIMEOUT="1")
        cid = runner.new_id("hungbus")
        res = _create_systemd(runner, cid, bundle, env)
    finally:
        server.close()
    assert_failed_cleanly(runner.runtime, res)
    assert res.stderr.strip().startswith(
        f"pyouki: failed to connect to the systemd user manager at unix:path={hung}: no answer within 1 s")
    _assert_nothing_left(runner, cid)


@pytest.mark.parametrize("mode", ["root"])
def test_dead_system_bus_fails_cleanly(runner: Runner, bundle: Bundle) -> None:
    if os.path.exists("/run/systemd/private"):
        pytest.skip("this host runs a systemd system manager: its private socket would answer")
    dead = _dead_socket(runner.workdir / "dead-system-bus")
    env = dict(runner.env(), DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={dead}")
    cid = runner.new_id("deadsys")
    res = _create_systemd(runner, cid, bundle, env)
    assert_failed_cleanly(runner.runtime, res)
    assert res.stderr.strip().startswith(
        f"pyouki: failed to connect to the systemd system manager at unix:path={dead}: connection refused")
    _assert_nothing_left(runner, cid)


# -- real systemd in nspawn --------------------------------------------------------------------

def _ensure_tools() -> None:
    """Install the tier's host packages if missing; skip only if that is impossible."""
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static is not installed")
    reason = nspawn.install_missing_tools()
    if reason:
        pytest.skip(reason)


def boot_with_busybox() -> Iterator[Any]:
    """A booted container with the host's static busybox at /opt/busybox (for module fixtures)."""
    _ensure_tools()
    with nspawn.booted(REPO, binds=[("/bin/busybox", "/opt/busybox")]) as m:
        yield m


@pytest.fixture(scope="module")
def machine() -> Iterator[Any]:
    """One booted container for the module."""
    yield from boot_with_busybox()


@pytest.fixture(scope="module")
def facts(machine: Any) -> dict[str, Any]:
    """What check_driver.py observed per mode, each run once."""
    env = {"PYTHONPATH": "/src", "PYTHONDONTWRITEBYTECODE": "1"}
    out = {}
    for mode, user in (("rootful", False), ("rootless", True), ("dead-bus", True)):
        res = machine.run(["python3", "tests/systemd/check_driver.py", mode], user=user, env=env,
                          timeout=180).check()
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


RUNS = [("rootful", "default"), ("rootful", "explicit"), ("rootless", "default"), ("rootless", "explicit")]
EXPECTED_UNIT = {
    ("rootful", "default"): ("system.slice", "pyouki-{id}.scope", "/system.slice/"),
    ("rootful", "explicit"): ("machine.slice", "pyt-explicit-{pid}.scope", "/machine.slice/"),
    ("rootless", "default"): ("user.slice", "pyouki-{id}.scope",
                              f"/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service/user.slice/"),
    ("rootless", "explicit"): ("app.slice", "pyt-explicit-{pid}.scope",
                               f"/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service/app.slice/"),
}


INFINITY = 2**64 - 1  # a unit property nobody set: no limit


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_create_makes_a_delegated_unit(facts: dict[str, Any], mode: str, run: str) -> None:
    f = facts[mode][run]
    assert f["create"] == {"rc": 0, "stderr": ""}
    slice_, unit_pattern, cgroup_prefix = EXPECTED_UNIT[(mode, run)]
    unit = unit_pattern.format(id=f["id"], pid=f["id"].rsplit("-", 1)[-1])
    assert f["record"]["driver"] == "systemd"
    assert f["record"]["unit"] == unit
    assert f["record"]["user"] is (mode == "rootless")
    created = f["created"]
    assert created["exists"] is True
    assert created["ActiveState"] == "active"
    assert created["Delegate"] is True
    assert created["Slice"] == slice_
    assert created["ControlGroup"] == cgroup_prefix + unit
    assert created["MemoryMax"] == INFINITY  # no limits asked: none set
    assert created["CPUQuotaPerSecUSec"] == INFINITY
    assert created["files"]["cgroup.controllers"] == ""  # what makes limits impossible here
    assert created["cgroup_owner"] == (TEST_UID if mode == "rootless" else 0)


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_container_init_is_in_the_scope(facts: dict[str, Any], mode: str, run: str) -> None:
    f = facts[mode][run]
    assert f["created"]["procs"] == [f["pid"]]
    assert f["proc_cgroup"] == f["created"]["ControlGroup"]
    assert f["record"]["fs"]["path"] == "/sys/fs/cgroup" + f["created"]["ControlGroup"]
    assert f["manager_pids"] == [f["pid"]]
    assert f["start_rc"] == 0


@pytest.mark.parametrize("run", ["default", "explicit"])
def test_rootful_device_filter_is_attached_to_the_scope(facts: dict[str, Any], run: str) -> None:
    assert facts["rootful"][run]["device_programs"] == 1


def _refusal(mode: str, field: str) -> str:
    """The line pyouki prints for a limit nspawn's tree cannot enforce."""
    controller = {"memory.limit": "memory", "pids.limit": "pids", "cpu.shares": "cpu"}[field]
    if mode == "rootless":
        who = "the systemd user manager"
        where = f"/sys/fs/cgroup/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service"
    else:
        who, where = "systemd", "/sys/fs/cgroup"
    return (f"pyouki: linux.resources.{field}: the {controller} controller is not available to {who} "
            f"({where}/cgroup.controllers: none): the limit cannot be enforced")


LIMIT_FIELDS = ["memory.limit", "pids.limit", "cpu.shares"]


@pytest.mark.parametrize("field", LIMIT_FIELDS)
@pytest.mark.parametrize("mode", ["rootful", "rootless"])
def test_limit_without_its_controller_is_refused_at_create(facts: dict[str, Any], mode: str, field: str) -> None:
    """systemd accepts MemoryMax=/TasksMax=/CPUWeight= without the controller and enforces
    nothing: pyouki reported success for a dropped limit. runc fails too (it writes the file)."""
    f = facts[mode]["refused"][field]
    assert (f["rc"], f["stderr"]) == (1, _refusal(mode, field))
    assert f["unit_left"] is False
    assert f["state_left"] == []
    assert f["processes"] == []


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_update_of_nothing_succeeds_and_a_limit_is_refused(facts: dict[str, Any], mode: str, run: str) -> None:
    f = facts[mode][run]
    assert f["update_nothing"] == {"rc": 0, "stderr": ""}
    for field in LIMIT_FIELDS:
        assert f["update_limits"][field] == {"rc": 1, "stderr": _refusal(mode, field)}, field
    updated = f["updated"]  # refused before SetUnitProperties: the unit is as it was
    assert updated["MemoryMax"] == INFINITY
    assert updated["TasksMax"] == f["created"]["TasksMax"]
    assert updated["CPUWeight"] == f["created"]["CPUWeight"]
    assert updated["CPUQuotaPerSecUSec"] == INFINITY
    assert updated["Delegate"] is True
    assert updated["procs"] == [f["pid"]]


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_freeze_and_thaw_through_the_scope(facts: dict[str, Any], mode: str, run: str) -> None:
    f = facts[mode][run]
    assert f["frozen"][0] == "frozen"
    assert "frozen 1" in f["frozen"][1].splitlines()
    assert f["thawed"] == "thawed"


@pytest.mark.parametrize(("mode", "run"), [*RUNS, ("rootful", "slice")])
def test_exec_ps_pause_join_the_existing_unit(facts: dict[str, Any], mode: str, run: str) -> None:
    """exec started the container's unit again (StartTransientUnit: UnitExists) and failed; it
    now only adds its process to the unit's cgroup (rootless: through systemd when the caller
    may not move it there itself)."""
    f = facts[mode][run]
    assert f["exec"] == {"rc": 0, "stderr": ""}
    assert f["exec_fg"] == {"rc": 0, "stderr": ""}
    assert f["exec_cgroup"] == f["created"]["ControlGroup"]
    assert f["ps"] == sorted([f["pid"], f["exec_pid"]])
    assert (f["pause_rc"], f["paused"], f["resume_rc"], f["resumed"]) == (0, "paused", 0, "running")


@pytest.mark.parametrize(("mode", "run"), [*RUNS, ("rootful", "slice")])
def test_exec_cgroup_joins_a_sub_cgroup_of_the_unit(facts: dict[str, Any], mode: str, run: str) -> None:
    """exec --cgroup on cgroup v2: the bare form; rootless, systemd attaches it (subcgroup)."""
    f = facts[mode][run]
    assert f["exec_sub"] == {"rc": 0, "stderr": "", "cgroup": f["created"]["ControlGroup"] + "/sub"}
    assert f["exec_sub_v1_form"] == {  # exec's own failures exit 255, as runc's
        "rc": 255, "stderr": "pyouki: exec failed: invalid --cgroup argument: unknown controller memory"}


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_kill_of_a_paused_container_succeeds(facts: dict[str, Any], mode: str, run: str) -> None:
    """The thaw after SIGKILL finds the scope's cgroup removed by systemd: that is done, not a failure."""
    f = facts[mode][run]
    assert f["kill_paused"] == {"rc": 0, "stderr": ""}
    assert f["killed"] is True


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_delete_removes_the_unit(facts: dict[str, Any], mode: str, run: str) -> None:
    f = facts[mode][run]
    assert f["delete"] == {"rc": 0, "stderr": ""}
    assert f["deleted"] == {"exists": False}
    assert f["cgroup_left"] is False
    assert f["state_left"] == []


@pytest.mark.parametrize(("mode", "run"), RUNS)
def test_state_start_kill_take_the_fast_path(facts: dict[str, Any], mode: str, run: str) -> None:
    """A real systemd record: state, start and kill read the unit's cgroup through the cgroupfs
    state the record keeps, in pyouki.cli.hot (tests/test_hot_path.py compares the output)."""
    assert facts[mode][run]["fast_path"] == {"state created": True, "start": True, "state running": True,
                                             "kill 0": True}


@pytest.mark.parametrize("case", ["exited", "running", "failed", "legacy"])
@pytest.mark.parametrize("mode", ["rootful", "rootless"])
def test_delete_leaves_no_unit_and_frees_the_name(facts: dict[str, Any], mode: str, case: str) -> None:
    """delete of a container whose scope systemd collected, of a running one (--force), of one
    whose unit failed (a stop timed out: an OOM kill fails it likewise) and of one whose record
    predates CollectMode: no unit is left (not even "failed"), no cgroup, no state, and a create
    with the same id succeeds. The scope has CollectMode=inactive-or-failed, so systemd unloads
    even a failed one as soon as its cgroup is empty."""
    f = facts[mode]["delete_cases"][case]
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["collect_mode"] == "inactive-or-failed"
    running = case == "running"
    assert f["before"] == {"unit": "active" if running else False, "cgroup": running}
    assert f["delete"] == {"rc": 0, "stderr": ""}
    assert (f["unit_left"], f["cgroup_left"], f["state_left"]) == (False, False, [])
    assert f["again"] == {"rc": 0, "stderr": ""}


@pytest.mark.parametrize("case", ["exited", "failed"])
@pytest.mark.parametrize("mode", ["rootful", "rootless"])
def test_delete_of_a_stopped_scope_needs_no_dbus(facts: dict[str, Any], mode: str, case: str) -> None:
    """The scope is collected (CollectMode=inactive-or-failed) and its cgroup gone: nothing to
    stop or reset, so delete makes no D-Bus call at all and stays on the fast path (podman
    deletes every container; under TCG the full path cost ~0.8 s more per delete)."""
    assert facts[mode]["delete_cases"][case]["calls"] == []


@pytest.mark.parametrize("mode", ["rootful", "rootless"])
def test_delete_of_a_record_without_collect_mode_resets_the_scope(facts: dict[str, Any], mode: str) -> None:
    """A record from before CollectMode (or a systemd older than v236, which refuses it): the
    unit may still be loaded, "failed"; ResetFailedUnit alone, as runc's Destroy, no StopUnit."""
    assert facts[mode]["delete_cases"]["legacy"]["calls"] == ["Hello", "ResetFailedUnit"]


def test_dead_user_bus_in_a_real_login(facts: dict[str, Any]) -> None:
    f = facts["dead-bus"]
    assert f["create"]["rc"] == 1
    assert f["create"]["stderr"] == (
        f"pyouki: failed to connect to the systemd user manager at unix:path={f['dead']}: connection refused "
        f"(also tried unix:path={f['runtime_dir']}/systemd/private: no such file or directory)")
    assert f["state_left"] == []
    assert f["sleepers"] == []
    assert f["unit_left"] is False


@pytest.mark.parametrize("mode", ["rootful", "rootless"])
def test_failed_create_removes_the_unit(facts: dict[str, Any], mode: str) -> None:
    f = facts[mode]["failed"]
    assert f["create"]["rc"] == 1
    assert f["create"]["stderr"].startswith("pyouki: linux.resources.unified.memory.high: ")
    assert "\n" not in f["create"]["stderr"]
    assert f["unit_left"] is False
    assert f["state_left"] == []
    assert f["sleepers"] == []


def test_name_ending_in_slice_makes_a_slice(facts: dict[str, Any]) -> None:
    f = facts["rootful"]["slice"]
    assert f["create"] == {"rc": 0, "stderr": ""}
    unit = f["record"]["unit"]
    assert unit.startswith("pyt-") and unit.endswith(".slice")
    # systemd nests a slice by the dashes in its name, as runc's slices are
    assert f["created"]["ControlGroup"] == f"/pyt.slice/{unit}"
    assert f["created"]["procs"] == [f["pid"]]  # written through cgroupfs: a slice takes no PIDs
    assert f["update_nothing"] == {"rc": 0, "stderr": ""}
    assert f["update_limits"]["pids.limit"] == {"rc": 1, "stderr": _refusal("rootful", "pids.limit")}
    assert f["updated"]["TasksMax"] == f["created"]["TasksMax"]
    assert f["deleted"] == {"exists": False}
    assert f["cgroup_left"] is False
