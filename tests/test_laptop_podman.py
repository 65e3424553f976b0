"""The laptop tier: podman with pyouki and runc on a Debian 12 VM with systemd, cgroup v2, AppArmor.

tests/laptop/laptop.py builds the image once (the VM tier's plus podman and pyouki installed by
scripts/setup-machine) and boots it once per session under TCG; tests/laptop/guest.py runs the
podman scenarios inside, rootless (the user manager, podman's systemd cgroup manager) and rootful
(the system manager, podman's AppArmor profile), with runc and with pyouki, all four at once. The
guest reports; the assertions are here: pyouki passes exactly where runc does, plus the bugs this
tier found. Part of the default run (CI); PYOUKI_NO_VM=1 skips it (tests/laptop/README.md has its
durations).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from harness import load_by_path

REPO = Path(__file__).resolve().parents[1]
MODES = ("rootless", "rootful")
SCENARIOS = ("run", "apparmor", "sleeper", "exec", "exec_it", "exec_detach", "exec_user", "exec_apparmor", "top",
             "ps", "stats", "update", "pause", "stop", "kill_paused", "device", "mknod", "ports", "userns_auto",
             "pod")
# scenarios of one mode only: checkpoint needs root (keep_id, rootless only, has its own test)
ROOTFUL_ONLY = ("checkpoint", "checkpoint_export")


laptop = load_by_path("pyouki_tests_laptop", "tests/laptop/laptop.py")


@pytest.fixture(scope="session")
def guest() -> dict[str, Any]:
    """One build (cached) and one boot for the whole session."""
    if os.geteuid() != 0:
        pytest.skip("the laptop tier needs root (chroot, mkfs, qemu)")
    if os.environ.get("PYOUKI_NO_VM"):
        pytest.skip("PYOUKI_NO_VM is set")
    vm = laptop._vm()
    missing = vm.missing_tools() + vm._nspawn().missing_tools()
    if missing:
        pytest.skip(f"missing host tools for the VM tiers: {', '.join(missing)}")
    return dict(laptop.run_guest(log=False)["results"])


def _mode(guest: dict[str, Any], mode: str) -> dict[str, Any]:
    facts = guest[mode]
    assert "error" not in facts, facts["error"]
    return dict(facts)


def _scenario(guest: dict[str, Any], mode: str, runtime: str, name: str) -> dict[str, Any]:
    facts = _mode(guest, mode)[runtime]["scenarios"][name]
    assert "error" not in facts, facts["error"]
    return dict(facts)


def test_laptop_guest_is_a_laptop(guest: dict[str, Any]) -> None:
    """Stock kernel with AppArmor, cgroup v2 with delegated controllers, podman's defaults."""
    env = guest["env"]
    assert env["apparmor"] == "Y"
    assert {"cpu", "memory", "pids"} <= set(env["user_subtree_control"].split())
    assert env["podman"].startswith("podman version 4.")
    assert env["pyouki"] == "/opt/pyouki/venv/bin/pyouki"
    # the second run of scripts/setup-machine, offline in the guest: nothing left to install
    assert env["setup_rc"] == "0", env["setup_log"]
    assert "installing" not in env["setup_log"]
    rootless, rootful = _mode(guest, "rootless"), _mode(guest, "rootful")
    assert rootless["uid"] == 1000 and rootful["uid"] == 0
    assert rootless["info"]["out"].split()[:2] == ["systemd", "v2"]
    assert rootful["info"]["out"].split()[:2] == ["systemd", "v2"]
    assert rootful["info"]["out"].split()[-1] == "true"  # AppArmorEnabled
    for mode in (rootless, rootful):
        assert mode["import"]["rc"] == 0, mode["import"]


@pytest.mark.parametrize(("mode", "name"), [(m, n) for n in SCENARIOS for m in MODES] +
                         [("rootful", "checkpoint"), ("rootful", "checkpoint_export")])
def test_laptop_pyouki_passes_where_runc_passes(guest: dict[str, Any], mode: str, name: str) -> None:
    runc = _scenario(guest, mode, "runc", name)
    pyouki = _scenario(guest, mode, "pyouki", name)
    # the whole story on failure (pytest would cut a dict's repr short)
    assert pyouki["ok"] == runc["ok"], json.dumps({"pyouki": pyouki, "runc": runc}, indent=1)


def test_laptop_rootless_keep_id(guest: dict[str, Any]) -> None:
    for runtime in ("runc", "pyouki"):
        assert _scenario(guest, "rootless", runtime, "keep_id")["ok"], runtime


@pytest.mark.parametrize("mode", MODES)
def test_laptop_exec_every_way(guest: dict[str, Any], mode: str) -> None:
    """exec failed in every mode (rootless: UnitExists from the systemd driver; rootful: AppArmor)."""
    for name in ("exec", "exec_it", "exec_detach", "exec_user"):
        facts = _scenario(guest, mode, "pyouki", name)
        assert facts["ok"], facts


def test_laptop_rootful_apparmor_label_matches_runc(guest: dict[str, Any]) -> None:
    """Containers ran unconfined; podman's profile must apply to init and to exec'd processes."""
    runc = _scenario(guest, "rootful", "runc", "apparmor")["label"]
    assert runc.startswith("containers-default-") and runc.endswith(" (enforce)")
    assert _scenario(guest, "rootful", "pyouki", "apparmor")["label"] == runc
    for runtime in ("runc", "pyouki"):
        e = _scenario(guest, "rootful", runtime, "exec_apparmor")
        assert e["label"] == runc, runtime
        assert e["init_label"] == runc, runtime


def test_laptop_rootless_apparmor_label_matches_runc(guest: dict[str, Any]) -> None:
    runc = _scenario(guest, "rootless", "runc", "apparmor")["label"]
    assert _scenario(guest, "rootless", "pyouki", "apparmor")["label"] == runc


def test_laptop_rootful_mknod_of_any_node(guest: dict[str, Any]) -> None:
    """--cap-add MKNOD: runc's default rules let mknod make any node (c *:* m, b *:* m)."""
    for runtime in ("runc", "pyouki"):
        facts = _scenario(guest, "rootful", runtime, "mknod")
        assert facts["ok"], facts
        # opening a block device stays denied: only mknod is allowed for any node
        assert facts["cmd"]["out"].splitlines()[-1] == "denied", runtime


@pytest.mark.parametrize(("runtime", "name"), [
    ("runc", "checkpoint"), ("runc", "checkpoint_export"),
    ("pyouki", "checkpoint"), ("pyouki", "checkpoint_export")])
def test_laptop_rootful_checkpoint_restore(guest: dict[str, Any], runtime: str, name: str) -> None:
    """criu can dump on this kernel: podman checkpoint/restore (in place, and exported then
    imported under a new name) goes on counting where it stopped."""
    facts = _scenario(guest, "rootful", runtime, name)
    assert facts["ok"], json.dumps({runtime: facts}, indent=1)
