"""Sans-I/O message construction for the bus daemon and systemd's Manager (like jeepney's MessageGenerator).

Every function returns a ``jeepney.Message`` and touches no socket, so the exact bytes are
unit-testable without a bus. jeepney is imported inside the functions: importing this module
stays free for code paths that never talk to systemd.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pyouki.dbus_native.properties import typed_properties

if TYPE_CHECKING:
    from jeepney import Message

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER_INTERFACE = "org.freedesktop.systemd1.Manager"
UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
SCOPE_INTERFACE = "org.freedesktop.systemd1.Scope"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
DBUS_BUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
DBUS_INTERFACE = "org.freedesktop.DBus"

# Job modes systemd accepts for StartUnit/StopUnit/StartTransientUnit.
JOB_MODES = frozenset({"replace", "fail", "isolate", "ignore-dependencies", "ignore-requirements"})


def _manager_call(method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Message:
    from jeepney import DBusAddress, new_method_call

    address = DBusAddress(SYSTEMD_PATH, bus_name=SYSTEMD_BUS_NAME, interface=MANAGER_INTERFACE)
    return new_method_call(address, method, signature, body)


def _check_mode(mode: str) -> str:
    if mode not in JOB_MODES:
        from pyouki.errors import PyoukiError

        raise PyoukiError(f"invalid systemd job mode {mode!r}")
    return mode


def hello() -> Message:
    """``org.freedesktop.DBus.Hello``: the first call on a bus connection; returns our unique name."""
    from jeepney import DBusAddress, new_method_call

    return new_method_call(DBusAddress(DBUS_PATH, bus_name=DBUS_BUS_NAME, interface=DBUS_INTERFACE), "Hello")


def match_rule(*, type: str = "signal", sender: str | None = None, interface: str | None = None,
               member: str | None = None, path: str | None = None) -> str:
    """A bus match rule string, e.g. ``type='signal',sender='...',member='JobRemoved'``."""
    parts = [("type", type), ("sender", sender), ("interface", interface), ("member", member), ("path", path)]
    # Values are quoted; a quote inside a value would need escaping, and none of ours has one.
    return ",".join(f"{key}='{value}'" for key, value in parts if value is not None)


JOB_REMOVED_RULE = match_rule(sender=SYSTEMD_BUS_NAME, interface=MANAGER_INTERFACE,
                              member="JobRemoved", path=SYSTEMD_PATH)


def add_match(rule: str = JOB_REMOVED_RULE) -> Message:
    """``org.freedesktop.DBus.AddMatch(rule)``; the default rule selects systemd's JobRemoved."""
    from jeepney import DBusAddress, new_method_call

    bus = DBusAddress(DBUS_PATH, bus_name=DBUS_BUS_NAME, interface=DBUS_INTERFACE)
    return new_method_call(bus, "AddMatch", "s", (rule,))


def subscribe() -> Message:
    """``Manager.Subscribe()``: ask systemd to emit job and unit signals to us."""
    return _manager_call("Subscribe")


def start_transient_unit(name: str, properties: Mapping[str, Any], mode: str = "fail",
                         aux: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> Message:
    """``Manager.StartTransientUnit(s name, s mode, a(sv) properties, a(sa(sv)) aux)``; returns a job path."""
    aux_units = [(aux_name, typed_properties(aux_props)) for aux_name, aux_props in aux]
    return _manager_call("StartTransientUnit", "ssa(sv)a(sa(sv))",
                         (name, _check_mode(mode), typed_properties(properties), aux_units))


def stop_unit(name: str, mode: str = "replace") -> Message:
    """``Manager.StopUnit(s name, s mode)``; returns a job path."""
    return _manager_call("StopUnit", "ss", (name, _check_mode(mode)))


def reset_failed_unit(name: str) -> Message:
    """``Manager.ResetFailedUnit(s name)``: forget a failed unit so its name can be reused."""
    return _manager_call("ResetFailedUnit", "s", (name,))


def set_unit_properties(name: str, properties: Mapping[str, Any], runtime: bool = True) -> Message:
    """``Manager.SetUnitProperties(s name, b runtime, a(sv) properties)``: change a live unit."""
    return _manager_call("SetUnitProperties", "sba(sv)", (name, runtime, typed_properties(properties)))


def attach_processes_to_unit(name: str, subcgroup: str, pids: Iterable[int]) -> Message:
    """``Manager.AttachProcessesToUnit(s name, s subcgroup, au pids)``: move pids into a delegated unit."""
    return _manager_call("AttachProcessesToUnit", "ssau", (name, subcgroup, [int(p) for p in pids]))


def get_unit(name: str) -> Message:
    """``Manager.GetUnit(s name)``: the unit's object path, or a NoSuchUnit error if not loaded."""
    return _manager_call("GetUnit", "s", (name,))


def properties_get(path: str, interface: str, prop: str) -> Message:
    """``org.freedesktop.DBus.Properties.Get(s interface, s name)`` on a systemd object; returns a variant."""
    from jeepney import DBusAddress, new_method_call

    obj = DBusAddress(path, bus_name=SYSTEMD_BUS_NAME, interface=PROPERTIES_INTERFACE)
    return new_method_call(obj, "Get", "ss", (interface, prop))


def properties_get_all(path: str, interface: str) -> Message:
    """``org.freedesktop.DBus.Properties.GetAll(s interface)`` on a systemd object; returns ``a{sv}``."""
    from jeepney import DBusAddress, new_method_call

    obj = DBusAddress(path, bus_name=SYSTEMD_BUS_NAME, interface=PROPERTIES_INTERFACE)
    return new_method_call(obj, "GetAll", "s", (interface,))


def parse_job_removed(msg: Message) -> tuple[int, str, str, str] | None:
    """``(id, job, unit, result)`` if msg is systemd's JobRemoved signal, else None.

    The sender is deliberately not compared with ``org.freedesktop.systemd1``: signals carry
    the unique name (``:1.x``), and on the private socket no sender at all.
    """
    from jeepney import HeaderFields, MessageType

    h = msg.header
    if (h.message_type != MessageType.signal
            or h.fields.get(HeaderFields.interface) != MANAGER_INTERFACE
            or h.fields.get(HeaderFields.member) != "JobRemoved"
            or h.fields.get(HeaderFields.signature) != "uoss"):
        return None
    job_id, job, unit, result = msg.body
    return job_id, job, unit, result
