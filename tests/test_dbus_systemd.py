"""pyouki.dbus_native against a real systemd (nspawn tier) and against dead buses (host).

The nspawn tests boot a cached debootstrapped Debian once per module (tests/systemd/nspawn.py)
and run tests/systemd/check_dbus.py inside it with the repo at /src: rootful on the system
bus, rootless as a user logged in through PAM, from inside a user namespace, and with the
user's dbus-daemon stopped. The check script reports what systemd and the cgroup tree say;
the assertions are here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import load_by_path

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
TEST_UID = 1000


def _load_nspawn() -> Any:
    return load_by_path("pyouki_tests_nspawn", "tests/systemd/nspawn.py")


nspawn = _load_nspawn()


# -- dead and hung buses: on the host, no systemd needed ------------------------------------

CONNECT_SCRIPT = """
import sys
from pyouki.dbus_native.systemd import SystemdManager
from pyouki.errors import PyoukiError
try:
    SystemdManager.connect(user=True, timeout=float(sys.argv[1]))
except PyoukiError as e:
    print(e)
    sys.exit(3)
print("connected")
"""


def _connect_in_subprocess(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Connect to the user manager in a child with a clean environment; a hang fails the test."""
    env = dict(env, PYTHONPATH=str(REPO), PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    return subprocess.run([sys.executable, "-c", CONNECT_SCRIPT, str(timeout)], env=env, text=True,
                          capture_output=True, timeout=timeout * 10 + 20)


def test_dead_session_bus_socket_fails_with_clear_message(tmp_path: Path) -> None:
    dead = tmp_path / "bus"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()  # the socket file stays, nobody listens: connection refused
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir()
    res = _connect_in_subprocess({"DBUS_SESSION_BUS_ADDRESS": f"unix:path={dead}",
                                  "XDG_RUNTIME_DIR": str(runtime_dir)}, 2.0)
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == (
        f"failed to connect to the systemd user manager at unix:path={dead}: connection refused "
        f"(also tried unix:path={runtime_dir}/systemd/private: no such file or directory)")


def test_hung_session_bus_times_out_with_clear_message(tmp_path: Path) -> None:
    hung = tmp_path / "bus"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(hung))
    s.listen(8)  # the kernel completes connects; nothing ever reads or answers
    try:
        res = _connect_in_subprocess({"DBUS_SESSION_BUS_ADDRESS": f"unix:path={hung}"}, 1.0)
    finally:
        s.close()
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == (
        f"failed to connect to the systemd user manager at unix:path={hung}: no answer within 1 s")


def test_bus_that_hangs_up_fails_with_clear_message(tmp_path: Path) -> None:
    closing = tmp_path / "bus"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(closing))
    server.listen(8)

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(64)  # the AUTH line, then close as a dying daemon would
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        res = _connect_in_subprocess({"DBUS_SESSION_BUS_ADDRESS": f"unix:path={closing}"}, 5.0)
    finally:
        thread.join(10)
        server.close()
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == (
        f"failed to connect to the systemd user manager at unix:path={closing}: connection closed by peer")


def test_no_user_bus_address_at_all() -> None:
    res = _connect_in_subprocess({}, 1.0)
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == ("failed to connect to the systemd user manager: no bus address "
                                  "(DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are unset)")


# -- real systemd in nspawn ------------------------------------------------------------------

def _ensure_tools() -> None:
    """Install the tier's host packages if missing; skip only if that is impossible."""
    reason = nspawn.install_missing_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def machine() -> Iterator[Any]:
    """One booted container for the whole module, always powered off and cleaned up."""
    _ensure_tools()
    with nspawn.booted(REPO) as m:
        yield m


@pytest.fixture(scope="module")
def facts(machine: Any) -> dict[str, dict[str, Any]]:
    """What check_dbus.py reports per mode, each run once, in order (bus-stopped last)."""
    env = {"PYTHONPATH": "/src", "PYTHONDONTWRITEBYTECODE": "1"}
    runs = {
        "rootful": (["python3", "tests/systemd/check_dbus.py", "rootful"], False),
        "rootless": (["python3", "tests/systemd/check_dbus.py", "rootless"], True),
        "userns": (["unshare", "-Ur", "python3", "tests/systemd/check_dbus.py", "userns"], True),
        "bus-stopped": (["python3", "tests/systemd/check_dbus.py", "bus-stopped"], True),
    }
    out = {}
    for mode, (argv, user) in runs.items():
        res = machine.run(argv, user=user, env=env, timeout=120).check()
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


LIFECYCLES = [("rootful", "bus"), ("rootful", "private"), ("rootless", "bus"), ("rootless", "private"),
              ("userns", "bus"), ("userns", "private")]


@pytest.mark.parametrize(("mode", "transport"), LIFECYCLES)
def test_transient_scope_has_requested_properties(facts: dict[str, Any], mode: str, transport: str) -> None:
    started = facts[mode][transport]["started"]
    assert started["ActiveState"] == "active"
    assert started["Delegate"] is True
    assert started["MemoryMax"] == 64 * MiB
    assert started["TasksMax"] == 42
    assert started["CPUWeight"] == 50
    assert started["CPUQuotaPerSecUSec"] == 500_000
    assert started["Slice"] == ("system.slice" if mode == "rootful" else "user.slice")


@pytest.mark.parametrize(("mode", "transport"), LIFECYCLES)
def test_pid_is_in_the_scope_cgroup(facts: dict[str, Any], mode: str, transport: str) -> None:
    run = facts[mode][transport]
    assert run["started"]["procs"] == [run["pid"]]
    assert run["started"]["ControlGroup"].endswith(f"/{run['started']['Slice']}/{run['name']}")
    assert run["mkdir_in_scope"] is True


@pytest.mark.parametrize(("mode", "transport"), LIFECYCLES)
def test_set_unit_properties_updates_limits(facts: dict[str, Any], mode: str, transport: str) -> None:
    updated = facts[mode][transport]["updated"]
    assert updated["MemoryMax"] == 128 * MiB
    assert updated["TasksMax"] == 99
    assert updated["CPUWeight"] == 50
    assert updated["Delegate"] is True


@pytest.mark.parametrize(("mode", "transport"), LIFECYCLES)
def test_stop_unit_removes_scope_and_kills_pid(facts: dict[str, Any], mode: str, transport: str) -> None:
    run = facts[mode][transport]
    assert run["stopped"] is True
    assert run["exists_after_stop"] is False
    assert run["sleep_status"] == -15  # SIGTERM from systemd's stop
    assert run["stopped_again"] is False  # a second stop finds no unit: not an error


def test_rootless_scope_is_delegated_to_the_user(facts: dict[str, Any]) -> None:
    started = facts["rootless"]["bus"]["started"]
    assert facts["rootless"]["address"] == f"unix:path=/run/user/{TEST_UID}/bus"
    assert started["ControlGroup"].startswith(f"/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service/")
    assert started["cgroup_owner"] == TEST_UID
    assert started["procs_owner"] == TEST_UID


def test_rootful_uses_the_system_bus(facts: dict[str, Any]) -> None:
    assert facts["rootful"]["address"] == "unix:path=/run/dbus/system_bus_socket"
    assert facts["rootful"]["unique_name"].startswith(":1.")
    assert facts["rootful"]["private_address"] == "unix:path=/run/systemd/private"
    assert facts["rootful"]["bus"]["started"]["cgroup_owner"] == 0


def test_user_namespace_authenticates_with_host_uid(facts: dict[str, Any]) -> None:
    userns = facts["userns"]
    assert userns["euid"] == 0
    assert userns["host_uid"] == TEST_UID
    assert userns["version"] == userns["private_version"] != ""
    # Inside the namespace the user-owned cgroup shows as owned by the mapped root.
    assert userns["bus"]["started"]["cgroup_owner"] == 0
    # Sending the namespace's euid instead is refused by both the bus and the private socket.
    assert userns["naive_auth"].startswith(
        f"failed to connect to the systemd user manager at unix:path=/run/user/{TEST_UID}/bus: "
        "authentication as uid 0 rejected")


def test_systemd_errors_are_one_clear_line(facts: dict[str, Any]) -> None:
    for mode in ("rootful", "rootless"):
        errors = facts[mode]["errors"]
        assert errors["bad_pid"].startswith("failed to start transient unit pyouki-check-err-")
        assert "UnixProcessIdUnknown" in errors["bad_pid"]
        assert errors["missing_unit"].startswith("systemd unit pyouki-check-err-")
        assert errors["missing_unit"].endswith(" does not exist")
        assert all("\n" not in e for e in errors.values())


def test_stopped_user_bus_falls_back_to_private_socket(facts: dict[str, Any]) -> None:
    stopped = facts["bus-stopped"]
    assert stopped["address"] == f"unix:path=/run/user/{TEST_UID}/systemd/private"
    assert stopped["lifecycle"]["started"]["procs"] == [stopped["lifecycle"]["pid"]]
    assert stopped["lifecycle"]["exists_after_stop"] is False
    assert stopped["no_fallback_error"] == (
        f"failed to connect to the systemd user manager at unix:path=/run/user/{TEST_UID}/bus: "
        "connection refused")


def test_container_can_run_pyouki(machine: Any) -> None:
    """The cached rootfs carries pyouki's dependencies, so later tiers can run pyouki itself inside."""
    code = "import jeepney, click, prctl, platformdirs, pyseccomp; print(pyseccomp.Arch.NATIVE is not None)"
    res = machine.run(["python3", "-c", code], env={"PYTHONDONTWRITEBYTECODE": "1"}).check()
    assert res.stdout.strip() == "True"
