"""Rootless containers on a cgroup v2 host without --systemd-cgroup (issue 4, point 4).

- nspawn tier (tests/systemd/check_auto_cgroup.py, as a user logged in through PAM): with the
  user manager reachable the container lands in a transient ``Delegate=yes`` scope under
  user@UID.service, and delete removes it; limits are refused there (nspawn's cgroup v2 tree has
  no controllers: as unit properties, systemd would take them and enforce nothing); with the user bus
  unreachable (absent or dead) it still runs, without a cgroup, when it asks for no limits, and
  create fails naming the first limit when it does; inside a delegated scope
  (``systemd-run --user --scope -p Delegate=yes``) its cgroup is a child of the scope's, and a
  limit whose controller the scope lacks fails create;
- host (cgroup v1 hybrid): rootless runs without cgroups when the config asks for no
  cgroupsPath and no limits; when it does, create fails naming the field, as runc's does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Bundle, Runner, assert_failed_cleanly, read_json_log
from test_systemd_driver import TEST_UID, boot_with_busybox

from pyouki.cgroups import detect_mode

MiB = 1024 * 1024
USER_SERVICE = f"/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service"


@pytest.fixture(scope="module")
def machine() -> Iterator[Any]:
    """One booted container for the module."""
    yield from boot_with_busybox()


@pytest.fixture(scope="module")
def facts(machine: Any) -> dict[str, Any]:
    """What check_auto_cgroup.py observed per mode, as the logged-in user, each run once."""
    env = {"PYTHONPATH": "/src", "PYTHONDONTWRITEBYTECODE": "1"}
    out = {}
    for mode in ("auto", "no-bus", "dead-bus", "delegated"):
        res = machine.run(["python3", "tests/systemd/check_auto_cgroup.py", mode], user=True, env=env,
                          timeout=180).check()
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def _ran_and_was_removed(f: dict[str, Any]) -> None:
    assert f["uid"] == TEST_UID
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["start_rc"] == 0
    assert f["status"] == "running"
    assert f["delete"] == {"rc": 0, "stderr": ""}
    assert f["state_left"] == []
    assert f["cgroup_left"] is False


def test_user_manager_gives_a_delegated_scope(facts: dict[str, Any]) -> None:
    f = facts["auto"]
    _ran_and_was_removed(f)
    unit = f"pyouki-{f['id']}.scope"
    assert f["record"]["driver"] == "systemd"
    assert f["record"]["unit"] == unit
    assert f["record"]["user"] is True
    created = f["created"]
    assert created["exists"] is True
    assert created["ActiveState"] == "active"
    assert created["Delegate"] is True
    assert created["ControlGroup"] == f"{USER_SERVICE}/user.slice/{unit}"
    assert created["procs"] == [f["pid"]]
    assert created["cgroup_owner"] == TEST_UID
    assert f["proc_cgroup"] == created["ControlGroup"]
    assert f["paused"] == "paused" and f["pause_rc"] == 0 and f["resume_rc"] == 0
    assert f["deleted"] == {"exists": False}
    # reloaded from the record, the automatic scope stays lenient (its failures are warnings)
    assert f["record"]["lenient"] == f"systemd user scope {unit}"
    # exec joins the scope instead of starting it again (UnitExists)
    assert f["exec"] == {"rc": 0, "stderr": ""} and f["exec_fg"] == {"rc": 0, "stderr": ""}
    assert f["exec_cgroup"] == created["ControlGroup"]
    assert f["ps"] == sorted([f["pid"], f["exec_pid"]])
    assert any(m.startswith("rootless: using the systemd user manager at unix:path=") for m in f["log"])


def test_user_scope_refuses_limits_the_user_manager_cannot_enforce(facts: dict[str, Any]) -> None:
    """They went to the unit as properties, which systemd took without a memory controller to
    enforce them: create succeeded and the container ran without limits."""
    refused = facts["auto"]["refused"]
    assert refused["rc"] != 0
    assert (refused["state_left"], refused["processes"], refused["unit_left"]) == ([], [], False)
    line = refused["stderr"]
    assert line.startswith("pyouki: linux.resources.memory: cannot be applied in systemd user scope pyouki-auto-"), line
    assert (f"linux.resources.memory.limit: the memory controller is not available to the systemd user manager "
            f"(/sys/fs/cgroup{USER_SERVICE}/cgroup.controllers: none): the limit cannot be enforced") in line
    assert len(line.splitlines()) == 1


@pytest.mark.parametrize("mode", ["no-bus", "dead-bus"])
def test_without_a_user_manager_runs_without_cgroups(facts: dict[str, Any], mode: str) -> None:
    """Only when the config asks for no limits (the lifecycle's bundle has none)."""
    f = facts[mode]
    _ran_and_was_removed(f)
    assert f["record"] is None
    assert f["proc_cgroup"] == f["caller_cgroup"]  # left where its caller is: no cgroup of its own
    assert any(m.endswith("is not delegated to us: running without cgroups") for m in f["log"])


@pytest.mark.parametrize("mode", ["no-bus", "dead-bus"])
def test_without_a_user_manager_limits_are_refused(facts: dict[str, Any], mode: str) -> None:
    """runc too: "rootless needs no limits + no cgrouppath when no permission is granted"."""
    refused = facts[mode]["refused"]
    assert refused["rc"] != 0 and refused["state_left"] == [] and refused["processes"] == []
    line = refused["stderr"]
    assert line.startswith("pyouki: linux.resources.memory: cannot be applied: rootless and "), line
    assert "is not delegated to this user" in line and "Delegate=yes" in line and len(line.splitlines()) == 1


def test_no_bus_socket_costs_no_connect(facts: dict[str, Any]) -> None:
    assert any(m.startswith("rootless: no systemd user manager socket") for m in facts["no-bus"]["log"])


def test_dead_bus_is_tried_then_left(facts: dict[str, Any]) -> None:
    msgs = [m for m in facts["dead-bus"]["log"] if m.startswith("rootless: not using the systemd user manager: ")]
    assert len(msgs) == 1
    assert "connection refused" in msgs[0]


def test_delegated_own_cgroup_gets_a_child(facts: dict[str, Any]) -> None:
    f = facts["delegated"]
    _ran_and_was_removed(f)
    own = f["caller_cgroup"]
    assert own.startswith(f"{USER_SERVICE}/app.slice/run-") and own.endswith(".scope")
    assert f["own_owner"] == TEST_UID
    assert f["record"] == {"driver": "cgroupfs-v2", "path": f"/sys/fs/cgroup{own}/{f['id']}",
                           "mountpoint": "/sys/fs/cgroup", "lenient": f"cgroup /sys/fs/cgroup{own}/{f['id']}"}
    assert f["proc_cgroup"] == f"{own}/{f['id']}"
    assert f["exec"] == {"rc": 0, "stderr": ""}
    assert f["exec_cgroup"] == f"{own}/{f['id']}"
    # the cgroup is real: pause freezes through it
    assert f["paused"] == "paused" and f["pause_rc"] == 0 and f["resume_rc"] == 0
    # only the caller is left in the scope: pyouki moved nobody else
    assert len(f["own_procs_after"]) == 1


def test_delegated_limits_without_controllers_fail_create(facts: dict[str, Any]) -> None:
    """nspawn's cgroup tree has no controllers: the limits cannot be written, so create fails
    naming the first (it used to warn and run without them, which the user could not see)."""
    refused = facts["delegated"]["refused"]
    assert refused["rc"] != 0 and refused["state_left"] == [] and refused["processes"] == []
    line = refused["stderr"]
    assert line.startswith("pyouki: linux.resources.memory: cannot be applied in cgroup "), line
    assert "(rootless)" in line and "cgroup.controllers" in line and len(line.splitlines()) == 1


# -- host: cgroup v1 hybrid -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rootless"])
def test_rootless_on_hybrid_host_runs_without_cgroups(runner: Runner, bundle: Bundle) -> None:
    """When the config asks for no cgroupsPath and no limits (devices rules are not limits)."""
    if detect_mode() == "unified":
        pytest.skip("this host is unified: the hybrid rule does not apply")
    if not runner.runtime.is_pyouki:
        pytest.skip("checks pyouki's state record and log")
    bundle.set_args("sleep", "600")
    bundle.linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}], "memory": {}}
    bundle.write()
    logf = runner.rundir / "log.json"  # the user must be able to write it
    cid = runner.new_id("hybrid")
    runner.cmd("--log", str(logf), "--log-format", "json", "--debug",
               "create", "--bundle", str(bundle.path), cid).ok()
    from pyouki.state import Container

    container = Container(str(runner.state_root), cid)
    container.load()
    assert container.record["cgroup"] is None
    msgs = [e["msg"] for e in read_json_log(logf)]
    assert any(m.startswith("rootless on a hybrid cgroup host: running without cgroups")
               or m.startswith("rootless on a v1 cgroup host: running without cgroups") for m in msgs), msgs
    runner.start(cid).ok()
    assert runner.status(cid) == "running"
    pid = int(runner.state(cid)["pid"])
    with open(f"/proc/{pid}/cgroup") as f:
        assert "/pyouki/" not in f.read()
    runner.kill(cid, "KILL").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert not (runner.state_root / cid).exists()


@pytest.mark.parametrize("mode", ["rootless"])
@pytest.mark.parametrize(("linux", "field"), [
    ({"resources": {"memory": {"limit": 64 * MiB}}}, "linux.resources.memory"),
    ({"resources": {"devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 42}}}, "linux.resources.pids"),
    ({"cgroupsPath": "/pyouki-rootless-asked"}, "linux.cgroupsPath"),
    ({"cgroupsPath": "asked-relative"}, "linux.cgroupsPath"),
])
def test_rootless_without_delegation_refuses_what_it_cannot_apply(runner: Runner, bundle: Bundle,
                                                                 linux: dict[str, Any], field: str) -> None:
    """A limit or cgroupsPath the container cannot get fails create (runc: "cannot set memory
    limit: container could not join or create cgroup"): the user must not believe it holds."""
    if detect_mode() == "unified":
        pytest.skip("this host is unified: see the nspawn tier for the undelegated case there")
    bundle.set_args("true")
    bundle.linux.update(linux)
    bundle.write()
    r = runner.create(runner.new_id("asked"), bundle)
    assert r.returncode != 0, r
    if runner.runtime.is_pyouki:
        assert_failed_cleanly(runner.runtime, r, field, "cannot be applied", "cgroup v2")
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []
