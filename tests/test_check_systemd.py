"""`pyouki check` against a real systemd (the nspawn tier, tests/systemd/): the user manager is
reached over pyouki's D-Bus client and its delegated controllers are read; the system manager
answers for --rootful.

This kernel keeps cpu, memory and pids on cgroup v1, so the user manager delegates none of them:
the check must say so, with the Delegate= drop-in as the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_systemd_driver import TEST_UID, boot_with_busybox

ENV = {"PYTHONPATH": "/src", "PYTHONDONTWRITEBYTECODE": "1"}
USER_SERVICE = f"/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service"


@pytest.fixture(scope="module")
def machine() -> Iterator[Any]:
    """One booted container for the module."""
    yield from boot_with_busybox()


def _check(machine: Any, user: bool, *args: str) -> tuple[int, dict[str, Any]]:
    res = machine.run(["python3", "-m", "pyouki.cli.main", "check", "--format", "json", *args], user=user, env=ENV,
                      timeout=120)
    doc = json.loads(res.stdout)
    return res.returncode, doc


def test_user_manager_and_its_delegation(machine: Any) -> None:
    rc, doc = _check(machine, True)
    c = {x["name"]: x for x in doc["checks"]}
    assert doc["uid"] == TEST_UID and doc["rootful"] is False
    manager = c["systemd user manager"]
    assert manager["status"] == "ok", manager
    assert manager["detail"].startswith("systemd ") and manager["detail"].endswith(f"cgroup {USER_SERVICE}")
    assert c["XDG_RUNTIME_DIR"]["status"] == "ok"  # set by the PAM login
    delegated = c["delegated controllers"]
    assert delegated["detail"].startswith(f"/sys/fs/cgroup{USER_SERVICE}: ")
    if delegated["status"] == "fail":
        assert "missing" in delegated["detail"]
        assert "Delegate=cpu cpuset io memory pids" in delegated["fix"]
        assert "/etc/systemd/system/user@.service.d/delegate.conf" in delegated["fix"]
        assert rc == 1
    assert doc["ready"] is (rc == 0)


def test_rootful_sees_the_system_manager(machine: Any) -> None:
    _, doc = _check(machine, False, "--rootful")
    c = {x["name"]: x for x in doc["checks"]}
    assert c["root"]["status"] == "ok"
    assert c["systemd system manager"]["status"] == "ok", c["systemd system manager"]
    assert c["systemd system manager"]["detail"].startswith("systemd ")
