"""Drive pyouki.dbus_native against the real systemd inside the nspawn container (no pytest here).

    python3 check_dbus.py rootful    # system manager, as root
    python3 check_dbus.py rootless   # user manager, as a logged-in user
    python3 check_dbus.py userns     # user manager from inside `unshare -Ur` (euid 0, host uid != 0)
    python3 check_dbus.py bus-stopped  # as the user: stop the user's dbus-daemon, use the fallback

Collects facts read back from systemd and the cgroup tree and prints them as one JSON line
for the pytest side (tests/test_dbus_systemd.py) to assert on. Exits non-zero with the error
on stderr if a step raises. Always kills its sleep and stops its scopes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from pyouki.dbus_native import messages
from pyouki.dbus_native.address import host_uid, system_endpoints, user_endpoints
from pyouki.dbus_native.connection import open_connection
from pyouki.dbus_native.systemd import SystemdManager
from pyouki.errors import PyoukiError

MiB = 1024 * 1024
TIMEOUT = 10.0
CGROUP_ROOT = "/sys/fs/cgroup"


def scope_facts(mgr: SystemdManager, name: str) -> dict[str, Any]:
    """What systemd says about the scope, and what its cgroup holds."""
    props = mgr.get_unit_properties(name, messages.SCOPE_INTERFACE)
    facts: dict[str, Any] = {k: props.get(k) for k in (
        "Delegate", "MemoryMax", "TasksMax", "CPUWeight", "CPUQuotaPerSecUSec", "Slice", "ControlGroup")}
    facts["ActiveState"] = mgr.get_unit_property(name, messages.UNIT_INTERFACE, "ActiveState")
    cgroup = CGROUP_ROOT + props["ControlGroup"]
    with open(os.path.join(cgroup, "cgroup.procs")) as f:
        facts["procs"] = [int(p) for p in f.read().split()]
    facts["cgroup_owner"] = os.stat(cgroup).st_uid
    facts["procs_owner"] = os.stat(os.path.join(cgroup, "cgroup.procs")).st_uid
    return facts


def scope_lifecycle(mgr: SystemdManager, name: str, slice: str) -> dict[str, Any]:
    """Start a delegated scope for a sleep, read it back, update it, stop it."""
    facts: dict[str, Any] = {}
    sleep = subprocess.Popen(["sleep", "300"])
    try:
        facts["pid"] = sleep.pid
        facts["name"] = name
        mgr.start_transient_scope(name, slice=slice, pids=[sleep.pid], timeout=TIMEOUT, properties={
            "MemoryMax": 64 * MiB, "TasksMax": 42, "CPUWeight": 50, "CPUQuotaPerSecUSec": 500_000})
        facts["started"] = scope_facts(mgr, name)
        # A delegated subtree is ours to manage: a child cgroup must be creatable in it.
        child = CGROUP_ROOT + facts["started"]["ControlGroup"] + "/pyouki-check"
        os.mkdir(child)
        os.rmdir(child)
        facts["mkdir_in_scope"] = True
        mgr.set_properties(name, {"MemoryMax": 128 * MiB, "TasksMax": 99})
        facts["updated"] = scope_facts(mgr, name)
        facts["stopped"] = mgr.stop_unit(name, timeout=TIMEOUT)
        facts["exists_after_stop"] = mgr.unit_exists(name)
        facts["sleep_status"] = sleep.wait(TIMEOUT)
        facts["stopped_again"] = mgr.stop_unit(name, timeout=TIMEOUT)
        mgr.reset_failed(name)
    finally:
        sleep.kill()
        sleep.wait()
        with contextlib.suppress(PyoukiError):
            mgr.stop_unit(name, timeout=TIMEOUT)
    return facts


def errors_seen(mgr: SystemdManager, name: str) -> dict[str, str]:
    """Error messages for bad requests, which must be one clear line each."""
    out: dict[str, str] = {}
    try:
        # A pid that does not exist: systemd refuses the unit.
        mgr.start_transient_scope(name, pids=[2**22 + 7], timeout=TIMEOUT)
        out["bad_pid"] = "no error"
    except PyoukiError as e:
        out["bad_pid"] = str(e)
    try:
        mgr.get_unit_property(name, messages.SCOPE_INTERFACE, "MemoryMax")
        out["missing_unit"] = "no error"
    except PyoukiError as e:
        out["missing_unit"] = str(e)
    return out


def main(mode: str) -> dict[str, Any]:
    """Run the checks for mode and return the facts."""
    user = mode != "rootful"
    facts: dict[str, Any] = {"mode": mode, "euid": os.geteuid(), "host_uid": host_uid()}
    started = time.monotonic()
    with SystemdManager.connect(user=user, timeout=TIMEOUT) as mgr:
        facts["connect_seconds"] = time.monotonic() - started
        facts["address"] = mgr.conn.endpoint.address
        facts["unique_name"] = mgr.conn.unique_name
        facts["version"] = mgr.manager_property("Version")
        slice = "user.slice" if user else "system.slice"
        tag = f"{mode}-{os.getpid()}"
        facts["bus"] = scope_lifecycle(mgr, f"pyouki-check-bus-{tag}.scope", slice)
        facts["errors"] = errors_seen(mgr, f"pyouki-check-err-{tag}.scope")
    # systemd's private socket: peer-to-peer, no Hello, no AddMatch; JobRemoved still arrives.
    private = [e for e in (user_endpoints() if user else system_endpoints()) if e.peer_to_peer]
    what = "the systemd user manager" if user else "the systemd system manager"
    with SystemdManager(open_connection(private, what, TIMEOUT), TIMEOUT) as mgr:
        facts["private_address"] = mgr.conn.endpoint.address
        facts["private_version"] = mgr.manager_property("Version")
        facts["private"] = scope_lifecycle(mgr, f"pyouki-check-p2p-{tag}.scope", slice)
    if mode == "userns":
        facts["naive_auth"] = naive_auth_error()
    return facts


def naive_auth_error() -> str:
    """The error when EXTERNAL auth sends the namespace euid (0) instead of the host uid."""
    from pyouki.dbus_native import connection

    mapped = connection.host_uid
    connection.host_uid = os.geteuid
    try:
        SystemdManager.connect(user=True, timeout=TIMEOUT).close()
        return "no error"
    except PyoukiError as e:
        return str(e)
    finally:
        connection.host_uid = mapped


def bus_stopped() -> dict[str, Any]:
    """Stop the user's dbus-daemon: connect falls back to the private socket, or fails clearly without it."""
    facts: dict[str, Any] = {}
    units = ["dbus.socket", "dbus.service"]
    subprocess.run(["systemctl", "--user", "stop", *units], check=True, timeout=TIMEOUT)
    try:
        facts["bus_socket_exists"] = os.path.exists(os.environ["XDG_RUNTIME_DIR"] + "/bus")
        with SystemdManager.connect(user=True, timeout=TIMEOUT) as mgr:
            facts["address"] = mgr.conn.endpoint.address
            facts["lifecycle"] = scope_lifecycle(mgr, f"pyouki-check-nobus-{os.getpid()}.scope", "user.slice")
        env = {"DBUS_SESSION_BUS_ADDRESS": os.environ["DBUS_SESSION_BUS_ADDRESS"]}
        try:
            SystemdManager.connect(user=True, timeout=TIMEOUT, env=env).close()
            facts["no_fallback_error"] = "no error"
        except PyoukiError as e:
            facts["no_fallback_error"] = str(e)
    finally:
        subprocess.run(["systemctl", "--user", "start", "dbus.socket"], check=True, timeout=TIMEOUT)
    return facts


if __name__ == "__main__":
    try:
        result = bus_stopped() if sys.argv[1] == "bus-stopped" else main(sys.argv[1])
    except PyoukiError as e:
        print(f"check_dbus: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))
