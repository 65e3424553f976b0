"""SystemdManager: transient scopes, updates, stops and property reads over one connection.

The user manager (rootless) or the system manager (rootful); every call and every job wait
is bounded by a timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyouki.dbus_native import messages
from pyouki.dbus_native.address import system_endpoints, user_endpoints
from pyouki.dbus_native.connection import DEFAULT_TIMEOUT, Connection, DBusError, open_connection
from pyouki.errors import PyoukiError

NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
# Older systemd answers LoadFailed for a unit name it cannot load at all.
_GONE_ERRORS = frozenset({NO_SUCH_UNIT, "org.freedesktop.systemd1.LoadFailed"})


class SystemdManager:
    """A client for ``org.freedesktop.systemd1.Manager`` on one connection."""

    def __init__(self, conn: Connection, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn = conn
        self.timeout = timeout
        self._subscribed = False

    @classmethod
    def connect(cls, user: bool, timeout: float = DEFAULT_TIMEOUT,
                env: Mapping[str, str] | None = None) -> SystemdManager:
        """Connect to the user manager (``user=True``) or the system manager.

        Tries the bus first, then systemd's private socket; each attempt is bounded by timeout.
        """
        what = "the systemd user manager" if user else "the systemd system manager"
        endpoints = user_endpoints(env) if user else system_endpoints(env)
        return cls(open_connection(endpoints, what, timeout), timeout)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> SystemdManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, msg: Any, timeout: float | None = None) -> tuple[Any, ...]:
        return self.conn.call(msg, self.timeout if timeout is None else timeout)

    def subscribe(self) -> None:
        """Receive JobRemoved: AddMatch on a bus (not needed peer-to-peer), then Subscribe; once."""
        if self._subscribed:
            return
        if not self.conn.peer_to_peer:
            self._call(messages.add_match(messages.JOB_REMOVED_RULE))
        self._call(messages.subscribe())
        self._subscribed = True

    def wait_job(self, job: str, unit: str, timeout: float | None = None) -> str:
        """Wait for JobRemoved of job (an object path) and return its result (``done``, ``failed``...)."""
        timeout = self.timeout if timeout is None else timeout

        def is_our_job(msg: Any) -> bool:
            removed = messages.parse_job_removed(msg)
            return removed is not None and removed[1] == job

        msg = self.conn.wait_for(is_our_job, timeout, f"the job of {unit} to finish")
        removed = messages.parse_job_removed(msg)
        assert removed is not None
        return removed[3]

    def start_transient_unit(self, name: str, properties: Mapping[str, Any], mode: str = "fail",
                             timeout: float | None = None) -> None:
        """StartTransientUnit and wait until its job is done; raise PyoukiError otherwise.

        The subscription comes first so the JobRemoved signal cannot be missed. A leftover
        failed unit of the same name is reset and the start retried once, as runc does.
        """
        self.subscribe()
        msg = messages.start_transient_unit(name, properties, mode)
        try:
            (job,) = self._call(msg)
        except DBusError as e:
            if e.name != UNIT_EXISTS:
                raise PyoukiError(f"failed to start transient unit {name}: {e.name}: "
                                  f"{e.dbus_message}") from None
            self.reset_failed(name)
            try:
                (job,) = self._call(msg)
            except DBusError as e2:
                raise PyoukiError(f"failed to start transient unit {name}: {e2.name}: "
                                  f"{e2.dbus_message}") from None
        result = self.wait_job(job, name, timeout)
        if result != "done":
            raise PyoukiError(f"failed to start transient unit {name}: job finished with result {result!r}")

    def start_transient_scope(self, name: str, slice: str | None = None, pids: Iterable[int] = (),
                              properties: Mapping[str, Any] | None = None, delegate: bool = True,
                              timeout: float | None = None, description: str | None = None) -> None:
        """Create a transient scope holding pids (``Delegate=yes`` by default) and wait for it.

        properties are extra unit properties (``MemoryMax``, ``TasksMax``...), typed by
        ``pyouki.dbus_native.properties``.
        """
        if not name.endswith(".scope"):
            raise PyoukiError(f"invalid scope name {name!r}: must end in .scope")
        default_description = f"pyouki container {name.removesuffix('.scope')}"
        props: dict[str, Any] = {"Description": description or default_description}
        if slice:
            props["Slice"] = slice
        props["Delegate"] = delegate
        props["PIDs"] = list(pids)
        # Like runc: the scope must not pull in or order against the default dependencies.
        props["DefaultDependencies"] = False
        props.update(properties or {})
        self.start_transient_unit(name, props, "fail", timeout)

    def set_properties(self, name: str, properties: Mapping[str, Any], runtime: bool = True) -> None:
        """SetUnitProperties on a live unit (``runtime``: not persisted across reboots)."""
        try:
            self._call(messages.set_unit_properties(name, properties, runtime))
        except DBusError as e:
            raise PyoukiError(f"failed to set properties of {name}: {e.name}: {e.dbus_message}") from None

    def attach_processes(self, name: str, pids: Iterable[int], subcgroup: str = "") -> None:
        """AttachProcessesToUnit: systemd moves pids into the (delegated) unit's cgroup.

        A user manager that may not move them itself asks the system manager (systemd >= 238).
        """
        try:
            self._call(messages.attach_processes_to_unit(name, subcgroup, pids))
        except DBusError as e:
            raise PyoukiError(f"failed to attach processes to {name}: {e.name}: {e.dbus_message}") from None

    def stop_unit(self, name: str, mode: str = "replace", timeout: float | None = None) -> bool:
        """StopUnit and wait for its job; return False if the unit was not loaded (already gone)."""
        self.subscribe()
        try:
            (job,) = self._call(messages.stop_unit(name, mode))
        except DBusError as e:
            if e.name in _GONE_ERRORS:
                return False
            raise PyoukiError(f"failed to stop {name}: {e.name}: {e.dbus_message}") from None
        result = self.wait_job(job, name, timeout)
        if result != "done":
            raise PyoukiError(f"failed to stop {name}: job finished with result {result!r}")
        return True

    def reset_failed(self, name: str) -> None:
        """ResetFailedUnit; a unit that is not loaded is not an error."""
        try:
            self._call(messages.reset_failed_unit(name))
        except DBusError as e:
            if e.name not in _GONE_ERRORS:
                raise PyoukiError(f"failed to reset {name}: {e.name}: {e.dbus_message}") from None

    def unit_path(self, name: str) -> str | None:
        """The unit's object path, or None if systemd has no such unit loaded."""
        try:
            (path,) = self._call(messages.get_unit(name))
        except DBusError as e:
            if e.name in _GONE_ERRORS:
                return None
            raise
        return str(path)

    def unit_exists(self, name: str) -> bool:
        """Whether systemd has the unit loaded."""
        return self.unit_path(name) is not None

    def _require_path(self, unit: str) -> str:
        path = self.unit_path(unit)
        if path is None:
            raise PyoukiError(f"systemd unit {unit} does not exist")
        return path

    def get_unit_property(self, unit: str, interface: str, prop: str) -> Any:
        """One property of a unit, e.g. ``(scope, messages.SCOPE_INTERFACE, "MemoryMax")``."""
        (variant,) = self._call(messages.properties_get(self._require_path(unit), interface, prop))
        return variant[1]

    def get_unit_properties(self, unit: str, interface: str) -> dict[str, Any]:
        """All properties of one interface of a unit, variants unwrapped."""
        (props,) = self._call(messages.properties_get_all(self._require_path(unit), interface))
        return {name: variant[1] for name, variant in props.items()}

    def manager_property(self, prop: str) -> Any:
        """A property of the manager object itself (``Version``, ``ControlGroup``...)."""
        msg = messages.properties_get(messages.SYSTEMD_PATH, messages.MANAGER_INTERFACE, prop)
        (variant,) = self._call(msg)
        return variant[1]
