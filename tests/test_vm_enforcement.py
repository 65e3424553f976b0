"""Limits enforced by a real kernel: pyouki in a qemu VM with cgroup v2 controllers (tests/vm/).

The host's kernel keeps memory/pids/cpu on cgroup v1, so this tier boots Debian's kernel with
systemd under TCG, once per session (tests/vm/vm.py; the image is built once and cached), and
runs tests/vm/guest.py inside: pyouki rootless under the user manager with --systemd-cgroup,
rootful with --systemd-cgroup on the system manager, and rootful cgroupfs v2. The guest
reports what the kernel did; the assertions are here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import load_by_path

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
TEST_UID = 1000
PARTS = ("rootless-systemd", "rootful-systemd", "rootful-cgroupfs")


def _load_vm() -> Any:
    return load_by_path("pyouki_tests_vm", "tests/vm/vm.py")


vm = _load_vm()


def _ensure_tools() -> None:
    """Install the tier's host packages if missing; skip only if that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("the VM tier needs root (debootstrap, chroot, mkfs)")
    if os.environ.get("PYOUKI_NO_VM"):
        pytest.skip("PYOUKI_NO_VM is set")
    missing = vm.missing_tools() + vm._nspawn().missing_tools()
    if not missing:
        return
    packages = vm.apt_packages() + vm._nspawn()._apt_packages()
    res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or vm.missing_tools():
        pytest.skip(f"cannot install the VM tier's tools: {res.stderr.strip()[-300:]}")


@pytest.fixture(scope="session")
def guest() -> dict[str, Any]:
    """One build (cached) and one boot for the whole session."""
    _ensure_tools()
    out = vm.run_guest(log=False)
    return dict(out["results"])


def _part(guest: dict[str, Any], part: str) -> dict[str, Any]:
    facts = guest[part]
    assert "error" not in facts, facts["error"]
    return dict(facts)


def test_guest_has_cgroup_v2_controllers_delegated_to_the_user(guest: dict[str, Any]) -> None:
    env = guest["env"]
    assert env["systemd"] == "systemd"
    assert {"cpu", "memory", "pids"} <= set(env["root_controllers"].split())
    assert {"cpu", "memory", "pids"} <= set(env["user_controllers"].split())
    assert guest["ok"] is True


def test_check_passes_for_the_ready_user(guest: dict[str, Any]) -> None:
    """`pyouki check` (issue 11): ready for the logged-in user, with cpu, memory and pids delegated."""
    check = _part(guest, "rootless-systemd")["check"]
    assert check["stderr"] == "" and check["uid"] == TEST_UID, check
    assert check["rc"] == 0 and check["ready"] is True and check["failed"] == [], check
    for name in ("systemd user manager", "delegated controllers", "cgroup v2 controllers", "subordinate uids",
                 "newuidmap", "user namespaces", "XDG_RUNTIME_DIR"):
        assert check["statuses"][name] == "ok", (name, check)


@pytest.mark.parametrize("part", PARTS)
def test_limits_are_in_the_container_cgroup(guest: dict[str, Any], part: str) -> None:
    f = _part(guest, part)["limits"]
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["start_rc"] == 0
    assert f["procs"] == str(f["pid"])
    assert f["files"]["memory.max"] == str(32 * MiB)
    assert f["files"]["memory.swap.max"] == "0"  # swap == limit: no swap at all
    assert f["files"]["pids.max"] == "20"
    assert f["files"]["cpu.max"] == "20000 100000"
    assert f["files"]["cpu.weight"] == "20"  # cpu.shares 512


def test_rootless_systemd_container_is_in_a_delegated_user_scope(guest: dict[str, Any]) -> None:
    f = _part(guest, "rootless-systemd")
    assert f["uid"] == TEST_UID
    limits = f["limits"]
    assert limits["driver"] == "systemd"
    assert limits["unit"].startswith("pyouki-") and limits["unit"].endswith(".scope")
    assert limits["cgroup"] == (f"/sys/fs/cgroup/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service/"
                                f"user.slice/{limits['unit']}")


def test_rootful_drivers(guest: dict[str, Any]) -> None:
    systemd = _part(guest, "rootful-systemd")["limits"]
    assert systemd["driver"] == "systemd"
    assert systemd["cgroup"] == f"/sys/fs/cgroup/system.slice/{systemd['unit']}"
    cgroupfs = _part(guest, "rootful-cgroupfs")["limits"]
    assert cgroupfs["driver"] == "cgroupfs-v2"
    assert cgroupfs["cgroup"].startswith("/sys/fs/cgroup/pyouki/")


@pytest.mark.parametrize("part", PARTS)
def test_update_changes_limits_live(guest: dict[str, Any], part: str) -> None:
    f = _part(guest, part)["limits"]
    assert f["updated"]["memory.max"] == str(48 * MiB)
    assert f["updated"]["memory.swap.max"] == "0"
    assert f["updated"]["pids.max"] == "30"
    assert f["updated"]["cpu.max"] == "50000 100000"  # new quota, period kept
    assert f["updated"]["cpu.weight"] == "20"  # not part of the update


@pytest.mark.parametrize("part", ["rootless-systemd", "rootful-systemd"])
def test_systemd_unit_holds_the_limits(guest: dict[str, Any], part: str) -> None:
    """--systemd-cgroup: the limits are unit properties of the delegated scope, so systemd keeps
    them, and update changes them there (the nspawn tier has no controllers: limits are refused)."""
    f = _part(guest, part)["limits"]
    created, updated = f["unit_created"], f["unit_updated"]
    assert created["Delegate"] is True and created["ActiveState"] == "active"
    assert created["MemoryMax"] == 32 * MiB
    assert created["TasksMax"] == 20
    assert created["CPUWeight"] == 20  # cpu.shares 512 with runc's conversion
    assert created["CPUQuotaPerSecUSec"] == 200_000  # quota 20000 per 100000 period
    assert updated["Delegate"] is True
    assert updated["MemoryMax"] == 48 * MiB
    assert updated["TasksMax"] == 30
    assert updated["CPUWeight"] == 20  # not part of the update
    assert updated["CPUQuotaPerSecUSec"] == 500_000
    assert updated["procs"] == [f["pid"]]


@pytest.mark.parametrize("part", PARTS)
def test_memory_hog_is_oom_killed(guest: dict[str, Any], part: str) -> None:
    f = _part(guest, part)["memory_hog"]
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["hog_status"] == "137"  # 128 + SIGKILL
    assert f["memory.events"]["oom_kill"] >= 1
    assert f["memory.max"] == str(32 * MiB)


@pytest.mark.parametrize("part", PARTS)
def test_fork_bomb_stops_at_the_pids_limit(guest: dict[str, Any], part: str) -> None:
    f = _part(guest, part)["fork_bomb"]
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["done"] == "done"
    assert f["pids.max"] == "20"
    assert int(f["pids.current"]) <= 20
    assert f["pids.events"]["max"] >= 1  # the kernel refused at least one fork
    assert f["fork_errors"] >= 1


@pytest.mark.parametrize("part", PARTS)
def test_delete_removes_cgroup_and_unit(guest: dict[str, Any], part: str) -> None:
    for case in ("limits", "memory_hog", "fork_bomb"):
        f = _part(guest, part)[case]
        assert f["delete"] == {"rc": 0, "stderr": ""}, case
        assert f["cgroup_left"] is False, case
        if part.endswith("-systemd"):
            assert f["unit_left"] is False, case


# -- AppArmor (Debian's kernel enables it): process.apparmorProfile applied at create and exec ----


def _apparmor(guest: dict[str, Any], case: str) -> dict[str, Any]:
    facts = _part(guest, "rootful-apparmor")[case]
    assert "error" not in facts, facts["error"]
    return dict(facts)


def test_vm_apparmor_profile_loads(guest: dict[str, Any]) -> None:
    f = _part(guest, "rootful-apparmor")
    assert f["enabled"] == "Y"
    assert f["load"] == {"rc": 0, "stderr": ""}
    assert "pyouki-vmtest (enforce)" in f["loaded"].splitlines()


def test_vm_apparmor_container_runs_under_its_profile(guest: dict[str, Any]) -> None:
    """Was ignored by create (the container ran unconfined); the transition happens at execve."""
    f = _apparmor(guest, "confined")
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["attr_created"] == "unconfined"  # the runtime's own code is never confined
    assert f["start_rc"] == 0
    assert f["attr_current"] == "pyouki-vmtest (enforce)"
    # root, but the profile denies it
    assert f["init_secret_rc"] == "1" and "Permission denied" in f["init_secret_err"]
    assert f["delete_rc"] == 0


def test_vm_apparmor_exec_gets_the_container_profile(guest: dict[str, Any]) -> None:
    """exec was refused; like runc's, it inherits the container's profile unless --apparmor says.

    The exec'd process runs as uid 1000: the profile is requested after the switch of user.
    """
    f = _apparmor(guest, "confined")
    assert f["exec"]["rc"] == 1
    assert f["exec"]["stdout"] == "pyouki-vmtest (enforce)"
    assert "Permission denied" in f["exec"]["stderr"]  # the secret is 0644: only the profile denies it
    assert f["exec_unconfined"] == {"rc": 0, "stdout": "unconfined\nsecret", "stderr": ""}


def test_vm_apparmor_unconfined_profile(guest: dict[str, Any]) -> None:
    f = _apparmor(guest, "unconfined")
    assert f["create"] == {"rc": 0, "stderr": ""}
    assert f["start_rc"] == 0
    assert f["attr_current"] == "unconfined"
    assert f["init_secret_rc"] == "0"
    assert f["exec_profile"]["rc"] == 1
    assert f["exec_profile"]["stdout"] == "pyouki-vmtest (enforce)"
    assert f["delete_rc"] == 0


def test_vm_apparmor_failures_fail_create_cleanly(guest: dict[str, Any]) -> None:
    e = _apparmor(guest, "errors")
    missing = e["not_loaded"]
    assert missing["create"]["rc"] != 0
    assert missing["create"]["stderr"].startswith(
        "pyouki: process.apparmorProfile: failed to apply profile 'pyouki-no-such-profile': ")
    assert "no such file or directory" in missing["create"]["stderr"]
    assert missing["state_left"] == []
    # no procfs in the container and the attribute planted as a plain file by the image: the
    # request must not be written there (the process would run unconfined)
    planted = e["planted_attr"]
    assert planted["create"]["rc"] != 0
    assert "process.apparmorProfile" in planted["create"]["stderr"]
    assert "is not on procfs" in planted["create"]["stderr"]
    assert planted["planted_file"] == ""
    assert planted["state_left"] == []


# -- checkpoint/restore with criu (rootful cgroupfs; criu cannot dump on the host's kernel) -------


def _criu(guest: dict[str, Any], case: str) -> dict[str, Any]:
    facts = _part(guest, "rootful-criu")[case]
    assert "error" not in facts, facts["error"]
    return dict(facts)


def _ok(result: dict[str, Any]) -> None:
    assert result == {"rc": 0, "stderr": ""}


def test_vm_criu_checkpoint_stops_and_restore_continues(guest: dict[str, Any]) -> None:
    """The default checkpoint: criu ends the container and pyouki deletes it (as runc); restore
    under the same id brings back the same process (pid 1 inside, the count it had in memory)
    in the same cgroup, and delete removes it all."""
    f = _criu(guest, "stopped")
    _ok(f["create"])
    _ok(f["start"])
    _ok(f["checkpoint"])
    assert f["dump_log_error"] == []
    assert "descriptors.json" in f["images"] and "inventory.img" in f["images"]
    assert f["after_checkpoint"]["state_rc"] != 0  # deleted, as runc does
    assert f["init_left"] is False
    count = f["at_checkpoint"][1]
    assert count > 10
    assert f["stopped_count"] == f["at_checkpoint"]  # nothing ran while checkpointed
    _ok(f["restore"])
    assert f["restore_log_error"] == []
    # the count goes on from the one in the image (a new shell would start again at 1): every
    # count the shell wrote, before and after, is one sequence
    assert f["first_after_restore"][1] > count
    assert f["later"][1] > count + 3
    counts = f["counts"]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) > count + 3
    before, after = f["running"], f["restored"]
    assert after["status"] == "running"
    assert after["nspid"][-1] == before["nspid"][-1] == "1"  # the same init, in its own pid namespace
    assert f["first_after_restore"][0] == f["at_checkpoint"][0] == 1  # what the process itself says ($$)
    assert after["cgroup"] == before["cgroup"]
    assert after["pid"] != before["pid"]  # a new host pid, recorded in the new container record
    _ok(f["delete"])
    assert f["cgroup_left"] is False


def test_vm_criu_leave_running(guest: dict[str, Any]) -> None:
    """--leave-running: the container goes on counting; its image, restored once the original
    is deleted, takes up the count where the dump was."""
    f = _criu(guest, "leave_running")
    _ok(f["checkpoint"])
    assert f["dump_log_error"] == []
    assert f["after_checkpoint"]["status"] == "running"
    assert f["after_checkpoint"]["pid"] == f["running"]["pid"]
    assert f["still_counting"][1] > f["at_checkpoint"]
    _ok(f["delete_original"])
    _ok(f["restore"])
    assert f["restore_log_error"] == []
    # what the original wrote (1..N), then the restored shell: from the dumped count on, which
    # is neither 1 (a new shell) nor the original's last
    counts = f["counts"]
    n = next(i for i in range(1, len(counts)) if counts[i] != counts[i - 1] + 1)  # where the restore took up
    assert n >= f["counts_at_delete"]  # the original may count a little more until delete kills it
    assert counts[:n] == list(range(1, n + 1))
    first = counts[n]
    assert f["before"][1] < first <= f["at_checkpoint"] + 1
    assert first < f["at_delete"][1]
    assert counts[n:] == list(range(first, first + len(counts) - n))
    assert f["restored"]["status"] == "running"
    assert f["restored"]["nspid"][-1] == "1"
    assert f["restored"]["cgroup"] == f["running"]["cgroup"]
    _ok(f["delete"])


def test_vm_criu_pre_dump_then_dump_with_parent(guest: dict[str, Any]) -> None:
    """--pre-dump leaves the container running; a dump with --parent-path links to it and
    restores."""
    f = _criu(guest, "pre_dump")
    _ok(f["pre_dump"])
    assert f["pre_dump_log_error"] == []
    assert f["after_pre_dump"]["status"] == "running"
    _ok(f["checkpoint"])
    assert f["parent_link"] == "../parent"
    _ok(f["restore"])
    assert f["after_restore"][1] > f["at_checkpoint"]
    assert f["restored"]["status"] == "running"
    assert f["restored"]["nspid"][-1] == "1"
    _ok(f["delete"])


def test_vm_criu_file_binds_of_one_tmpfs_directory(guest: dict[str, Any]) -> None:
    """podman's /etc/hostname, /etc/hosts, /etc/resolv.conf and /run/.containerenv, binds of
    files of one tmpfs directory: each is an external mount for criu under its own path (a key
    "//etc/hostname" matched none, and criu failed: "./etc/hostname doesn't have a proper root
    mount"); the image restores with the same files bound again. The image's /etc/resolv.conf
    is a symlink, followed inside the rootfs for criu's key."""
    f = _criu(guest, "file_binds")
    _ok(f["create"])
    _ok(f["checkpoint"])
    assert f["dump_log_error"] == []
    # the image's /etc/resolv.conf is a symlink to /run/resolv.real: the bind is there, and so
    # is criu's key (the configured destination matched no mount, as runc's SecureJoin knows)
    for dest in ("/etc/hostname", "/etc/hosts", "/run/resolv.real", "/run/.containerenv"):
        assert f"Found {dest} mapping for .{dest} mountpoint" in f["mappings"]
    _ok(f["delete_original"])
    _ok(f["restore"])
    assert f["restore_log_error"] == []
    assert f["restored"]["status"] == "running"
    assert f["restored"]["nspid"][-1] == "1"
    assert f["restored_files"] == {"/etc/hostname": "hostname", "/etc/hosts": "hosts",
                                   "/etc/resolv.conf": "resolv.conf", "/run/.containerenv": ".containerenv"}
    _ok(f["delete"])


def test_vm_criu_restore_into_a_fresh_rootfs(guest: dict[str, Any]) -> None:
    """`podman container restore --import --name NEW`: the image restored under a new id into a
    fresh rootfs that lacks the mountpoints made at create. restore makes them first, as runc's
    makeCriuRestoreMountpoints; without that criu stopped at "Can't stat mountpoint
    .../run/.containerenv" (the laptop tier's checkpoint_export row)."""
    f = _criu(guest, "file_binds").get("imported")
    assert f is not None, "the in-place restore failed first (test_vm_criu_file_binds_of_one_tmpfs_directory)"
    assert f["fresh_has_run"] is False
    _ok(f["restore"])
    assert f["restore_log_error"] == []
    assert f["restored"]["status"] == "running"
    assert f["restored_files"] == {"/etc/hostname": "hostname", "/etc/hosts": "hosts",
                                   "/etc/resolv.conf": "resolv.conf", "/run/.containerenv": ".containerenv"}
    assert f["counting_on"] is True
    _ok(f["delete"])


def test_vm_criu_restore_in_the_foreground(guest: dict[str, Any]) -> None:
    """restore without -d: the restored shell writes to restore's stdout (its old stdout pipe,
    named in descriptors.json, replaced by criu), --pid-file names it, restore exits with its
    status (SIGKILL: 137) and deletes it, as `run` does."""
    f = _criu(guest, "foreground")
    _ok(f["checkpoint"])
    assert f["stdout_line"] == f"count {f['at_checkpoint'] + 1}"
    assert f["restored"]["status"] == "running"
    assert f["pid_file"] == str(f["restored"]["pid"])
    _ok(f["kill"])
    assert f["restore_rc"] == 137
    assert f["restore_stderr"] == ""
    assert f["after_exit"]["state_rc"] != 0
    # prestart and createRuntime: at create, then in the restore (criu's setup-namespaces, as
    # runc) with the restored init's pid
    phases = [line.rsplit(" ", 1) for line in f["hooks"]]
    assert [p for _, p in phases] == ["prestart", "createRuntime"] * 2
    states = [json.loads(s) for s, _ in phases]
    assert states[2]["pid"] == states[3]["pid"] == f["restored"]["pid"] != states[0]["pid"]
    assert all(s["status"] == "creating" and s["id"] == states[0]["id"] for s in states)
    assert states[2]["bundle"] == states[0]["bundle"]
