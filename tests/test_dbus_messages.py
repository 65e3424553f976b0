"""pyouki.dbus_native without a bus: message bytes, property typing, OCI resource translation, addresses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jeepney import HeaderFields, Message, MessageType

from pyouki.dbus_native import messages
from pyouki.dbus_native.address import (
    Endpoint,
    map_to_parent_uid,
    parse_address,
    system_endpoints,
    user_endpoints,
)
from pyouki.dbus_native.properties import (
    INFINITY,
    bitmask_to_cpu_list,
    cpu_list_to_bitmask,
    parse_cpu_list,
    typed_properties,
)
from pyouki.dbus_native.resources import (
    blkio_weight_to_io_weight,
    cpu_quota_per_sec,
    cpu_shares_to_weight,
    resources_to_properties,
    unsupported_fields,
)
from pyouki.errors import ConfigError, PyoukiError

REPO = Path(__file__).resolve().parents[1]


def roundtrip(msg: Message) -> Message:
    """Serialize with jeepney and parse back: what the bus would receive."""
    return Message.from_buffer(msg.serialise(serial=7))


def fields(msg: Message) -> dict[str, Any]:
    f = msg.header.fields
    return {"path": f[HeaderFields.path], "interface": f.get(HeaderFields.interface),
            "member": f[HeaderFields.member], "destination": f.get(HeaderFields.destination),
            "signature": f.get(HeaderFields.signature)}


# -- messages --------------------------------------------------------------------------------

def test_start_transient_unit_message() -> None:
    msg = roundtrip(messages.start_transient_unit(
        "pyouki-abc.scope",
        {"Description": "c", "Slice": "user.slice", "Delegate": True, "PIDs": [123],
         "MemoryMax": 1 << 20, "AllowedCPUs": "0-3,9"},
        mode="fail"))
    assert msg.header.message_type == MessageType.method_call
    assert fields(msg) == {"path": "/org/freedesktop/systemd1",
                           "interface": "org.freedesktop.systemd1.Manager", "member": "StartTransientUnit",
                           "destination": "org.freedesktop.systemd1",
                           "signature": "ssa(sv)a(sa(sv))"}
    assert msg.body == ("pyouki-abc.scope", "fail", [
        ("Description", ("s", "c")), ("Slice", ("s", "user.slice")), ("Delegate", ("b", True)),
        ("PIDs", ("au", [123])), ("MemoryMax", ("t", 1 << 20)), ("AllowedCPUs", ("ay", b"\x0f\x02")),
    ], [])


def test_start_transient_unit_with_aux_units() -> None:
    msg = roundtrip(messages.start_transient_unit("a.scope", {"PIDs": [1]}, "replace",
                                                  aux=[("b.slice", {"Description": "aux"})]))
    assert msg.body[3] == [("b.slice", [("Description", ("s", "aux"))])]


def test_stop_reset_get_unit_messages() -> None:
    stop = roundtrip(messages.stop_unit("x.scope"))
    assert (fields(stop)["member"], fields(stop)["signature"]) == ("StopUnit", "ss")
    assert stop.body == ("x.scope", "replace")
    reset = roundtrip(messages.reset_failed_unit("x.scope"))
    assert (fields(reset)["member"], fields(reset)["signature"]) == ("ResetFailedUnit", "s")
    assert reset.body == ("x.scope",)
    get = roundtrip(messages.get_unit("x.scope"))
    assert (fields(get)["member"], get.body) == ("GetUnit", ("x.scope",))
    sub = roundtrip(messages.subscribe())
    assert (fields(sub)["member"], fields(sub)["signature"], sub.body) == ("Subscribe", None, ())


def test_attach_processes_to_unit_message() -> None:
    msg = roundtrip(messages.attach_processes_to_unit("x.scope", "", [42, 43]))
    assert (fields(msg)["member"], fields(msg)["signature"]) == ("AttachProcessesToUnit", "ssau")
    assert msg.body == ("x.scope", "", [42, 43])


def test_set_unit_properties_message() -> None:
    msg = roundtrip(messages.set_unit_properties("x.scope", {"MemoryMax": -1, "TasksMax": 10}, runtime=True))
    assert fields(msg)["signature"] == "sba(sv)"
    assert msg.body == ("x.scope", True, [("MemoryMax", ("t", INFINITY)), ("TasksMax", ("t", 10))])


def test_properties_get_and_get_all() -> None:
    get = roundtrip(messages.properties_get("/org/freedesktop/systemd1/unit/x_2escope",
                                            messages.SCOPE_INTERFACE, "MemoryMax"))
    assert fields(get) == {"path": "/org/freedesktop/systemd1/unit/x_2escope",
                           "interface": "org.freedesktop.DBus.Properties", "member": "Get",
                           "destination": "org.freedesktop.systemd1", "signature": "ss"}
    assert get.body == ("org.freedesktop.systemd1.Scope", "MemoryMax")
    get_all = roundtrip(messages.properties_get_all("/org/freedesktop/systemd1", messages.MANAGER_INTERFACE))
    assert (fields(get_all)["member"], get_all.body) == ("GetAll", ("org.freedesktop.systemd1.Manager",))


def test_add_match_for_job_removed() -> None:
    msg = roundtrip(messages.add_match())
    assert fields(msg) == {"path": "/org/freedesktop/DBus", "interface": "org.freedesktop.DBus",
                           "member": "AddMatch", "destination": "org.freedesktop.DBus", "signature": "s"}
    assert msg.body == ("type='signal',sender='org.freedesktop.systemd1',"
                        "interface='org.freedesktop.systemd1.Manager',member='JobRemoved',"
                        "path='/org/freedesktop/systemd1'",)


def test_hello() -> None:
    assert fields(roundtrip(messages.hello()))["member"] == "Hello"


def test_invalid_job_mode() -> None:
    with pytest.raises(PyoukiError, match="invalid systemd job mode 'sometimes'"):
        messages.stop_unit("x.scope", "sometimes")


def test_parse_job_removed_ignores_sender() -> None:
    from jeepney import DBusAddress, new_signal

    emitter = DBusAddress("/org/freedesktop/systemd1", interface="org.freedesktop.systemd1.Manager")
    job = "/org/freedesktop/systemd1/job/42"
    sig = new_signal(emitter, "JobRemoved", "uoss", (42, job, "x.scope", "done"))
    sig.header.fields[HeaderFields.sender] = ":1.7"  # the unique name, never org.freedesktop.systemd1
    assert messages.parse_job_removed(roundtrip(sig)) == (42, job, "x.scope", "done")
    other = new_signal(emitter, "JobNew", "uos", (42, job, "x.scope"))
    assert messages.parse_job_removed(roundtrip(other)) is None
    assert messages.parse_job_removed(roundtrip(messages.subscribe())) is None


# -- property typing -------------------------------------------------------------------------

def test_typed_properties_signatures() -> None:
    typed = dict(typed_properties({
        "PIDs": [1, 2], "Delegate": True, "Slice": "s.slice", "Description": "d", "MemoryMax": 1,
        "MemoryLow": 2, "MemoryHigh": "infinity", "MemorySwapMax": None, "TasksMax": -1, "CPUWeight": 100,
        "CPUQuotaPerSecUSec": 200_000, "CPUQuotaPeriodUSec": 100_000, "AllowedCPUs": "1",
        "AllowedMemoryNodes": [0], "IOWeight": 100, "DefaultDependencies": False,
        "DeviceAllow": [("/dev/null", "rwm")], "After": ["a.service"],
    }))
    assert typed == {
        "PIDs": ("au", [1, 2]), "Delegate": ("b", True), "Slice": ("s", "s.slice"), "Description": ("s", "d"),
        "MemoryMax": ("t", 1), "MemoryLow": ("t", 2), "MemoryHigh": ("t", INFINITY),
        "MemorySwapMax": ("t", INFINITY), "TasksMax": ("t", INFINITY), "CPUWeight": ("t", 100),
        "CPUQuotaPerSecUSec": ("t", 200_000), "CPUQuotaPeriodUSec": ("t", 100_000),
        "AllowedCPUs": ("ay", b"\x02"), "AllowedMemoryNodes": ("ay", b"\x01"), "IOWeight": ("t", 100),
        "DefaultDependencies": ("b", False), "DeviceAllow": ("a(ss)", [("/dev/null", "rwm")]),
        "After": ("as", ["a.service"]),
    }
    # Every signature must serialize inside a(sv).
    msg = roundtrip(messages.set_unit_properties("x.scope", {"PIDs": [1], "AllowedCPUs": "0-9"}))
    assert msg.body[2][1] == ("AllowedCPUs", ("ay", b"\xff\x03"))


@pytest.mark.parametrize(("props", "error"), [
    ({"MemoryMaximum": 1}, "unknown systemd unit property 'MemoryMaximum'"),
    ({"Delegate": "yes"}, "systemd unit property Delegate: expected a boolean, got 'yes'"),
    ({"MemoryMax": "1G"}, "systemd unit property MemoryMax: expected an unsigned 64-bit integer, got '1G'"),
    ({"CPUWeight": -1}, "systemd unit property CPUWeight: expected an unsigned 64-bit integer, got -1"),
    ({"TasksMax": True}, "systemd unit property TasksMax: expected an unsigned 64-bit integer, got True"),
    ({"TasksMax": 2**64}, "systemd unit property TasksMax: expected an unsigned 64-bit integer"),
    ({"PIDs": [0]}, "systemd unit property PIDs: expected a list of pids, got [0]"),
    ({"Slice": 3}, "systemd unit property Slice: expected a string, got 3"),
    ({"AllowedCPUs": "0-x"}, "invalid AllowedCPUs list '0-x': '0-x' is not a number or range"),
    ({"After": "a.service"}, "systemd unit property After: expected a list of strings"),
])
def test_typed_properties_errors(props: dict[str, Any], error: str) -> None:
    with pytest.raises(PyoukiError) as exc:
        typed_properties(props)
    assert str(exc.value).startswith(error)


def test_cpu_lists_and_bitmasks() -> None:
    assert parse_cpu_list("0-3,5") == [0, 1, 2, 3, 5]
    assert parse_cpu_list(" 7, 1-2 ,2") == [1, 2, 7]
    assert cpu_list_to_bitmask("0-3,5") == b"\x2f"
    assert cpu_list_to_bitmask("8") == b"\x00\x01"
    assert cpu_list_to_bitmask("") == b""
    assert bitmask_to_cpu_list(cpu_list_to_bitmask("0,9-11,63")) == [0, 9, 10, 11, 63]
    with pytest.raises(PyoukiError, match="bad range '3-1'"):
        parse_cpu_list("3-1")


# -- OCI resources ---------------------------------------------------------------------------

def test_resources_to_properties_full() -> None:
    props = resources_to_properties({
        "memory": {"limit": 512 * 1024**2, "reservation": 256 * 1024**2, "swap": 1024 * 1024**2},
        "pids": {"limit": 100},
        "cpu": {"shares": 1024, "quota": 50_000, "period": 100_000, "cpus": "0-1", "mems": "0"},
        "blockIO": {"weight": 500},
    })
    assert props == {
        "MemoryMax": 512 * 1024**2, "MemoryLow": 256 * 1024**2, "MemorySwapMax": 512 * 1024**2,
        "TasksMax": 100, "CPUWeight": 39, "CPUQuotaPeriodUSec": 100_000, "CPUQuotaPerSecUSec": 500_000,
        "AllowedCPUs": [0, 1], "AllowedMemoryNodes": [0], "IOWeight": 4950,
    }
    # And they type and serialize.
    typed = dict(roundtrip(messages.set_unit_properties("x.scope", props)).body[2])
    assert typed["AllowedCPUs"] == ("ay", b"\x03")


def test_resources_unlimited_and_zero() -> None:
    unlimited = {"memory": {"limit": -1}, "pids": {"limit": -1}, "cpu": {"quota": -1}}
    assert resources_to_properties(unlimited) == {
        "MemoryMax": INFINITY, "MemorySwapMax": INFINITY, "TasksMax": INFINITY,
        "CPUQuotaPerSecUSec": INFINITY}
    # 0 is "unset" except for pids.limit, where the spec says 0 is a real limit: 1, as systemd
    # refuses 0 and the cgroupfs drivers write it (runc does the same)
    assert resources_to_properties({"memory": {"limit": 0}, "cpu": {"shares": 0}, "pids": {"limit": 0}}) == {
        "TasksMax": 1}
    assert resources_to_properties({}) == {}
    nothing = {"memory": {"disableOOMKiller": False, "swappiness": None}, "devices": []}
    assert resources_to_properties(nothing) == {}


def test_runc_conversions() -> None:
    assert cpu_shares_to_weight(2) == 1
    assert cpu_shares_to_weight(1024) == 39
    assert cpu_shares_to_weight(262144) == 10000
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(1000) == 10000
    # 33 ms per 100 ms is 330 ms/s; 33.3 ms rounds up to the next whole percent.
    assert cpu_quota_per_sec(33_000, 100_000) == 330_000
    assert cpu_quota_per_sec(33_333, 100_000) == 340_000
    assert cpu_quota_per_sec(50_000, 0) == 500_000  # default period 100 ms


@pytest.mark.parametrize(("resources", "path"), [
    ({"devices": [{"allow": False, "access": "rwm"}]}, "linux.resources.devices"),
    ({"memory": {"kernel": 1}}, "linux.resources.memory.kernel"),
    ({"memory": {"swappiness": 10}}, "linux.resources.memory.swappiness"),
    ({"cpu": {"realtimeRuntime": 1}}, "linux.resources.cpu.realtimeRuntime"),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}, "linux.resources.hugepageLimits"),
    ({"unified": {"memory.high": "1"}}, "linux.resources.unified"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]}},
     "linux.resources.blockIO.throttleReadBpsDevice"),
])
def test_unsupported_resources_name_their_path(resources: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resources_to_properties(resources)
    assert exc.value.field == path
    assert str(exc.value) == f"{path}: not supported by the systemd cgroup driver"
    assert unsupported_fields(resources) == [path]


def test_skipped_resources_are_left_to_the_caller() -> None:
    resources = {"devices": [{"allow": False, "access": "rwm"}], "memory": {"limit": 10, "swappiness": 0}}
    assert resources_to_properties(resources, skip=("devices", "memory.swappiness")) == {"MemoryMax": 10}


@pytest.mark.parametrize(("resources", "path", "message"), [
    ({"memory": {"swap": 100}}, "linux.resources.memory.swap",
     "cannot set a swap limit without a memory limit"),
    ({"memory": {"limit": 200, "swap": 100}}, "linux.resources.memory.swap",
     "memory+swap limit 100 is below the memory limit 200"),
    ({"cpu": {"shares": 1}}, "linux.resources.cpu.shares", "1 is outside 2..262144"),
    ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight", "5 is outside 10..1000"),
    ({"cpu": {"cpus": "a"}}, "linux.resources.cpu.cpus", "invalid cpu list 'a'"),
    ({"memory": {"limit": "1G"}}, "linux.resources.memory.limit", "expected an integer, got '1G'"),
])
def test_bad_resource_values(resources: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resources_to_properties(resources)
    assert exc.value.field == path
    assert str(exc.value).startswith(f"{path}: {message}")


# -- addresses and uid mapping ---------------------------------------------------------------

def test_parse_address() -> None:
    assert parse_address("unix:path=/run/user/1000/bus") == [
        Endpoint("unix:path=/run/user/1000/bus", path="/run/user/1000/bus")]
    assert parse_address("tcp:host=x,port=1;unix:abstract=/tmp/dbus-x,guid=ab;unix:path=/a%20b") == [
        Endpoint("unix:abstract=/tmp/dbus-x,guid=ab", abstract="/tmp/dbus-x"),
        Endpoint("unix:path=/a%20b", path="/a b")]
    assert Endpoint("x", abstract="n").sockaddr() == b"\0n"


def test_user_and_system_endpoints() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/5"}
    assert [(e.path, e.peer_to_peer) for e in user_endpoints(env)] == [
        ("/run/user/5/bus", False), ("/run/user/5/systemd/private", True)]
    env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/elsewhere"
    assert [e.path for e in user_endpoints(env)] == ["/elsewhere", "/run/user/5/systemd/private"]
    assert user_endpoints({}) == []
    assert [(e.path, e.peer_to_peer) for e in system_endpoints({})] == [
        ("/run/dbus/system_bus_socket", False), ("/run/systemd/private", True)]
    assert system_endpoints({"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"})[0].path == "/x"


def test_uid_map() -> None:
    rootless_podman = "         0       1000          1\n         1     100000      65536\n"
    assert map_to_parent_uid(0, rootless_podman) == 1000
    assert map_to_parent_uid(5, rootless_podman) == 100004
    assert map_to_parent_uid(0, "0 0 4294967295\n") == 0
    assert map_to_parent_uid(70000, rootless_podman) == 70000  # unmapped: unchanged


USERNS_CHILD = """
import ctypes, os, sys
CLONE_NEWUSER = 0x10000000
if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER) != 0:
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
sys.stdin.readline()  # the parent writes our uid_map/gid_map meanwhile
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
from pyouki.dbus_native.address import host_uid
print(os.geteuid(), host_uid())
"""


def test_host_uid_inside_user_namespace() -> None:
    """Real kernel: uid 0 inside a user namespace mapped to 1234 outside is reported as 1234."""
    if os.geteuid() != 0:
        pytest.skip("mapping uid 1234 into a user namespace needs root")
    child = subprocess.Popen([sys.executable, "-c", USERNS_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={"PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            pytest.skip(f"cannot create a user namespace here: {child.communicate(timeout=10)[1].strip()}")
        Path(f"/proc/{child.pid}/setgroups").write_text("deny")
        Path(f"/proc/{child.pid}/uid_map").write_text("0 1234 1\n")
        Path(f"/proc/{child.pid}/gid_map").write_text("0 1234 1\n")
        out, err = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err
    assert out.split() == ["0", "1234"]


def test_import_is_cheap() -> None:
    """Importing the client must not load jeepney: only a systemd-driver run pays for it."""
    code = ("import sys; import pyouki.dbus_native.systemd, pyouki.dbus_native.resources; "
            "print(sorted(m for m in sys.modules if m.startswith('jeepney')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO)}, timeout=30)
    assert res.stdout.strip() == "[]"


def test_swap_equal_to_the_limit_means_no_swap() -> None:
    """memory.swap == memory.limit (runc's "no swap") must set MemorySwapMax=0, not leave it unset."""
    from pyouki.dbus_native.resources import resources_to_properties

    props = dict(resources_to_properties({"memory": {"limit": 32 << 20, "swap": 32 << 20}}))
    assert props["MemorySwapMax"] == 0
    assert props["MemoryMax"] == 32 << 20
