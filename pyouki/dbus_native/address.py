"""Where the buses are and who we are to them: address resolution and the host uid for EXTERNAL auth.

Pure functions over the environment and /proc; no sockets here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
SYSTEM_PRIVATE_SOCKET = "/run/systemd/private"


class Endpoint:
    """One place to connect to: a unix socket path (or abstract name) and how to talk there.

    ``peer_to_peer`` is true for systemd's private sockets: no bus daemon, so no ``Hello``
    and no ``AddMatch`` (systemd sends subscribed signals straight to the peer). A plain
    class: a dataclass or NamedTuple costs 2-5 ms of import time.
    """

    __slots__ = ("address", "path", "abstract", "peer_to_peer")

    def __init__(self, address: str, path: str = "", abstract: str = "", peer_to_peer: bool = False) -> None:
        self.address = address
        self.path = path
        self.abstract = abstract
        self.peer_to_peer = peer_to_peer

    def _key(self) -> tuple[str, str, str, bool]:
        return (self.address, self.path, self.abstract, self.peer_to_peer)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Endpoint{self._key()!r}"

    def sockaddr(self) -> str | bytes:
        """The argument for ``socket.connect`` on an AF_UNIX socket."""
        return self.path if self.path else b"\0" + self.abstract.encode()


def _unescape(value: str) -> str:
    """Undo D-Bus address escaping (``%2d`` style); no urllib import on this path."""
    out = []
    i = 0
    while i < len(value):
        if value[i] == "%" and i + 3 <= len(value):
            try:
                out.append(chr(int(value[i + 1:i + 3], 16)))
                i += 3
                continue
            except ValueError:
                pass
        out.append(value[i])
        i += 1
    return "".join(out)


def parse_address(address: str, peer_to_peer: bool = False) -> list[Endpoint]:
    """Parse a D-Bus address string (``unix:path=...;unix:abstract=...``) into endpoints.

    Transports other than unix paths and abstract sockets (tcp, unixexec, launchd...) are
    skipped: systemd never listens on them.
    """
    endpoints = []
    for part in address.split(";"):
        transport, _, rest = part.strip().partition(":")
        if transport != "unix" or not rest:
            continue
        keys = dict(kv.partition("=")[::2] for kv in rest.split(","))
        if "path" in keys:
            endpoints.append(Endpoint(part.strip(), path=_unescape(keys["path"]), peer_to_peer=peer_to_peer))
        elif "abstract" in keys:
            endpoints.append(Endpoint(part.strip(), abstract=_unescape(keys["abstract"]),
                                      peer_to_peer=peer_to_peer))
    return endpoints


def system_endpoints(env: Mapping[str, str] | None = None) -> list[Endpoint]:
    """The system bus (``DBUS_SYSTEM_BUS_ADDRESS`` or the standard socket), then systemd's private socket."""
    env = os.environ if env is None else env
    address = env.get("DBUS_SYSTEM_BUS_ADDRESS") or f"unix:path={SYSTEM_BUS_SOCKET}"
    return parse_address(address) + parse_address(f"unix:path={SYSTEM_PRIVATE_SOCKET}", peer_to_peer=True)


def user_endpoints(env: Mapping[str, str] | None = None) -> list[Endpoint]:
    """The user bus, then the user manager's private socket.

    The bus is ``DBUS_SESSION_BUS_ADDRESS``, else ``$XDG_RUNTIME_DIR/bus``; the private socket
    is ``$XDG_RUNTIME_DIR/systemd/private``. Without either variable there is nothing to try.
    """
    env = os.environ if env is None else env
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
    if not address and runtime_dir:
        address = f"unix:path={runtime_dir}/bus"
    endpoints = parse_address(address) if address else []
    if runtime_dir:
        endpoints += parse_address(f"unix:path={runtime_dir}/systemd/private", peer_to_peer=True)
    return endpoints


def map_to_parent_uid(uid: int, uid_map: str) -> int:
    """Map a uid of our user namespace to the parent namespace using uid_map's text.

    Each line is ``inside outside count``; an unmapped uid (should not happen for our own
    euid) is returned unchanged.
    """
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        inside, outside, count = (int(f) for f in fields)
        if inside <= uid < inside + count:
            return outside + (uid - inside)
    return uid


def host_uid() -> int:
    """The uid the bus sees for us: our euid mapped out of our user namespace.

    Inside rootless podman's user namespace euid is 0 but the kernel reports the host uid to
    the bus (SO_PEERCRED), and the bus rejects EXTERNAL auth for any other uid.
    """
    euid = os.geteuid()
    try:
        with open("/proc/self/uid_map") as f:
            return map_to_parent_uid(euid, f.read())
    except OSError:
        return euid
